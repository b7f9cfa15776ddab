"""Chapter 3: how a decoder upsamples, by interpolation or by a learnable layer.

Interpolation (``F.interpolate``) has no parameters; its modes differ in which input
pixels an output pixel looks at: ``"nearest"`` copies one (PyTorch's legacy rule,
``floor(o / s)``), ``"nearest-exact"`` copies the one whose centre is closest
(``floor((o + 0.5) / s)``, what Pillow and scikit-image do), ``"bilinear"`` and
``"bicubic"`` blend 2x2 and 4x4 neighbours, ``"area"`` averages the input area an
output pixel covers (the same as nearest when enlarging by an integer factor). Only the
linear and cubic modes take ``align_corners``; the book always uses ``False`` (pixel
*centres* are aligned, so a 2x upsampling of an image and of its crop agree).

Two learnable upsamplers start as an interpolation and can learn from there:

* ``"transposed"``: a ConvTranspose2d whose kernel is the bilinear kernel (Long et al.,
  "Fully Convolutional Networks", https://arxiv.org/abs/1411.4038). With an edge pad
  of one pixel it reproduces ``F.interpolate(mode="bilinear")`` exactly at
  initialisation, borders included.
* ``"pixelshuffle"``: a convolution to ``s * s`` sub-pixel channels followed by
  ``nn.PixelShuffle`` (Shi et al., https://arxiv.org/abs/1609.05158) with ICNR
  initialisation (Aitken et al., https://arxiv.org/abs/1707.02937): all sub-pixels
  start from the same kernel, here the identity, so the layer starts as nearest
  upsampling and has no checkerboard artefacts.

Both are depthwise (one small kernel per channel): a dense C -> C transposed
convolution on a UNet's 1280-channel bottleneck would add 1280 * 1280 * 16 = 26M
parameters, four times the whole model.

Every upsampler is called as ``up(x, size)``: a decoder upsamples to its skip's size,
not by a fixed factor, so odd sizes work. A learnable layer upsamples by ``scale`` and
then fits the result to ``size``: it crops the bottom/right excess when it is smaller
than ``scale`` (the extra row/column a stride-2 convolution's ceil rounding leaves),
and otherwise resizes bilinearly.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODES", "INTERPOLATION_MODES", "Interpolate", "BilinearTransposed", "PixelShuffleICNR", "make_upsample", "bilinear_kernel"]

Mode = Literal["nearest", "nearest-exact", "bilinear", "bicubic", "area", "transposed", "pixelshuffle"]
MODES: tuple[str, ...] = get_args(Mode)
INTERPOLATION_MODES: tuple[str, ...] = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
_ALIGN_CORNERS_MODES = ("bilinear", "bicubic")  # F.interpolate rejects align_corners for the others

Size = tuple[int, int]


def _target(x: torch.Tensor, size: Size | None, scale: int) -> Size:
    return (scale * x.shape[-2], scale * x.shape[-1]) if size is None else (int(size[0]), int(size[1]))


def _fit(x: torch.Tensor, size: Size, scale: int) -> torch.Tensor:
    """Crop (excess < scale) or bilinearly resize (B, C, h, w) to ``size``."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if 0 <= h - size[0] < scale and 0 <= w - size[1] < scale:
        return x[..., : size[0], : size[1]]  # the ceil-rounded last row/column of a stride-s conv
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Interpolate(nn.Module):
    """Parameter-free upsampling with ``F.interpolate``: (B, C, h, w) -> (B, C, *size).

    Args:
        mode: one of :data:`INTERPOLATION_MODES`.
        scale: factor used when no ``size`` is given.
        align_corners: only for ``"bilinear"`` / ``"bicubic"`` (``False``: align pixel centres).
    """

    def __init__(self, mode: str = "nearest", scale: int = 2, align_corners: bool = False):
        super().__init__()
        if mode not in INTERPOLATION_MODES:
            raise ValueError(f"unknown interpolation mode {mode!r}; choose one of {INTERPOLATION_MODES}")
        self.mode, self.scale = mode, scale
        self.align_corners = align_corners if mode in _ALIGN_CORNERS_MODES else None

    def forward(self, x: torch.Tensor, size: Size | None = None) -> torch.Tensor:
        return F.interpolate(x, size=_target(x, size, self.scale), mode=self.mode, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, scale={self.scale}"


def bilinear_kernel(scale: int) -> torch.Tensor:
    """The (K, K) kernel, K = 2 * scale - scale % 2, of a stride-``scale`` transposed convolution
    that performs bilinear upsampling with ``align_corners=False``."""
    k = 2 * scale - scale % 2
    centre = (k - 1) / 2
    w = 1 - (torch.arange(k, dtype=torch.float64) - centre).abs() / scale  # tent, zero at distance `scale`
    return torch.outer(w, w).float()


class BilinearTransposed(nn.Module):
    """Depthwise ConvTranspose2d initialised as exact bilinear upsampling.

    The input is edge-padded by one pixel, transposed-convolved (kernel
    ``2 * scale - scale % 2``, stride ``scale``) and cropped, so even the border pixels equal
    ``F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)`` at init.

    Shapes:
        (B, C, h, w) -> (B, C, *size), default size (scale * h, scale * w).
    """

    def __init__(self, channels: int, scale: int = 2):
        super().__init__()
        k = 2 * scale - scale % 2
        self.scale = scale
        self.conv = nn.ConvTranspose2d(channels, channels, k, stride=scale, padding=scale // 2, groups=channels, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(bilinear_kernel(scale).expand_as(self.conv.weight))

    def forward(self, x: torch.Tensor, size: Size | None = None) -> torch.Tensor:
        s = self.scale
        y = self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))  # (B, C, s (h + 2), s (w + 2))
        return _fit(y[..., s:-s, s:-s], _target(x, size, s), s)


