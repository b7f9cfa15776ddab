"""Figures used across the book: image/mask/prediction grids, feature maps, curves, receptive fields.

Every function returns the matplotlib ``Figure`` (notebooks display it as PNG).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Circle, Patch

from .data import CLASS_NAMES, PALETTE

__all__ = ["colorize", "show_segmentation", "show_features", "plot_history", "show_receptive_fields"]


def _to_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) tensor or (H, W, 3) array -> (H, W, 3) float array in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float()
        image = image.permute(1, 2, 0) if image.ndim == 3 and image.shape[0] in (1, 3) else image
        image = image.numpy()
    return np.clip(image, 0, 1)


def colorize(mask: torch.Tensor | np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours from ``palette``."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return palette[mask]


def show_segmentation(
    images: torch.Tensor | Sequence,
    masks: torch.Tensor | Sequence,
    predictions: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    palette: np.ndarray = PALETTE,
    size: float = 1.8,
):
    """A grid with one row per image: image, ground truth, then one column per prediction.

    Args:
        images: (B, 3, H, W) images in [0, 1].
        masks: (B, H, W) true class indices.
        predictions: (B, H, W) predicted indices, or ``{"model name": (B, H, W)}`` for several models.
        class_names, palette: legend labels and colours.
        size: inches per panel.
    """
    if isinstance(predictions, torch.Tensor):
        predictions = {"prediction": predictions}
    predictions = dict(predictions or {})
    cols = 2 + len(predictions)
    fig, axes = plt.subplots(len(images), cols, figsize=(size * cols, size * len(images) + 0.4), squeeze=False)
    for r in range(len(images)):
        panels = [("image", _to_numpy_image(images[r])), ("truth", colorize(masks[r], palette))]
        panels += [(name, colorize(p[r], palette)) for name, p in predictions.items()]
        for ax, (title, panel) in zip(axes[r], panels):
            ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=9)
    handles = [Patch(color=palette[i] / 255, label=name) for i, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(class_names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def show_features(feature: torch.Tensor, n: int = 8, title: str | None = None, size: float = 1.3):
    """The ``n`` most active channels of one (C, H, W) or (1, C, H, W) feature map, one panel each."""
    feature = feature.detach().cpu().float()
    feature = feature[0] if feature.ndim == 4 else feature
    if feature.ndim != 3 or feature.shape[0] == 0:
        raise ValueError(f"expected a (C, H, W) feature map with C > 0, got shape {tuple(feature.shape)}")
    order = feature.flatten(1).std(1).argsort(descending=True)[:n]
    fig, axes = plt.subplots(1, len(order), figsize=(size * len(order), size + 0.3), squeeze=False)
    for ax, c in zip(axes[0], order.tolist()):
        ax.imshow(feature[c].numpy(), cmap="viridis", interpolation="nearest")  # true pixels; PNGs stay small
        ax.set_title(f"ch {c}", fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_history(histories: Mapping[str, object], axes=None):
    """Training loss and validation mIoU per epoch for one or more :class:`segnotes.train.History`."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    else:
        fig = axes[0].figure
    for name, h in histories.items():
        epochs = range(1, len(h.train_loss) + 1)
        axes[0].plot(epochs, h.train_loss, marker="o", label=name)
        if h.val_miou:
            axes[1].plot(epochs, h.val_miou, marker="o", label=name)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="validation mIoU", title="mIoU", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def show_receptive_fields(
    fields: Mapping[str, object], fraction: float = 0.5, size: float = 2.2, columns: int | None = None
):
    """One panel per effective receptive field (shared log colour scale) with the disc that holds ``fraction`` of it.

    Args:
        fields: ``{"title": ReceptiveField}`` (:class:`segnotes.erf.ReceptiveField`: ``map``, ``centre``, ``radius``,
            ``relative_radius``).
        fraction: share of the mass inside the drawn disc, in (0, 1].
        size: inches per panel.
        columns: panels per row; default: all in one row.

    Returns:
        The matplotlib ``Figure``. Colours are log10 of each map's share per pixel, with the
        same limits on every panel (4 decades below the largest value), so a faint
        far-away floor that a linear scale hides stays visible and panels compare.
    """
    if not fields:
        raise ValueError("fields is empty: pass {'title': ReceptiveField, ...}")
    columns = columns or len(fields)
    rows = math.ceil(len(fields) / columns)
    logs = {title: field.map.detach().cpu().float().clamp(min=1e-12).log10() for title, field in fields.items()}
    vmax = max(float(image.max()) for image in logs.values())
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns + 0.8, size * rows + 0.3), squeeze=False)
    for ax in axes.flat[len(fields) :]:
        ax.set_axis_off()
    for ax, (title, field) in zip(axes.flat, fields.items()):
        im = ax.imshow(logs[title].numpy(), cmap="magma", vmin=vmax - 4, vmax=vmax)
        r = field.radius(fraction)
        ax.add_patch(Circle(field.centre[::-1], r, fill=False, color="cyan", lw=1.2))
        ax.set_title(
            f"{title}\nr{fraction * 100:.0f} = {r:.0f} px ({field.relative_radius(fraction):.2f} x uniform)", fontsize=8
        )
        ax.set_axis_off()
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="log10 share of the gradient")
    return fig
