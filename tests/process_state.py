"""Test helper shared by the training and weight-loading tests: undo the process-wide state training sets."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_process_state(monkeypatch: pytest.MonkeyPatch):
    """Training sets offline-hub variables, deterministic mode and thread counts process-wide: undo them.

    Autouse in every test module that imports it (``from process_state import _restore_process_state``).
    """
    from huggingface_hub import constants

    for key in ("HF_HOME", "HF_HUB_OFFLINE", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.setenv(key, os.environ.get(key, ""))
        if not os.environ[key]:
            monkeypatch.delenv(key)  # recorded as absent, so a later setenv by the code is undone too
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
