"""The shared tools every chapter uses: setup, data, train, viz, inspect."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import segnotes
from segnotes.data import CLASS_NAMES, PALETTE, PHOTOS, Shapes, load_photo, photo_tensor, shapes_splits
from segnotes.inspect import trace
from segnotes.train import confusion_matrix, evaluate, fit, metrics_from_confusion, predict
from segnotes.viz import colorize, plot_history, show_features, show_segmentation


def test_setup_is_reproducible_and_sets_threads():
    device = segnotes.setup(seed=3, threads=1)
    a = torch.randn(4)
    segnotes.setup(seed=3, threads=2)
    assert torch.equal(a, torch.randn(4)) and torch.get_num_threads() == 2
    assert device.type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="threads"):
        segnotes.setup(threads=0)


def test_shapes_is_deterministic_and_covers_every_class():
    a, b = Shapes(16, size=48, seed=1), Shapes(16, size=48, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.images.shape == (16, 3, 48, 48) and a.images.dtype == torch.float32
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert set(Shapes(64, size=32).masks.unique().tolist()) == set(range(len(CLASS_NAMES)))
    assert len(PALETTE) == len(CLASS_NAMES)


def test_shapes_splits_are_disjoint_and_any_size_works():
    train, val = shapes_splits(8, 8, size=37)
    assert train.images.shape[-2:] == (37, 37)
    assert not torch.equal(train.images, val.images)
    with pytest.raises(ValueError, match="size >= 16"):
        Shapes(4, size=8)


def test_colour_alone_does_not_give_the_class():
    """Shapes draw colours from the background's distribution: mean colour per class is close."""
    ds = Shapes(64, size=64)
    means = [ds.images.permute(0, 2, 3, 1)[ds.masks == k].mean(0) for k in range(len(CLASS_NAMES))]
    spread = torch.stack(means).std(0).max()
    assert spread < 0.08


def test_photos_are_bundled():
    for name in PHOTOS:
        assert load_photo(name).ndim == 3
    assert photo_tensor("astronaut", 64).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="choose one of"):
        load_photo("lena")


def test_metrics_from_confusion():
    pred = torch.tensor([[0, 0, 1, 1]])
    target = torch.tensor([[0, 1, 1, 1]])
    m = metrics_from_confusion(confusion_matrix(pred, target, 3))
    assert m.iou[:2] == pytest.approx([0.5, 2 / 3]) and np.isnan(m.iou[2])
    assert m.miou == pytest.approx((0.5 + 2 / 3) / 2) and m.pixel_accuracy == 0.75
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(pred, target[:, :3], 3)


class TinyNet(nn.Module):
    """Predicts at half resolution, as SegFormer predicts at a quarter: fit must resize."""

    def __init__(self, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, classes, 1))

    def forward(self, x):
        return self.net(x)


def test_fit_learns_and_reports_history():
    segnotes.setup()
    train, val = shapes_splits(64, 16, size=32)
    model = TinyNet(len(CLASS_NAMES))
    before = evaluate(model, val, len(CLASS_NAMES)).pixel_accuracy
    h = fit(model, train, val, num_classes=len(CLASS_NAMES), epochs=3, batch_size=16, progress=False)
    assert len(h.train_loss) == len(h.val_miou) == len(h.seconds) == 3
    assert h.train_loss[-1] < h.train_loss[0]
    assert evaluate(model, val, len(CLASS_NAMES)).pixel_accuracy > before
    assert predict(model, val.images[:2]).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="positive"):
        fit(model, train, num_classes=5, epochs=0)


def test_trace_finds_mobilenet_downsampling_points():
    model = torchvision.models.mobilenet_v2().features
    t = trace(model, torch.randn(1, 3, 64, 64))
    assert [s.name for s in t.downsampling_points()] == ["1", "3", "6", "13", "18"]
    assert [s.stride for s in t.downsampling_points()] == [2, 4, 8, 16, 32]
    assert "stride" in str(t) and len(t) == 19
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        trace(model, torch.randn(3, 64, 64))


def test_trace_records_tokens_and_tuples():
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)

        def forward(self, x):
            return self.embed(x).flatten(2).transpose(1, 2)

    t = trace(Tok(), torch.randn(1, 3, 16, 16), depth=None)
    assert t[0].stride == 4 and t[0].channels == 8


def test_viz_functions_return_figures():
    ds = Shapes(2, size=32)
    assert colorize(ds.masks[0]).shape == (32, 32, 3)
    fig = show_segmentation(ds.images, ds.masks, {"a": ds.masks, "b": ds.masks})
    assert len(fig.axes) == 8
    assert len(show_features(torch.randn(1, 16, 8, 8), n=4).axes) == 4
    with pytest.raises(ValueError, match="C > 0"):
        show_features(torch.randn(1, 0, 8, 8))
    from segnotes.train import History

    assert len(plot_history({"m": History([1.0, 0.5], [0.2, 0.4], [0.5, 0.6], [1.0, 1.0])}).axes) == 2
