"""Helpers shared by the SLURM tests: is a controller reachable, and run Snakemake with a profile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLURM_PROFILE = REPO / "slurm"
# The first status check comes after this many seconds (40 in the profile; short here so tests are quick).
STATUS_ARGS = ["--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"]


def slurm_ready() -> tuple[bool, str]:
    """(True, '') when `sinfo` reaches a controller with a usable node, else (False, why)."""
    if shutil.which("sinfo") is None:
        return False, "SLURM client tools are not installed (run .ci/slurm-up.sh)"
    if not Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).is_file():
        return False, "no slurm.conf: no SLURM controller configured (run .ci/slurm-up.sh)"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%t"], check=False, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, "sinfo timed out: no SLURM controller reachable"
    states = res.stdout.split()
    if res.returncode != 0 or not any(s.rstrip("*~#") in {"idle", "mix", "alloc"} for s in states):
        return False, f"no usable SLURM node (sinfo rc={res.returncode}: {res.stdout.strip() or res.stderr.strip()})"
    return True, ""


def snakemake_cmd(*args: str) -> list[str]:
    """The Snakemake command line of the venv running the tests."""
    return [sys.executable, "-m", "snakemake", *args]


def scontrol_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as key -> value (works without accounting while MinJobAge lasts)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True, check=True)
    fields: dict[str, str] = {}
    for token in out.stdout.split():
        key, _, value = token.partition("=")
        fields[key] = value
    return fields


def time_limit_minutes(text: str) -> float:
    """A job's `TimeLimit` as `scontrol` prints it (``[D-]HH:MM:SS``) in minutes; ValueError for UNLIMITED and the like."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2}):(\d{2})", text.strip())
    if m is None:
        raise ValueError(f"not a [D-]HH:MM:SS time limit: {text!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return (days * 24 + hours) * 60 + minutes + seconds / 60


def wait_for(predicate, *, timeout: float, what: str, poll: float = 0.3) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSON-lines file ([] when absent)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
