"""Label-fraction subsets (issue 12): nesting, patient grouping, the positive guarantee, sizes, determinism,
row-order independence, the counts table, the CLI, and a run on real ChestX-ray14 label rows."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxrbench.cli import main as cli_main
from cxrbench.datasets import build_index
from cxrbench.labels import harmonise, write_labels
from cxrbench.labels.fractions import (
    FractionError,
    fraction_counts,
    label_fraction_subsets,
    read_fraction_subsets,
)
from cxrbench.labels.splits import patient_draw

REAL_ROWS = Path(__file__).parent / "data" / "chestxray14" / "Data_Entry_2017_v2020.first400.csv"
FRACTIONS = [0.01, 0.1, 1.0]


def _synthetic(*, n_patients: int = 1000, seed: int = 0) -> pd.DataFrame:
    """A contract-shaped table: 1-4 images per patient, ~80 % train patients, labels ``common`` (30 %),
    ``masked`` (10 %, a fifth NaN), ``rare`` (one positive patient: the last train patient in draw order
    for seed 5, so no prefix but the full one holds it) and ``val_only`` (positive only outside train)."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 5, n_patients)
    patient = np.repeat([f"p{i:05d}" for i in range(n_patients)], per)
    split = np.repeat(rng.choice(["train", "val", "test"], n_patients, p=[0.8, 0.1, 0.1]), per)
    n = len(patient)
    masked = (rng.random(n) < 0.1).astype(np.float32)
    masked[rng.random(n) < 0.2] = np.nan
    df = pd.DataFrame({
        "image_id": [f"img{i:06d}" for i in range(n)],
        "patient_id": patient,
        "split": split,
        "y_common": (rng.random(n) < 0.3).astype(np.float32),
        "y_masked": masked,
        "y_rare": np.float32(0.0),
        "y_val_only": np.float32(0.0),
    })
    train_patients = df.loc[df["split"] == "train", "patient_id"].unique()
    last = train_patients[np.argmax(patient_draw(train_patients, seed=5, name="", purpose="label_fraction"))]
    df.loc[df["patient_id"] == last, "y_rare"] = 1.0
    df.loc[df.index[df["split"] == "val"][0], "y_val_only"] = 1.0
    return df


def _members(subsets: pd.DataFrame, fraction: float) -> set[str]:
    return set(subsets.loc[subsets["min_fraction"] <= fraction, "image_id"])


def test_nested_patient_grouped_and_train_only() -> None:
    labels = _synthetic()
    subsets = label_fraction_subsets(labels, FRACTIONS, seed=5)
    assert list(subsets.columns) == ["image_id", "patient_id", "min_fraction"]
    train = labels[labels["split"] == "train"]
    assert sorted(subsets["image_id"]) == sorted(train["image_id"])
    assert set(subsets["min_fraction"]) == set(FRACTIONS)
    assert _members(subsets, 0.01) < _members(subsets, 0.1) < _members(subsets, 1.0)
    assert subsets.groupby("patient_id")["min_fraction"].nunique().max() == 1


def test_every_subset_keeps_a_positive_of_each_train_label() -> None:
    labels = _synthetic()
    subsets = label_fraction_subsets(labels, FRACTIONS, seed=5)
    rare_patient = labels.loc[labels["y_rare"] == 1, "patient_id"].unique()
    assert len(rare_patient) == 1
    assert set(subsets.loc[subsets["patient_id"] == rare_patient[0], "min_fraction"]) == {0.01}
    counts = fraction_counts(labels, subsets, fractions=FRACTIONS)
    assert (counts.loc[counts["label"].isin(["common", "masked", "rare"]), "n_pos"] > 0).all()
    assert (counts.loc[counts["label"] == "val_only", "n_pos"] == 0).all()  # no train positive: nothing added
    # without the guarantee the rare patient (last in draw order) would only be in the full split
    assert label_fraction_subsets(labels.drop(columns="y_rare"), FRACTIONS, seed=5).set_index("image_id").loc[
        labels.loc[labels["y_rare"] == 1, "image_id"], "min_fraction"].eq(1.0).all()


