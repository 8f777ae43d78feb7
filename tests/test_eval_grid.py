"""`cxrbench grid`: the grid tables' rows, seed pooling, planted and null ΔAUROC, paired-index checks, figures,
and agreement with `cxrbench evaluate`'s own statistics on real stats folders."""

from __future__ import annotations

import itertools
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxrbench.cli import main
from cxrbench.evaluation.cli_grid import read_cells
from cxrbench.evaluation.comparisons import adjust_bh
from cxrbench.evaluation.grid import DELTA_COLUMNS, GRID_COLUMNS, POOLED, grid_deltas
from cxrbench.evaluation.grid_figures import GRID_FIGURES
from cxrbench.evaluation.outputs import stats_files
from cxrbench.runkey import CellKey, format_fraction
from test_eval_fixtures import predict, truth

LABELS = ("atelectasis", "cardiomegaly", "pleural_effusion")
B = 200
INITS = ["random", "dino"]
EVAL = {"n_bootstrap": B, "resample_unit": "image", "threshold_mode": "validation", "reference_init": "random",
        "alpha": 0.05, "fdr_family": "per_pair", "min_positives": 10}
# dino beats random by 3 AUROC points on vindr and equals it on chexpert (a null comparison).
EFFECT = {"vindr": 0.03, "chexpert": 0.0}
AXES = {"dataset": ["vindr", "chexpert"], "size": [32, 64], "regime": ["finetune", "linear_probe"],
        "fraction": [0.1, 1.0], "seed": [1, 2]}


def _settings(**extra) -> str:
    return json.dumps({"evaluation": EVAL, "seed": 7, "inits": INITS, "pipeline_inits": [], **extra})


def write_cell(d: Path, key: CellKey, *, index_seed: int = 0, n_units: int = 40) -> None:
    """A stats folder in `cxrbench evaluate`'s format with planted per-resample AUROCs: test-set noise per
    resample and label, shared by the inits (paired), plus each run's own noise and a small seed shift."""
    d.mkdir(parents=True, exist_ok=True)
    files = stats_files(d)
    indices = np.random.default_rng(index_seed).integers(0, n_units, size=(B, n_units))
    np.save(files.indices, indices.astype(np.int32))
    files.bootstrap_json.write_text(json.dumps({"dataset": key.dataset, "n_resamples": B,
                                                "units_sha256": f"units-{index_seed}"}), encoding="utf-8")
    rng = np.random.default_rng(zlib.crc32(key.relpath().as_posix().encode()))
    shared = rng.normal(0.0, 0.02, (B, len(LABELS)))
    resamples, metrics = [], []
    for init in INITS:
        effect = EFFECT[key.dataset] if init == "dino" else 0.0
        auc = 0.75 + 0.02 * (key.size == 64) + effect + rng.normal(0, 0.001) + shared + rng.normal(0, 0.02, shared.shape)
        series = {**{lab: auc[:, j] for j, lab in enumerate(LABELS)}, "macro": auc.mean(axis=1)}
        resamples.append(pd.DataFrame({"dataset": key.dataset, "init": init,
                                       "resample": np.tile(np.arange(B), len(series)),
                                       "label": np.repeat(list(series), B),
                                       "auroc": np.concatenate(list(series.values()))}))
        metrics.append(pd.DataFrame({
            "dataset": key.dataset, "init": init, "label": list(series), "n_pos": [12, 30, 5, np.nan],
            "n_neg": [28, 10, 35, np.nan], "n_masked": [0, 0, 0, np.nan], "threshold": np.nan,
            "auroc": [float(v.mean()) for v in series.values()], "n_labels": [1, 1, 1, 3],
            "auroc_boot_mean": [float(v.mean()) for v in series.values()]}))
    pd.concat(resamples, ignore_index=True).to_parquet(files.resamples, index=False)
    pd.concat(metrics, ignore_index=True).to_parquet(files.metrics_parquet, index=False)


def _cells() -> list[CellKey]:
    return [CellKey(*v) for v in itertools.product(*AXES.values())]


def _grid(root: Path, cells: dict[CellKey, Path], settings: str | None = None) -> int:
    args = ["grid", "--settings", settings or _settings(), "--tables-dir", str(root / "tables"),
            "--figures-dir", str(root / "figures")]
    for key, d in cells.items():
        args += ["--cell", f"{key.relpath()}={d}"]
    return main(args)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grid")
    cells = {key: root / "stats" / key.relpath() for key in _cells()}
    for key, d in cells.items():
        write_cell(d, key, index_seed={"vindr": 1, "chexpert": 2}[key.dataset])
    assert _grid(root, cells) == 0
    return root


