"""`cxrbench train` end to end on tiny synthetic datasets of the true file formats (labels.parquet, PNG
manifest, packed cache): outputs, PNG/cache equivalence, resume after a kill, the MIMIC chain, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cxrbench.config import ConfigError
from cxrbench.evaluation.predictions import from_frame
from cxrbench.training.cli import train
from cxrbench.training.data import DataError
from cxrbench.training.settings import derive_seed, resolve_training
from PIL import Image
from process_state import _restore_process_state  # noqa: F401 - autouse fixture

SIZE = 32
MODEL = "vit_tiny_patch16_224"
# Each finding is a bright blob at its own place, identical in every dataset (as in the demo), so what one
# dataset teaches transfers to another.
SPOTS = {"cardiomegaly": (16, 20), "pleural_effusion": (6, 26), "pneumothorax": (26, 6), "nodule": (8, 8)}


def make_dataset(
    root: Path, name: str, labels: list[str], *, n: int, seed: int, cache: bool, rejected: int = 0
) -> dict:
    """Write labels.parquet, PNGs + manifest and (optionally) the split cache of one synthetic dataset."""
    rng = np.random.default_rng(seed)
    ids = [f"{name}-{i:04d}" for i in range(n)]
    patients = [f"{name}-p{i // 2:04d}" for i in range(n)]
    split = np.where(np.arange(n) % 10 < 6, "train", np.where(np.arange(n) % 10 < 8, "val", "test"))
    split = split[np.arange(n) // 2 * 2]  # both images of a patient in one split
    y = (rng.random((n, len(labels))) < 0.4).astype(np.float32)
    png_dir = root / name / "png" / f"paper-{SIZE}"
    (png_dir / "shard-0").mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = {}
    for i, image_id in enumerate(ids):
        img = rng.normal(70, 25, (SIZE, SIZE))
        for j, lab in enumerate(labels):
            if y[i, j]:
                cy, cx = SPOTS[lab]
                img += 110 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 10.0)
        arr = np.clip(img, 0, 255).astype(np.uint8)
        images[image_id] = arr
        rel = f"shard-0/{image_id}.png"
        Image.fromarray(arr, mode="L").save(png_dir / rel)
        bad = i >= n - rejected
        rows.append(
            {
                "image_id": image_id,
                "source_path": f"raw/{image_id}.dcm",
                "output_path": None if bad else rel,
                "status": "rejected" if bad else "ok",
                "reason": "unreadable" if bad else None,
            }
        )
    manifest = png_dir / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    df = pd.DataFrame(
        {
            "dataset": name,
            "image_id": ids,
            "patient_id": patients,
            "study_id": None,
            "split": split,
            "split_source": "derived",
            "view": "PA",
            "sex": "U",
            "age_years": np.nan,
            "source_path": [f"raw/{i}.dcm" for i in ids],
        }
    )
    for j, lab in enumerate(labels):
        df[f"y_{lab}"] = y[:, j]
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"cxrbench.labels": json.dumps(labels).encode()}
    )
    labels_path = root / name / "labels.parquet"
    pq.write_table(table, labels_path)
    cache_dir = root / name / "cache" / f"paper-{SIZE}"
    if cache:
        cache_dir.mkdir(parents=True, exist_ok=True)
        ok = {r["image_id"] for r in rows if r["status"] == "ok"}
        for s in ("train", "val", "test"):
            sid = [i for i, sp in zip(ids, split) if sp == s and i in ok][::-1]  # rows in a different order than labels
            np.save(cache_dir / f"{s}.npy", np.stack([images[i] for i in sid]))
            pd.DataFrame({"image_id": sid, "row": np.arange(len(sid))}).to_parquet(cache_dir / f"{s}.index.parquet")
    return {"labels_path": labels_path, "manifest_path": manifest, "cache_dir": cache_dir if cache else None}


def settings_for(
    init: dict,
    *,
    dataset: str = "ds",
    role: str = "finetune",
    label_scope: str = "all",
    epochs: int = 3,
    target: str | None = None,
    **training,
) -> dict:
    tr = resolve_training(
        {
            "preset": "paper",
            "epochs": epochs,
            "batch_size": 16,
            "lr": 1e-3,
            "weight_decay": 0.0,
            "patience": 10,
            "selection_metric": "val_auroc",
            "hflip": 0.5,
            "rotation": 7,
            "precision": "bf16",
            "deterministic": True,
            **training,
        }
    )
    out = {
        "role": role,
        "arm": init["name"],
        "dataset": dataset,
        "init": init,
        "img_size": SIZE,
        "label_scope": label_scope,
        "seed": derive_seed(1, "train", dataset),
        "training": tr,
        "hf_home": "unused-hf-home",
        "variant": f"paper-{SIZE}",
    }
    if role == "pretrain":
        out["target"] = target
    return out


RANDOM = {"name": "random", "model": MODEL, "source": "none"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("data")
    return {
        "ds": make_dataset(
            root, "ds", ["cardiomegaly", "pleural_effusion", "nodule"], n=80, seed=1, cache=True, rejected=3
        ),
        "mimic": make_dataset(
            root, "mimic", ["pneumothorax", "cardiomegaly", "pleural_effusion"], n=120, seed=2, cache=False
        ),
    }


@pytest.fixture(autouse=True)
def _no_terminal_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """These many short runs keep their progress lines in the (captured) log, off the developer's terminal."""
    monkeypatch.setenv("CXRBENCH_PROGRESS", "off")


