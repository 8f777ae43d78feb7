"""External validation (train on A, test on B): shared labels of real label sets, `external-predict` on a tiny
trained run, and `cxrbench external` on synthetic predictions with known answers (an AUROC against sklearn,
the diagonal against `cxrbench evaluate`, a planted Δ, a planted generalisation gap, clear errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cxrbench.cli import main
from cxrbench.config import ConfigError
from cxrbench.evaluation.external import (
    external_files,
    external_predictions,
    figure_names,
    label_overlap,
    merged_children,
    parse_cell_key,
    parse_run_key,
    predict_external,
    read_external,
    shared_labels_of_pair,
    table_names,
    to_shared,
    write_external,
)
from cxrbench.evaluation.metrics import youden_threshold
from cxrbench.evaluation.outputs import stats_files
from cxrbench.evaluation.predictions import PredictionError, from_frame, read_predictions
from cxrbench.labels import label_presets, overlap_labels
from cxrbench.runkey import RunKey
from cxrbench.training.cli import predictions_frame, train, write_predictions
from cxrbench.training.settings import derive_seed, resolve_training
from PIL import Image
from process_state import _restore_process_state  # noqa: F401 - autouse fixture
from sklearn.metrics import roc_auc_score

# --- shared labels on the study's label sets -----------------------------------------------------------


def _study_sets() -> dict[str, list[str]]:
    return {name.removeprefix("study_"): p["labels"] for name, p in label_presets().items()
            if name.startswith("study_")}


def test_merged_findings_come_from_the_canonical_map() -> None:
    kids = merged_children()
    assert kids["atelectasis"] == ("atelectasis_right", "atelectasis_left")  # the `parent` column
    assert kids["pneumonia"] == ("pneumonic_infiltrates_right", "pneumonic_infiltrates_left")
    assert kids["nodule_or_mass"] == ("nodule", "mass")  # ChestX-ray14 and PadChest: Nodule|Mass = the union
    assert "nodule" not in kids and "cardiomegaly" not in kids


def test_label_overlap_of_the_study_label_sets() -> None:
    sets = _study_sets()
    table = label_overlap(sets)
    assert list(table.columns) == ["dataset_a", "dataset_b", "label", "rule", "score_from", "target_from"]
    assert not (table["dataset_a"] == table["dataset_b"]).any()

    def row(a: str, b: str, label: str) -> dict:
        r = table[(table["dataset_a"] == a) & (table["dataset_b"] == b) & (table["label"] == label)]
        assert len(r) == 1, (a, b, label)
        return r.iloc[0].to_dict()

    # ChestX-ray14 predicts nodule and mass, VinDr-CXR assesses Nodule/Mass: max of the two probabilities
    assert row("chestxray14", "vindr", "nodule_or_mass") | {} == {
        "dataset_a": "chestxray14", "dataset_b": "vindr", "label": "nodule_or_mass", "rule": "score_max",
        "score_from": "nodule|mass", "target_from": "nodule_or_mass"}
    assert row("vindr", "chestxray14", "nodule_or_mass")["rule"] == "target_merged"
    assert row("vindr", "chestxray14", "nodule_or_mass")["target_from"] == "nodule|mass"
    # UKA's left/right findings, as the study merged them for its MIMIC overlap
    assert row("uka", "mimic", "pleural_effusion")["score_from"] == "pleural_effusion_right|pleural_effusion_left"
    assert row("mimic", "uka", "atelectasis")["rule"] == "target_merged"
    uka_vindr = table[(table["dataset_a"] == "uka") & (table["dataset_b"] == "vindr")]
    assert list(uka_vindr["label"]) == ["cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding"]
    # CheXpert and MIMIC have the same ten labels, all compared as they are
    cm = table[(table["dataset_a"] == "chexpert") & (table["dataset_b"] == "mimic")]
    assert list(cm["label"]) == sets["chexpert"] and set(cm["rule"]) == {"same"}
    # the single-dataset runs' overlap (cxrbench.labels.overlap_labels, which merges laterality on its target
    # side) taken both ways is in every pair's shared set; it lacks only the unions it does not merge (nodule + mass)
    for a, la in sets.items():
        for b, lb in sets.items():
            if a == b:
                continue
            got = set(table[(table["dataset_a"] == a) & (table["dataset_b"] == b)]["label"])
            both_ways = set(overlap_labels(la, lb)) | set(overlap_labels(lb, la))
            assert both_ways <= got and got - both_ways <= {"nodule_or_mass"}, (a, b)


def test_children_compared_one_by_one_and_partial_merges_refused() -> None:
    right_left = ["pleural_effusion_right", "pleural_effusion_left"]
    same = shared_labels_of_pair(right_left, right_left)
    assert [(s.label, s.rule) for s in same] == [(c, "same") for c in right_left]
    # one child alone would call the other side's positives negative: not shared
    assert shared_labels_of_pair(["pleural_effusion_right"], ["pleural_effusion"]) == []
    assert shared_labels_of_pair(["nodule_or_mass"], ["nodule"]) == []


def test_to_shared_takes_the_max_score_and_merges_targets() -> None:
    labels = ["cardiomegaly", "nodule", "mass"]
    targets = np.array([[1, 0, 1], [0, 0, 0], [0, np.nan, 0], [1, np.nan, np.nan]], dtype=float)
    scores = np.array([[0.9, 0.2, 0.7], [0.1, 0.3, 0.1], [0.2, 0.6, 0.4], [0.5, 0.1, 0.2]])
    shared = shared_labels_of_pair(labels, ["nodule_or_mass", "cardiomegaly"])
    assert [(s.label, s.rule) for s in shared] == [("cardiomegaly", "same"), ("nodule_or_mass", "score_max")]
    t, s = to_shared(labels, targets, scores, shared, source="p.parquet")
    np.testing.assert_array_equal(s[:, 1], [0.7, 0.3, 0.6, 0.2])
    np.testing.assert_array_equal(s[:, 0], scores[:, 0])
    # positive if any child is, negative if every assessed child is, masked if none is assessed
    np.testing.assert_array_equal(t[:, 1], [1, 0, 0, np.nan])
    with pytest.raises(PredictionError, match=r"p\.parquet: no prediction for label\(s\) \['mass'\]"):
        to_shared(labels[:2], targets[:, :2], scores[:, :2], shared, source="p.parquet")


def test_keys_parse_from_their_paths() -> None:
    key = RunKey("dinov2", "vindr", 224, "linear_probe", 0.1, 2)
    assert parse_run_key(key.relpath().as_posix()) == key
    assert parse_cell_key(key.cell.relpath().as_posix()) == key.cell
    with pytest.raises(ConfigError, match="expected <init>/<dataset>/<size>px"):
        parse_run_key("dinov2/vindr/224/finetune/frac-1/seed-0")
    with pytest.raises(ConfigError, match="cell key"):
        parse_cell_key("vindr/224px/finetune/frac-2/seed-0")


# --- external-predict on a tiny trained run --------------------------------------------------------------

SIZE = 32
MODEL = "vit_tiny_patch16_224"
# one bright blob per child finding, at the same place in every dataset, so what A learns transfers to B
SPOTS = {"cardiomegaly": (16, 20), "atelectasis_right": (24, 8), "atelectasis_left": (24, 24),
         "pleural_effusion_right": (6, 8), "pleural_effusion_left": (6, 24), "nodule": (14, 6), "mass": (14, 26),
         "pneumothorax": (29, 16)}
MERGED = {"atelectasis": ("atelectasis_right", "atelectasis_left"),
          "pleural_effusion": ("pleural_effusion_right", "pleural_effusion_left"), "nodule_or_mass": ("nodule", "mass")}
A_LABELS = ["cardiomegaly", "atelectasis", "pleural_effusion_right", "pleural_effusion_left", "nodule", "mass"]
# the same images under another name, labelled the other way round (children <-> merged findings)
B_LABELS = ["cardiomegaly", "atelectasis_right", "atelectasis_left", "pleural_effusion", "nodule_or_mass"]


def _column(truth: dict[str, np.ndarray], label: str) -> np.ndarray:
    parts = MERGED.get(label, (label,))
    return np.max([truth[p] for p in parts], axis=0).astype(np.float32)


def write_labels(path: Path, name: str, ids: list[str] | np.ndarray, split: np.ndarray | str, truth: dict,
                 labels: list[str]) -> Path:
    """A labels.parquet of the contract (docs/contracts.md §2) with columns derived from per-child truth."""
    df = pd.DataFrame({"dataset": name, "image_id": ids, "patient_id": [f"p-{i}" for i in ids], "study_id": None,
                       "split": split, "split_source": "derived", "view": "PA", "sex": "U", "age_years": np.nan,
                       "source_path": [f"raw/{i}.dcm" for i in ids],
                       **{f"y_{lab}": _column(truth, lab) for lab in labels}})
    table = pa.Table.from_pandas(df, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"cxrbench.labels": json.dumps(labels).encode()}), path)
    return path


def make_dataset(root: Path, name: str, labels: list[str], *, n: int, seed: int) -> dict:
    """labels.parquet, PNGs and manifest of a synthetic dataset whose columns derive from per-child truth."""
    rng = np.random.default_rng(seed)
    truth = {f: (rng.random(n) < 0.35).astype(np.float32) for f in SPOTS}
    ids = [f"img-{i:04d}" for i in range(n)]  # the same ids (and pixels) in every dataset of one seed
    split = np.where(np.arange(n) % 10 < 6, "train", np.where(np.arange(n) % 10 < 8, "val", "test"))
    png_dir = root / name / "png"
    png_dir.mkdir(parents=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i, image_id in enumerate(ids):
        img = rng.normal(70, 20, (SIZE, SIZE))
        for f, (cy, cx) in SPOTS.items():
            if truth[f][i]:
                img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(png_dir / f"{image_id}.png")
    pd.DataFrame({"image_id": ids, "output_path": [f"{i}.png" for i in ids], "status": "ok"}).to_parquet(
        png_dir / "manifest.parquet", index=False)
    labels_path = write_labels(root / name / "labels.parquet", name, ids, split, truth, labels)
    return {"labels_path": labels_path, "manifest_path": png_dir / "manifest.parquet"}


def _settings(dataset: str) -> dict:
    tr = resolve_training({"preset": "paper", "epochs": 1, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.0,
                           "patience": 0, "selection_metric": "val_auroc", "hflip": 0.0, "rotation": 0,
                           "precision": "fp32", "deterministic": True})
    return {"role": "finetune", "arm": "random", "dataset": dataset,
            "init": {"name": "random", "model": MODEL, "source": "none"}, "img_size": SIZE, "label_scope": "all",
            "seed": derive_seed(1, "train", dataset), "training": tr, "hf_home": "unused-hf-home",
            "variant": f"paper-{SIZE}"}


KEY = RunKey("random", "alpha", SIZE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A one-epoch run on dataset alpha and the same images as dataset beta (B_LABELS)."""
    import os

    os.environ["CXRBENCH_PROGRESS"] = "off"
    root = tmp_path_factory.mktemp("external")
    alpha = make_dataset(root, "alpha", A_LABELS, n=100, seed=1)
    beta = make_dataset(root, "beta", B_LABELS, n=100, seed=1)
    threads = torch.get_num_threads()
    try:
        train(_settings("alpha"), out_dir=root / "run", device="cpu", threads=1, **alpha)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "run": root / "run", "alpha": alpha, "beta": beta}


