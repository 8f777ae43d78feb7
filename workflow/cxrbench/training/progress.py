"""Training progress for people watching: epoch lines (loss, validation, time per epoch, ETA) and, in long
epochs, a step line at most every ``interval_s`` seconds.

Every line goes to the job's log (the logger, i.e. stderr, which the Snakemake rule redirects to its
``log:`` file) and, for local runs, also to the terminal Snakemake was started from: the rule's
redirection hides stderr from the user, so the controlling terminal (``/dev/tty``) is written directly.
A batch job (SLURM) has no controlling terminal, so there only the log gets the lines, one per epoch plus
at most one per ``interval_s``: no carriage returns, no progress bars. ``CXRBENCH_PROGRESS=off`` keeps
the lines out of the terminal (the log still gets them).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

_logger = logging.getLogger(__name__)

__all__ = ["ENV", "Progress", "format_duration", "open_terminal"]

ENV = "CXRBENCH_PROGRESS"


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def open_terminal() -> TextIO | None:
    """The controlling terminal for writing when it is not stderr already; None in batch jobs or when off.

    When stderr is the terminal (``cxrbench train`` run by hand) the logger already shows every line.
    """
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode not in ("auto", "off"):
        _logger.warning("%s=%r: expected 'auto' or 'off'; using auto", ENV, mode)
    if mode == "off" or sys.stderr.isatty():
        return None
    try:  # ENXIO without a controlling terminal (sbatch, nohup after logout, CI)
        return open("/dev/tty", "w", encoding="utf-8", buffering=1)
    except OSError:
        return None


class Progress:
    """Progress lines of one training run, to the log and (when given) a terminal stream."""

    def __init__(
        self,
        name: str,
        *,
        epochs: int,
        patience: int,
        terminal: TextIO | None = None,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.epochs = epochs
        self.patience = patience
        self.terminal = terminal
        self.interval_s = interval_s
        self.clock = clock
        self._epoch_start = self._last_line = clock()

    def emit(self, text: str) -> None:
        """One line to the log and the terminal; a terminal that went away is dropped, never fatal."""
        _logger.info("%s", text)
        if self.terminal is not None:
            try:
                self.terminal.write(f"[{self.name}] {text}\n")
                self.terminal.flush()
            except OSError:
                self.terminal = None

    def start_epoch(self) -> None:
        """Mark the start of an epoch (for the step lines' epoch ETA)."""
        self._epoch_start = self._last_line = self.clock()

    def step(self, epoch: int, done: int, total: int, *, mean_loss: float, images: int) -> None:
        """After optimiser step ``done`` of ``total`` in 0-based ``epoch``: a line if ``interval_s`` has passed."""
        now = self.clock()
        if now - self._last_line < self.interval_s or done >= total:
            return
        self._last_line = now
        elapsed = now - self._epoch_start
        rate = images / elapsed if elapsed > 0 else float("nan")
        left = elapsed / done * (total - done) if done else float("nan")
        self.emit(
            f"epoch {epoch + 1}/{self.epochs}  step {done}/{total} ({100 * done / total:.0f}%)  "
            f"loss {mean_loss:.4f}  {rate:.0f} img/s  epoch ETA {format_duration(left)}"
        )

    def end_epoch(self, row: dict[str, Any], history: list[dict[str, Any]], *, selection: str, best_epoch: int,
                  bad_epochs: int) -> None:
        """The epoch line: losses, validation AUROC, time of the epoch, ETA of the run."""
        done = int(row["epoch"])
        per_epoch = sum(float(r["epoch_s"]) for r in history) / len(history)
        left = self.epochs - done
        mark = " *" if row["best"] else f"  (best epoch {best_epoch})"
        text = (
            f"epoch {done}/{self.epochs}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_auroc {row['val_auroc_macro']:.4f}{mark}  {row['train_img_per_s']:.0f} img/s  "
            f"{format_duration(row['epoch_s'])}/epoch"
        )
        if left > 0:
            text += f"  ETA {format_duration(left * per_epoch)}"
            early = self.patience - bad_epochs
            if self.patience > 0 and early < left:
                text += f" (or {format_duration(early * per_epoch)} if {selection} does not improve)"
        self.emit(text)

    def close(self) -> None:
        """Close the terminal stream (the logger is not touched)."""
        if self.terminal is not None:
            try:
                self.terminal.close()
            except OSError:
                pass
            self.terminal = None
