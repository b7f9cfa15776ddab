"""A small training loop and the segmentation metrics every chapter reports.

Metrics come from a confusion matrix ``C`` (rows: true class, columns: predicted):
IoU of class k = C[k,k] / (row_k + col_k - C[k,k]), mIoU = mean over classes that
occur (in the labels or the predictions), pixel accuracy = trace / total.
Logits at a lower resolution than the mask (SegFormer predicts at 1/4) are
bilinearly resized to the mask before the loss and the metrics.

Pixels labelled ``ignore_index`` (255 by default, the convention of real datasets,
of transformers' ``semantic_loss_ignore_index``, mmseg and SMP's losses) take no
part anywhere: not in the loss, the confusion matrix, the boundary counts or the
baselines. Every other label must be a class index ``0..num_classes - 1``; anything
else (a 7 in a 2-class task, probabilities instead of class indices) raises a
``ValueError`` instead of landing in the wrong confusion cell.

Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image
Segmentation Evaluation", CVPR 2021, https://arxiv.org/abs/2103.16562) is IoU
restricted to the pixels within ``width`` pixels of each class's contour, in the
labels and in the prediction: it ignores the easy interior of a region and
measures how well its edges are placed.

An experiment in the book is a few seeds of :func:`fit` (:func:`fit_seeds`), reported
with :func:`summarize`, compared with :func:`disjoint` (a claim is made only when
the seeds' ranges do not overlap) and next to two baselines: :func:`trivial_baseline`,
the score of predicting the most frequent class everywhere, and :func:`otsu_baseline`,
one grey-level threshold (binary tasks). :func:`budget` picks the number of epochs
for the device: longer on a GPU, within the CPU limits on CI.
"""

from __future__ import annotations

import math
import numbers
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .model import _parameter, check_choice, check_images, check_positive, eval_mode, resize

__all__ = [
    "IGNORE_INDEX",
    "Metrics",
    "History",
    "LossName",
    "check_labels",
    "confusion_matrix",
    "metrics_from_confusion",
    "boundary_counts",
    "evaluate",
    "predict",
    "trivial_baseline",
    "otsu_baseline",
    "budget",
    "fit",
    "fit_seeds",
    "summarize",
    "disjoint",
    "portable_margin",
]

LossName = Literal["ce", "ce+dice"]
_FUSED_ADAMW_ON_CPU = torch.__version__ >= (2, 4)
IGNORE_INDEX = 255  # the label of pixels that count nowhere (unlabelled, void, object borders)