def test_external_predict_maps_the_run_to_the_shared_labels(trained: dict, tmp_path: Path) -> None:
    beta = trained["beta"]
    out = tmp_path / "on-beta"
    assert main(["external-predict", "--run-dir", str(trained["run"]), "--key", KEY.relpath().as_posix(),
                 "--labels", str(beta["labels_path"]), "--manifest", str(beta["manifest_path"]),
                 "--out-dir", str(out), "--device", "cpu", "--threads", "1"]) == 0
    pred = pd.read_parquet(external_files(out).predictions)
    assert list(pred.columns) == ["split", "image_id", "patient_id", "label", "target", "score"]
    ext = from_frame(pred)
    assert ext.val is None and ext.labels == ("cardiomegaly", "atelectasis", "pleural_effusion", "nodule_or_mass")
    meta = json.loads(external_files(out).meta.read_text())
    assert meta["test_dataset"] == "beta" and meta["run_key"] == KEY.relpath().as_posix()
    assert [s["rule"] for s in meta["shared"]] == ["same", "target_merged", "score_max", "score_max"]

    # beta holds alpha's images: the rebuilt model must reproduce the run's own test scores exactly
    own = read_predictions(trained["run"] / "predictions.parquet")
    assert np.array_equal(ext.test.image_ids, own.test.image_ids)
    col = {lab: j for j, lab in enumerate(own.labels)}
    s, o = ext.test.scores, own.test.scores
    np.testing.assert_allclose(s[:, 0], o[:, col["cardiomegaly"]], atol=1e-6)
    np.testing.assert_allclose(s[:, 1], o[:, col["atelectasis"]], atol=1e-6)
    np.testing.assert_allclose(s[:, 2], o[:, [col["pleural_effusion_right"], col["pleural_effusion_left"]]].max(1),
                               atol=1e-6)
    np.testing.assert_allclose(s[:, 3], o[:, [col["nodule"], col["mass"]]].max(1), atol=1e-6)
    # targets: beta's atelectasis is merged from its right/left columns, which here equals alpha's own column
    np.testing.assert_array_equal(ext.test.targets[:, 1], own.test.targets[:, col["atelectasis"]])
    # A's validation threshold of a derived label: Youden on A's val with the same mapping
    v_t = own.val.targets[:, [col["nodule"], col["mass"]]].max(1)
    v_s = own.val.scores[:, [col["nodule"], col["mass"]]].max(1)
    assert meta["validation_thresholds"]["nodule_or_mass"] == pytest.approx(youden_threshold(v_t, v_s))


