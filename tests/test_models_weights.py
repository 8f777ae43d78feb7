"""Initialisation registry and weight loading from tiny fabricated checkpoints in timm's real formats (no network):
a local .safetensors / timm train.py .pth, a hand-built Hugging Face cache read offline, the pipeline chain,
position-embedding resizing, and the messages that say how to fetch missing weights."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import timm
import torch
import yaml
from cxrbench.cli import main as cxrbench_main
from cxrbench.config import REPO_ROOT, ConfigError, validate_config
from cxrbench.models import hub
from cxrbench.models.factory import IncompleteWeights, build_model, data_config, sha256_file
from cxrbench.models.registry import (
    InitSpec,
    WeightsMissing,
    check_all,
    init_spec,
    locate_weights,
    weights_problem,
)
from process_state import _restore_process_state  # noqa: F401 - autouse fixture
from safetensors.torch import save_file

TAG = "vit_tiny_patch16_224.augreg_in21k"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    """A tiny ViT 'pretrained' at 64 px with a foreign 7-class head (as an in21k checkpoint has its own)."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, img_size=64)


def hf_cache(root: Path, model: torch.nn.Module) -> Path:
    """The Hugging Face cache layout `hf download timm/<tag>` produces: refs/main + snapshots/<sha>/file."""
    repo = root / "hub" / f"models--timm--{TAG}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    (repo / "snapshots" / SHA).mkdir(parents=True)
    save_file(model.state_dict(), repo / "snapshots" / SHA / "model.safetensors")
    return root


def _same_backbone(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items() if not k.startswith(("head", "pos_embed"))
    )


def test_file_safetensors_resizes_pos_embed_and_replaces_head(source: torch.nn.Module, tmp_path: Path) -> None:
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    spec = InitSpec(name="in21k", model=TAG, source="file", file=str(tmp_path / "w.safetensors"))
    model = build_model(spec, num_classes=3, img_size=32, hf_home=tmp_path / "hf")
    assert source.pos_embed.shape == (1, 17, 192) and model.pos_embed.shape == (1, 5, 192)  # 4x4 -> 2x2 grid + cls
    assert torch.equal(model.cls_token, source.cls_token) and _same_backbone(model, source)
    assert model.head.weight.shape == (3, 192)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    # the data config reports the training size, not the pretraining one (the DINOv2 518-px caveat)
    assert data_config(model)["input_size"] == (3, 32, 32)


def test_file_pth_in_timm_train_checkpoint_format(source: torch.nn.Module, tmp_path: Path) -> None:
    torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": source.state_dict()}, tmp_path / "w.pth")
    spec = InitSpec(name="mine", model="vit_tiny_patch16_224", source="file", file=str(tmp_path / "w.pth"))
    model = build_model(spec, num_classes=2, img_size=64, hf_home=tmp_path)
    assert _same_backbone(model, source) and torch.equal(model.pos_embed, source.pos_embed)


def test_hub_reads_the_offline_cache_at_another_size(source: torch.nn.Module, tmp_path: Path, monkeypatch) -> None:
    hf_home = hf_cache(tmp_path / "hf", source)
    spec = InitSpec(name="in21k", model=TAG, source="hub")
    found = locate_weights(spec, hf_home=hf_home)
    assert found == hf_home / "hub" / f"models--timm--{TAG}" / "snapshots" / SHA / "model.safetensors"
    assert weights_problem(spec, hf_home=hf_home) is None
    model = build_model(spec, num_classes=4, img_size=48, hf_home=hf_home)
    assert model.pos_embed.shape == (1, 10, 192) and _same_backbone(model, source)
    from huggingface_hub import constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE  # nothing could reach the network
    assert len(sha256_file(found)) == 64


