"""Paired tests between initialisations, Benjamini-Hochberg, point metrics and the predictions contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cxrbench.evaluation.bootstrap import bootstrap_runs, draw_indices
from cxrbench.evaluation.comparisons import adjust_bh, compare_runs, oriented, paired_test
from cxrbench.evaluation.metrics import UndefinedMetricWarning, point_metrics, youden_threshold
from cxrbench.evaluation.predictions import PredictionError, from_frame, read_predictions
from statsmodels.stats.multitest import multipletests
from test_eval_fixtures import LABELS, predict, truth


def _scores(y: np.ndarray, signal: float, rng: np.random.Generator) -> np.ndarray:
    return 1 / (1 + np.exp(-(signal * (y - 0.5) + rng.normal(size=y.shape))))


def test_clearly_better_model_gets_p_below_0001() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((400, 1)) < 0.3).astype(float)
    good, weak = _scores(y, 3.0, rng), _scores(y, 0.8, rng)
    idx = draw_indices(400, n_resamples=1000, seed=1)
    a = bootstrap_runs(y, good, idx).auroc[:, 0, 0]
    b = bootstrap_runs(y, weak, idx).auroc[:, 0, 0]
    t = paired_test(a, b)
    assert t["p_a_gt_b"] < 0.001 and t["p_two_sided"] < 0.001
    assert t["p_b_gt_a"] == 1.0 and t["delta_ci_low"] > 0


def test_equally_good_models_give_p_near_half() -> None:
    """Same signal, independent noise: the one-sided p is uniform under the null, mean ~0.5."""
    rng = np.random.default_rng(1)
    n_labels = 40
    y = (rng.random((300, n_labels)) < 0.3).astype(float)
    idx = draw_indices(300, n_resamples=400, seed=2)
    a = bootstrap_runs(y, _scores(y, 1.5, rng), idx).auroc[:, 0, :]
    b = bootstrap_runs(y, _scores(y, 1.5, rng), idx).auroc[:, 0, :]
    p = np.array([paired_test(a[:, j], b[:, j])["p_a_gt_b"] for j in range(n_labels)])
    assert 0.4 < p.mean() < 0.6
    both = [paired_test(a[:, j], b[:, j]) for j in range(n_labels)]
    assert all(abs(t["p_a_gt_b"] + t["p_b_gt_a"] - 1) < 0.01 for t in both)  # ties are rare


def test_identical_predictions_are_never_significant() -> None:
    a = np.linspace(0.6, 0.8, 100)
    t = paired_test(a, a.copy())
    assert t["p_a_gt_b"] == t["p_b_gt_a"] == t["p_two_sided"] == 1.0 and t["delta_mean"] == 0


def test_bh_matches_statsmodels_per_family() -> None:
    rng = np.random.default_rng(3)
    tests = pd.DataFrame({
        "dataset": np.repeat(["a", "b"], 30), "init_a": "x", "init_b": np.tile(np.repeat(["y", "z"], 15), 2),
        "label": [f"l{i}" for i in range(60)], "level": "label",
        "p_a_gt_b": rng.random(60) ** 3, "p_b_gt_a": rng.random(60), "p_two_sided": rng.random(60) ** 2,
    })
    tests.loc[5, "p_two_sided"] = np.nan
    for family, keys in (("all", []), ("per_dataset", ["dataset"]), ("per_pair", ["init_a", "init_b"])):
        out = adjust_bh(tests, family=family, alpha=0.05)
        groups = out.groupby(keys) if keys else [(None, out)]
        for _, g in groups:
            ok = g["p_two_sided"].notna()
            rej, p_adj, *_ = multipletests(g.loc[ok, "p_two_sided"], alpha=0.05, method="fdr_bh")
            np.testing.assert_allclose(g.loc[ok, "p_two_sided_bh"], p_adj, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(g.loc[ok, "significant"], rej)
        assert np.isnan(out.loc[5, "p_two_sided_bh"])
    with pytest.raises(ValueError, match="fdr_family"):
        adjust_bh(tests, family="nope", alpha=0.05)


def test_compare_runs_uses_shared_labels_and_orients() -> None:
    rng = np.random.default_rng(4)
    full = rng.random((50, 3)) * 0.2 + 0.7
    subset = full[:, [0, 2]] + 0.05  # a run trained on two of the three labels
    tests = compare_runs({"ref": (("a", "b", "c"), full), "pipe": (("a", "c"), subset)},
                         {"ref": {"a", "b", "c"}, "pipe": {"a", "c"}})
    assert list(tests["label"]) == ["a", "c", "macro"]
    macro = tests[tests["label"] == "macro"].iloc[0]
    assert macro["n_labels"] == 2 and macro["delta_mean"] == pytest.approx(-0.05)
    flipped = oriented(tests, "pipe", "ref")
    assert flipped["init_a"].eq("pipe").all()
    assert flipped.loc[flipped["label"] == "macro", "delta_mean"].iloc[0] == pytest.approx(0.05)
    assert (flipped["delta_ci_low"] <= flipped["delta_ci_high"]).all()
    assert flipped["p_a_gt_b"].eq(tests["p_b_gt_a"]).all()


def test_point_metrics_single_class_label_is_nan_with_warning() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    s = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.5], [0.3, 0.1]])
    with pytest.warns(UndefinedMetricWarning, match="'b'.*0 positive"):
        m = point_metrics(("a", "b"), y, s, thresholds=np.array([0.5, 0.5]))
    assert m.loc[0, "auroc"] == 1.0 and np.isnan(m.loc[1, "auroc"]) and np.isnan(m.loc[1, "f1"])
    macro = m[m["label"] == "macro"].iloc[0]
    assert macro["n_labels"] == 1 and macro["auroc"] == 1.0
    assert m.loc[0, "sensitivity"] == 1.0 and m.loc[0, "specificity"] == 1.0


def test_youden_threshold_matches_roc_argmax_and_masks_nan() -> None:
    y = np.array([0, 0, 1, 1, np.nan, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.99, 0.38, 0.7])
    assert youden_threshold(y, s) == 0.7
    assert np.isnan(youden_threshold(np.array([0.0, 0.0]), np.array([0.1, 0.2])))


def test_predictions_contract_errors_name_the_file(tmp_path) -> None:
    good = predict(truth(n_patients=10), signal=2.0, seed=0)
    bad = good.copy()
    bad.loc[3, "target"] = 0.5
    with pytest.raises(PredictionError, match=r"(?s)x\.parquet.*target.*row 3, value 0.5"):
        from_frame(bad, source="x.parquet")
    dup = pd.concat([good, good.iloc[:1]])
    with pytest.raises(PredictionError, match="break the contract"):
        from_frame(dup, source="x.parquet")
    test_img = good.loc[good["split"] == "test", "image_id"].iloc[0]
    missing = good[~((good["label"] == LABELS[1]) & (good["image_id"] == test_img))]
    with pytest.raises(PredictionError, match=f"{test_img}.*{LABELS[1]}"):
        from_frame(missing, source="x.parquet")
    two_patients = good.copy()
    two_patients.loc[(two_patients["image_id"] == test_img) & (two_patients["label"] == LABELS[0]), "patient_id"] = "zz"
    with pytest.raises(PredictionError, match="more than one patient_id"):
        from_frame(two_patients, source="x.parquet")
    with pytest.raises(PredictionError, match="missing column"):
        from_frame(good.drop(columns="score"), source="x.parquet")
    with pytest.raises(PredictionError, match="does not exist"):
        read_predictions(tmp_path / "none.parquet")


def test_dataset_with_a_single_run_joins_the_bh_family() -> None:
    """A dataset with one run (e.g. the pipeline init's own pre-training dataset) yields no pair; its empty
    test table must keep numeric dtypes so the family-wide BH step still works."""
    rng = np.random.default_rng(0)
    single = compare_runs({"only": (("a",), rng.random((50, 1)))}, {"only": {"a"}})
    assert single.empty and single["p_two_sided"].dtype == np.float64
    pair = compare_runs({"x": (("a",), rng.random((50, 1))), "y": (("a",), rng.random((50, 1)))},
                        {"x": {"a"}, "y": {"a"}})
    both = pd.concat([single.assign(dataset="d1"), pair.assign(dataset="d2")], ignore_index=True)
    adjusted = adjust_bh(both, family="all", alpha=0.05)
    assert adjusted["p_two_sided_bh"].notna().all() and len(adjusted) == len(pair)