def _check_ignore_index(ignore_index: int | None, num_classes: int) -> int | None:
    """``ignore_index`` as an ``int`` (or ``None``), unless it is not an integer or is one of the classes."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise ValueError(f"ignore_index must be an integer label (255 by default) or None, got {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is one of the num_classes={num_classes} class indices; pass a label "
            f"outside 0..{num_classes - 1}, or ignore_index=None if no pixel is to be ignored"
        )
    return int(ignore_index)


def check_labels(
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = IGNORE_INDEX,
    what: str = "labels",
    fix: str | None = None,
) -> None:
    """Raise a ``ValueError`` that says what to pass unless ``labels`` are class indices.

    Class indices are an integer (or bool) tensor with values in ``0..num_classes - 1``
    or equal to ``ignore_index``. Probabilities or logits (floats), and labels outside
    the classes, would otherwise be counted in the wrong confusion cell without a word.
    ``what`` names the tensor in the message; ``fix`` replaces its advice for labels
    outside the classes.

    Example:
        >>> check_labels(torch.tensor([[0, 1, 255]]), num_classes=2)  # passes silently
    """
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{what} must hold integer class indices, got dtype {labels.dtype}: for predictions pass "
            "logits.argmax(1) (not probabilities or logits); for masks of whole numbers pass mask.long()"
        )
    if labels.dtype == torch.bool:
        if num_classes >= 2:
            return
        labels = labels.long()
    if labels.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if 0 <= lo and hi < num_classes:
        return  # the common case: one reduction, no further work
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        values = labels[bad].unique()
        shown = ", ".join(str(v) for v in values[:5].tolist()) + (", ..." if len(values) > 5 else "")
        ignored = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        n, top = int(bad.sum()), int(values.max())
        as_classes = f"pass num_classes={top + 1} if they are classes, or " if top >= num_classes else ""
        relabel = ignore_index if ignore_index is not None else IGNORE_INDEX
        fix = fix or f"{as_classes}relabel them {relabel} and pass that as ignore_index to leave them out"
        raise ValueError(
            f"{what} has {n} label{'s' if n != 1 else ''} outside the classes 0..{num_classes - 1}{ignored} "
            f"(values {shown}); {fix}"
        )


_PRED_FIX = "predictions are the argmax over num_classes logits: does the model return num_classes channels?"


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """(N, H, W) predicted and true class indices -> (num_classes, num_classes) int64 counts (on the CPU).

    Pixels whose target is ``ignore_index`` are not counted; any other value outside
    ``0..num_classes - 1``, or a floating-point tensor, raises a ``ValueError``.
    """
    num_classes = check_positive("num_classes", num_classes)
    ignore_index = _check_ignore_index(ignore_index, num_classes)
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of class indices, got {type(t).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    check_labels(target, num_classes, ignore_index, "target")
    check_labels(pred, num_classes, None, "pred", _PRED_FIX)
    idx = target.flatten().long() * num_classes + pred.flatten().long()
    if ignore_index is not None:
        idx = idx[target.flatten() != ignore_index]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def _inner_boundary(mask: torch.Tensor, width: int) -> torch.Tensor:
    """(N, H, W) bool -> the pixels of ``mask`` within ``width`` pixels of its contour (image borders count)."""
    outside = F.pad((~mask).float()[:, None], (1, 1, 1, 1), value=1.0)  # beyond the image is outside
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1, padding=width)[:, 0, 1:-1, 1:-1] > 0
    return mask & near_outside


def boundary_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    width: int = 2,
    ignore_index: int | None = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class intersection and union of the boundary regions, two (num_classes,) int64 tensors (CPU).

    Summed over batches, ``intersection / union`` is each class's boundary IoU. Pixels
    whose target is ``ignore_index`` belong to no class's region (contours next to
    them are contours) and are left out of both boundary regions.
    """
    num_classes = check_positive("num_classes", num_classes)
    width = check_positive("width", width)
    ignore_index = _check_ignore_index(ignore_index, num_classes)
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of class indices, got {type(t).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim != 3:
        raise ValueError(f"pred and target must be (N, H, W) class indices, got shape {tuple(pred.shape)}")
    check_labels(target, num_classes, ignore_index, "target")
    check_labels(pred, num_classes, None, "pred", _PRED_FIX)
    valid = target != ignore_index if ignore_index is not None else None
    inter, union = torch.zeros(num_classes, dtype=torch.long), torch.zeros(num_classes, dtype=torch.long)
    for k in range(num_classes):
        p, t = _inner_boundary(pred == k, width), _inner_boundary(target == k, width)
        if valid is not None:
            p, t = p & valid, t & valid
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
    if not isinstance(confusion, torch.Tensor) or confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        shape = tuple(confusion.shape) if isinstance(confusion, torch.Tensor) else type(confusion).__name__
        raise ValueError(f"confusion must be a (K, K) tensor of counts from confusion_matrix, got {shape}")
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


def _check_device(device: torch.device | str | None) -> torch.device | None:
    """``device`` as a ``torch.device`` (``None`` stays ``None``), or a ``ValueError`` that says what to pass."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device must be 'cpu', 'cuda' or a torch.device (segnotes.setup() returns one), got {device!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but no GPU is available; pass the device segnotes.setup() returns")
    return device


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """Where to run ``model``: ``device`` if given (the model is moved there), else where its weights are."""
    device = _check_device(device)
    if device is None:
        p = _parameter(model)
        return p.device if p is not None else torch.device("cpu")
    model.to(device)
    return device


def _check_batch(model: nn.Module, images: torch.Tensor) -> None:
    """Raise :func:`segnotes.model.check_images`' message unless ``images`` is a float batch of the model's dtype."""
    channels = getattr(model, "in_channels", None)
    if not isinstance(channels, int):  # a model without the contract's attribute: any channel count
        channels = images.shape[1] if isinstance(images, torch.Tensor) and images.ndim == 4 else 3
    p = _parameter(model)
    check_images(images, channels, p.dtype if p is not None else None)


def _check_output_stride(model: nn.Module, logits: torch.Tensor, images: torch.Tensor) -> None:
    """Raise a ``ValueError`` unless the logits have the size the model's declared ``output_stride`` promises.

    Every model of the book declares the stride of its logits (1: the input's size; SegFormer: 4), so
    a model that silently predicts at another resolution (say H/2) is caught instead of being resized.
    A module that declares nothing is not checked.
    """
    stride = getattr(model, "output_stride", None)
    if not isinstance(stride, int):
        return
    H, W = images.shape[-2:]
    expected = (-(-H // stride), -(-W // stride))  # ceil: a stride-s map covers a partial last cell
    if tuple(logits.shape[-2:]) != expected:
        raise ValueError(
            f"{type(model).__name__} declares output_stride={stride}, so {H}x{W} images should give "
            f"{expected[0]}x{expected[1]} logits, got {tuple(logits.shape[-2:])}: fix the model's head or "
            "its output_stride"
        )


def _check_logits(logits: torch.Tensor, batch: int, num_classes: int | None = None) -> None:
    """Raise a ``ValueError`` unless the model returned (batch, num_classes, h, w) logits."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return (B, num_classes, h, w) logits, got {shape}")
    if logits.shape[0] != batch:
        raise ValueError(f"the model returned {logits.shape[0]} logit maps for a batch of {batch} images")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"the model returns {logits.shape[1]} channels of logits but num_classes={num_classes}; "
            f"pass num_classes={logits.shape[1]} or build the model with num_classes={num_classes}"
        )