def test_grid_csv_has_exactly_the_expected_rows(grid_run: Path) -> None:
    text = pd.read_csv(grid_run / "tables" / "grid.csv", dtype=str, keep_default_na=False)
    assert tuple(text.columns) == GRID_COLUMNS
    got = [tuple(r) for r in text[list(GRID_COLUMNS[:7])].itertuples(index=False)]
    # fractions as in the cell paths (format_fraction): 0.1, 1
    expected = {(init, ds, str(size), regime, format_fraction(fraction), str(seed), label)
                for init, ds, size, regime, fraction, seed, label in itertools.product(
                    INITS, *(AXES[a] for a in ("dataset", "size", "regime", "fraction")),
                    [*AXES["seed"], POOLED], [*LABELS, "macro"])}
    assert len(got) == len(set(got)) == len(expected) == 2 * 2 * 2 * 2 * 2 * 3 * 4
    assert set(got) == expected
    grid = pd.read_csv(grid_run / "tables" / "grid.csv")
    assert (grid["ci_low"] <= grid["auroc"]).all() and (grid["auroc"] <= grid["ci_high"]).all()


def _macro(d: Path, init: str) -> np.ndarray:
    r = pd.read_parquet(stats_files(d).resamples)
    return r[(r["init"] == init) & (r["label"] == "macro")].sort_values("resample")["auroc"].to_numpy()


def test_pooled_delta_is_the_mean_of_per_seed_deltas(grid_run: Path) -> None:
    keys = [CellKey("vindr", 64, "linear_probe", 0.1, s) for s in AXES["seed"]]
    dirs = {k: grid_run / "stats" / k.relpath() for k in keys}
    per_seed = [_macro(d, "dino") - _macro(d, "random") for d in dirs.values()]
    by_hand = np.mean(per_seed, axis=0)  # per resample, over seeds
    lo, hi = np.percentile(by_hand, [2.5, 97.5])
    expected = {"delta": by_hand.mean(), "ci_low": lo, "ci_high": hi, "p_a_gt_b": 1 - np.mean(by_hand > 0),
                "n_seeds": 2, "n_labels": 3}
    # exact, from the functions the CLI calls ...
    deltas = grid_deltas(read_cells(dirs, inits=INITS), contrasts=[("dino", "random")], evaluation=EVAL)
    row = deltas[(deltas["seed"] == POOLED) & (deltas["label"] == "macro")]
    assert len(row) == 1
    assert {k: row.iloc[0][k] for k in expected} == pytest.approx(expected, abs=1e-12)
    seed1 = deltas[(deltas["seed"] == 1) & (deltas["label"] == "macro")].iloc[0]
    assert seed1["delta"] == pytest.approx(per_seed[0].mean(), abs=1e-12)  # each seed's own paired test
    # ... and in grid_deltas.csv of the whole grid (10 significant digits)
    table = pd.read_csv(grid_run / "tables" / "grid_deltas.csv")
    assert set(DELTA_COLUMNS) <= set(table.columns)
    where = {"dataset": "vindr", "size": 64, "regime": "linear_probe", "label_fraction": 0.1}
    row = table[(table["seed"] == POOLED) & (table["label"] == "macro") & (table["init_a"] == "dino")
                & (table[list(where)] == pd.Series(where)).all(axis=1)]
    assert len(row) == 1
    assert {k: row.iloc[0][k] for k in expected} == pytest.approx(expected, rel=1e-9)


def test_planted_delta_is_significant_and_null_is_not(grid_run: Path) -> None:
    deltas = pd.read_csv(grid_run / "tables" / "grid_deltas.csv")
    pooled = deltas[(deltas["seed"] == POOLED) & (deltas["label"] == "macro")]
    assert len(pooled) == 16  # one per (dataset, size, regime, fraction)
    planted, null = pooled[pooled["dataset"] == "vindr"], pooled[pooled["dataset"] == "chexpert"]
    assert (planted["delta"] > 0.02).all() and (planted["ci_low"] > 0).all()
    assert (planted["p_two_sided"] < 0.05).all() and (planted["p_adjusted"] < 0.05).all()
    assert planted["significant"].all()
    assert (null["p_two_sided"] >= 0.05).all() and not null["significant"].any()
    assert ((null["ci_low"] < 0) & (null["ci_high"] > 0)).all()
    # BH families: one per (size, regime, fraction, seed-or-pooled) and level; here two datasets per family
    assert (deltas["p_adjusted"] >= deltas["p_two_sided"] - 1e-12).all()
    # few_positives follows evaluation.min_positives (10): pleural_effusion has 5 test positives
    assert deltas.loc[deltas["label"] == "pleural_effusion", "few_positives"].all()
    assert not deltas.loc[deltas["label"] != "pleural_effusion", "few_positives"].any()


def test_every_figure_is_written(grid_run: Path) -> None:
    for name in GRID_FIGURES:
        for ext in ("pdf", "png"):
            path = grid_run / "figures" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 1000, path


def test_single_valued_axes_still_write_every_figure(tmp_path: Path) -> None:
    key = CellKey("vindr", 32, "finetune", 1.0, 0)
    write_cell(tmp_path / "cell", key)
    assert _grid(tmp_path, {key: tmp_path / "cell"}) == 0
    for name in GRID_FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").is_file()
    grid = pd.read_csv(tmp_path / "tables" / "grid.csv")
    assert len(grid) == 2 * 2 * 4  # inits x (seed 0, pooled) x (3 labels + macro)
    one = grid[grid["label"] == "macro"].set_index(["init", "seed"])["auroc"]
    assert one[("dino", "0")] == one[("dino", POOLED)]  # a pool of one seed is that seed


