"""Training regimes (linear_probe on cached features, LoRA) and label fractions, end to end on a tiny ViT at 32 px:
each regime writes what a fine-tune run writes and resumes after a kill to the same result; the probe leaves the
backbone alone, LoRA changes only adapters and head; the features CLI; the train-subset filter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from cxrbench.config import ConfigError
from cxrbench.evaluation.predictions import from_frame
from cxrbench.models.factory import add_lora, build_model, lora_targets, merged_lora_state
from cxrbench.models.registry import InitSpec
from cxrbench.training.cli import train
from cxrbench.training.data import DataError, augment, read_fractions, select_label_fraction
from cxrbench.training.features import FEATURES_META, backbone_sha256, extract
from cxrbench.training.settings import resolve_training
from process_state import _restore_process_state  # noqa: F401 - autouse fixture
from test_training_pipeline import MODEL, RANDOM, SIZE, make_dataset, settings_for

LABELS = ["cardiomegaly", "pleural_effusion", "nodule"]
LORA = {"rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["qkv", "proj"]}
OUTPUTS = ("checkpoint.pt", "best.pt", "history.csv", "predictions.parquet", "run.json")


@pytest.fixture(autouse=True)
def _no_terminal_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRBENCH_PROGRESS", "off")


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_dataset(tmp_path_factory.mktemp("data"), "ds", LABELS, n=80, seed=1, cache=True, rejected=3)


def regime_settings(regime: str, *, epochs: int = 3, fraction: float = 1.0, replicate: int = 0) -> dict:
    """A run's settings as the grid builds them: the regime's training overrides merged by resolve_training."""
    s = settings_for(RANDOM, epochs=epochs)
    training = {**s["training"], "regimes": {"linear_probe": {"lr": 1e-2}, "lora": {"lr": 1e-3}}, "lora": LORA}
    return {
        **s,
        "training": resolve_training(training, regime=regime),
        "regime": regime,
        "label_fraction": fraction,
        "replicate": replicate,
    }


@pytest.fixture(scope="module")
def features(ds: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features")
    extract(regime_settings("linear_probe"), out_dir=out, device="cpu", threads=1, **ds)
    return out


def _quiet() -> dict:
    return {"device": "cpu", "threads": 1}


def _plain_model(state: dict) -> torch.nn.Module:
    """A fresh timm model (no peft) holding ``state``, strictly."""
    model = timm.create_model(MODEL, num_classes=len(LABELS), img_size=SIZE)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _test_images(ds: dict, image_ids: list[str]) -> torch.Tensor:
    index = pd.read_parquet(ds["cache_dir"] / "test.index.parquet").set_index("image_id")["row"]
    arr = np.load(ds["cache_dir"] / "test.npy")
    return torch.stack([augment(arr[index[i]], img_size=SIZE) for i in image_ids])


def _assert_like_finetune(out: Path, ds: dict, meta: dict) -> None:
    """The files, prediction columns and best.pt of a fine-tune run; best.pt alone reproduces the test scores."""
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    pred = pd.read_parquet(out / "predictions.parquet")
    assert list(pred.columns) == ["split", "image_id", "patient_id", "label", "target", "score"]
    run = from_frame(pred)
    assert run.labels == tuple(LABELS)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == meta["best_epoch"] and best["labels"] == LABELS and best["regime"] == meta["regime"]
    model = _plain_model(best["model"])
    with torch.no_grad():
        scores = torch.sigmoid(model(_test_images(ds, list(run.test.image_ids)))).numpy()
    np.testing.assert_allclose(scores, run.test.scores, atol=2e-5)


# --- settings -----------------------------------------------------------------------------------------


def test_regime_training_merges_overrides_and_leaves_finetune_as_before() -> None:
    base = settings_for(RANDOM)["training"]
    training = {**base, "regimes": {"linear_probe": {"lr": 0.1, "epochs": 50}, "lora": {"lr": 1e-3}}, "lora": LORA}
    assert resolve_training(training) == base  # a config without regimes gives the same settings
    probe = resolve_training(training, regime="linear_probe")
    assert probe == {**base, "lr": 0.1, "epochs": 50, "hflip": 0.0, "rotation": 0.0}
    assert resolve_training(training, regime="lora") == {**base, "lr": 1e-3, "lora": LORA}
    with pytest.raises(ConfigError, match="unknown training regime 'probe'"):
        resolve_training(training, regime="probe")


def test_schema_defaults_of_the_regime_keys() -> None:
    from cxrbench.config import _Validator, load_schema

    training: dict = {}
    _Validator(load_schema()["properties"]["training"]).validate(training)
    assert training["regimes"] == {"linear_probe": {"lr": 0.001}, "lora": {"lr": 0.0001}}
    assert training["lora"] == {"rank": 16, "alpha": 16, "dropout": 0.05, "target_modules": ["qkv", "proj"]}


# --- features -----------------------------------------------------------------------------------------


def test_features_cli_writes_the_documented_files(ds: dict, features: Path, tmp_path: Path) -> None:
    from cxrbench.cli import main

    s = regime_settings("linear_probe")
    args = ["features", "--settings", json.dumps(s), "--labels", str(ds["labels_path"]),
            "--manifest", str(ds["manifest_path"]), "--cache-dir", str(ds["cache_dir"]), "--out", str(tmp_path),
            "--device", "cpu", "--threads", "1"]
    assert main(args) == 0
    meta = json.loads((tmp_path / FEATURES_META).read_text())
    labels = pd.read_parquet(ds["labels_path"])
    usable = labels[~labels["image_id"].isin(["ds-0077", "ds-0078", "ds-0079"])]  # 3 rejected by preprocessing
    assert meta["dim"] == 192 and meta["images"] == usable["split"].value_counts().to_dict()
    torch.manual_seed(s["seed"])  # the backbone the features job built (random init: from the seed)
    model = build_model(InitSpec.from_dict(RANDOM), num_classes=3, img_size=SIZE, hf_home="unused").eval()
    assert meta["backbone_sha256"] == backbone_sha256(model)
    for split in ("train", "val", "test"):
        x = np.load(tmp_path / f"{split}.npy")
        ids = pd.read_parquet(tmp_path / f"{split}.index.parquet")["image_id"].tolist()
        assert x.dtype == np.float32 and x.shape == (meta["images"][split], 192) and ids == sorted(ids)
        np.testing.assert_array_equal(x, np.load(features / f"{split}.npy"))  # the CLI = the function
    ids = pd.read_parquet(tmp_path / "test.index.parquet")["image_id"].tolist()
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(_test_images(ds, ids)), pre_logits=True)
    np.testing.assert_allclose(np.load(tmp_path / "test.npy"), ref.numpy(), atol=1e-5)


# --- linear probe -------------------------------------------------------------------------------------


def test_linear_probe_trains_the_head_only_and_writes_what_finetune_writes(
    ds: dict, features: Path, tmp_path: Path
) -> None:
    s = regime_settings("linear_probe", replicate=2)
    meta = train(s, out_dir=tmp_path, features_dir=features, **ds, **_quiet())
    _assert_like_finetune(tmp_path, ds, meta)
    assert meta["regime"] == "linear_probe" and meta["replicate"] == 2 and meta["label_fraction"] == 1.0
    assert meta["trainable_parameters"] == 192 * 3 + 3 and meta["image_source"] == "features"
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    # the backbone in best.pt is the one the features came from; the head moved
    assert backbone_sha256(_plain_model(best["model"])) == json.loads((features / FEATURES_META).read_text())[
        "backbone_sha256"]
    assert meta["features"]["backbone_sha256"] == backbone_sha256(_plain_model(best["model"]))
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3] and hist["epoch_s"].max() < 1.0  # no backbone pass per epoch


def test_linear_probe_refuses_foreign_features_and_augmentation(ds: dict, features: Path, tmp_path: Path) -> None:
    s = regime_settings("linear_probe")
    with pytest.raises(ConfigError, match="--features-dir"):
        train(s, out_dir=tmp_path, **ds, **_quiet())
    with pytest.raises(ConfigError, match="without augmentation"):
        train({**s, "training": {**s["training"], "hflip": 0.5}}, out_dir=tmp_path, features_dir=features, **ds,
              **_quiet())
    with pytest.raises(DataError, match="not computed for this run: input"):
        train({**s, "training": {**s["training"], "normalisation": "model"}}, out_dir=tmp_path,
              features_dir=features, **ds, **_quiet())
    meta = json.loads((features / FEATURES_META).read_text())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for f in features.iterdir():
        (foreign / f.name).write_bytes(f.read_bytes())
    (foreign / FEATURES_META).write_text(json.dumps({**meta, "backbone_sha256": "0" * 64}))
    with pytest.raises(DataError, match="backbone weights differ"):
        train(s, out_dir=tmp_path, features_dir=foreign, **ds, **_quiet())


# --- LoRA ---------------------------------------------------------------------------------------------


def test_lora_targets_are_the_attention_projections_only() -> None:
    model = timm.create_model(MODEL, num_classes=3, img_size=SIZE)
    targets = lora_targets(model, ["qkv", "proj"])
    assert len(targets) == 24 and "blocks.0.attn.qkv" in targets and "blocks.11.attn.proj" in targets
    assert "patch_embed.proj" not in targets and not any("mlp" in t for t in targets)
    with pytest.raises(ValueError, match="match no linear layer"):
        lora_targets(model, ["fc1"])  # an MLP layer is not an attention projection


def test_merged_lora_state_computes_what_the_adapted_model_computes() -> None:
    torch.manual_seed(0)
    wrapped = add_lora(timm.create_model(MODEL, num_classes=3, img_size=SIZE), **LORA)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a non-zero update (B starts at zero)
    x = torch.rand(4, 3, SIZE, SIZE)
    wrapped.eval()
    merged = _plain_model(merged_lora_state(wrapped))
    with torch.no_grad():
        np.testing.assert_allclose(merged(x).numpy(), wrapped(x).numpy(), atol=1e-5)
        assert any("lora_A" in k for k in wrapped.state_dict())  # the copy was merged, not the model


def test_lora_changes_only_adapters_and_head(ds: dict, tmp_path: Path) -> None:
    s = regime_settings("lora", epochs=2)
    meta = train(s, out_dir=tmp_path, **ds, **_quiet())
    _assert_like_finetune(tmp_path, ds, meta)
    torch.manual_seed(s["seed"])  # the run's initial model: built and wrapped from the run's seed
    init = add_lora(build_model(InitSpec.from_dict(RANDOM), num_classes=3, img_size=SIZE, hf_home="unused"), **LORA)
    assert meta["trainable_parameters"] == sum(p.numel() for p in init.parameters() if p.requires_grad)
    assert meta["trainable_parameters"] == 12 * (4 * (192 + 576) + 4 * (192 + 192)) + 192 * 3 + 3
    before = init.state_dict()
    after = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]  # last epoch, before merging
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or ".head." in k for k in changed)
    assert any("lora_B" in k for k in changed) and "base_model.model.head.weight" in changed


# --- resume after a kill --------------------------------------------------------------------------------

_KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from cxrbench.training.cli import train
    args = json.loads(sys.argv[1])
    def on_step(epoch, step):
        if epoch == 1 and step == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, as a scheduler's kill
    paths = {k: Path(v) if v else None for k, v in args["paths"].items()}
    train(args["settings"], device="cpu", threads=1, on_step=on_step, **paths)
    """
)


