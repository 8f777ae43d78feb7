"""Fabricated ``predictions.parquet`` content in the contract's long format (docs/contracts.md §4),
shared by the evaluation tests, plus a check that the fabricated data meets the contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
from cxrbench.evaluation.predictions import from_frame

LABELS = ("atelectasis", "cardiomegaly", "pleural_effusion", "pneumothorax")


def truth(*, n_patients: int = 60, labels: tuple[str, ...] = LABELS, seed: int = 0,
          prevalence: float = 0.3, masked: float = 0.05) -> pd.DataFrame:
    """Ground truth of a dataset: images (1-3 per patient) in val/test, 1/0/NaN targets per label."""
    rng = np.random.default_rng(seed)
    per_patient = rng.integers(1, 4, n_patients)
    patient = np.repeat([f"p{i:04d}" for i in range(n_patients)], per_patient)
    image = [f"img{i:05d}" for i in range(patient.size)]
    split = np.where(np.repeat(rng.random(n_patients) < 0.35, per_patient), "val", "test")
    rows = []
    for j, label in enumerate(labels):
        y = (rng.random(patient.size) < prevalence).astype(float)
        y[rng.random(patient.size) < masked] = np.nan
        rows.append(pd.DataFrame({"split": split, "image_id": image, "patient_id": patient, "label": label,
                                  "target": y}))
    return pd.concat(rows, ignore_index=True)


def predict(gt: pd.DataFrame, *, signal: float, seed: int, decimals: int = 2) -> pd.DataFrame:
    """Scores for the ground truth: sigmoid(signal * y + noise), rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y = np.nan_to_num(gt["target"].to_numpy(), nan=0.5)
    logit = signal * (y - 0.5) + rng.normal(size=y.size)
    out = gt.copy()
    out["score"] = np.round(1.0 / (1.0 + np.exp(-logit)), decimals)
    return out


def test_fabricated_predictions_meet_the_contract() -> None:
    gt = truth()
    run = from_frame(predict(gt, signal=2.0, seed=1))
    assert run.labels == LABELS
    assert run.val is not None and run.test.targets.shape[1] == len(LABELS)
    assert np.isnan(run.test.targets).any()
    assert len(np.unique(run.test.scores)) < run.test.scores.size  # ties present
