"""Chapter 3: how a decoder upsamples, by interpolation or by a learnable layer.

Interpolation (``F.interpolate``) has no parameters; its modes differ in which input
pixels an output pixel looks at: ``"nearest"`` copies one (PyTorch's legacy rule,
``floor(o / s)``), ``"nearest-exact"`` copies the one whose centre is closest
(``floor((o + 0.5) / s)``, what Pillow and scikit-image do), ``"bilinear"`` and
``"bicubic"`` blend 2x2 and 4x4 neighbours, ``"area"`` averages the input area an
output pixel covers (the same as nearest when enlarging by an integer factor). Only the
linear and cubic modes take ``align_corners``; the book always uses ``False`` (pixel
*centres* are aligned, so a 2x upsampling of an image and of its crop agree).

Two learnable upsamplers keep the channel count, start as an interpolation and learn
from there; they are depthwise (one small kernel per channel, ``C * 16`` and ``C * 40``
parameters at 2x), so they can replace an interpolation anywhere:

* ``"transposed"``: a ConvTranspose2d whose kernel is the bilinear kernel (Long et al.,
  "Fully Convolutional Networks", https://arxiv.org/abs/1411.4038). With an edge pad
  of one pixel it reproduces ``F.interpolate(mode="bilinear")`` exactly at
  initialisation, borders included.
* ``"pixelshuffle"``: a convolution to ``s * s`` sub-pixel channels followed by
  ``nn.PixelShuffle`` (Shi et al., https://arxiv.org/abs/1609.05158) with ICNR
  initialisation (Aitken et al., https://arxiv.org/abs/1707.02937): all sub-pixels
  start from the same kernel, here the identity, so the layer starts as nearest
  upsampling and has no checkerboard artefacts.

:class:`UpConv` is the other transposed convolution readers meet: the U-Net paper's
"up-convolution", a 2x2 kernel with stride 2 that also *reduces* the channels (e.g.
1280 -> 256: 1.3M parameters). It changes the channel count, so it is not one of the
modes a decoder block swaps in; chapter 3 compares it with the depthwise layers.

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

from .model import check_choice, check_positive, resize

__all__ = [
    "InterpolationMode",
    "LearnableMode",
    "UpsampleMode",
    "MODES",
    "INTERPOLATION_MODES",
    "Interpolate",
    "bilinear_kernel",
    "BilinearTransposed",
    "PixelShuffleICNR",
    "UpConv",
    "make_upsample",
]

InterpolationMode = Literal["nearest", "nearest-exact", "bilinear", "bicubic", "area"]
LearnableMode = Literal["transposed", "pixelshuffle"]
UpsampleMode = Literal[InterpolationMode, LearnableMode]  # nested Literals flatten: one list of 7 modes
MODES: tuple[str, ...] = get_args(UpsampleMode)  # derived, for loops over every mode
INTERPOLATION_MODES: tuple[str, ...] = get_args(InterpolationMode)


def _target(x: torch.Tensor, size: tuple[int, int] | None, scale: int) -> tuple[int, int]:
    return (scale * x.shape[-2], scale * x.shape[-1]) if size is None else (int(size[0]), int(size[1]))


def _fit(x: torch.Tensor, size: tuple[int, int], scale: int) -> torch.Tensor:
    """Crop (B, C, h, w) to ``size`` when the excess is in [0, scale), else resize bilinearly."""
    h, w = x.shape[-2:]
    if 0 <= h - size[0] < scale and 0 <= w - size[1] < scale:
        return x[..., : size[0], : size[1]]  # drops the ceil-rounded last row/column of a stride-s conv, if any
    return resize(x, size)


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise ValueError(f"scale must be an integer >= 2 (the upsampling factor), got {scale!r}")
    return scale


class Interpolate(nn.Module):
    """Parameter-free upsampling with ``F.interpolate``: (B, C, h, w) -> (B, C, H, W), (H, W) = ``size``.

    Args:
        mode: one of ``"nearest"``, ``"nearest-exact"``, ``"bilinear"``, ``"bicubic"``, ``"area"``.
        scale: factor used when no ``size`` is given.

    Example:
        >>> Interpolate("bilinear")(torch.zeros(1, 4, 5, 5)).shape
        torch.Size([1, 4, 10, 10])
    """

    def __init__(self, mode: InterpolationMode = "nearest", scale: int = 2):
        super().__init__()
        self.mode = check_choice("mode", mode, InterpolationMode)
        self.scale = _check_scale(scale)
        # F.interpolate rejects align_corners for the modes that do not blend; False aligns pixel centres.
        self.align_corners = False if mode in ("bilinear", "bicubic") else None

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return F.interpolate(x, size=_target(x, size, self.scale), mode=self.mode, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, scale={self.scale}"


def bilinear_kernel(scale: int) -> torch.Tensor:
    """The (K, K) kernel, K = 2 * scale - scale % 2, of a stride-``scale`` transposed convolution
    that performs bilinear upsampling with ``align_corners=False``.

    Example:
        >>> bilinear_kernel(2)[0]
        tensor([0.0625, 0.1875, 0.1875, 0.0625])
    """
    k = 2 * scale - scale % 2
    centre = (k - 1) / 2
    w = 1 - (torch.arange(k, dtype=torch.float64) - centre).abs() / scale  # tent, zero at distance `scale`
    return torch.outer(w, w).float()


class BilinearTransposed(nn.Module):
    """Depthwise ConvTranspose2d initialised as exact bilinear upsampling.

    The input is edge-padded by one pixel, transposed-convolved (kernel
    ``2 * scale - scale % 2``, stride ``scale``) and cropped, so even the border pixels equal
    ``F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)`` at init.

    Args:
        channels: channels in and out (one kernel per channel).
        scale: upsampling factor, an integer >= 2.

    Shapes:
        (B, C, h, w) -> (B, C, H, W), (H, W) = ``size``, by default (scale * h, scale * w).

    Example:
        >>> BilinearTransposed(8)(torch.zeros(1, 8, 5, 5)).shape
        torch.Size([1, 8, 10, 10])
    """

    def __init__(self, channels: int, scale: int = 2):
        super().__init__()
        s = self.scale = _check_scale(scale)
        k = 2 * s - s % 2  # wide enough for the tent, and a multiple of the stride: even overlap
        self.conv = nn.ConvTranspose2d(channels, channels, k, stride=s, padding=s // 2, groups=channels, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(bilinear_kernel(s).expand_as(self.conv.weight))  # (C, 1, k, k)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        s = self.scale
        y = self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))  # (B, C, s (h + 2), s (w + 2))
        return _fit(y[..., s:-s, s:-s], _target(x, size, s), s)  # drop the padding's share: (B, C, s h, s w)


class PixelShuffleICNR(nn.Module):
    """Depthwise sub-pixel convolution with ICNR init: nearest upsampling at initialisation.

    A 3x3 depthwise convolution maps each channel to ``scale**2`` sub-pixel channels,
    ``nn.PixelShuffle`` interleaves them into a ``scale``-times larger map. ICNR gives
    every sub-pixel the same kernel (here the identity), so the output starts as
    ``F.interpolate(x, scale_factor=scale, mode="nearest")``.

    Args:
        channels: channels in and out.
        scale: upsampling factor, an integer >= 2.

    Shapes:
        (B, C, h, w) -> (B, C, H, W), (H, W) = ``size``, by default (scale * h, scale * w).

    Example:
        >>> PixelShuffleICNR(8)(torch.zeros(1, 8, 5, 5)).shape
        torch.Size([1, 8, 10, 10])
    """

    def __init__(self, channels: int, scale: int = 2):
        super().__init__()
        self.scale = _check_scale(scale)
        self.conv = nn.Conv2d(channels, channels * scale**2, 3, padding=1, groups=channels)
        self.shuffle = nn.PixelShuffle(scale)  # channel c * s^2 + (i * s + j) -> pixel (s y + i, s x + j)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1, 1] = 1.0  # identity, repeated for every sub-pixel (ICNR)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.shuffle(self.conv(x))  # (B, C, s h, s w)
        return _fit(y, _target(x, size, self.scale), self.scale)


class UpConv(nn.Module):
    """The U-Net paper's up-convolution: a ``scale x scale`` transposed convolution, stride ``scale``, C_in -> C_out.

    Kernel = stride, so every input pixel paints its own ``scale x scale`` block and the
    copies never overlap: the layer is a 1x1 convolution to ``C_out * scale**2`` channels
    followed by ``nn.PixelShuffle``. Its sub-pixels have independent weights, so a random
    initialisation gives a checkerboard of period ``scale``; ``init="icnr"`` copies one
    random 1x1 kernel to every sub-pixel, so the layer starts as that 1x1 convolution
    followed by nearest upsampling.

    Args:
        in_channels: C_in.
        out_channels: C_out (a UNet usually halves or quarters the channels here).
        scale: upsampling factor, an integer >= 2.
        init: ``"icnr"`` (default, no checkerboard at init) or ``"random"`` (PyTorch's default init).

    Shapes:
        (B, C_in, h, w) -> (B, C_out, H, W), (H, W) = ``size``, by default (scale * h, scale * w).

    Example:
        >>> UpConv(1280, 256)(torch.zeros(1, 1280, 2, 2)).shape
        torch.Size([1, 256, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2, init: Literal["icnr", "random"] = "icnr"):
        super().__init__()
        s = self.scale = _check_scale(scale)
        check_positive("in_channels", in_channels)
        check_positive("out_channels", out_channels)
        check_choice("init", init, Literal["icnr", "random"])
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, s, stride=s)  # weight (C_in, C_out, s, s)
        if init == "icnr":
            with torch.no_grad():
                self.conv.weight.copy_(
                    self.conv.weight[:, :, :1, :1].expand(-1, -1, s, s)
                )  # one kernel, every sub-pixel

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return _fit(self.conv(x), _target(x, size, self.scale), self.scale)  # (B, C_out, *size)


def make_upsample(mode: UpsampleMode = "nearest", channels: int | None = None, scale: int = 2) -> nn.Module:
    """A channel-preserving upsampler ``up(x, size=None)``, for one of :data:`MODES`.

    Args:
        mode: ``"nearest"`` (default, as segmentation_models.pytorch), ``"nearest-exact"``,
            ``"bilinear"``, ``"bicubic"``, ``"area"`` (interpolation, no parameters),
            ``"transposed"`` (bilinear-initialised depthwise transposed convolution) or
            ``"pixelshuffle"`` (depthwise sub-pixel convolution, ICNR-initialised to nearest).
        channels: channels of the input; needed by the learnable modes.
        scale: upsampling factor (an integer >= 2) used when ``size`` is not given, and the
            factor of the learnable layers.

    Returns:
        A module mapping (B, C, h, w) (and an optional target ``size``) to (B, C, H, W).

    Raises:
        ValueError: unknown mode (the message lists the modes), bad scale, or a learnable
            mode without ``channels``.

    Example:
        >>> make_upsample("bilinear")(torch.randn(1, 8, 5, 5), size=(9, 9)).shape
        torch.Size([1, 8, 9, 9])
    """
    check_choice("mode", mode, UpsampleMode)
    if mode in INTERPOLATION_MODES:
        return Interpolate(mode, scale)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(
            f"mode {mode!r} has weights: pass the input's channel count, e.g. channels=64; got {channels!r}"
        )
    return BilinearTransposed(channels, scale) if mode == "transposed" else PixelShuffleICNR(channels, scale)