def test_missing_weights_say_how_to_fetch(tmp_path: Path) -> None:
    hub_spec = InitSpec(name="dinov2", model="vit_base_patch14_dinov2.lvd142m", source="hub")
    msg = weights_problem(hub_spec, hf_home=tmp_path / "hf")
    assert f"cxrbench weights fetch --model vit_base_patch14_dinov2.lvd142m --hf-home {tmp_path / 'hf'}" in msg
    assert str(tmp_path / "hf" / "hub" / "models--timm--vit_base_patch14_dinov2.lvd142m") in msg
    with pytest.raises(WeightsMissing, match="cxrbench weights fetch"):
        build_model(hub_spec, num_classes=2, img_size=224, hf_home=tmp_path / "hf")
    file_spec = InitSpec(name="in21k", model=TAG, source="file", file=str(tmp_path / "w" / "in21k.safetensors"))
    msg = weights_problem(file_spec, hf_home=tmp_path)
    assert f"cxrbench weights fetch --model {TAG} --out {tmp_path / 'w' / 'in21k.safetensors'}" in msg
    bad = InitSpec(name="x", model="not_a_model_at_all", source="hub")
    assert "is not a timm model name" in weights_problem(bad, hf_home=tmp_path)


def test_hub_source_follows_timm_pretrained_cfg() -> None:
    src = hub.hub_source("vit_base_patch14_dinov2.lvd142m")
    assert src.repo_id == "timm/vit_base_patch14_dinov2.lvd142m"
    assert src.filenames == ("model.safetensors", "pytorch_model.bin")
    assert hub.hub_source("vit_base_patch16_224.augreg_in21k").repo_id == "timm/vit_base_patch16_224.augreg_in21k"
    with pytest.raises(ValueError, match="Invalid pretrained tag"):
        hub.hub_source("vit_base_patch16_224.no_such_tag")


def test_pipeline_state_backbone_or_whole_network(source: torch.nn.Module, tmp_path: Path) -> None:
    torch.manual_seed(1)
    pre = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32)
    spec = InitSpec(
        name="mimic_sl",
        model="vit_tiny_patch16_224",
        source="pipeline",
        pretrain_dataset="mimic",
        pretrain_init="random",
        transfer="study",
    )
    whole = build_model(
        spec, num_classes=3, img_size=32, hf_home=tmp_path, pipeline_state=pre.state_dict(), keep_head=True
    )
    assert all(torch.equal(whole.state_dict()[k], v) for k, v in pre.state_dict().items())
    torch.manual_seed(5)
    backbone = build_model(spec, num_classes=3, img_size=32, hf_home=tmp_path, pipeline_state=pre.state_dict())
    torch.manual_seed(5)
    fresh = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32)
    assert _same_backbone(backbone, pre) and torch.equal(backbone.pos_embed, pre.pos_embed)
    assert torch.equal(backbone.head.weight, fresh.head.weight)  # a new head, initialised as timm does
    assert not torch.equal(backbone.head.weight, pre.head.weight)
    # a different label count with the whole network makes no sense and timm refuses the strict load
    with pytest.raises(RuntimeError):
        build_model(spec, num_classes=5, img_size=32, hf_home=tmp_path, pipeline_state=pre.state_dict(), keep_head=True)


def test_pooling_is_passed_to_timm(tmp_path: Path) -> None:
    spec = InitSpec(name="r", model="vit_tiny_patch16_224", source="none", pooling="avg")
    assert build_model(spec, num_classes=2, img_size=32, hf_home=tmp_path).global_pool == "avg"
    spec = InitSpec(name="r", model="vit_tiny_patch16_224", source="none")
    assert build_model(spec, num_classes=2, img_size=32, hf_home=tmp_path).global_pool == "token"