def test_external_predict_records_a_pair_without_a_shared_label_and_refuses_bad_keys(
    trained: dict, tmp_path: Path
) -> None:
    """The workflow plans every (run, test set) pair; one without a shared label writes an empty result that the
    matrix leaves out."""
    run = trained["run"]
    nothing = make_dataset(tmp_path, "gamma", ["pneumothorax"], n=20, seed=3)
    frame, meta = predict_external(run, key=KEY, device="cpu", threads=1, **nothing)
    assert frame.empty and meta["shared"] == [] and meta["test_dataset"] == "gamma"
    write_external(tmp_path / "ext", frame, meta)
    assert read_external(tmp_path / "ext") is None
    with pytest.raises(ConfigError, match="the run's own dataset"):
        predict_external(run, key=KEY, device="cpu", threads=1, **trained["alpha"])
    with pytest.raises(ConfigError, match="the key says 'dinov2' on 'alpha'"):
        predict_external(run, key=RunKey("dinov2", "alpha", SIZE), device="cpu", threads=1, **trained["beta"])


def _write_stats(stats_dir: Path, unit_ids: np.ndarray, *, n_resamples: int, seed: int) -> None:
    """A stats folder as `cxrbench evaluate` writes it (indices, units, bootstrap.json) for a test set."""
    from cxrbench.evaluation.bootstrap import draw_indices

    f = stats_files(stats_dir)
    stats_dir.mkdir(parents=True, exist_ok=True)
    np.save(f.indices, draw_indices(len(unit_ids), n_resamples=n_resamples, seed=seed).astype(np.int32))
    pd.DataFrame({"position": np.arange(len(unit_ids)), "unit_id": unit_ids}).to_parquet(f.units, index=False)
    f.bootstrap_json.write_text(json.dumps({"resample_unit": "image", "n_resamples": n_resamples}))