@pytest.mark.parametrize("regime", ["linear_probe", "lora"])
def test_killed_after_epoch_one_resumes_to_the_same_result(
    regime: str, ds: dict, features: Path, tmp_path: Path
) -> None:
    s = regime_settings(regime, epochs=3)
    extra = {"features_dir": features} if regime == "linear_probe" else {}
    if regime == "linear_probe":  # small batches: the probe's epoch has several steps to be killed in
        s["training"]["batch_size"] = 8
    train(s, out_dir=tmp_path / "whole", **ds, **extra, **_quiet())
    paths = {k: str(v) for k, v in {**ds, **extra, "out_dir": tmp_path / "killed"}.items()}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, json.dumps({"settings": s, "paths": paths})],
        capture_output=True, check=False, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and not state["finished"]
    meta = train(s, out_dir=tmp_path / "killed", **ds, **extra, **_quiet())
    assert meta["resumed_from_epoch"] == 1
    cols = ["epoch", "train_loss", "val_loss", "val_auroc_macro", "lr", "best"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "whole" / "history.csv")[cols], pd.read_csv(tmp_path / "killed" / "history.csv")[cols]
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "whole" / "predictions.parquet"),
        pd.read_parquet(tmp_path / "killed" / "predictions.parquet"),
    )
    whole = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)["model"]
    killed = torch.load(tmp_path / "killed" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], killed[k]) for k in whole)