def _check_masks(masks: torch.Tensor, images: torch.Tensor, num_classes: int, ignore_index: int | None) -> None:
    """Raise a ``ValueError`` unless ``masks`` are (B, H, W) class indices for (B, C, H, W) ``images``."""
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"masks must be torch.Tensor class indices, got {type(masks).__name__}")
    if masks.ndim == 4 and masks.shape[1] == 1:
        raise ValueError(
            f"masks must be (B, H, W) class indices, got {tuple(masks.shape)}; drop the channel: mask[:, 0]"
        )
    if masks.ndim != 3 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"masks must be (B, H, W) class indices labelling every pixel of (B, C, H, W) images, "
            f"got masks {tuple(masks.shape)} for images {tuple(images.shape)}"
        )
    check_labels(masks, num_classes, ignore_index, "masks")


def _nonempty(data: Dataset | DataLoader, name: str, hint: str = "") -> None:
    try:
        n = len(data)
    except TypeError:
        raise ValueError(f"{name} must be a dataset or DataLoader with a length, got {type(data).__name__}") from None
    if n == 0:
        raise ValueError(
            f"{name} is empty{' (its DataLoader yields no batch)' if isinstance(data, DataLoader) else ''}"
            f"; pass at least one (image, mask) pair{hint}"
        )


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, C, H, W) images -> (B, H, W) predicted class indices (on the CPU).

    The model runs in eval mode on ``device`` (moved there if given; by default where
    its weights are) and is left in the mode it was in.
    """
    _check_batch(model, images)
    device = _model_device(model, device)
    with eval_mode(model):
        logits = model(images.to(device))
    _check_logits(logits, len(images))
    if logits.isnan().any():
        raise ValueError("the model's logits contain NaN: its weights or the images are not finite")
    return resize(logits, images.shape[-2:]).argmax(1).cpu()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    num_classes: int,
    device: torch.device | str | None = None,
    batch_size: int = 32,
    boundary: bool = False,
    boundary_width: int = 2,
    ignore_index: int | None = IGNORE_INDEX,
) -> Metrics:
    """Metrics of ``model`` over ``data`` (a dataset of (image, mask) pairs or a loader of batches).

    The model runs in eval mode on ``device`` (moved there if given; by default where
    its weights are) and is left in the mode it was in.

    Args:
        num_classes: the model's logit channels; masks hold 0..num_classes - 1 or ``ignore_index``.
        boundary: also compute boundary IoU (pixels within ``boundary_width`` of each contour).
        ignore_index: the label of pixels left out of every count (``None``: none).
    """
    num_classes = check_positive("num_classes", num_classes)
    boundary_width = check_positive("boundary_width", boundary_width)
    ignore_index = _check_ignore_index(ignore_index, num_classes)
    _nonempty(data, "data")
    loader = (
        data if isinstance(data, DataLoader) else DataLoader(data, batch_size=check_positive("batch_size", batch_size))
    )
    device = _model_device(model, device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    b_inter, b_union = torch.zeros(num_classes, dtype=torch.long), torch.zeros(num_classes, dtype=torch.long)
    with eval_mode(model):
        for images, masks in loader:
            _check_batch(model, images)
            _check_masks(masks, images, num_classes, ignore_index)
            masks = masks.to(device)
            logits = model(images.to(device))
            _check_logits(logits, len(images), num_classes)
            if logits.isnan().any():
                raise ValueError("the model's logits contain NaN: its weights or the images are not finite")
            pred = resize(logits, masks.shape[-2:]).argmax(1)
            confusion += confusion_matrix(pred, masks, num_classes, ignore_index)
            if boundary:
                inter, union = boundary_counts(pred, masks, num_classes, boundary_width, ignore_index)
                b_inter, b_union = b_inter + inter, b_union + union
    return metrics_from_confusion(confusion, (b_inter, b_union) if boundary else None)


def _stack_split(data: Dataset, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All (image, mask) pairs of a dataset as two tensors (N, C, H, W) and (N, H, W)."""
    _nonempty(data, what)
    images, masks = zip(*(data[i] for i in range(len(data))))
    return torch.stack(images), torch.stack(masks)