class PixelShuffleICNR(nn.Module):
    """Depthwise sub-pixel convolution with ICNR init: nearest upsampling at initialisation.

    A 3x3 depthwise convolution maps each channel to ``scale**2`` sub-pixel channels,
    ``nn.PixelShuffle`` interleaves them into a ``scale``-times larger map. ICNR gives
    every sub-pixel the same kernel (here the identity), so the output starts as
    ``F.interpolate(x, scale_factor=scale, mode="nearest")``.

    Shapes:
        (B, C, h, w) -> (B, C, *size), default size (scale * h, scale * w).
    """

    def __init__(self, channels: int, scale: int = 2):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels, channels * scale**2, 3, padding=1, groups=channels)
        self.shuffle = nn.PixelShuffle(scale)  # channel c * s^2 + (i * s + j) -> pixel (s y + i, s x + j)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1, 1] = 1.0  # identity, repeated for every sub-pixel (ICNR)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, size: Size | None = None) -> torch.Tensor:
        y = self.shuffle(self.conv(x))  # (B, C, s h, s w)
        return _fit(y, _target(x, size, self.scale), self.scale)


def make_upsample(mode: Mode = "nearest", channels: int | None = None, scale: int = 2) -> nn.Module:
    """An upsampler ``up(x, size=None)`` for one of :data:`MODES`.

    Args:
        mode: ``"nearest"`` (default, as segmentation_models.pytorch), ``"nearest-exact"``,
            ``"bilinear"``, ``"bicubic"``, ``"area"`` (interpolation, no parameters),
            ``"transposed"`` (bilinear-initialised transposed convolution) or
            ``"pixelshuffle"`` (sub-pixel convolution, ICNR-initialised to nearest).
        channels: channels of the input; needed by the learnable modes.
        scale: upsampling factor (an integer >= 2) used when ``size`` is not given, and the
            factor of the learnable layers.

    Returns:
        A module mapping (B, C, h, w) (and an optional target ``size``) to (B, C, H, W).

    Raises:
        ValueError: unknown mode, bad scale, or a learnable mode without ``channels``.

    Example:
        >>> make_upsample("bilinear")(torch.randn(1, 8, 5, 5), size=(9, 9)).shape
        torch.Size([1, 8, 9, 9])
    """
    if mode not in MODES:
        raise ValueError(f"unknown upsampling mode {mode!r}; choose one of {MODES}")
    if not isinstance(scale, int) or scale < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
    if mode in INTERPOLATION_MODES:
        return Interpolate(mode, scale)
    if not channels or channels < 1:
        raise ValueError(f"mode {mode!r} has weights: pass the input's channel count, got channels={channels!r}")
    return BilinearTransposed(channels, scale) if mode == "transposed" else PixelShuffleICNR(channels, scale)