# --- label fractions ------------------------------------------------------------------------------------


def _fractions(ds: dict, path: Path) -> pd.DataFrame:
    """Every image at fraction 1, the train images with an even number also at 0.5 (a nested subset)."""
    labels = pd.read_parquet(ds["labels_path"])
    number = labels["image_id"].str[-4:].astype(int)
    df = pd.DataFrame({"image_id": labels["image_id"], "min_fraction": np.where(number % 2 == 0, 0.5, 1.0)})
    df.to_parquet(path, index=False)
    return labels


def test_label_fraction_keeps_the_subset_of_train_only(ds: dict, features: Path, tmp_path: Path) -> None:
    labels = _fractions(ds, tmp_path / "fractions.parquet")
    mins = read_fractions(tmp_path / "fractions.parquet")
    sub = select_label_fraction(labels, mins, 0.5)
    assert (sub["split"] != "train").sum() == (labels["split"] != "train").sum()  # val/test untouched
    kept = sub[sub["split"] == "train"]
    assert len(kept) == (labels["split"] == "train").sum() // 2 and (kept["image_id"].str[-4:].astype(int) % 2 == 0).all()
    assert select_label_fraction(labels, mins, 1.0).equals(labels)

    s = regime_settings("linear_probe", fraction=0.5, epochs=1)
    meta = train(s, out_dir=tmp_path / "run", features_dir=features, fractions_path=tmp_path / "fractions.parquet",
                 **ds, **_quiet())
    ok = kept[~kept["image_id"].isin(["ds-0077", "ds-0078", "ds-0079"])]  # rejected by preprocessing
    assert meta["images"]["train"] == len(ok) and meta["images"]["test"] == json.loads(
        (features / FEATURES_META).read_text())["images"]["test"]
    assert meta["train_positives"] == {n: int((ok[f"y_{n}"] == 1).sum()) for n in LABELS}
    assert meta["label_fraction"] == 0.5
    with pytest.raises(ConfigError, match="needs --fractions"):
        train(s, out_dir=tmp_path / "no", features_dir=features, **ds, **_quiet())
    labels[labels["image_id"] != "ds-0000"][["image_id"]].assign(min_fraction=1.0).to_parquet(tmp_path / "short.pq")
    with pytest.raises(DataError, match="short.pq: 1 train image.*'ds-0000'"):
        train(s, out_dir=tmp_path / "no", features_dir=features, fractions_path=tmp_path / "short.pq", **ds,
              **_quiet())
