"""`cxrbench evaluate` / `aggregate` end to end on fabricated and real-label predictions, determinism,
clear errors, the output documentation, and the Snakemake rules with `--report`."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxrbench.cli import main
from cxrbench.config import REPO_ROOT
from cxrbench.evaluation.metrics import UndefinedMetricWarning
from cxrbench.evaluation.outputs import DESCRIPTIONS, figure_names, stats_files, table_names
from test_eval_fixtures import predict, truth

EVAL = {"n_bootstrap": 100, "resample_unit": "image", "threshold_mode": "validation", "reference_init": None,
        "alpha": 0.05, "fdr_family": "per_pair", "min_positives": 10}
INITS = ["random", "mimic_sl", "dino"]


def _settings(**evaluation) -> str:
    return json.dumps({"evaluation": {**EVAL, **evaluation}, "seed": 5, "inits": INITS, "pipeline_inits": ["mimic_sl"],
                       "pretrain_datasets": {"mimic_sl": "chexpert"}})


def _write_runs(root: Path) -> dict[str, dict[str, Path]]:
    """Two datasets; the pipeline init skips `chexpert` and predicts a label subset on `vindr`."""
    runs: dict[str, dict[str, Path]] = {}
    for k, ds in enumerate(("vindr", "chexpert")):
        gt = truth(seed=k, n_patients=50)
        for j, (init, signal) in enumerate((("random", 0.8), ("mimic_sl", 2.5), ("dino", 3.0))):
            if init == "mimic_sl" and ds == "chexpert":
                continue
            p = predict(gt, signal=signal, seed=10 * k + j)
            if init == "mimic_sl":
                p = p[p["label"] != "pneumothorax"]
            path = root / "runs" / init / ds / "predictions.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            p.to_parquet(path, index=False)
            runs.setdefault(ds, {})[init] = path
    return runs


def _evaluate(runs: dict[str, Path], ds: str, out: Path, settings: str) -> int:
    args = ["evaluate", "--settings", settings, "--dataset", ds, "--out-dir", str(out)]
    for init, path in runs.items():
        args += ["--predictions", f"{init}={path}"]
    return main(args)


def _aggregate(stats: dict[str, Path], root: Path, settings: str) -> int:
    args = ["aggregate", "--settings", settings, "--tables-dir", str(root / "tables"), "--figures-dir",
            str(root / "figures"), "--readme", str(root / "README.md")]
    for ds, d in stats.items():
        args += ["--stats", f"{ds}={d}"]
    return main(args)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    runs = _write_runs(root)
    for ds, r in runs.items():
        assert _evaluate(r, ds, root / "stats" / ds, _settings()) == 0
    assert _aggregate({ds: root / "stats" / ds for ds in runs}, root, _settings()) == 0
    return root


def test_every_output_is_written(pipeline_run: Path) -> None:
    datasets = ["vindr", "chexpert"]
    for ds in datasets:
        for f in stats_files(pipeline_run / "stats" / ds).all():
            assert f.is_file(), f
    for name in table_names(datasets, overlap=True):
        for ext in ("csv", "md", "tex"):
            assert (pipeline_run / "tables" / f"{name}.{ext}").stat().st_size > 0
    for name in figure_names(datasets):
        for ext in ("pdf", "png"):
            assert (pipeline_run / "figures" / f"{name}.{ext}").stat().st_size > 0
    readme = (pipeline_run / "README.md").read_text()
    assert "figures/forest.png" in readme and "stats/vindr/bootstrap_indices.npy" in readme


def test_stats_content(pipeline_run: Path) -> None:
    f = stats_files(pipeline_run / "stats" / "vindr")
    boot = json.loads(f.bootstrap_json.read_text())
    idx = np.load(f.indices)
    assert idx.shape == (100, boot["n_units"]) and boot["inits"] == INITS
    units = pd.read_parquet(f.units)
    assert len(units) == boot["n_units"]
    metrics = pd.read_parquet(f.metrics_parquet)
    macro = metrics[metrics["label"] == "macro"].set_index("init")
    assert macro.loc["mimic_sl", "n_labels"] == 3 and macro.loc["dino", "n_labels"] == 4
    assert macro.loc["dino", "auroc_boot_mean"] > macro.loc["random", "auroc_boot_mean"]
    res = pd.read_parquet(f.resamples)
    assert set(res["init"]) == set(INITS) and res.groupby(["init", "label"]).size().eq(100).all()
    tests = pd.read_parquet(f.tests)
    pair = tests[(tests["init_a"] == "random") & (tests["init_b"] == "mimic_sl")]
    assert set(pair["label"]) == {"atelectasis", "cardiomegaly", "pleural_effusion", "macro"}
    main_t = pd.read_csv(pipeline_run / "tables" / "auroc_main.csv")
    dino = main_t[(main_t["init"] == "dino") & (main_t["dataset"] == "vindr")].iloc[0]
    assert dino["p_two_sided_bh"] < 0.05 and dino["reference"] == "random"
    overlap = pd.read_csv(pipeline_run / "tables" / "auroc_overlap.csv")
    assert set(overlap["init"]) == {"random", "dino"} and overlap["n_labels"].eq(3).all()
    per_label = (pipeline_run / "tables" / "auroc_per_label_vindr.md").read_text()
    assert "± " in per_label and "Pleural effusion" in per_label and "pleural_effusion" not in per_label
    tex = (pipeline_run / "tables" / "auroc_main.tex").read_text()
    assert r"$\pm$" in tex and r"AUROC (\%)" in tex and r"AUC\_init $>$ AUC\_random" in tex  # caption escaped


def test_outputs_are_deterministic(pipeline_run: Path, tmp_path: Path) -> None:
    runs = {ds: {init: pipeline_run / "runs" / init / ds / "predictions.parquet"
                 for init in INITS if (pipeline_run / "runs" / init / ds).is_dir()} for ds in ("vindr", "chexpert")}
    for ds, r in runs.items():
        assert _evaluate(r, ds, tmp_path / "stats" / ds, _settings()) == 0
        for a, b in zip(stats_files(pipeline_run / "stats" / ds).all(), stats_files(tmp_path / "stats" / ds).all()):
            assert a.read_bytes() == b.read_bytes(), a.name
    assert _aggregate({ds: tmp_path / "stats" / ds for ds in runs}, tmp_path, _settings()) == 0
    for sub in ("tables", "figures"):
        for a in sorted((pipeline_run / sub).iterdir()):
            assert a.read_bytes() == (tmp_path / sub / a.name).read_bytes(), a.name


def test_mismatched_test_sets_fail_clearly(tmp_path: Path, capsys) -> None:
    gt = truth(n_patients=20)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    predict(gt, signal=1.0, seed=0).to_parquet(a)
    other = predict(gt, signal=1.0, seed=1)
    other = other[other["image_id"] != other.loc[other["split"] == "test", "image_id"].iloc[0]]
    other.to_parquet(b)
    assert _evaluate({"random": a, "dino": b}, "vindr", tmp_path / "out", _settings()) == 2
    err = capsys.readouterr().err
    assert "b.parquet" in err and "test images differ" in err
    assert _evaluate({"nope": a}, "vindr", tmp_path / "out", _settings()) == 2
    assert "not among the configured inits" in capsys.readouterr().err


def _nih_truth(n_images: int = 700) -> pd.DataFrame:
    """Ground truth from the real ChestX-ray14 label file (torchxrayvision's copy), patients included."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        pytest.skip("torchxrayvision (test data source) not installed")
    path = Path(spec.origin).parent / "data" / "Data_Entry_2017_v2020.csv.gz"
    with gzip.open(path, "rt") as fh:
        df = pd.read_csv(fh, nrows=n_images)
    labels = ["Atelectasis", "Effusion", "Infiltration", "Hernia"]
    rng = np.random.default_rng(0)
    patients = df["Patient ID"].astype(str).unique()
    val = set(patients[rng.random(patients.size) < 0.3])
    rows = []
    for lab in labels:
        rows.append(pd.DataFrame({
            "split": np.where(df["Patient ID"].astype(str).isin(val), "val", "test"),
            "image_id": df["Image Index"], "patient_id": df["Patient ID"].astype(str), "label": lab,
            "target": df["Finding Labels"].str.split("|").apply(lambda f, lab=lab: float(lab in f)),
        }))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("threshold_mode", ["validation", "study"])
def test_real_nih_labels_patient_bootstrap(tmp_path: Path, threshold_mode: str) -> None:
    gt = _nih_truth()
    test = gt[gt["split"] == "test"]
    assert test.groupby("patient_id")["image_id"].nunique().max() > 1  # real multi-image patients
    hernia_pos = test.loc[test["label"] == "Hernia", "target"].sum()
    runs = {}
    for init, signal, seed in (("random", 0.5, 1), ("dino", 2.5, 2)):
        path = tmp_path / f"{init}.parquet"
        predict(gt, signal=signal, seed=seed).to_parquet(path)
        runs[init] = path
    settings = _settings(resample_unit="patient", threshold_mode=threshold_mode)
    if hernia_pos == 0:  # too rare in the first rows: undefined, never 0.5
        with pytest.warns(UndefinedMetricWarning, match="Hernia"):
            assert _evaluate(runs, "chestxray14", tmp_path / "stats", settings) == 0
    else:
        assert _evaluate(runs, "chestxray14", tmp_path / "stats", settings) == 0
    f = stats_files(tmp_path / "stats")
    boot = json.loads(f.bootstrap_json.read_text())
    assert boot["resample_unit"] == "patient" and boot["n_units"] == test["patient_id"].nunique()
    m = pd.read_parquet(f.metrics_parquet)
    hernia = m[(m["label"] == "Hernia")]
    assert hernia["auroc"].isna().all() == (hernia_pos == 0)
    assert (m.loc[m["label"] == "macro", "threshold_mode"] == threshold_mode).all()


def test_docs_describe_every_output() -> None:
    text = (REPO_ROOT / "docs" / "outputs.md").read_text(encoding="utf-8")
    for pattern in DESCRIPTIONS:
        assert f"`{pattern}`" in text, pattern
    for heading in ("Index and labels", "Preprocessing", "Runs", "Archive"):
        assert f"## {heading}" in text


SNAKEFILE = """
from snakemake.utils import min_version
configfile: "config.yaml"
report: "{repo}/workflow/report/workflow.rst"
include: "{repo}/workflow/rules/common.smk"
from cxrbench.runkey import grid_runs
RUNS = grid_runs(config)  # what train.smk provides
def run_predictions(key):
    return str(LAYOUT.runs_root() / key.init / key.dataset / "predictions.parquet")  # where _write_runs put them
include: "{repo}/workflow/rules/evaluate.smk"
rule all:
    input: evaluate_targets()
"""


@pytest.mark.slow
def test_snakemake_rules_and_report(tmp_path: Path) -> None:
    if shutil.which("snakemake", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("snakemake not installed next to this interpreter")
    cfg = {
        "results": "results", "seed": 3, "demo": {"enabled": True},
        "datasets": {"vindr": {"adapter": "vindr", "root": "x"}, "chexpert": {"adapter": "chexpert", "root": "y"}},
        "initialisations": {"random": {"model": "vit_tiny_patch16_224", "source": "none"},
                            "mimic_sl": {"model": "vit_tiny_patch16_224", "source": "pipeline",
                                         "pretrain_dataset": "chexpert", "pretrain_init": "random"},
                            "dino": {"model": "vit_tiny_patch16_224", "source": "none"}},
        "evaluation": {"n_bootstrap": 50},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(cfg))
    for root in ("x", "y"):  # roots outside demo.root must exist (the runs below stand in for their data)
        (tmp_path / root).mkdir()
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(repo=REPO_ROOT))
    _write_runs(tmp_path / "results")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--quiet", "all"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results" / "figures" / "forest.pdf").is_file()
    assert (tmp_path / "results" / "tables" / "auroc_overlap.csv").is_file()
    assert (tmp_path / "results" / "README.md").is_file()
    rep = subprocess.run(cmd[:1] + ["--report", "report.zip"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert (tmp_path / "report.zip").stat().st_size > 10_000


def test_main_table_reads_like_the_study(pipeline_run: Path) -> None:
    """Datasets as rows, the one-sided study p beside the two-sided BH p, and every n/a with its reason."""
    md = (pipeline_run / "tables" / "auroc_main.md").read_text()
    header = md.splitlines()[0]
    assert "p dino > random (one-sided)" in header and "p dino vs random (two-sided, BH)" in header
    chexpert = next(line for line in md.splitlines() if line.startswith("| chexpert"))
    assert "n/a (a)" in chexpert
    assert "(a) no run: chexpert is the pre-training set of mimic_sl" in md
    vindr = next(line for line in md.splitlines() if line.startswith("| vindr"))
    assert "[3 of 4] (c)" in vindr  # the label-subset run, counted against the dataset's evaluable labels
    numeric = pd.read_csv(pipeline_run / "tables" / "auroc_main.csv")
    dino = numeric[(numeric["init"] == "dino") & (numeric["dataset"] == "vindr")].iloc[0]
    assert f"{dino['p_init_gt_ref']:.3f}" in vindr or dino["p_init_gt_ref"] == 0
    readme = (pipeline_run / "README.md").read_text()
    assert readme.index("Headline") < readme.index("## Files") and "(a) no run: chexpert" in readme


def _with_few_positives(gt: pd.DataFrame, label: str, n_pos: int) -> pd.DataFrame:
    """Keep only ``n_pos`` positive test images of ``label`` (the rest become negative)."""
    gt = gt.copy()
    rows = gt.index[(gt["split"] == "test") & (gt["label"] == label) & (gt["target"] == 1.0)]
    gt.loc[rows[n_pos:], "target"] = 0.0
    return gt


def test_few_positives_and_undefined_labels_are_marked(tmp_path: Path) -> None:
    gt = _with_few_positives(_with_few_positives(truth(seed=3, n_patients=60), "cardiomegaly", 2),
                             "pneumothorax", 0)
    runs = {}
    for init, signal, seed in (("random", 0.5, 1), ("dino", 4.0, 2)):
        runs[init] = tmp_path / f"{init}.parquet"
        predict(gt, signal=signal, seed=seed).to_parquet(runs[init])
    settings = _settings(min_positives=5)
    with pytest.warns(UndefinedMetricWarning):
        assert _evaluate(runs, "vindr", tmp_path / "stats" / "vindr", settings) == 0
    assert _aggregate({"vindr": tmp_path / "stats" / "vindr"}, tmp_path, settings) == 0
    md = (tmp_path / "tables" / "auroc_per_label_vindr.md").read_text()
    cardio = next(line for line in md.splitlines() if line.startswith("| Cardiomegaly"))
    assert cardio.count("(d)") == 3 and "(d) fewer than 5 test positives" in md  # both AUROCs and the p
    ptx = next(line for line in md.splitlines() if line.startswith("| Pneumothorax"))
    assert "– (b)" in ptx and "no positive test image" in md
    csv = pd.read_csv(tmp_path / "tables" / "auroc_per_label_vindr.csv").set_index("label")
    assert bool(csv.loc["cardiomegaly", "few_positives"]) and not bool(csv.loc["atelectasis", "few_positives"])
    main_md = (tmp_path / "tables" / "auroc_main.md").read_text()
    assert "| 3 of 4 (b)" in main_md and "(b) k of n: only k labels" in main_md
    assert "vindr: Pneumothorax" in main_md  # which label, by its display name


def test_bh_family_ignores_an_extra_arm(tmp_path: Path) -> None:
    """Adding a `random` arm must not change the adjusted p of dinov2 vs imagenet (family per pair)."""
    adjusted = {}
    for arms in (("imagenet", "dinov2"), ("imagenet", "dinov2", "random")):
        root = tmp_path / "-".join(arms)
        stats = {}
        for k, ds in enumerate(("vindr", "chexpert", "padchest")):
            gt = truth(seed=k, n_patients=50)
            runs = {}
            for init, signal in (("imagenet", 1.5), ("dinov2", 1.9), ("random", 0.3)):
                if init in arms:
                    runs[init] = root / init / f"{ds}.parquet"
                    runs[init].parent.mkdir(parents=True, exist_ok=True)
                    predict(gt, signal=signal, seed=100 * k + len(init)).to_parquet(runs[init])
            settings = json.dumps({"evaluation": {**EVAL, "reference_init": "imagenet"}, "seed": 5,
                                   "inits": list(arms), "pipeline_inits": []})
            assert _evaluate(runs, ds, root / "stats" / ds, settings) == 0
            stats[ds] = root / "stats" / ds
        assert _aggregate(stats, root, settings) == 0
        t = pd.read_csv(root / "tables" / "pairwise_tests.csv")
        adjusted[arms] = t[(t["init_a"] == "imagenet") & (t["init_b"] == "dinov2")].set_index(
            ["dataset", "label"])["p_two_sided_bh"].sort_index()
    two, three = adjusted.values()
    assert len(two) == 3 * 5 and (two < 1).any()
    pd.testing.assert_series_equal(two, three)


def test_run_summary_names_outputs_headline_and_quarantine(pipeline_run: Path) -> None:
    from cxrbench.evaluation.summary import run_summary
    from cxrbench.paths import Layout

    layout = Layout(pipeline_run)
    rejected = layout.rejected("vindr", "paper-64")
    rejected.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_id": ["x", "y"], "reason": ["truncated", "not_an_image"]}).to_parquet(rejected)
    text = run_summary(layout, datasets=["vindr", "chexpert"], inits=INITS, variant="paper-64",
                       pretrain_datasets={"mimic_sl": "chexpert"}, n_resamples=100)
    assert str(layout.tables_dir()) in text and str(layout.figures_dir()) in text and "report" in text
    vindr = next(line for line in text.splitlines() if line.strip().startswith("vindr"))
    assert len(vindr.split()) >= 4 and "n/a" not in vindr and "(p < 0.01)" in vindr
    assert "skipped: no run: chexpert is the pre-training set of mimic_sl" in text
    assert "vindr: 2 image(s) quarantined" in text and "truncated (1)" in text
    empty = run_summary(Layout(pipeline_run / "nothing"), datasets=["vindr"], inits=INITS, variant="paper-64",
                        pretrain_datasets={}, n_resamples=100)
    assert "No evaluation tables yet" in empty and "no image quarantined" in empty
