"""A small training loop and the segmentation metrics every chapter reports.

Metrics come from a confusion matrix ``C`` (rows: true class, columns: predicted):
IoU of class k = C[k,k] / (row_k + col_k - C[k,k]), mIoU = mean over classes that
occur (in the labels or the predictions), pixel accuracy = trace / total.
Logits at a lower resolution than the mask (SegFormer predicts at 1/4) are
bilinearly resized to the mask before the loss and the metrics.

Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image
Segmentation Evaluation", CVPR 2021, https://arxiv.org/abs/2103.16562) is IoU
restricted to the pixels within ``width`` pixels of each class's contour, in the
labels and in the prediction: it ignores the easy interior of a region and
measures how well its edges are placed.

An experiment in the book is a few seeds of :func:`fit` (:func:`fit_seeds`), reported
with :func:`summarize`, compared with :func:`disjoint` (a claim is made only when
the seeds' ranges do not overlap) and next to :func:`trivial_baseline`, the score
of predicting the most frequent class everywhere. :func:`budget` picks the number
of epochs for the device: longer on a GPU, within the CPU limits on CI.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .model import check_choice, check_positive, resize

__all__ = [
    "Metrics",
    "History",
    "LossName",
    "confusion_matrix",
    "metrics_from_confusion",
    "boundary_counts",
    "evaluate",
    "predict",
    "trivial_baseline",
    "budget",
    "fit",
    "fit_seeds",
    "summarize",
    "disjoint",
]

LossName = Literal["ce", "ce+dice"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) predicted and true class indices -> (num_classes, num_classes) int64 counts (on the CPU)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    idx = target.flatten().long() * num_classes + pred.flatten().long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def _inner_boundary(mask: torch.Tensor, width: int) -> torch.Tensor:
    """(N, H, W) bool -> the pixels of ``mask`` within ``width`` pixels of its contour (image borders count)."""
    outside = F.pad((~mask).float()[:, None], (1, 1, 1, 1), value=1.0)  # beyond the image is outside
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1, padding=width)[:, 0, 1:-1, 1:-1] > 0
    return mask & near_outside


def boundary_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, width: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class intersection and union of the boundary regions, two (num_classes,) int64 tensors (CPU).

    Summed over batches, ``intersection / union`` is each class's boundary IoU.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    inter, union = torch.zeros(num_classes, dtype=torch.long), torch.zeros(num_classes, dtype=torch.long)
    for k in range(num_classes):
        p, t = _inner_boundary(pred == k, width), _inner_boundary(target == k, width)
        inter[k], union[k] = int((p & t).sum()), int((p | t).sum())
    return inter, union


@dataclass
class Metrics:
    """Per-class IoU, mIoU and pixel accuracy from a confusion matrix; boundary IoU when asked for."""

    confusion: torch.Tensor
    iou: list[float]
    miou: float
    pixel_accuracy: float
    boundary_iou: list[float] | None = None
    boundary_miou: float | None = None

    def __str__(self) -> str:
        text = f"mIoU {self.miou:.3f}, pixel accuracy {self.pixel_accuracy:.3f}"
        return text if self.boundary_miou is None else text + f", boundary mIoU {self.boundary_miou:.3f}"


def _mean_present(iou: torch.Tensor) -> float:
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else float("nan")


def metrics_from_confusion(
    confusion: torch.Tensor, boundary: tuple[torch.Tensor, torch.Tensor] | None = None
) -> Metrics:
    """IoU per class (``nan`` for a class absent from labels and predictions), their mean, and accuracy.

    Args:
        confusion: (K, K) counts, rows true class, columns predicted.
        boundary: optional per-class (intersection, union) from :func:`boundary_counts`.
    """
    c = confusion.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    metrics = Metrics(confusion, iou.tolist(), _mean_present(iou), float(tp.sum() / c.sum().clamp(min=1)))
    if boundary is not None:
        b_inter, b_union = (t.double() for t in boundary)
        b_iou = torch.where(b_union > 0, b_inter / b_union.clamp(min=1), torch.full_like(b_inter, float("nan")))
        metrics.boundary_iou, metrics.boundary_miou = b_iou.tolist(), _mean_present(b_iou)
    return metrics


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 3, H, W) images -> (B, H, W) predicted class indices (on the CPU)."""
    model.eval()
    logits = model(images.to(device))
    return resize(logits, images.shape[-2:]).argmax(1).cpu()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    num_classes: int,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    boundary: bool = False,
    boundary_width: int = 2,
) -> Metrics:
    """Metrics of ``model`` over ``data`` (a dataset of (image, mask) pairs or a loader of batches).

    Args:
        boundary: also compute boundary IoU (pixels within ``boundary_width`` of each contour).
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    b_inter, b_union = torch.zeros(num_classes, dtype=torch.long), torch.zeros(num_classes, dtype=torch.long)
    for images, masks in loader:
        masks = masks.to(device)
        pred = resize(model(images.to(device)), masks.shape[-2:]).argmax(1)
        confusion += confusion_matrix(pred, masks, num_classes)
        if boundary:
            inter, union = boundary_counts(pred, masks, num_classes, boundary_width)
            b_inter, b_union = b_inter + inter, b_union + union
    return metrics_from_confusion(confusion, (b_inter, b_union) if boundary else None)


def trivial_baseline(train_data: Dataset, val_data: Dataset, num_classes: int) -> Metrics:
    """The score of predicting the training set's most frequent class at every pixel of ``val_data``.

    A trained model has learned something only if it beats this clearly.
    """
    train_masks = torch.stack([train_data[i][1] for i in range(len(train_data))])
    majority = int(torch.bincount(train_masks.flatten(), minlength=num_classes).argmax())
    val_masks = torch.stack([val_data[i][1] for i in range(len(val_data))])
    return metrics_from_confusion(confusion_matrix(torch.full_like(val_masks, majority), val_masks, num_classes))


@dataclass
class History:
    """What :func:`fit` measured, one entry per epoch, and the trained model."""

    train_loss: list[float] = field(default_factory=list)
    val_miou: list[float] = field(default_factory=list)
    val_pixel_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    steps: int = 0
    images: int = 0
    metrics: Metrics | None = None  # the last validation metrics
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def best_miou(self) -> float:
        return max(self.val_miou) if self.val_miou else float("nan")

    @property
    def final(self) -> float:
        """Validation mIoU after the last epoch."""
        return self.val_miou[-1] if self.val_miou else float("nan")

    @property
    def images_per_second(self) -> float:
        """Training throughput (forward, backward and optimiser step), validation excluded."""
        return self.images / max(sum(self.seconds), 1e-9)

    def __str__(self) -> str:
        text = (
            f"{len(self.seconds)} epochs, {self.steps} steps in {sum(self.seconds):.0f} s "
            f"({self.images_per_second:.0f} images/s), final train loss {self.train_loss[-1]:.3f}"
        )
        return text + (f", val {self.metrics}" if self.metrics is not None else "")

    def plot(self, label: str | None = None, axes=None):
        """Loss and mIoU curves; see :func:`segnotes.viz.plot_history`."""
        from .viz import plot_history

        return plot_history({label or "model": self}, axes=axes)


def budget(device: torch.device | str, cpu: int, cuda: int) -> int:
    """Epochs for this device: ``cpu`` on a CPU (the book's stored outputs, CI), ``cuda`` on a GPU (Colab).

    The checked claims of a chapter must hold with both numbers.

    Example:
        >>> budget("cpu", cpu=8, cuda=30)
        8
    """
    check_positive("cpu", cpu)
    check_positive("cuda", cuda)
    return cuda if torch.device(device).type == "cuda" else cpu


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient; insensitive to how rare a class is."""
    probs = logits.softmax(1)  # (B, K, H, W)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)  # (B, K, H, W)
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (total + 1)).mean()