def trivial_baseline(
    train_data: Dataset, val_data: Dataset, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> Metrics:
    """The score of predicting the training set's most frequent class at every pixel of ``val_data``.

    A trained model has learned something only if it beats this clearly. Pixels
    labelled ``ignore_index`` are neither counted for the majority nor scored.
    """
    num_classes = check_positive("num_classes", num_classes)
    ignore_index = _check_ignore_index(ignore_index, num_classes)
    _, train_masks = _stack_split(train_data, "train_data")
    check_labels(train_masks, num_classes, ignore_index, "train_data's masks")
    labels = train_masks.flatten()
    if ignore_index is not None:
        labels = labels[labels != ignore_index]
    majority = int(torch.bincount(labels.long(), minlength=num_classes).argmax())
    _, val_masks = _stack_split(val_data, "val_data")
    return metrics_from_confusion(
        confusion_matrix(torch.full_like(val_masks, majority), val_masks, num_classes, ignore_index)
    )


def otsu_baseline(
    train_data: Dataset, val_data: Dataset, num_classes: int = 2, ignore_index: int | None = IGNORE_INDEX
) -> Metrics:
    """The score on ``val_data`` of one grey-level threshold fitted on ``train_data`` (Otsu, 1979).

    The classical baseline of a binary task: each pixel's grey value is the mean of
    its channels; Otsu's threshold (N. Otsu, "A Threshold Selection Method from
    Gray-Level Histograms", IEEE Trans. SMC 9(1), 1979) is the one that maximises the
    between-class variance of the training pixels' grey values. Which side is the
    foreground (class 1: brighter or darker than the threshold) is chosen on the
    training split too, as the one with the higher training IoU of class 1. Nothing
    is fitted on ``val_data``. A trained model that does not clearly beat this has
    learned no more than "the foreground is bright". Pixels labelled ``ignore_index``
    take no part in the fit or the score.

    Args:
        train_data, val_data: datasets of ``(image, mask)`` pairs, masks in {0, 1}.
        num_classes: must be 2.

    Raises:
        ValueError: for ``num_classes != 2`` (one threshold makes two classes).

    Example:
        >>> print(otsu_baseline(train, val))  # doctest: +SKIP
        mIoU 0.863, pixel accuracy 0.947
    """
    if num_classes != 2:
        raise ValueError(
            f"otsu_baseline thresholds one grey level into 2 classes, got num_classes={num_classes!r}; "
            "for a multi-class task use trivial_baseline(train_data, val_data, num_classes)"
        )
    from skimage.filters import threshold_otsu

    ignore_index = _check_ignore_index(ignore_index, 2)
    train_images, train_masks = _stack_split(train_data, "train_data")
    check_labels(train_masks, 2, ignore_index, "train_data's masks")
    grey = train_images.float().mean(1)  # (N, H, W)
    labelled = grey if ignore_index is None else grey[train_masks != ignore_index]
    if labelled.numel() == 0:
        raise ValueError(f"every training pixel is ignore_index={ignore_index}: nothing to fit a threshold on")
    if not torch.isfinite(labelled).all():
        raise ValueError("train_data's images contain NaN or infinite values; pass finite images")
    threshold = float(threshold_otsu(labelled.cpu().numpy()))  # a constant image gives its value: all background
    brighter = grey > threshold
    iou_bright = metrics_from_confusion(confusion_matrix(brighter.long(), train_masks, 2, ignore_index)).iou[1]
    iou_dark = metrics_from_confusion(confusion_matrix((~brighter).long(), train_masks, 2, ignore_index)).iou[1]
    foreground_brighter = not iou_dark > iou_bright  # ties (and nan: no foreground anywhere) keep "brighter"
    val_images, val_masks = _stack_split(val_data, "val_data")
    val_bright = val_images.float().mean(1) > threshold
    pred = val_bright if foreground_brighter else ~val_bright
    return metrics_from_confusion(confusion_matrix(pred.long(), val_masks, 2, ignore_index))


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
        if not self.train_loss:
            return "no epoch trained yet"
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
    cpu = check_positive("cpu", cpu)
    cuda = check_positive("cuda", cuda)
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device must be 'cpu', 'cuda' or a torch.device (segnotes.setup() returns one), got {device!r}"
        ) from None
    return cuda if kind == "cuda" else cpu