def test_sizes_are_the_shortest_prefix_reaching_the_fraction() -> None:
    labels = _synthetic().assign(y_rare=np.float32(0.0))  # only prevalent labels: no patient added for positives
    n_train = int((labels["split"] == "train").sum())
    subsets = label_fraction_subsets(labels, [0.01, 0.1, 0.5], seed=5)
    per_patient = subsets.groupby("patient_id").size()
    for f in (0.01, 0.1, 0.5):
        inside = subsets[subsets["min_fraction"] <= f]
        assert len(inside) >= math.ceil(f * n_train)
        # dropping the last patient drawn would fall short: the subset is minimal
        last = inside["patient_id"].iloc[-1]
        assert len(inside) - per_patient[last] < f * n_train


def test_order_is_the_keyed_blake2b_hash_of_the_patient_id() -> None:
    labels = _synthetic(n_patients=60).assign(y_rare=np.float32(0.0))
    subsets = label_fraction_subsets(labels, [0.5], seed=11)
    drawn = subsets.loc[subsets["min_fraction"] == 0.5, "patient_id"].drop_duplicates().tolist()

    def key(pid: str) -> int:  # independent re-implementation of the documented hash
        return int.from_bytes(hashlib.blake2b(f"11\x1f\x1flabel_fraction\x1f{pid}".encode(), digest_size=8).digest(),
                              "big")

    expected = sorted(labels.loc[labels["split"] == "train", "patient_id"].unique(), key=key)
    assert drawn == expected[:len(drawn)]


def test_deterministic_per_seed_and_independent_of_row_order() -> None:
    labels = _synthetic()
    first = label_fraction_subsets(labels, FRACTIONS, seed=5)
    pd.testing.assert_frame_equal(first, label_fraction_subsets(labels, FRACTIONS, seed=5))
    shuffled = labels.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(first, label_fraction_subsets(shuffled, FRACTIONS, seed=5))
    other = label_fraction_subsets(labels, FRACTIONS, seed=6)
    assert _members(other, 0.1) != _members(first, 0.1)


def test_one_is_always_added_and_fractions_are_checked() -> None:
    labels = _synthetic(n_patients=200)
    subsets = label_fraction_subsets(labels, [0.1], seed=1)
    assert set(subsets["min_fraction"]) == {0.1, 1.0}
    assert len(subsets) == (labels["split"] == "train").sum()
    for bad in ([0.0], [1.5], [-0.1], [float("nan")], [0.1, 0.1]):
        with pytest.raises(FractionError, match="label fractions"):
            label_fraction_subsets(labels, bad, seed=1)


def test_bad_tables_are_refused_with_the_key() -> None:
    labels = _synthetic(n_patients=50)
    with pytest.raises(FractionError, match=r"lacks column\(s\) \['patient_id'\]"):
        label_fraction_subsets(labels.drop(columns="patient_id"), FRACTIONS, seed=1)
    with pytest.raises(FractionError, match="no train rows"):
        label_fraction_subsets(labels.assign(split="test"), FRACTIONS, seed=1)
    broken = labels.copy()
    row = broken.index[broken["split"] == "train"][0]
    broken.loc[row, "y_common"] = 2.0
    with pytest.raises(FractionError, match=f"y_common of image '{broken.loc[row, 'image_id']}' is 2.0"):
        label_fraction_subsets(broken, FRACTIONS, seed=1)


def test_counts_match_a_plain_pandas_count() -> None:
    labels = _synthetic()
    subsets = label_fraction_subsets(labels, FRACTIONS, seed=5)
    counts = fraction_counts(labels, subsets, fractions=FRACTIONS)
    assert list(counts.columns) == ["fraction", "label", "n_images", "n_patients", "n_pos", "n_neg", "n_missing"]
    assert len(counts) == 3 * 4
    for f in FRACTIONS:
        rows = labels[labels["image_id"].isin(_members(subsets, f))]
        got = counts[counts["fraction"] == f].set_index("label")
        assert (got["n_images"] == len(rows)).all() and (got["n_patients"] == rows["patient_id"].nunique()).all()
        for label in ("common", "masked", "rare", "val_only"):
            y = rows[f"y_{label}"]
            assert got.loc[label, ["n_pos", "n_neg", "n_missing"]].tolist() == [
                (y == 1).sum(), (y == 0).sum(), y.isna().sum()]
    # a requested fraction whose subset equals the next smaller one still has its rows
    same = fraction_counts(labels, subsets, fractions=[0.01, 0.1, 0.1000001, 1.0])
    assert same.loc[same["fraction"] == 0.1000001, "n_images"].iloc[0] == len(_members(subsets, 0.1))