def _augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The same random flip and 90-degree rotation for the images and masks of a batch (on their device)."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    images, masks = torch.rot90(images, k, (-2, -1)), torch.rot90(masks, k, (-2, -1))
    if flip % 2:
        images, masks = images.flip(-1), masks.flip(-1)
    return images, masks


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("SEGNOTES_PROGRESS", "1") != "0"  # `make execute` and nbval set 0: no bar stored


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None = None,
    *,
    num_classes: int,
    epochs: int = 5,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    loss: LossName = "ce",
    augment: bool = False,
    boundary: bool = False,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
    seed: int = 0,
) -> History:
    """Train ``model`` with AdamW, a one-cycle learning rate and cross-entropy (+ Dice).

    Args:
        model: maps (B, 3, H, W) to logits (B, num_classes, h, w); ``h, w`` may be smaller
            than the mask (logits are resized bilinearly).
        train_data, val_data: datasets of ``(image, mask)`` pairs; validation after every epoch.
        num_classes: number of classes (the logits' channel count).
        epochs, batch_size, lr, weight_decay: the budget and the optimiser.
        loss: ``"ce"`` (cross-entropy) or ``"ce+dice"`` (adds soft Dice, which weighs
            every class equally however few pixels it has).
        augment: random flips and 90-degree rotations of each batch.
        boundary: also report boundary IoU on the validation set (slower evaluation).
        device: where to train (``segnotes.setup()`` returns the right one).
        progress: a live progress bar; ``None`` shows one unless the environment variable
            ``SEGNOTES_PROGRESS=0`` (set by ``make execute`` and the nbval run, so stored
            notebooks carry no bar).
        seed: seed of the shuffling order and the augmentation, so runs are reproducible.

    Returns:
        A :class:`History` with per-epoch training loss, validation mIoU and seconds,
        the last validation :class:`Metrics` and the trained model.
    """
    check_positive("epochs", epochs)
    check_positive("batch_size", batch_size)
    check_choice("loss", loss, LossName)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train_data, batch_size=batch_size, shuffle=True, generator=generator, drop_last=len(train_data) > batch_size
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.2
    )
    history = History(model=model)
    bar = None
    if _progress_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * len(loader), desc="training", leave=True)
    for _ in range(epochs):
        model.train()
        start, total, count = time.perf_counter(), torch.zeros((), device=device), 0
        for images, masks in loader:
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            if augment:
                images, masks = _augment(images, masks, generator)
            logits = resize(model(images), masks.shape[-2:])
            batch_loss = F.cross_entropy(logits, masks)
            if loss == "ce+dice":
                batch_loss = batch_loss + _dice_loss(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            schedule.step()
            total += batch_loss.detach() * len(images)  # stays on the device: no host sync per step
            count += len(images)
            if bar is not None:
                bar.update(1)
        history.train_loss.append(float(total) / count)
        history.seconds.append(time.perf_counter() - start)
        history.steps += len(loader)
        history.images += count
        if val_data is not None:
            history.metrics = evaluate(model, val_data, num_classes, device, boundary=boundary)
            history.val_miou.append(history.metrics.miou)
            history.val_pixel_accuracy.append(history.metrics.pixel_accuracy)
            if bar is not None:
                bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", miou=f"{history.metrics.miou:.3f}")
    if bar is not None:
        bar.close()
    return history


def fit_seeds(
    build: Callable[[], nn.Module],
    train_data: Dataset,
    val_data: Dataset | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    **fit_kwargs,
) -> list[History]:
    """Train a fresh model per seed: ``torch.manual_seed(seed)``, ``build()``, :func:`fit` with ``seed=seed``.

    The seed decides the initial weights, the shuffling order and the augmentation,
    so the spread of the results says how much of a difference is luck.

    Example:
        >>> runs = fit_seeds(lambda: Unet("resnet18", classes=2), train, val, num_classes=2)  # doctest: +SKIP
        >>> summarize([r.final for r in runs])  # doctest: +SKIP
    """
    if len(seeds) < 1:
        raise ValueError("seeds must name at least one seed, e.g. seeds=(0, 1, 2)")
    histories = []
    for seed in seeds:
        torch.manual_seed(seed)
        histories.append(fit(build(), train_data, val_data, seed=seed, **fit_kwargs))
    return histories


def summarize(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± std (min a, max b)"`` of a few runs' results, e.g. mIoU over seeds.

    Example:
        >>> summarize([0.91, 0.914, 0.912])
        '0.912 ± 0.002 (min 0.910, max 0.914)'
    """
    if len(values) == 0:
        raise ValueError("summarize needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    f = f".{digits}f"
    return f"{statistics.fmean(values):{f}} ± {std:{f}} (min {min(values):{f}}, max {max(values):{f}})"


def disjoint(higher: Sequence[float], lower: Sequence[float], margin: float = 0.0) -> bool:
    """True when every value of ``higher`` exceeds every value of ``lower`` by more than ``margin``.

    The book claims "A beats B" only when this holds over the seeds.

    Example:
        >>> disjoint([0.91, 0.92], [0.40, 0.45], margin=0.2)
        True
    """
    if len(higher) == 0 or len(lower) == 0:
        raise ValueError("disjoint needs at least one value on each side")
    return min(higher) - max(lower) > margin