def test_mismatched_bootstrap_indices_fail_clearly(tmp_path: Path, capsys) -> None:
    a, b = CellKey("vindr", 32, "finetune", 1.0, 1), CellKey("vindr", 32, "finetune", 1.0, 2)
    write_cell(tmp_path / "a", a, index_seed=1)
    write_cell(tmp_path / "b", b, index_seed=9)
    assert _grid(tmp_path, {a: tmp_path / "a", b: tmp_path / "b"}) == 2
    err = capsys.readouterr().err
    assert "bootstrap indices differ" in err and str(a.relpath()) in err and str(b.relpath()) in err
    assert "first differing resample: 0" in err
    assert not (tmp_path / "tables" / "grid.csv").exists()


def test_bad_cell_arguments_fail_clearly(tmp_path: Path, capsys) -> None:
    key = CellKey("vindr", 32, "finetune", 1.0, 0)
    write_cell(tmp_path / "cell", key)
    args = ["grid", "--settings", _settings(), "--tables-dir", str(tmp_path / "t"), "--figures-dir", str(tmp_path)]
    assert main([*args, "--cell", f"vindr/32px/finetune/frac-1.0/seed-0={tmp_path / 'cell'}"]) == 2
    assert "frac-1/seed-0" in capsys.readouterr().err
    assert main([*args, "--cell", f"chexpert/32px/finetune/frac-1/seed-0={tmp_path / 'cell'}"]) == 2
    assert "expected 'chexpert'" in capsys.readouterr().err
    assert main([*args, "--cell", f"{key.relpath()}={tmp_path / 'cell'}",
                 "--settings", _settings(contrasts=[["dino", "vit"]])]) == 2
    assert "contrast ['dino', 'vit']" in capsys.readouterr().err


def test_cell_key_relpath_round_trip() -> None:
    for key in _cells():
        assert CellKey.from_relpath(str(key.relpath())) == key
    for bad in ("vindr/32/finetune/frac-1/seed-0", "vindr/32px/ft/frac-1/seed-0", "vindr/32px/finetune/frac-2/seed-0",
                "vindr/32px/finetune/frac-1/seed-x", "32px/finetune/frac-1/seed-0"):
        with pytest.raises(ValueError, match="cell"):
            CellKey.from_relpath(bad)


def test_per_seed_rows_equal_evaluate_statistics(tmp_path: Path) -> None:
    """Real `cxrbench evaluate` folders: per-seed grid rows are the stats folder's own numbers."""
    gt = truth(seed=3, n_patients=50)
    evaluation = {**EVAL, "n_bootstrap": 50}
    settings = _settings(evaluation=evaluation)
    cells = {}
    for seed in (1, 2):
        key = CellKey("vindr", 32, "finetune", 1.0, seed)
        args = ["evaluate", "--settings", settings, "--dataset", "vindr", "--out-dir", str(tmp_path / str(seed))]
        for j, (init, signal) in enumerate((("random", 0.8), ("dino", 2.5))):
            path = tmp_path / f"{init}-{seed}.parquet"
            predict(gt, signal=signal, seed=10 * seed + j).to_parquet(path, index=False)
            args += ["--predictions", f"{init}={path}"]
        assert main(args) == 0
        cells[key] = tmp_path / str(seed)
    assert _grid(tmp_path, cells, settings) == 0
    grid = pd.read_csv(tmp_path / "tables" / "grid.csv")
    deltas = pd.read_csv(tmp_path / "tables" / "grid_deltas.csv")
    for key, d in cells.items():
        m = pd.read_parquet(stats_files(d).metrics_parquet).set_index(["init", "label"])
        g = grid[grid["seed"] == str(key.seed)].set_index(["init", "label"])
        ok = m["auroc_boot_mean"].notna()
        assert np.allclose(g.loc[m.index[ok], "auroc"], m.loc[ok, "auroc_boot_mean"], atol=1e-12)
        assert np.allclose(g.loc[m.index[ok], "ci_low"], m.loc[ok, "auroc_ci_low"], atol=1e-12)
        t = pd.read_parquet(stats_files(d).tests).set_index("label")
        dl = deltas[deltas["seed"] == str(key.seed)].set_index("label")
        assert (dl["init_a"] == "dino").all()  # contrast dino vs the reference; tests.parquet has random vs dino
        assert np.allclose(dl.loc[t.index, "delta"], -t["delta_mean"], atol=1e-12)
        assert np.allclose(dl.loc[t.index, "p_two_sided"], t["p_two_sided"], atol=1e-12)
        # one seed, one pair: its BH family is the one `aggregate` adjusts (per_pair), so the same adjusted p
        bh = adjust_bh(t.reset_index(), family="per_pair", alpha=0.05).set_index("label")
        assert np.allclose(dl.loc[t.index, "p_adjusted"], bh["p_two_sided_bh"], atol=1e-9)