@pytest.fixture(scope="module")
def real_labels(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """400 real ChestX-ray14 rows (99 patients) through the adapter and harmonise; test lists by patient % 4."""
    root = tmp_path_factory.mktemp("nih400")
    ref = pd.read_csv(REAL_ROWS)
    test = ref["Patient ID"] % 4 == 0  # stand-in official lists, as in test_datasets_real.py
    (root / "test_list.txt").write_text("\n".join(ref.loc[test, "Image Index"]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(ref.loc[~test, "Image Index"]) + "\n")
    settings = {"name": "chestxray14", "labels": {}, "splits": {"val_fraction": 0.1}, "seed": 20230815,
                "dataset": {"adapter": "chestxray14", "root": str(root), "label_file": str(REAL_ROWS.resolve()),
                            "label_set": "study_chestxray14"}}
    result = harmonise(build_index(settings), settings)
    write_labels(result.labels, result.label_set, root / "labels.parquet")
    return result.labels


def test_real_rows(real_labels: pd.DataFrame) -> None:
    labels = real_labels
    train = labels[labels["split"] == "train"]
    subsets = label_fraction_subsets(labels, [0.05, 0.25, 1.0], seed=20230815)
    assert sorted(subsets["image_id"]) == sorted(train["image_id"])
    assert _members(subsets, 0.05) < _members(subsets, 0.25) < _members(subsets, 1.0)
    counts = fraction_counts(labels, subsets, fractions=[0.05, 0.25, 1.0])
    full = counts[counts["fraction"] == 1.0].set_index("label")
    for label in full.index:
        y = train[f"y_{label}"]
        assert full.loc[label, ["n_pos", "n_neg", "n_missing"]].tolist() == [
            (y == 1).sum(), (y == 0).sum(), y.isna().sum()]
    with_pos = full.index[full["n_pos"] > 0]
    assert len(with_pos) >= 10
    for f in (0.05, 0.25):
        assert (counts[(counts["fraction"] == f) & counts["label"].isin(with_pos)]["n_pos"] > 0).all()


def test_cli_writes_both_files_and_names_the_file_on_errors(real_labels, tmp_path, capsys) -> None:
    labels_path = tmp_path / "labels.parquet"
    label_set = [c[2:] for c in real_labels.columns if c.startswith("y_")]
    write_labels(real_labels, label_set, labels_path)
    out, counts_csv = tmp_path / "fractions.parquet", tmp_path / "fractions.counts.csv"
    rc = cli_main(["fractions", "--labels", str(labels_path), "--fractions", "0.1,0.5", "--seed", "3",
                   "--out", str(out), "--counts", str(counts_csv)])
    assert rc == 0
    subsets, fractions = read_fraction_subsets(out)
    assert fractions == [0.1, 0.5, 1.0]
    pd.testing.assert_frame_equal(subsets, label_fraction_subsets(real_labels, [0.1, 0.5], seed=3))
    assert len(pd.read_csv(counts_csv)) == 3 * len(label_set)
    log = capsys.readouterr().err  # the CLI's own logging set-up writes to stderr
    assert [line.split(": ", 1)[1].split(":")[0] for line in log.splitlines() if ": fraction " in line] == [
        "fraction 0.1", "fraction 0.5", "fraction 1"]

    no_train = tmp_path / "no_train.parquet"
    write_labels(real_labels.assign(split="test"), label_set, no_train)
    rc = cli_main(["fractions", "--labels", str(no_train), "--fractions", "0.1", "--seed", "3",
                   "--out", str(tmp_path / "x.parquet"), "--counts", str(tmp_path / "x.csv")])
    assert rc == 2 and f"{no_train}: labels table has no train rows" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()