def test_external_auroc_equals_sklearn_on_the_predictions(trained: dict, tmp_path: Path) -> None:
    """The issue's acceptance test: external.csv's `auroc` of a (run, test set, label) cell is sklearn's
    roc_auc_score on that cell's predictions (the full-test-set point estimate; `auroc_boot_mean` is the
    bootstrap mean beside it)."""
    beta = trained["beta"]
    out = tmp_path / "on-beta"
    frame, meta = predict_external(trained["run"], key=KEY, device="cpu", threads=1, **beta)
    write_external(out, frame, meta)
    own = read_predictions(trained["run"] / "predictions.parquet")
    stats = []
    for ds in ("alpha", "beta"):
        cell = RunKey("random", ds, SIZE).cell.relpath()
        _write_stats(tmp_path / "stats" / cell, own.test.image_ids.astype(str), n_resamples=50, seed=5)
        stats += ["--stats", f"{cell}={tmp_path / 'stats' / cell}"]
    settings = {"evaluation": {"threshold_mode": "validation", "alpha": 0.05}, "inits": ["random"]}
    assert main(["external", "--settings", json.dumps(settings),
                 "--labels", f"alpha={trained['alpha']['labels_path']}", "--labels", f"beta={beta['labels_path']}",
                 "--in-domain", f"{KEY.relpath()}={trained['run'] / 'predictions.parquet'}", "--external", str(out),
                 *stats,
                 "--tables-dir", str(tmp_path / "tables"), "--figures-dir", str(tmp_path / "figures")]) == 0
    table = pd.read_csv(tmp_path / "tables" / "external.csv")
    cell = table[(table["train_dataset"] == "alpha") & (table["test_dataset"] == "beta")
                 & (table["label"] == "nodule_or_mass")]
    assert len(cell) == 1 and cell.iloc[0]["rule"] == "score_max"
    assert cell.iloc[0][["size", "regime", "label_fraction", "seed"]].tolist() == [SIZE, "finetune", 1.0, 0]
    p = frame[frame["label"] == "nodule_or_mass"]
    assert cell.iloc[0]["auroc"] == pytest.approx(roc_auc_score(p["target"], p["score"]), abs=1e-9)
    lo, mean, hi = cell.iloc[0][["auroc_ci_low", "auroc_boot_mean", "auroc_ci_high"]]
    assert lo <= mean <= hi
    for name in table_names():
        assert (tmp_path / "tables" / f"{name}.csv").is_file()
    for name in figure_names(["random"], []):
        assert (tmp_path / "figures" / f"{name}.png").is_file() and (tmp_path / "figures" / f"{name}.pdf").is_file()


