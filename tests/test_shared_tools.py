"""The shared tools every chapter uses: setup, data, train, viz, inspect."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

import segnotes
from segnotes.data import CLASS_NAMES, PALETTE, PHOTOS, Shapes, load_photo, photo_tensor, shapes_splits
from segnotes.train import (
    History,
    boundary_counts,
    budget,
    confusion_matrix,
    disjoint,
    evaluate,
    fit,
    fit_seeds,
    metrics_from_confusion,
    predict,
    summarize,
    trivial_baseline,
)
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


def test_shapes_knobs_and_their_errors():
    five, two = Shapes(8, size=32, seed=4), Shapes(8, size=32, seed=4, binary=True)
    assert torch.equal(five.images, two.images) and torch.equal(five.masks > 0, two.masks.bool())
    assert (five.num_classes, two.num_classes, two.class_names) == (5, 2, ("background", "shape"))
    flat = Shapes(4, size=32, textured=False, noise=0.0)
    image, mask = flat[0]
    assert len(torch.unique(image[0][mask == 0])) == 1  # one flat background colour
    small, large = Shapes(32, size=32, radius=(0.1, 0.1)), Shapes(32, size=32, radius=(0.3, 0.3))
    assert (small.masks > 0).float().mean() < (large.masks > 0).float().mean()
    for bad in (dict(max_shapes=0), dict(noise=-1.0), dict(radius=(0.3, 0.1)), dict(radius=(0.0, 0.5))):
        with pytest.raises(ValueError):
            Shapes(2, size=32, **bad)


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


def test_metrics_equal_segmentation_models_pytorch_on_random_predictions():
    smp_metrics = pytest.importorskip("segmentation_models_pytorch.metrics")
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randint(0, 4, (6, 16, 16), generator=g), torch.randint(0, 4, (6, 16, 16), generator=g)
    ours = metrics_from_confusion(confusion_matrix(pred, target, 4))
    tp, fp, fn, tn = smp_metrics.get_stats(pred, target, mode="multiclass", num_classes=4)
    theirs = smp_metrics.iou_score(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0), reduction="none")
    assert ours.iou == pytest.approx(theirs.tolist())
    assert ours.miou == pytest.approx(float(theirs.mean()))
    # Pixel accuracy is trace / total (SMP's multiclass "accuracy" also counts per-class true negatives).
    assert ours.pixel_accuracy == pytest.approx(float((pred == target).float().mean()))


def _reference_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Boundary IoU's inner boundary with scipy: the mask minus its erosion (image borders count as contour)."""
    from scipy import ndimage

    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, structure=np.ones((3, 3)), iterations=width)[1:-1, 1:-1]
    return mask & ~eroded


def test_boundary_iou_equals_a_scipy_reference():
    ds = Shapes(4, size=32, seed=7)
    pred = torch.roll(ds.masks, shifts=1, dims=-1)  # a prediction off by one pixel
    inter, union = boundary_counts(pred, ds.masks, 5, width=2)
    for k in range(5):
        p = np.stack([_reference_boundary(m.numpy() == k, 2) for m in pred])
        t = np.stack([_reference_boundary(m.numpy() == k, 2) for m in ds.masks])
        assert (int(inter[k]), int(union[k])) == ((p & t).sum(), (p | t).sum())
    perfect = metrics_from_confusion(confusion_matrix(ds.masks, ds.masks, 5), boundary_counts(ds.masks, ds.masks, 5))
    shifted = metrics_from_confusion(confusion_matrix(pred, ds.masks, 5), (inter, union))
    assert perfect.boundary_miou == 1.0 and shifted.boundary_miou < shifted.miou < 1.0


def test_trivial_baseline_predicts_the_majority_class():
    train, val = shapes_splits(16, 8, size=32, binary=True)
    m = trivial_baseline(train, val, 2)
    assert m.iou[1] == 0.0 and m.pixel_accuracy == pytest.approx(float((val.masks == 0).float().mean()))


def test_summaries_budget_and_seed_comparisons():
    assert summarize([0.91, 0.914, 0.912]) == "0.912 ± 0.002 (min 0.910, max 0.914)"
    assert summarize([0.5]) == "0.500 ± 0.000 (min 0.500, max 0.500)"
    assert disjoint([0.9, 0.92], [0.4, 0.45], margin=0.2) and not disjoint([0.9, 0.5], [0.6, 0.4])
    assert budget("cpu", cpu=3, cuda=9) == 3 and budget(torch.device("cuda", 0), cpu=3, cuda=9) == 9
    for call in (lambda: summarize([]), lambda: disjoint([], [1.0]), lambda: budget("cpu", cpu=0, cuda=1)):
        with pytest.raises(ValueError):
            call()


class TinyNet(nn.Module):
    """Predicts at half resolution, as SegFormer predicts at a quarter: fit must resize."""

    def __init__(self, classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, classes, 1),
        )

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
    assert h.metrics.miou == h.final and h.model is model and h.steps == 12 and h.images == 192
    assert "3 epochs, 12 steps" in str(h)
    with pytest.raises(ValueError, match="positive"):
        fit(model, train, num_classes=5, epochs=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        fit(model, train, num_classes=5, loss="focal")


def test_fit_seeds_is_reproducible_with_dice_augmentation_and_boundary(monkeypatch, capsys):
    monkeypatch.setenv("SEGNOTES_PROGRESS", "0")  # what `make execute` and nbval set: nothing printed
    train, val = shapes_splits(32, 8, size=32, binary=True)
    kwargs = dict(num_classes=2, epochs=2, loss="ce+dice", augment=True, boundary=True)
    a = fit_seeds(lambda: TinyNet(2), train, val, seeds=(0, 1), **kwargs)
    b = fit_seeds(lambda: TinyNet(2), train, val, seeds=(0,), **kwargs)
    assert a[0].train_loss == b[0].train_loss and a[0].train_loss != a[1].train_loss
    assert a[0].metrics.boundary_miou is not None
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""
    with pytest.raises(ValueError, match="at least one seed"):
        fit_seeds(lambda: TinyNet(2), train, val, seeds=(), **kwargs)


def test_viz_functions_return_figures():
    ds = Shapes(2, size=32)
    assert colorize(ds.masks[0]).shape == (32, 32, 3)
    fig = show_segmentation(ds.images, ds.masks, {"a": ds.masks, "b": ds.masks})
    assert len(fig.axes) == 8
    assert len(show_features(torch.randn(1, 16, 8, 8), n=4).axes) == 4
    with pytest.raises(ValueError, match="C > 0"):
        show_features(torch.randn(1, 0, 8, 8))

    assert len(plot_history({"m": History([1.0, 0.5], [0.2, 0.4], [0.5, 0.6], [1.0, 1.0])}).axes) == 2