@pytest.fixture()
def config(tmp_path: Path) -> dict:
    with open(REPO_ROOT / "config.yaml", encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    cfg["weights"] = {"hf_home": str(tmp_path / "hf"), "dir": str(tmp_path / "w")}
    cfg["initialisations"]["in21k"] = {"model": TAG, "source": "hub"}
    cfg["initialisations"]["local"] = {"model": TAG, "source": "file", "file": "tiny.safetensors"}
    return validate_config(cfg)


def test_registry_resolves_config_entries(config: dict, tmp_path: Path) -> None:
    assert init_spec(config, "local").file == str(tmp_path / "w" / "tiny.safetensors")
    chain = init_spec(config, "mimic_sl")
    assert (chain.source, chain.pretrain_dataset, chain.pretrain_init, chain.transfer) == (
        "pipeline",
        "mimic",
        "random",
        config["initialisations"]["mimic_sl"]["transfer"],
    )
    assert init_spec(config, "random").pooling is None  # the architecture's own
    assert len(check_all(config)) == 2
    bad = copy.deepcopy(config)
    bad["initialisations"]["mimic_sl"]["model"] = "convnext_base"
    with pytest.raises(ConfigError, match="same architecture as its pretrain_init"):
        init_spec(bad, "mimic_sl")


def test_weights_check_and_fetch_commands(
    config: dict, source: torch.nn.Module, tmp_path: Path, monkeypatch, capsys
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cxrbench_main(["weights", "check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "in21k" in out and "MISSING" in out and f"--hf-home {tmp_path / 'hf'}" in out

    # fetch: downloads through huggingface_hub (mocked here: no network) into the cache / to the file path
    save_file(source.state_dict(), tmp_path / "dl.safetensors")
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append((repo_id, filename, cache_dir))
        if cache_dir is not None:  # what hf_hub_download does: fill the cache layout
            hf_cache(Path(cache_dir).parent, source)
            return str(Path(cache_dir) / f"models--timm--{TAG}" / "snapshots" / SHA / filename)
        return str(tmp_path / "dl.safetensors")

    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert cxrbench_main(["weights", "fetch", "--config", str(path)]) == 0
    assert ("timm/" + TAG, "model.safetensors", tmp_path / "hf" / "hub") in calls
    assert (tmp_path / "w" / "tiny.safetensors").is_file()
    assert cxrbench_main(["weights", "check", "--config", str(path)]) == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="unset it"):
        hub.fetch(TAG, hf_home=tmp_path / "x")


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_truncated_weight_file_stops_naming_the_keys(source: torch.nn.Module, tmp_path: Path, fmt: str) -> None:
    """timm loads non-strictly when the head is replaced: without the check these layers would stay random."""
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.11.") and k != "norm.weight"}
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(state, path)
    else:
        torch.save({"epoch": 3, "state_dict": state}, path)
    spec = InitSpec(name="in21k", model=TAG, source="file", file=str(path))
    with pytest.raises(IncompleteWeights, match=r"missing \(13\): blocks\.11\.attn\.proj\.bias") as err:
        build_model(spec, num_classes=3, img_size=32, hf_home=tmp_path)
    assert "norm.weight" in str(err.value) and str(path) in str(err.value) and "head." not in str(err.value)


def test_unexpected_key_stops_and_head_alone_may_differ(source: torch.nn.Module, tmp_path: Path) -> None:
    hf_home = hf_cache(tmp_path / "hf", source)
    spec = InitSpec(name="in21k", model=TAG, source="hub")
    build_model(spec, num_classes=3, img_size=32, hf_home=hf_home)  # a foreign head is dropped, not an error
    state = {**source.state_dict(), "blocks.12.mlp.fc1.weight": torch.zeros(1)}
    save_file(state, locate_weights(spec, hf_home=hf_home))
    with pytest.raises(IncompleteWeights, match=r"unexpected \(1\): blocks\.12\.mlp\.fc1\.weight"):
        build_model(spec, num_classes=3, img_size=32, hf_home=hf_home)


def test_truncated_pipeline_checkpoint_stops(tmp_path: Path) -> None:
    pre = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).state_dict()
    del pre["blocks.0.norm1.bias"]
    spec = InitSpec(name="mimic_sl", model="vit_tiny_patch16_224", source="pipeline", pretrain_dataset="mimic",
                    pretrain_init="random", transfer="backbone")
    with pytest.raises(IncompleteWeights, match=r"missing \(1\): blocks\.0\.norm1\.bias"):
        build_model(spec, num_classes=3, img_size=32, hf_home=tmp_path, pipeline_state=pre)


def test_token_checkpoint_into_avg_pooling_moves_the_final_norm(source: torch.nn.Module, tmp_path: Path) -> None:
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    spec = InitSpec(name="in21k", model=TAG, source="file", file=str(tmp_path / "w.safetensors"), pooling="avg")
    model = build_model(spec, num_classes=3, img_size=64, hf_home=tmp_path)
    assert torch.equal(model.fc_norm.weight, source.norm.weight) and torch.equal(model.fc_norm.bias, source.norm.bias)
    assert torch.equal(model.blocks[11].mlp.fc2.weight, source.blocks[11].mlp.fc2.weight)
