"""Chapters 2 and 3: measurements that explain why a design choice wins.

* :func:`stride_ceiling`: the best foreground IoU that a prediction made at stride ``s``
  can reach on given masks, whatever the model. With ``mode="nearest"`` every
  ``s x s`` cell of the prediction carries one label, and the result is the exact
  ceiling of :func:`segnotes.resolution.block_ceiling` (the best such prediction marks
  the cells with the highest foreground share first, so trying every share that occurs
  is enough). With
  ``mode="bilinear"`` the shares are upsampled bilinearly before the threshold: the
  same oracle with a smooth upsampler (a lower bound of that family's ceiling, not an
  exact one). A network whose finest information about the image is at stride ``s``
  cannot beat this number by much; thin structures make it small.
* :func:`checkerboard_energy`: the share of a map's power at the Nyquist frequency
  (period 2 along rows or columns), where the checkerboard of a stride-2 upsampler
  lives (Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016).
* :func:`skips_zeroed`: a context manager that replaces the encoder maps at some
  strides by zeros, so a trained UNet can be evaluated without one of its skips: what
  each skip carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .model import check_choice

__all__ = ["CeilingMode", "stride_ceiling", "checkerboard_energy", "skips_zeroed"]

CeilingMode = Literal["nearest", "bilinear"]


def _check_masks(masks: torch.Tensor, stride: int) -> torch.Tensor:
    if masks.ndim != 3:
        shape = tuple(masks.shape)
        raise ValueError(f"masks must be (N, H, W) class indices, got shape {shape}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer (1, 2, 4, ...), not {stride!r}")
    H, W = masks.shape[-2:]
    if H % stride or W % stride:
        fix = "crop the masks or pick a divisor"
        raise ValueError(f"mask size {H}x{W} is no multiple of stride {stride}; {fix}")
    return masks


def _iou(pred: torch.Tensor, truth: torch.Tensor) -> float:
    inter = (pred & truth).sum().item()
    union = (pred | truth).sum().item()
    return inter / union if union else float("nan")


@torch.no_grad()
def stride_ceiling(
    masks: torch.Tensor,
    stride: int,
    mode: CeilingMode = "nearest",
    foreground: int = 1,
) -> float:
    """Best IoU of class ``foreground`` of a prediction at ``stride``, upsampled.

    The oracle knows the truth: it averages the foreground indicator over every
    ``stride x stride`` cell (the share of foreground pixels), upsamples these shares
    back to full size with ``mode`` and thresholds them; the threshold that maximises
    the IoU over all ``masks`` together is used. With ``"nearest"`` this is exact: no
    prediction that is constant on the cells scores higher.

    Args:
        masks: (N, H, W) integer class indices; H and W multiples of ``stride``.
        stride: the prediction's stride (1 reproduces the masks: IoU 1).
        mode: ``"nearest"`` (exact ceiling) or ``"bilinear"`` (the smooth oracle).
        foreground: the class whose IoU is returned.

    Returns:
        The IoU, a float in [0, 1] (``nan`` when the class occurs nowhere).

    Example:
        >>> masks = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> masks[:, 3] = 1  # a horizontal line 1 pixel wide
        >>> stride_ceiling(masks, 4)  # the best 4x4 cells cover it 4 pixels wide
        0.25
    """
    check_choice("mode", mode, CeilingMode)
    truth = _check_masks(masks, stride) == foreground  # (N, H, W) bool
    if stride == 1:
        return _iou(truth, truth)
    share = F.avg_pool2d(truth.double()[:, None], stride)  # (N, 1, H/s, W/s)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(share, truth.shape[-2:], mode=mode, **kwargs)[:, 0]  # (N, H, W)
    levels = torch.arange(1, stride * stride + 1, dtype=torch.float64) / stride**2
    if mode == "bilinear":  # smooth values: a finer grid of thresholds
        levels = torch.linspace(0.02, 1.0, 50, dtype=torch.float64)
    best = 0.0
    for t in levels:
        best = max(best, _iou(up >= t - 1e-9, truth))
    return best


@torch.no_grad()
def checkerboard_energy(y: torch.Tensor) -> float:
    """Share of the power of ``y`` (its mean removed per map) at the Nyquist frequency.

    A 2-D map's Fourier power at period 2 along the rows or the columns (frequency
    index ``H / 2`` or ``W / 2``) over its total power, summed over all maps. An
    upsampler whose sub-pixel positions get systematically different values puts power
    there: the checkerboard. Nearest and bilinear upsampling of a flat map put none.

    Args:
        y: (..., H, W) maps with even H and W (e.g. (B, C, H, W) decoder outputs).

    Returns:
        A float in [0, 1]; 0 when every map is constant.

    Example:
        >>> checkerboard_energy(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4))
        1.0
    """
    H, W = y.shape[-2:]
    if y.ndim < 2 or H % 2 or W % 2:
        shape = tuple(y.shape)
        raise ValueError(f"need (..., H, W) maps with even H and W, got shape {shape}")
    y = y.double()
    y = y - y.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(y).abs() ** 2  # (..., H, W)
    nyquist = torch.zeros(H, W, dtype=torch.bool, device=y.device)
    nyquist[H // 2, :] = True
    nyquist[:, W // 2] = True
    total = power.sum().item()
    return power[..., nyquist].sum().item() / total if total > 0 else 0.0


@contextmanager
def skips_zeroed(model: nn.Module, strides: Iterable[int]) -> Iterator[nn.Module]:
    """Within the block, ``model.encoder``'s maps at ``strides`` are replaced by zeros.

    For a UNet this removes those skips (a zero input adds nothing to a convolution
    without bias): evaluate a trained model with and without one skip to see what it
    carries. The bottleneck (the last map) cannot be zeroed.

    Args:
        model: a model whose ``encoder`` returns a list of maps and declares ``strides``
            (every :class:`segnotes.model.SegmentationModel` with an SMP-style encoder).
        strides: strides of the maps to zero, e.g. ``(2,)``; each one the encoder has.

    Example:
        >>> with skips_zeroed(model, (2, 4)):  # doctest: +SKIP
        ...     metrics = evaluate(model, val, num_classes=2)
    """
    encoder = getattr(model, "encoder", None)
    declared: Sequence[int] | None = getattr(encoder, "strides", None)
    if declared is None:
        need = "a model whose `encoder` declares `strides` (e.g. a segnotes Unet)"
        raise ValueError(f"skips_zeroed needs {need}")
    strides = list(strides)
    unknown = [s for s in strides if s not in declared[1:-1]]
    if unknown:
        skips = list(declared[1:-1])
        raise ValueError(f"strides {unknown} are not skips of the encoder; pick from {skips}")
    indices = [list(declared).index(s) for s in strides]

    def hook(module: nn.Module, inputs: tuple, maps: list) -> list[torch.Tensor]:
        return [torch.zeros_like(m) if i in indices else m for i, m in enumerate(maps)]

    handle = encoder.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()
