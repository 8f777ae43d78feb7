"""Pure pieces of training: loss, class weights, AUROC policy, schedule, augmentation and its seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cxrbench.training.data import CxrDataset, SplitData, augment, shared_labels
from cxrbench.training.loop import lr_factor, masked_bce, per_label_auroc, pos_weight, rankable_labels


def test_pos_weight_is_negatives_over_positives_on_known_entries() -> None:
    y = np.array([[1, 0, np.nan], [0, 0, 1], [0, 1, 0], [1, np.nan, 0]], dtype=np.float32)
    assert pos_weight(y).tolist() == pytest.approx([1.0, 2.0, 2.0])  # (4-2)/2, (3-1)/1, (3-1)/1
    assert pos_weight(np.zeros((3, 1), np.float32)).tolist() == [1.0]  # no positive: weight 1, warned


def test_masked_bce_equals_torch_loss_without_mask_and_ignores_masked_entries() -> None:
    torch.manual_seed(0)
    logits, w = torch.randn(6, 3), torch.tensor([1.0, 2.5, 0.3])
    y = (torch.rand(6, 3) > 0.5).float()
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=w)(logits, y)
    assert masked_bce(logits, y, w).item() == pytest.approx(ref.item(), rel=1e-6)
    masked = y.clone()
    masked[0, 1] = masked[3, 2] = float("nan")
    keep = ~torch.isnan(masked)
    full = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=w, reduction="none")
    assert masked_bce(logits, masked, w).item() == pytest.approx(full[keep].mean().item(), rel=1e-6)
    flipped = masked.clone()
    flipped[0, 1] = 1.0 - y[0, 1]
    flipped[0, 1] = float("nan")
    assert masked_bce(logits, flipped, w).item() == masked_bce(logits, masked, w).item()


def test_auroc_is_nan_for_single_class_labels_and_skips_masked() -> None:
    y = np.array([[1, 0, 0], [0, 0, np.nan], [1, 0, 1], [0, 0, 0]], dtype=np.float32)
    s = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.99], [0.8, 0.2, 0.7], [0.1, 0.4, 0.1]])
    a = per_label_auroc(y, s)
    assert a[0] == 1.0 and math.isnan(a[1]) and a[2] == 1.0  # the masked 0.99 would have broken label 3
    assert rankable_labels(y).tolist() == [True, False, True]


def test_lr_schedules() -> None:
    assert [lr_factor(e, schedule="none", epochs=5, warmup_epochs=0) for e in range(5)] == [1.0] * 5
    cos = [lr_factor(e, schedule="cosine", epochs=5, warmup_epochs=1) for e in range(5)]
    assert cos[0] == 0.5 and cos[1] == 1.0  # linear warm-up, then the full rate
    assert cos[1] > cos[2] > cos[3] > cos[4] > 0  # cosine decay


def test_augment_is_seeded_bounded_and_matches_the_study_input() -> None:
    img = np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))
    plain = augment(img, img_size=16)
    assert plain.shape == (3, 16, 16) and plain.dtype == torch.float32
    assert torch.equal(plain[0], plain[2]) and plain.max() <= 1.0 and plain[0, 0, -1] == pytest.approx(240 / 255)
    flip = augment(img, img_size=16, hflip=1.0, rng=np.random.default_rng(0))
    assert torch.equal(flip[0], plain[0].flip(-1))
    a = augment(img, img_size=16, hflip=0.5, rotation=7, rng=np.random.default_rng(3))
    b = augment(img, img_size=16, hflip=0.5, rotation=7, rng=np.random.default_rng(3))
    assert torch.equal(a, b)
    assert augment(img, img_size=8).shape == (3, 8, 8)  # resized when the cache size differs
    norm = augment(img, img_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert torch.allclose(norm, plain * 2 - 1)


def test_dataset_draws_do_not_depend_on_access_order_or_workers() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16), dtype=np.uint8) for _ in range(5)]
    data = SplitData(
        "train",
        np.array(list("abcde"), dtype=object),
        np.array(list("abcde"), dtype=object),
        np.zeros((5, 1), np.float32),
        images,
    )
    ds = CxrDataset(data, img_size=16, train=True, hflip=0.5, rotation=7, seed=11)
    forward = [ds[i][0] for i in range(5)]
    backward = [ds[i][0] for i in reversed(range(5))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward, strict=True))
    ds.set_epoch(1)
    assert not all(torch.equal(ds[i][0], forward[i]) for i in range(5))  # new draws each epoch
    evaluation = CxrDataset(data, img_size=16, train=False)
    assert torch.equal(evaluation[2][0], augment(images[2], img_size=16))


def test_shared_labels_keep_target_order() -> None:
    assert shared_labels(["b", "a", "c"], ["c", "a", "x"]) == ["a", "c"]


def test_merged_parent_finding_from_laterality_children() -> None:
    import pandas as pd
    from cxrbench.training.data import DataError, add_merged_columns

    nan = np.nan
    df = pd.DataFrame(
        {"y_eff_left": [1, 0, nan, 0, nan], "y_eff_right": [0, 0, 1, nan, nan], "y_other": [1, 0, 0, 0, 0]}
    )
    out = add_merged_columns(df, ["other", "eff"], parents={"eff_left": "eff", "eff_right": "eff"})
    assert out["y_eff"].tolist()[:4] == [1, 0, 1, 0] and np.isnan(out["y_eff"].iloc[4])
    assert out["y_eff"].dtype == np.float32 and "y_eff" not in df.columns
    with pytest.raises(DataError, match="no column y_missing"):
        add_merged_columns(df, ["missing"], parents={})


class _Tensors(torch.utils.data.Dataset):
    """The loop's dataset protocol (``data.targets``, ``set_epoch``, ``(x, y, index)`` items) over tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.data = type("Split", (), {"targets": y.numpy()})()

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def _fit(tmp_path, *, epochs: int, lr: float, **cfg):
    from cxrbench.training.loop import FitConfig, fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = ((x[:, :2] + 1.5 * torch.randn(96, 2, generator=g)) > 0).float()  # weakly learnable, so metrics wander
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    result = fit(model, _Tensors(x[:64], y[:64]), _Tensors(x[64:], y[64:]),
                 cfg=FitConfig(epochs=epochs, batch_size=16, lr=lr, seed=1, **cfg), labels=["a", "b"],
                 out_dir=tmp_path, device=torch.device("cpu"), fingerprint="f")
    return result, result.history


