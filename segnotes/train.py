"""A small training loop and the segmentation metrics every chapter reports.

Metrics come from a confusion matrix ``C`` (rows: true class, columns: predicted):
IoU of class k = C[k,k] / (row_k + col_k - C[k,k]), mIoU = mean over classes that
occur (in the labels or the predictions), pixel accuracy = trace / total.
Logits at a lower resolution than the mask (SegFormer predicts at 1/4) are
bilinearly resized to the mask before the loss and the metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm  # text bar: no widget dependency, stable in notebooks

__all__ = ["Metrics", "History", "confusion_matrix", "metrics_from_confusion", "evaluate", "fit", "predict"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) predicted and true class indices -> (num_classes, num_classes) int64 counts."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    idx = target.flatten().long() * num_classes + pred.flatten().long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


@dataclass
class Metrics:
    """Per-class IoU, mIoU and pixel accuracy computed from a confusion matrix."""

    confusion: torch.Tensor
    iou: list[float]
    miou: float
    pixel_accuracy: float

    def __str__(self) -> str:
        return f"mIoU {self.miou:.3f}, pixel accuracy {self.pixel_accuracy:.3f}"


def metrics_from_confusion(confusion: torch.Tensor) -> Metrics:
    """IoU per class (``nan`` for a class absent from labels and predictions), their mean, and accuracy."""
    c = confusion.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    miou = float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else float("nan")
    return Metrics(confusion, iou.tolist(), miou, float(tp.sum() / c.sum().clamp(min=1)))


def _resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 3, H, W) images -> (B, H, W) predicted class indices (on the CPU)."""
    model.eval()
    logits = model(images.to(device))
    return _resize_logits(logits, tuple(images.shape[-2:])).argmax(1).cpu()


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Dataset | DataLoader, num_classes: int, device: torch.device | str = "cpu", batch_size: int = 32
) -> Metrics:
    """Metrics of ``model`` over ``data`` (a dataset of (image, mask) pairs or a loader of batches)."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, masks in loader:
        logits = _resize_logits(model(images.to(device)), tuple(masks.shape[-2:]))
        confusion += confusion_matrix(logits.argmax(1), masks.to(device), num_classes)
    return metrics_from_confusion(confusion)


@dataclass
class History:
    """What :func:`fit` measured, one entry per epoch."""

    train_loss: list[float] = field(default_factory=list)
    val_miou: list[float] = field(default_factory=list)
    val_pixel_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def best_miou(self) -> float:
        return max(self.val_miou) if self.val_miou else float("nan")

    @property
    def final(self) -> float:
        """Validation mIoU after the last epoch."""
        return self.val_miou[-1] if self.val_miou else float("nan")

    def plot(self, label: str | None = None, axes=None):
        """Loss and mIoU curves; see :func:`segnotes.viz.plot_history`."""
        from .viz import plot_history

        return plot_history({label or "model": self}, axes=axes)


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
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
) -> History:
    """Train ``model`` with AdamW, a one-cycle learning rate and cross-entropy.

    Args:
        model: maps (B, 3, H, W) to logits (B, num_classes, h, w); ``h, w`` may be smaller
            than the mask (logits are resized bilinearly).
        train_data, val_data: datasets of ``(image, mask)`` pairs.
        num_classes: number of classes (the logits' channel count).
        epochs, batch_size, lr, weight_decay: the budget and the optimiser.
        device: where to train (``segnotes.setup()`` returns the right one).
        progress: show a tqdm bar (keep the cell that shows it out of nbval's comparison).
        seed: seed of the shuffling order, so runs are reproducible.

    Returns:
        A :class:`History` with per-epoch training loss, validation mIoU and seconds.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    model.to(device)
    loader = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), drop_last=len(train_data) > batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.2)
    history = History()
    bar = tqdm(total=epochs * len(loader), disable=not progress, desc="training", leave=True)
    for _ in range(epochs):
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            logits = _resize_logits(model(images), tuple(masks.shape[-2:]))
            loss = F.cross_entropy(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(images), count + len(images)
            bar.update(1)
        history.train_loss.append(total / count)
        history.seconds.append(time.perf_counter() - start)
        if val_data is not None:
            m = evaluate(model, val_data, num_classes, device)
            history.val_miou.append(m.miou)
            history.val_pixel_accuracy.append(m.pixel_accuracy)
            bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", miou=f"{m.miou:.3f}")
    bar.close()
    return history
