"""Shared pytest fixtures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

DEMO_SEED = 7
DEMO_IMAGES = 240


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All six demo datasets (seed 7, 240 images each, the config.yaml demo), written once per session.

    Read-only for tests. The generation time is written next to the root, in
    ``demo-generation-seconds.txt``.
    """
    from cxrbench.demo import write_demo

    base = tmp_path_factory.mktemp("demo")
    root = base / "demo-data"
    t0 = time.perf_counter()
    write_demo(root, seed=DEMO_SEED, images_per_dataset=DEMO_IMAGES)
    (base / "demo-generation-seconds.txt").write_text(f"{time.perf_counter() - t0:.2f}\n")
    return root