def test_patience_zero_trains_every_epoch_and_patience_stops_early(tmp_path) -> None:
    # lr 0: the metrics never change, so every epoch after the first is a "bad" one
    frozen, _ = _fit(tmp_path / "p2", epochs=6, lr=0.0, patience=2)
    assert len(frozen.history) == 3 and frozen.stopped_early and frozen.best_epoch == 1
    full, _ = _fit(tmp_path / "p0", epochs=6, lr=0.0, patience=0)
    assert len(full.history) == 6 and not full.stopped_early and full.best_epoch == 1


def test_selection_metric_picks_best_auroc_or_lowest_loss(tmp_path) -> None:
    by_auroc, hist = _fit(tmp_path / "auroc", epochs=8, lr=0.3, patience=0, selection_metric="val_auroc")
    by_loss, hist_loss = _fit(tmp_path / "loss", epochs=8, lr=0.3, patience=0, selection_metric="val_loss")
    assert [r["val_loss"] for r in hist] == [r["val_loss"] for r in hist_loss]  # same training either way
    aurocs, losses = [r["val_auroc_macro"] for r in hist], [r["val_loss"] for r in hist]
    assert by_auroc.best_epoch == int(np.argmax(aurocs)) + 1 and by_auroc.best_val_auroc == max(aurocs)
    assert by_loss.best_epoch == int(np.argmin(losses)) + 1 and by_loss.best_val_loss == min(losses)
    assert by_loss.best_val_auroc == aurocs[by_loss.best_epoch - 1]
    assert by_auroc.best_epoch != by_loss.best_epoch  # the switch matters on this data
    best = torch.load(tmp_path / "loss" / "checkpoint-best.pt", weights_only=True)
    assert best["epoch"] == by_loss.best_epoch and best["selection_metric"] == "val_loss"
    with pytest.raises(ValueError, match="selection_metric"):
        _fit(tmp_path / "bad", epochs=1, lr=0.1, selection_metric="test_auroc")
