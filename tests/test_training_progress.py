"""Training progress (issue 11 section 3): epoch lines with loss, validation AUROC, time per epoch and ETA
reach the log and, for local runs whose stderr a rule redirects to a log file, the terminal."""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cxrbench.training.progress import ENV, Progress, format_duration, open_terminal


def _row(epoch: int, best: bool) -> dict:
    return {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.4, "val_auroc_macro": 0.8123, "best": best,
            "train_img_per_s": 250.0, "epoch_s": 90.0}


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42.4, 185, 7620, -3)] == ["0s", "42s", "3m05s", "2h07m", "0s"]


def test_epoch_line_has_loss_auroc_epoch_time_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    term = io.StringIO()
    p = Progress("dinov2/chexpert", epochs=10, patience=3, terminal=term)
    history = [_row(1, True), _row(2, False)]
    with caplog.at_level(logging.INFO, logger="cxrbench.training.progress"):
        p.end_epoch(history[-1], history, selection="val_auroc", best_epoch=1, bad_epochs=1)
    line = term.getvalue()
    assert line.startswith("[dinov2/chexpert] epoch 2/10  loss 0.5000  val_loss 0.4000  val_auroc 0.8123")
    assert "(best epoch 1)" in line and "1m30s/epoch" in line and "250 img/s" in line
    # 8 epochs left at 90 s; early stopping can end it after 2 more
    assert "ETA 12m00s (or 3m00s if val_auroc does not improve)" in line
    assert caplog.messages == [line.removeprefix("[dinov2/chexpert] ").rstrip("\n")]  # the log gets the same line
    term.truncate(0)
    Progress("r", epochs=10, patience=0, terminal=term).end_epoch(
        _row(3, True), [_row(3, True)], selection="val_loss", best_epoch=3, bad_epochs=0)
    assert " *" in term.getvalue() and "ETA 10m30s\n" in term.getvalue()  # no early stop: no second estimate
    term.truncate(0)
    Progress("r", epochs=3, patience=0, terminal=term).end_epoch(
        _row(3, False), [_row(3, False)], selection="val_loss", best_epoch=1, bad_epochs=2)
    assert "ETA" not in term.getvalue()  # the last epoch


def test_step_lines_are_throttled() -> None:
    clock, term = _Clock(), io.StringIO()
    p = Progress("r", epochs=5, patience=0, terminal=term, interval_s=60, clock=clock)
    p.start_epoch()
    for step in range(1, 101):
        clock.t = step * 2.0  # 2 s per step of 32 images
        p.step(0, step, 100, mean_loss=0.3, images=32 * step)
    lines = term.getvalue().splitlines()
    assert len(lines) == 3  # at 60, 120 and 180 s; never at the last step (the epoch line follows)
    assert lines[0] == "[r] epoch 1/5  step 30/100 (30%)  loss 0.3000  16 img/s  epoch ETA 2m20s"


def test_a_terminal_that_goes_away_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    p = Progress("r", epochs=2, patience=0, terminal=_Broken())  # a hung-up terminal raises EIO
    with caplog.at_level(logging.INFO, logger="cxrbench.training.progress"):
        p.emit("still logged")
    assert p.terminal is None and caplog.messages == ["still logged"]


class _Broken(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError(5, "Input/output error")


def test_off_switch_and_no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "off")
    assert open_terminal() is None
    # a batch job (sbatch) has no controlling terminal: nothing to open, no error
    code = "from cxrbench.training.progress import open_terminal; assert open_terminal() is None"
    subprocess.run(["setsid", "-w", sys.executable, "-c", code], check=True, stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=60)


_JOB = textwrap.dedent(
    """
    from cxrbench.log import setup_logging
    from cxrbench.training.progress import Progress, open_terminal
    setup_logging()
    p = Progress("dinov2/vindr", epochs=4, patience=0, terminal=open_terminal())
    p.end_epoch({"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_auroc_macro": 0.75, "best": True,
                 "train_img_per_s": 100.0, "epoch_s": 12.0}, [{"epoch_s": 12.0}], selection="val_auroc",
                best_epoch=1, bad_epochs=0)
    """
)


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` (a pseudo-terminal) not installed")
def test_redirected_job_still_reaches_the_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a Snakemake rule runs it (``cmd > {log} 2>&1``) under a terminal: the line is in both places."""
    monkeypatch.delenv(ENV, raising=False)
    (tmp_path / "job.py").write_text(_JOB)
    log = tmp_path / "job.log"
    cmd = f"{sys.executable} {tmp_path / 'job.py'} > {log} 2>&1"
    out = subprocess.run(["script", "-qfec", cmd, "/dev/null"], capture_output=True, text=True, timeout=120,
                         check=True, stdin=subprocess.DEVNULL).stdout
    assert "[dinov2/vindr] epoch 1/4  loss 0.5000" in out and "ETA 36s" in out
    assert "epoch 1/4  loss 0.5000" in log.read_text() and "[dinov2/vindr]" not in log.read_text()