def _quiet() -> dict:
    return {"device": "cpu", "threads": 1}


def test_outputs_follow_the_contract_and_png_equals_cache(data: dict, tmp_path: Path) -> None:
    ds = data["ds"]
    meta = train(settings_for(RANDOM), out_dir=tmp_path / "cache", **ds, **_quiet())
    png = {k: v for k, v in ds.items() if k != "cache_dir"}
    meta_png = train(settings_for(RANDOM), out_dir=tmp_path / "png", **png, **_quiet())
    assert meta["image_source"] == "cache" and meta_png["image_source"] == "png"
    for name in ("checkpoint.pt", "best.pt", "history.csv", "predictions.parquet", "run.json"):
        assert (tmp_path / "cache" / name).is_file(), name
    pred = pd.read_parquet(tmp_path / "cache" / "predictions.parquet")
    assert list(pred.columns) == ["split", "image_id", "patient_id", "label", "target", "score"]
    run = from_frame(pred)  # the evaluation stage's contract reader accepts it
    assert run.labels == ("cardiomegaly", "pleural_effusion", "nodule")
    # 3 rejected images (all in the last patients) are dropped and never predicted
    assert meta["images"]["train"] + meta["images"]["val"] + meta["images"]["test"] == 77
    assert not pred["image_id"].isin(["ds-0077", "ds-0078", "ds-0079"]).any()
    # the cache and the PNGs hold the same pixels, so the runs are identical
    pd.testing.assert_frame_equal(pred, pd.read_parquet(tmp_path / "png" / "predictions.parquet"))
    hist = pd.read_csv(tmp_path / "cache" / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_auroc_macro", "val_auroc_nodule", "train_img_per_s"} <= set(hist.columns)
    best = torch.load(tmp_path / "cache" / "best.pt", weights_only=True)
    assert best["epoch"] == meta["best_epoch"] == int(hist["val_auroc_macro"].idxmax()) + 1
    assert best["labels"] == list(run.labels) and best["model_name"] == MODEL
    rj = json.loads((tmp_path / "cache" / "run.json").read_text())
    assert rj["seed"] == settings_for(RANDOM)["seed"] and rj["device"]["type"] == "cpu"
    assert rj["weights"] == {"path": None, "sha256": None} and rj["versions"]["timm"]
    assert rj["selection_metric"] == "val_auroc" and rj["best_val_loss"] == pytest.approx(
        hist["val_loss"].iloc[meta["best_epoch"] - 1])
    # the selected epoch's validation AUROC is what the saved best predictions give
    from cxrbench.training.loop import per_label_auroc

    assert np.nanmean(per_label_auroc(run.val.targets, run.val.scores)) == pytest.approx(best["val_auroc"], abs=1e-5)


_KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from cxrbench.training.cli import train
    args = json.loads(sys.argv[1])
    def on_step(epoch, step):
        if epoch == 1 and step == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, as a scheduler's kill
    train(args["settings"], out_dir=Path(args["out"]), labels_path=Path(args["labels"]),
          manifest_path=Path(args["manifest"]), cache_dir=Path(args["cache"]), device="cpu", threads=1, on_step=on_step)
    """
)


def test_killed_mid_epoch_resumes_to_the_same_result(data: dict, tmp_path: Path) -> None:
    ds = data["ds"]
    s = settings_for(RANDOM, epochs=3)
    train(s, out_dir=tmp_path / "whole", **ds, **_quiet())
    arg = json.dumps(
        {
            "settings": s,
            "out": str(tmp_path / "killed"),
            "labels": str(ds["labels_path"]),
            "manifest": str(ds["manifest_path"]),
            "cache": str(ds["cache_dir"]),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, arg], capture_output=True, check=False, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and not state["finished"]  # killed inside epoch 2
    assert not (tmp_path / "killed" / "predictions.parquet").exists()
    meta = train(s, out_dir=tmp_path / "killed", **ds, **_quiet())
    assert meta["resumed_from_epoch"] == 1
    cols = ["epoch", "train_loss", "val_loss", "val_auroc_macro", "lr", "best"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "whole" / "history.csv")[cols], pd.read_csv(tmp_path / "killed" / "history.csv")[cols]
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "whole" / "predictions.parquet"),
        pd.read_parquet(tmp_path / "killed" / "predictions.parquet"),
    )


def test_changed_settings_do_not_resume_a_stale_checkpoint(data: dict, tmp_path: Path) -> None:
    ds = data["ds"]
    train(settings_for(RANDOM, epochs=1), out_dir=tmp_path, **ds, **_quiet())
    meta = train(settings_for(RANDOM, epochs=2, lr=5e-4), out_dir=tmp_path, **ds, **_quiet())
    assert meta["resumed_from_epoch"] == 0 and meta["epochs_run"] == 2


def test_pipeline_chain_backbone_study_and_shared_head_transfer(data: dict, tmp_path: Path) -> None:
    mimic, ds = data["mimic"], data["ds"]
    chain = {
        "name": "mimic_sl",
        "model": MODEL,
        "source": "pipeline",
        "pretrain_dataset": "mimic",
        "pretrain_init": "random",
    }
    # backbone: pre-train on all MIMIC labels, new head, full target label set
    pre = train(
        settings_for(RANDOM | {"name": "random"}, dataset="mimic", role="pretrain", epochs=2),
        out_dir=tmp_path / "pre-all",
        **mimic,
        **_quiet(),
    )
    assert pre["labels"] == ["pneumothorax", "cardiomegaly", "pleural_effusion"]
    fine = train(
        settings_for(chain | {"transfer": "backbone"}, epochs=1),
        out_dir=tmp_path / "bb",
        init_checkpoint=tmp_path / "pre-all" / "best.pt",
        **ds,
        **_quiet(),
    )
    assert fine["transfer"] == "backbone" and fine["labels"] == ["cardiomegaly", "pleural_effusion", "nodule"]
    assert fine["weights"]["sha256"] and fine["weights"]["path"].endswith("best.pt")
    # study: pre-train on the labels the target shares with MIMIC (target order), transfer the head too
    pre = train(
        settings_for(RANDOM, dataset="mimic", role="pretrain", label_scope="overlap", target="ds", epochs=1),
        out_dir=tmp_path / "pre-ds",
        target_labels_path=ds["labels_path"],
        **mimic,
        **_quiet(),
    )
    assert pre["labels"] == ["cardiomegaly", "pleural_effusion"]
    fine = train(
        settings_for(chain | {"transfer": "study"}, label_scope="overlap", epochs=1),
        out_dir=tmp_path / "st",
        init_checkpoint=tmp_path / "pre-ds" / "best.pt",
        **ds,
        **_quiet(),
    )
    assert fine["transfer"] == "study" and fine["labels"] == ["cardiomegaly", "pleural_effusion"]
    # shared_head: the all-labels pre-training serves every target; the head keeps the shared labels' rows
    fine = train(
        settings_for(chain | {"transfer": "shared_head"}, label_scope="overlap", epochs=1),
        out_dir=tmp_path / "sh",
        init_checkpoint=tmp_path / "pre-all" / "best.pt",
        **ds,
        **_quiet(),
    )
    assert fine["transfer"] == "shared_head" and fine["labels"] == ["cardiomegaly", "pleural_effusion"]
    # a head pre-trained for another label list cannot be transferred whole
    with pytest.raises(ConfigError, match="pre-trained head predicts"):
        train(
            settings_for(chain | {"transfer": "study"}, label_scope="overlap", epochs=1),
            out_dir=tmp_path / "bad",
            init_checkpoint=tmp_path / "pre-all" / "best.pt",
            **ds,
            **_quiet(),
        )


def test_image_missing_from_manifest_is_an_error(data: dict, tmp_path: Path) -> None:
    ds = data["ds"]
    manifest = pd.read_parquet(ds["manifest_path"])
    manifest = manifest[manifest["image_id"] != "ds-0004"]
    bad = tmp_path / "manifest.parquet"
    manifest.to_parquet(bad)
    with pytest.raises(DataError, match="not in the preprocessing manifest.*ds-0004"):
        train(
            settings_for(RANDOM, epochs=1),
            out_dir=tmp_path / "run",
            labels_path=ds["labels_path"],
            manifest_path=bad,
            **_quiet(),
        )


def test_cli_entry_point(data: dict, tmp_path: Path) -> None:
    ds = data["ds"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrbench.cli",
            "train",
            "--settings",
            json.dumps(settings_for(RANDOM, epochs=1)),
            "--labels",
            str(ds["labels_path"]),
            "--manifest",
            str(ds["manifest_path"]),
            "--cache-dir",
            str(ds["cache_dir"]),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--threads",
            "1",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1" in proc.stderr and "img/s" in proc.stderr
    assert (tmp_path / "predictions.parquet").is_file()


def test_shared_head_transfer_starts_from_the_shared_rows_of_the_pretrained_head() -> None:
    """The model a shared_head fine-tune starts from predicts exactly what the pre-trained model predicted for
    the shared labels (rows picked by name, in the target's order), with the same backbone."""
    from cxrbench.models.factory import build_model, select_head_rows
    from cxrbench.models.registry import InitSpec

    torch.manual_seed(0)
    base = InitSpec(name="random", model=MODEL, source="none")
    pre = build_model(base, num_classes=3, img_size=32, hf_home="unused")  # labels: a, b, c
    chain = InitSpec(name="chain", model=MODEL, source="pipeline", pretrain_dataset="mimic", pretrain_init="random",
                     transfer="shared_head")
    state = select_head_rows(pre.state_dict(), model=MODEL, rows=[2, 0])  # target shares c and a, in that order
    fine = build_model(chain, num_classes=2, img_size=32, hf_home="unused", pipeline_state=state, keep_head=True)
    x = torch.rand(4, 3, 32, 32)
    pre.eval(), fine.eval()
    with torch.no_grad():
        assert torch.equal(fine(x), pre(x)[:, [2, 0]])
    with pytest.raises(ValueError, match="has no rows"):
        select_head_rows(pre.state_dict(), model=MODEL, rows=[3])