def _dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient; insensitive to how rare a class is.

    Pixels labelled ``ignore_index`` count in neither the probabilities nor the one-hot
    target (multiplied by 0; every other pixel by exactly 1, so nothing else changes).
    """
    probs = logits.softmax(1)  # (B, K, H, W)
    if ignore_index is None:
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)  # (B, K, H, W)
    else:
        valid = target != ignore_index
        onehot = F.one_hot(target.where(valid, 0), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        weight = valid[:, None].to(probs.dtype)  # (B, 1, H, W)
        probs, onehot = probs * weight, onehot * weight
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


def _check_integer(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_real(name: str, value: float, minimum: float, inclusive: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (value == minimum and not inclusive):
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def fit(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader | None = None,
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
    ignore_index: int | None = IGNORE_INDEX,
) -> History:
    """Train ``model`` with AdamW, a one-cycle learning rate and cross-entropy (+ Dice).

    Batches and weights are in the channels_last memory format while training (the fastest
    layout for convolutions) and AdamW is fused; the model comes back in the default layout.

    Args:
        model: maps (B, 3, H, W) to logits (B, num_classes, h, w); ``h, w`` may be smaller
            than the mask (logits are resized bilinearly).
        train_data, val_data: datasets of ``(image, mask)`` pairs (masks (H, W) of class
            indices), or DataLoaders of batches; validation after every epoch.
        num_classes: number of classes (the logits' channel count, checked), at least 2.
        epochs, batch_size, lr, weight_decay: the budget and the optimiser (``batch_size``
            is unused when ``train_data`` is a DataLoader, which batches and shuffles itself).
        loss: ``"ce"`` (cross-entropy) or ``"ce+dice"`` (adds soft Dice, which weighs
            every class equally however few pixels it has).
        augment: random flips and 90-degree rotations of each batch.
        boundary: also report boundary IoU on the validation set (slower evaluation).
        device: where to train (``segnotes.setup()`` returns the right one).
        progress: a live progress bar; ``None`` shows one unless the environment variable
            ``SEGNOTES_PROGRESS=0`` (set by ``make execute`` and the nbval run, so stored
            notebooks carry no bar).
        seed: seed of the shuffling order and the augmentation, so runs are reproducible.
        ignore_index: mask label of pixels that count in no loss and no metric (``None``: none).

    Returns:
        A :class:`History` with per-epoch training loss, validation mIoU and seconds,
        the last validation :class:`Metrics` and the trained model (in eval mode when
        it was validated last, else in train mode).

    Raises:
        ValueError: on bad arguments, masks that are not class indices of the images'
            size, logits whose channel count is not ``num_classes``, an empty dataset,
            or a loss that became NaN or infinite (naming the epoch and step).
    """
    num_classes = check_positive("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError("num_classes must be at least 2 (a softmax over the logits); a binary task has 2 classes")
    epochs = check_positive("epochs", epochs)
    batch_size = check_positive("batch_size", batch_size)
    check_choice("loss", loss, LossName)
    lr = _check_real("lr", lr, 0.0, inclusive=False)
    weight_decay = _check_real("weight_decay", weight_decay, 0.0, inclusive=True)
    seed = _check_integer("seed", seed)
    ignore_index = _check_ignore_index(ignore_index, num_classes)
    device = _check_device(device)
    _nonempty(train_data, "train_data")
    if val_data is not None:
        _nonempty(val_data, "val_data", hint=", or val_data=None to train without validation")
    # channels_last is the layout oneDNN (CPU) and cuDNN (GPU) convolve fastest in (benchmarks/training.py
    # measures the gain per model). The model returns to the default layout at the end.
    model.to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(train_data, DataLoader):
        loader = train_data
    else:
        loader = DataLoader(
            train_data, batch_size=batch_size, shuffle=True, generator=generator, drop_last=len(train_data) > batch_size
        )
    _nonempty(loader, "train_data", hint=" per batch (drop_last=True drops a last incomplete batch)")
    # fused: one kernel updates every weight, instead of a dozen small ops per tensor; torch has it
    # on CPU since 2.4, on GPUs since 2.0.
    first = _parameter(model)
    fused = _FUSED_ADAMW_ON_CPU or (first is not None and first.is_cuda)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.2
    )
    history = History(model=model)
    bar = None
    if _progress_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * len(loader), desc="training", leave=True)
    cross_entropy_ignore = -100 if ignore_index is None else ignore_index  # F.cross_entropy's "none"
    for epoch in range(epochs):
        model.train()
        start, total, count = time.perf_counter(), torch.zeros((), device=device), 0
        first_bad = torch.full((), -1, device=device)  # the first step with a non-finite loss; no host sync per step
        for step, (images, masks) in enumerate(loader):
            _check_batch(model, images)
            _check_masks(masks, images, num_classes, ignore_index)
            if ignore_index is not None and bool((masks == ignore_index).all()):
                raise ValueError(
                    f"every pixel of step {step + 1} of epoch {epoch + 1} is ignore_index={ignore_index}: the loss is "
                    "undefined; drop images without a labelled pixel from train_data"
                )
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            if augment:
                images, masks = _augment(images, masks, generator)
            images = images.contiguous(memory_format=torch.channels_last)
            logits = model(images)
            _check_logits(logits, len(images), num_classes)
            _check_output_stride(model, logits, images)
            logits = resize(logits, masks.shape[-2:])
            batch_loss = F.cross_entropy(logits, masks.long(), ignore_index=cross_entropy_ignore)
            if loss == "ce+dice":
                batch_loss = batch_loss + _dice_loss(logits, masks.long(), ignore_index)
            first_bad = torch.where((first_bad < 0) & ~batch_loss.detach().isfinite(), step, first_bad)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            schedule.step()
            total += batch_loss.detach() * len(images)  # stays on the device: no host sync per step
            count += len(images)
            if bar is not None:
                bar.update(1)
        if int(first_bad) >= 0:
            if bar is not None:
                bar.close()
            raise ValueError(
                f"the training loss became NaN or infinite at epoch {epoch + 1} of {epochs}, step "
                f"{int(first_bad) + 1} of {len(loader)}, and the weights with it; check that the images are "
                f"finite (torch.isfinite(images).all()) or lower lr={lr}"
            )
        history.train_loss.append(float(total) / count)
        history.seconds.append(time.perf_counter() - start)
        history.steps += len(loader)
        history.images += count
        if val_data is not None:
            history.metrics = evaluate(
                model, val_data, num_classes, device, boundary=boundary, ignore_index=ignore_index
            )
            model.eval()  # as before: a validated model is returned in eval mode
            history.val_miou.append(history.metrics.miou)
            history.val_pixel_accuracy.append(history.metrics.pixel_accuracy)
            if bar is not None:
                bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", miou=f"{history.metrics.miou:.3f}")
    if bar is not None:
        bar.close()
    model.to(memory_format=torch.contiguous_format)
    return history


def fit_seeds(
    build: Callable[[], nn.Module],
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    **fit_kwargs,
) -> list[History]:
    """Train a fresh model per seed: ``torch.manual_seed(seed)``, ``build()``, :func:`fit` with ``seed=seed``.

    The seed decides the initial weights, the shuffling order and the augmentation,
    so the spread of the results says how much of a difference is luck. The seeds
    must differ, and ``build`` must return a new model each time (a shared model
    would go on training the same weights).

    Example:
        >>> build = lambda: unet("smp", "resnet18", num_classes=2)  # segnotes.unet.unet
        >>> runs = fit_seeds(build, train, val, num_classes=2)  # doctest: +SKIP
        >>> summarize([r.final for r in runs])  # doctest: +SKIP
    """
    if isinstance(build, nn.Module) or not callable(build):
        raise ValueError(
            f"build must be a function that returns a new model, e.g. lambda: unet(...), got {type(build).__name__}"
        )
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds must be a sequence of integers, e.g. seeds=(0, 1, 2), got {seeds!r}")
    seeds = list(seeds)
    if len(seeds) < 1:
        raise ValueError("seeds must name at least one seed, e.g. seeds=(0, 1, 2)")
    seeds = [_check_integer("every seed", s) for s in seeds]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds must differ, got {tuple(seeds)}: a repeated seed repeats the same run")
    if "seed" in fit_kwargs:
        raise ValueError("fit_seeds passes each of seeds=(...) to fit: pass seeds, not seed")
    histories = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build()
        if not isinstance(model, nn.Module):
            raise ValueError(f"build() must return an nn.Module, got {type(model).__name__}")
        shared = {id(p) for h in histories for p in h.model.parameters()}
        if any(id(p) in shared for p in model.parameters()):
            raise ValueError(
                f"build() returned a model that shares weights with an earlier seed's (seed {seed}); "
                "build a new model inside the function, e.g. lambda: unet(...), not lambda: model"
            )
        histories.append(fit(model, train_data, val_data, seed=seed, **fit_kwargs))
    return histories


def _check_values(values: Sequence[float], what: str) -> list[float]:
    """The values as floats, or a ``ValueError`` for a non-number or a non-finite one."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{what} must be a list of numbers, e.g. [h.final for h in runs], got {type(values).__name__}")
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {list(values)!r}") from None
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(
            f"{what} contain a NaN or infinite value ({floats}); a run without validation data has final = nan"
        )
    return floats


