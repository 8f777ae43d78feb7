"""The vectorised paired bootstrap against scikit-learn and scipy on the same resamples."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.stats
from cxrbench.evaluation.bootstrap import bootstrap_runs, draw_indices, macro_over, summarise, unit_weights
from cxrbench.evaluation.metrics import UndefinedMetricWarning, confusion_at
from sklearn.metrics import roc_auc_score, roc_curve


def _data(n: int = 150, n_labels: int = 3, n_models: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets with masked entries and scores rounded to one decimal (many ties)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n_models, n, n_labels)) < 0.3).astype(float)
    y[:, rng.random(n) < 0.1, 0] = np.nan
    s = np.round(np.clip(0.35 * np.nan_to_num(y) + 0.65 * rng.random(y.shape), 0, 1), 1)
    return y, s


def _sklearn_loop(y: np.ndarray, s: np.ndarray, weights: np.ndarray):
    """Per resample/model/label: expand by multiplicity and ask sklearn (AUROC, Youden threshold)."""
    n_res, (n_models, _, n_labels) = weights.shape[0], y.shape
    auc = np.full((n_res, n_models, n_labels), np.nan)
    thr = np.full_like(auc, np.nan)
    for b in range(n_res):
        rows = np.repeat(np.arange(y.shape[1]), weights[b])
        for m in range(n_models):
            for j in range(n_labels):
                yy, ss = y[m, rows, j], s[m, rows, j]
                keep = ~np.isnan(yy)
                yy, ss = yy[keep], ss[keep]
                if 0 < yy.sum() < yy.size:
                    auc[b, m, j] = roc_auc_score(yy, ss)
                    fpr, tpr, t = roc_curve(yy, ss)
                    thr[b, m, j] = t[np.argmax(tpr - fpr)]
    return auc, thr


def test_image_bootstrap_matches_sklearn_loop_with_ties_and_masks() -> None:
    y, s = _data()
    idx = draw_indices(y.shape[1], n_resamples=70, seed=3)  # a full block of resamples and a partial one
    res = bootstrap_runs(y, s, idx)
    auc, thr = _sklearn_loop(y, s, unit_weights(idx, np.arange(y.shape[1]), y.shape[1]))
    np.testing.assert_array_equal(np.isnan(res.auroc), np.isnan(auc))
    assert np.nanmax(np.abs(res.auroc - auc)) <= 1e-12
    np.testing.assert_array_equal(res.threshold, thr)  # study mode: Youden refitted per resample


def test_study_mode_confusion_counts_match_the_refitted_threshold() -> None:
    y, s = _data(n_models=1, seed=5)
    idx = draw_indices(y.shape[1], n_resamples=20, seed=9)
    res = bootstrap_runs(y[0], s[0], idx)
    for b in range(20):
        rows = idx[b]
        for j in range(y.shape[2]):
            tp, fp, tn, fn = confusion_at(y[0, rows, j], s[0, rows, j], res.threshold[b, 0, j])
            assert (tp, fp, tn, fn) == tuple(int(v[b, 0, j]) for v in (res.tp, res.fp, res.tn, res.fn))


def test_validation_mode_uses_the_fixed_threshold() -> None:
    y, s = _data(n_models=1, seed=6)
    fixed = np.array([0.5, 0.3, np.inf])
    idx = draw_indices(y.shape[1], n_resamples=15, seed=2)
    res = bootstrap_runs(y[0], s[0], idx, thresholds=fixed)
    assert np.all(res.threshold[:, 0, :] == fixed)
    for b in range(15):
        for j in range(3):
            counts = confusion_at(y[0, idx[b], j], s[0, idx[b], j], fixed[j])
            assert counts == tuple(int(v[b, 0, j]) for v in (res.tp, res.fp, res.tn, res.fn))
    nan_thr = bootstrap_runs(y[0], s[0], idx, thresholds=np.array([np.nan, 0.5, 0.5]))
    assert np.isnan(nan_thr.tp[:, 0, 0]).all() and not np.isnan(nan_thr.auroc[:, 0, 0]).any()


def test_patient_clustered_bootstrap_matches_explicit_expansion() -> None:
    y, s = _data(n=90, seed=7)
    rng = np.random.default_rng(1)
    unit_of_image = np.sort(rng.integers(0, 40, 90))  # several images per patient
    unit_of_image = np.unique(unit_of_image, return_inverse=True)[1]
    n_units = unit_of_image.max() + 1
    idx = draw_indices(n_units, n_resamples=40, seed=11)
    res = bootstrap_runs(y, s, idx, unit_of_image=unit_of_image)
    auc, _ = _sklearn_loop(y, s, unit_weights(idx, unit_of_image, n_units))
    assert np.nanmax(np.abs(res.auroc - auc)) <= 1e-12


def _check_study_mode(y: np.ndarray, s: np.ndarray, idx: np.ndarray, unit_of_image: np.ndarray | None = None) -> None:
    """AUROC (1e-12), Youden threshold (exactly) and its confusion counts against sklearn per resample."""
    n_img = y.shape[1]
    units = np.arange(n_img) if unit_of_image is None else unit_of_image
    weights = unit_weights(idx, units, int(units.max()) + 1)
    res = bootstrap_runs(y, s, idx, unit_of_image=unit_of_image)
    auc, thr = _sklearn_loop(y, s, weights)
    np.testing.assert_array_equal(np.isnan(res.auroc), np.isnan(auc))
    if not np.isnan(auc).all():
        assert np.nanmax(np.abs(res.auroc - auc)) <= 1e-12
    np.testing.assert_array_equal(res.threshold, thr)
    for b in range(idx.shape[0]):
        rows = np.repeat(np.arange(n_img), weights[b])
        for m in range(y.shape[0]):
            for j in range(y.shape[2]):
                if np.isnan(thr[b, m, j]):
                    continue
                keep = ~np.isnan(y[m, rows, j])
                counts = confusion_at(y[m, rows, j][keep], s[m, rows, j][keep], thr[b, m, j])
                assert counts == tuple(int(v[b, m, j]) for v in (res.tp, res.fp, res.tn, res.fn))


@pytest.mark.parametrize("prevalence", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("masked", [0.0, 0.7])
def test_class_totals_from_either_class_or_all_kept_images(prevalence: float, masked: float) -> None:
    # rare positives, balanced classes and rare negatives, with few or most targets masked, take each
    # way of counting a resample's class totals; continuous scores make every image its own tie group
    rng = np.random.default_rng(int(10 * prevalence + 100 * masked))
    y = (rng.random((1, 120, 2)) < prevalence).astype(float)
    y[0, rng.random(120) < masked, 0] = np.nan
    s = rng.random(y.shape) + 0.3 * np.nan_to_num(y)
    _check_study_mode(y, s, draw_indices(120, n_resamples=70, seed=1))


def test_youden_threshold_over_runs_of_positive_groups() -> None:
    # well-separated classes put long runs of positive-only tie groups at the top (J is evaluated
    # only at their ends), with some resamples drawing none of a run's last groups
    rng = np.random.default_rng(21)
    y = (rng.random((2, 60, 2)) < 0.5).astype(float)
    s = np.round(0.6 * y + 0.5 * rng.random(y.shape), 2)
    s[:, :6] = 0.9  # a top group mixing both classes
    _check_study_mode(y, s, draw_indices(60, n_resamples=70, seed=8))


def test_all_tied_scores_and_a_label_without_images() -> None:
    y = (np.random.default_rng(2).random((1, 40, 2)) < 0.4).astype(float)
    y[0, :, 1] = np.nan  # nothing to rank for the second label
    s = np.full(y.shape, 0.7)
    idx = draw_indices(40, n_resamples=30, seed=4)
    res = bootstrap_runs(y, s, idx)
    # one ROC point besides (0, 0): J = 0 there too, so the first maximum is sklearn's +inf threshold
    assert np.all(res.auroc[:, 0, 0] == 0.5) and np.all(res.threshold[:, 0, 0] == np.inf)
    assert np.isnan(res.auroc[:, 0, 1]).all() and np.isnan(res.threshold[:, 0, 1]).all()
    _check_study_mode(y[:, :, :1], s[:, :, :1], idx)
    fixed = bootstrap_runs(y, s, idx, thresholds=np.array([[0.7, 0.5]]))
    assert np.isnan(fixed.auroc[:, 0, 1]).all() and np.all(fixed.tp[:, 0, 1] == 0)
    assert np.all(fixed.fn[:, 0, 0] == 0) and np.all(fixed.tn[:, 0, 0] == 0)


def test_patient_clustered_study_mode_thresholds_and_counts() -> None:
    y, s = _data(n=80, seed=12)
    unit_of_image = np.unique(np.sort(np.random.default_rng(3).integers(0, 25, 80)), return_inverse=True)[1]
    idx = draw_indices(int(unit_of_image.max()) + 1, n_resamples=70, seed=13)
    _check_study_mode(y, s, idx, unit_of_image)


def test_multiplicities_beyond_one_byte_are_exact() -> None:
    # three images drawn 600 times each resample: counts pass 255, the kernel reruns with wider counts
    y = np.array([[1.0], [0.0], [0.0]])
    s = np.array([[0.4], [0.6], [0.2]])
    idx = np.random.default_rng(5).integers(0, 3, size=(4, 600))
    _check_study_mode(y[None], s[None], idx)


def test_nan_scores_keep_their_image_order() -> None:
    # NaN never ties, so NaN-scored images are ranked last in image order (as a stable sort leaves them)
    y = np.array([[1.0], [0.0], [1.0], [0.0], [0.0]])
    s = np.array([[0.9], [np.nan], [np.nan], [0.1], [0.5]])
    res = bootstrap_runs(y, s, np.arange(5)[None])
    # ranked 0.9(+), 0.5(-), 0.1(-), NaN(-), NaN(+): each negative has one positive above it
    assert res.auroc[0, 0, 0] == 0.5


def test_single_class_resample_is_nan_not_half() -> None:
    y = np.array([[1.0], [0.0], [0.0], [0.0]])
    s = np.array([[0.9], [0.1], [0.2], [0.3]])
    idx = np.array([[1, 2, 3, 1], [0, 1, 2, 3]])  # first resample draws no positive
    res = bootstrap_runs(y, s, idx)
    assert np.isnan(res.auroc[0, 0, 0]) and np.isnan(res.threshold[0, 0, 0])
    assert res.auroc[1, 0, 0] == 1.0


def test_indices_are_seeded_and_equal_to_scipys_draw() -> None:
    a = draw_indices(50, n_resamples=30, seed=42)
    np.testing.assert_array_equal(a, draw_indices(50, n_resamples=30, seed=42))
    assert not np.array_equal(a, draw_indices(50, n_resamples=30, seed=43))
    seen = []
    scipy.stats.bootstrap((np.arange(50.0),), lambda i, axis: seen.append(i.copy()) or i.mean(axis=axis),
                          n_resamples=30, method="percentile", rng=np.random.default_rng(42))
    np.testing.assert_array_equal(seen[0].astype(int), a)


def test_percentile_ci_matches_scipy_bootstrap_on_the_same_resamples() -> None:
    y, s = _data(n=120, n_models=1, n_labels=1, seed=4)
    y, s = np.nan_to_num(y[0, :, 0], nan=0.0), s[0, :, 0]
    n_res, seed = 300, 123
    ours = summarise(bootstrap_runs(y[:, None], s[:, None], draw_indices(y.size, n_resamples=n_res, seed=seed))
                     .auroc[:, 0, 0])
    ref = scipy.stats.bootstrap((y, s), lambda a, b: roc_auc_score(a, b), paired=True, vectorized=False,
                                n_resamples=n_res, method="percentile", rng=np.random.default_rng(seed))
    assert ours["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours["sd"] == pytest.approx(ref.standard_error, abs=1e-12)


def test_thread_count_does_not_change_results() -> None:
    y, s = _data(n=200, seed=8)
    idx = draw_indices(200, n_resamples=150, seed=5)  # several blocks of resamples
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = bootstrap_runs(y, s, idx).auroc
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = bootstrap_runs(y, s, idx).auroc
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


def test_macro_and_summary_nan_policy() -> None:
    auc = np.array([[0.8, 0.6], [0.7, np.nan], [0.9, 0.5]])
    np.testing.assert_allclose(macro_over(auc, [0, 1]), [0.7, np.nan, 0.7])
    with pytest.warns(UndefinedMetricWarning, match="1 of 3 resamples"):
        s = summarise(macro_over(auc, [0, 1]))
    assert s["n_resamples"] == 2 and s["mean"] == pytest.approx(0.7)


def test_bad_inputs_are_rejected() -> None:
    y, s = _data(n_models=1)
    with pytest.raises(ValueError, match="outside"):
        bootstrap_runs(y[0], s[0], np.array([[0, 1, 10_000]]))
    with pytest.raises(ValueError, match="outside"):
        bootstrap_runs(y[0], s[0], np.array([[0, 1, 2], [3, -1, 4]]))
    with pytest.raises(ValueError, match="differ in shape"):
        bootstrap_runs(y[0], s[0][:, :2], draw_indices(150, n_resamples=2, seed=0))