# --- cxrbench external on synthetic predictions -----------------------------------------------------------

DATASETS = {"alpha": A_LABELS, "beta": B_LABELS, "gamma": ["cardiomegaly", "nodule_or_mass"]}
N_TEST, N_VAL, N_BOOT = 160, 120, 200


def _model_scores(rng: np.random.Generator, truth: dict[str, np.ndarray], labels: list[str], skill: float) -> np.ndarray:
    """A model's probabilities for ``labels``: logit = skill * (2y - 1) + N(0, 1) per output."""
    y = np.stack([_column(truth, lab) for lab in labels], axis=1)
    return 1 / (1 + np.exp(-(skill * (2 * y - 1) + rng.normal(size=y.shape))))


def _truth(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {f: (rng.random(n) < 0.3).astype(np.float32) for f in SPOTS}


def write_scenario(root: Path, skills: dict[str, tuple[float, float]], *, copies: dict[str, str],
                   seed: int = 0, size: int = 224) -> list[str]:
    """Predictions of every init (skill in-domain, skill on other datasets) trained on every dataset, on its own
    test set and (through the shared-label mapping) on the others; stats via the real `cxrbench evaluate`.
    ``copies`` adds inits whose files repeat another's predictions exactly. Returns `cxrbench external`'s
    arguments (without the output folders)."""
    rng = np.random.default_rng(seed)
    test_truth = {ds: _truth(rng, N_TEST) for ds in DATASETS}
    ids = {ds: np.array([f"{ds}-{i:04d}" for i in range(N_TEST)], dtype=object) for ds in DATASETS}
    args = []
    for ds, labels in DATASETS.items():
        path = write_labels(root / "labels" / f"{ds}.parquet", ds, ids[ds], "test", test_truth[ds], labels)
        args += ["--labels", f"{ds}={path}"]
    evaluation = {"n_bootstrap": N_BOOT, "resample_unit": "image", "threshold_mode": "validation", "alpha": 0.05}
    settings = {"evaluation": evaluation, "seed": 3, "inits": [*skills, *copies]}
    for a, a_labels in DATASETS.items():
        own_paths = {}
        for init, (skill_in, skill_out) in skills.items():
            names = [init, *(c for c, of in copies.items() if of == init)]
            val_truth = _truth(rng, N_VAL)
            frames = [predictions_frame(split, i, i, a_labels,
                                        np.stack([_column(t, lab) for lab in a_labels], axis=1),
                                        _model_scores(rng, t, a_labels, skill_in))
                      for split, t, i in (("val", val_truth, np.array([f"v{k}" for k in range(N_VAL)], dtype=object)),
                                          ("test", test_truth[a], ids[a]))]
            external = {b: _model_scores(rng, test_truth[b], a_labels, skill_out) for b in DATASETS if b != a}
            for name in names:
                key = RunKey(name, a, size)
                own_path = root / "runs" / key.relpath() / "predictions.parquet"
                own_path.parent.mkdir(parents=True, exist_ok=True)
                write_predictions(frames, own_path)
                own_paths[name] = own_path
                args += ["--in-domain", f"{key.relpath()}={own_path}"]
                for b, scores_a in external.items():
                    shared = shared_labels_of_pair(a_labels, DATASETS[b])
                    if not shared:
                        continue
                    targets = np.stack([np.max([_column(test_truth[b], c) for c in s.target_from], axis=0)
                                        for s in shared], axis=1)
                    frame, meta = external_predictions(
                        key=key, test_dataset=b, a_labels=a_labels, shared=shared, image_ids=ids[b],
                        patient_ids=ids[b], targets=targets, scores_a=scores_a, own=read_predictions(own_path),
                        source=str(own_path))
                    out = root / "external" / key.relpath() / f"on-{b}"
                    write_external(out, frame, meta)
                    args += ["--external", str(out)]
        stats = root / "stats" / RunKey("x", a, size).cell.relpath()
        assert main(["evaluate", "--settings", json.dumps(settings), "--dataset", a, "--out-dir", str(stats),
                     *[x for init, p in own_paths.items() for x in ("--predictions", f"{init}={p}")]]) == 0
        args += ["--stats", f"{RunKey('x', a, size).cell.relpath()}={stats}"]
    return ["external", "--settings", json.dumps(settings), *args]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three initialisations: `good` transfers well, `poor` loses most of its skill off its own dataset,
    `twin` predicts exactly as `good` (a null contrast)."""
    root = tmp_path_factory.mktemp("scenario")
    args = write_scenario(root, {"good": (2.5, 2.0), "poor": (2.5, 0.4)}, copies={"twin": "good"})
    tables, figures = root / "tables", root / "figures"
    assert main([*args, "--tables-dir", str(tables), "--figures-dir", str(figures)]) == 0
    return {"root": root, "tables": tables, "figures": figures, "args": args}


def test_diagonal_equals_the_in_domain_statistics(scenario: dict) -> None:
    ext = pd.read_csv(scenario["tables"] / "external.csv")
    diag = ext[ext["in_domain"]]
    assert set(zip(diag["train_dataset"], diag["test_dataset"], strict=True)) == {(d, d) for d in DATASETS}
    for ds in DATASETS:
        stats = pd.read_parquet(stats_files(scenario["root"] / "stats" / ds / "224px/finetune/frac-1/seed-0")
                                .metrics_parquet)
        got = diag[diag["train_dataset"] == ds].merge(stats, on=["init", "label"], suffixes=("", "_in_domain"))
        assert len(got) == len(stats)  # every label and the macro row of every init
        for col in ("auroc", "auroc_boot_mean", "auroc_ci_low", "auroc_ci_high", "threshold", "sensitivity",
                    "specificity_boot_mean"):
            np.testing.assert_allclose(got[col], got[f"{col}_in_domain"], rtol=1e-9, err_msg=col)


def test_planted_delta_is_significant_and_identical_runs_are_not(scenario: dict) -> None:
    tests = pd.read_csv(scenario["tables"] / "external_tests.csv")
    macro = tests[tests["level"] == "macro"]
    off = macro[macro["train_dataset"] != macro["test_dataset"]]
    planted = off[(off["init_a"] == "good") & (off["init_b"] == "poor")]
    assert len(planted) == 6  # every ordered pair of the three datasets shares a label
    assert (planted["delta_mean"] > 0.15).all() and planted["significant"].all()
    assert (planted["p_a_gt_b"] == 0).all()  # good beat poor in every resample: p "< 1/B"
    twin = macro[(macro["init_a"] == "good") & (macro["init_b"] == "twin")]
    assert (twin["delta_mean"] == 0).all() and (twin["p_two_sided"] == 1).all() and not twin["significant"].any()
    # one BH family per contrast and level over the 3 x 3 matrix
    assert (tests.groupby(["init_a", "init_b", "level"])["fdr_family"].size() > 0).all()
    assert set(tests["fdr_family"]) == {"per_pair"}


def test_generalisation_gap_recovers_the_planted_loss(scenario: dict) -> None:
    gap = pd.read_csv(scenario["tables"] / "external_gap.csv")
    mean = gap[gap["test_dataset"] == "mean"].set_index(["init", "train_dataset"])
    assert len(mean) == 9 and (mean["n_test_datasets"] == 2).all()
    assert (mean.loc["poor", "gap_mean"] > 0.2).all() and (mean.loc["poor", "gap_ci_low"] > 0).all()
    assert (mean.loc["poor", "gap_mean"] > mean.loc["good", "gap_mean"] + 0.1).all()
    np.testing.assert_allclose(mean.loc["good", "gap_mean"], mean.loc["twin", "gap_mean"])
    per = gap[(gap["test_dataset"] != "mean") & (gap["init"] == "poor")]
    # the mean row averages its test datasets resample by resample: its mean is the mean of theirs
    for a, rows in per.groupby("train_dataset"):
        assert mean.loc[("poor", a), "gap_mean"] == pytest.approx(rows["gap_mean"].mean())


def test_overlap_table_and_figures_are_written(scenario: dict) -> None:
    overlap = pd.read_csv(scenario["tables"] / "label_overlap.csv")
    assert set(overlap[overlap["dataset_a"] == "alpha"]["dataset_b"]) == {"beta", "gamma"}
    assert figure_names(["good", "poor", "twin"], [("good", "poor"), ("twin", "good")])[3:5] == [
        "external_delta_good_vs_poor", "external_delta_twin_vs_good"]
    # no `contrasts` in the settings: every initialisation against the reference (the first)
    for name in figure_names(["good", "poor", "twin"], [("poor", "good"), ("twin", "good")]):
        for ext in ("pdf", "png"):
            assert (scenario["figures"] / f"{name}.{ext}").stat().st_size > 0, name


def test_missing_shared_label_in_external_predictions_is_named(scenario: dict, tmp_path: Path) -> None:
    src = Path(next(a for a in scenario["args"] if "/external/" in a and "on-beta" in a))
    dst = tmp_path / "broken"
    frame = pd.read_parquet(external_files(src).predictions)
    meta = json.loads(external_files(src).meta.read_text())
    write_external(dst, frame[frame["label"] != "nodule_or_mass"], meta)
    with pytest.raises(PredictionError, match=r"predictions\.parquet: shared label\(s\) \['nodule_or_mass'\] of "
                                              r"external\.json have no predictions"):
        read_external(dst)
    args = [a if a != str(src) else str(dst) for a in scenario["args"]]
    assert main([*args, "--tables-dir", str(tmp_path / "t"), "--figures-dir", str(tmp_path / "f")]) == 2


def test_external_run_without_its_diagonal_or_stats_is_refused(scenario: dict, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    args = scenario["args"]
    drop = next(k for k, a in enumerate(args) if a == "--in-domain" and args[k + 1].startswith("poor/alpha/"))
    out = ["--tables-dir", str(tmp_path / "t"), "--figures-dir", str(tmp_path / "f")]
    assert main([*args[:drop], *args[drop + 2:], *out]) == 2
    assert "no in-domain predictions (--in-domain) for run(s) ['poor/alpha/224px/finetune/frac-1/seed-0']" in (
        capsys.readouterr().err)
    drop = next(k for k, a in enumerate(args) if a == "--stats" and args[k + 1].startswith("gamma/"))
    assert main([*args[:drop], *args[drop + 2:], *out]) == 2
    assert "no bootstrap statistics (--stats) for cell gamma/224px/finetune/frac-1/seed-0" in capsys.readouterr().err