def summarize(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± std (min a, max b)"`` of a few runs' results, e.g. mIoU over seeds.

    Example:
        >>> summarize([0.91, 0.914, 0.912])
        '0.912 ± 0.002 (min 0.910, max 0.914)'
    """
    values = _check_values(values, "values")
    if len(values) == 0:
        raise ValueError("summarize needs at least one value")
    if isinstance(digits, bool) or not isinstance(digits, numbers.Integral) or digits < 0:
        raise ValueError(f"digits must be a non-negative integer, got {digits!r}")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    f = f".{digits}f"
    return f"{statistics.fmean(values):{f}} ± {std:{f}} (min {min(values):{f}}, max {max(values):{f}})"


def portable_margin(*groups: Sequence[float], floor: float = 0.05) -> float:
    """The margin a checked claim about trained results keeps: max(``floor``, 3 x the seeds' largest std).

    Trained values move in the last digits from one CPU to another (other SIMD kernels, another
    float path, a GPU's longer budget), and training amplifies it. A threshold or a ranking
    that stays this far from every seed's value survives that; the book checks only such
    claims. The std is the sample standard deviation (ddof=1) of each group of seeds.

    Args:
        groups: one sequence of per-seed results per model, at least two values each.
        floor: the smallest margin, whatever the spread.

    Example:
        >>> round(portable_margin([0.51, 0.60, 0.53], [0.29, 0.28, 0.29]), 3)
        0.142
    """
    if not groups:
        raise ValueError("portable_margin needs at least one group of per-seed values")
    stds = []
    for group in groups:
        values = _check_values(group, "each group")
        if len(values) < 2:
            raise ValueError(f"a spread needs at least two seeds per group, got {len(values)} value(s)")
        stds.append(statistics.stdev(values))
    return max(_check_real("floor", floor, 0.0, inclusive=True), 3 * max(stds))


def disjoint(higher: Sequence[float], lower: Sequence[float], margin: float = 0.0) -> bool:
    """True when every value of ``higher`` exceeds every value of ``lower`` by more than ``margin``.

    The book claims "A beats B" only when this holds over the seeds.

    Example:
        >>> disjoint([0.91, 0.92], [0.40, 0.45], margin=0.2)
        True
    """
    higher, lower = _check_values(higher, "higher"), _check_values(lower, "lower")
    if len(higher) == 0 or len(lower) == 0:
        raise ValueError("disjoint needs at least one value on each side")
    margin = _check_real("margin", margin, -math.inf, inclusive=True)
    return min(higher) - max(lower) > margin
