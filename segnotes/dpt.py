"""Chapter 6: DPT's reassembly, a plain ViT turned into a feature pyramid at strides 4, 8, 16, 32.

Ranftl et al., "Vision Transformers for Dense Prediction" (DPT), ICCV 2021,
https://arxiv.org/abs/2103.13413, Section 3 ("Convolutional decoder", Reassemble).

A plain ViT has one stride, the patch size p; the decoders of chapters 2-5 expect a
pyramid. DPT takes four evenly spaced blocks and resamples block ``i``'s token map to
stride ``4 * 2**i``: a 1x1 convolution to the level's width, then a transposed
convolution to go up, nothing, or a strided 3x3 convolution to go down.
:class:`ViTPyramid` declares the result with ``feature_channels`` / ``feature_strides``,
so ``segnotes.encoders.Encoder(ViTPyramid(vit))`` follows chapter 1's transformer-style
``out_channels`` convention (with the 0-channel stride-2 placeholder), and the UNet of
chapter 2 runs on it: ``segnotes.unet.Unet(Encoder(ViTPyramid(vit)), ...)``. The tests
check the pyramid against segmentation_models_pytorch's ``DPT`` after a weight copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .encoders import TRANSFORMER_STRIDES
from .model import check_divisible
from .vit import ReadoutMode, ViTBackbone, evenly_spaced_indices

__all__ = ["ViTPyramid", "resample"]


def resample(channels: int, patch_size: int, stride: int) -> nn.Module:
    """The layer that takes a (B, channels, H/p, W/p) map to stride ``stride``: DPT's choice per direction.

    Args:
        channels: width of the map (kept).
        patch_size: p, the map's stride now.
        stride: the stride wanted; ``patch_size / stride`` or ``stride / patch_size`` must be an integer.

    Returns:
        ``ConvTranspose2d`` with kernel = stride = the factor to go up (learned, no overlap),
        ``Identity`` at the same stride, a 3x3 ``Conv2d`` with that stride to go down.

    Example:
        >>> resample(32, patch_size=16, stride=4)
        ConvTranspose2d(32, 32, kernel_size=(4, 4), stride=(4, 4))
    """
    if patch_size > stride:
        if patch_size % stride:
            raise ValueError(
                f"patch size {patch_size} is not a multiple of stride {stride}; use a power-of-2 patch size"
            )
        f = patch_size // stride
        return nn.ConvTranspose2d(channels, channels, kernel_size=f, stride=f)
    if patch_size < stride:
        if stride % patch_size:
            raise ValueError(
                f"stride {stride} is not a multiple of patch size {patch_size}; use a power-of-2 patch size"
            )
        return nn.Conv2d(channels, channels, kernel_size=3, stride=stride // patch_size, padding=1)
    return nn.Identity()


class ViTPyramid(nn.Module):
    """DPT's reassembly: four blocks of a plain ViT resampled into a pyramid at strides 4, 8, 16, 32.

    Each block's token map (stride p) goes through a 1x1 convolution to its level's width,
    then :func:`resample` to the level's stride. For p = 16 that is 4x up, 2x up,
    identity, 2x down, exactly DPT's; the book's 4x4 patches need identity, 2x, 4x and
    8x down.

    Args:
        vit: a timm ``VisionTransformer`` with at least 4 blocks and a power-of-2 patch size.
        channels: width of the four levels, shallow to deep; default ``(C/4, C/2, C, C)``.
        indices: the four blocks, shallow to deep; default :func:`segnotes.vit.evenly_spaced_indices`.
        readout: prefix-token handling, ``"ignore"``, ``"add"`` or ``"cat"`` (:class:`segnotes.vit.Readout`).

    Attributes:
        feature_channels: ``channels``; feature_strides: ``[4, 8, 16, 32]``.

    Shapes:
        (B, in_channels, H, W) -> [(B, channels[i], H / s, W / s) for s in (4, 8, 16, 32)];
        H and W must be multiples of 32 and of p.

    Example:
        >>> Encoder(ViTPyramid(vit(num_classes=0))).out_channels
        [3, 0, 16, 32, 64, 64]
    """

    def __init__(
        self,
        vit: nn.Module,
        channels: Sequence[int] | None = None,
        indices: Sequence[int] | None = None,
        readout: ReadoutMode = "ignore",
    ):
        super().__init__()
        indices = evenly_spaced_indices(len(vit.blocks), 4) if indices is None else list(indices)
        if len(indices) != 4:
            raise ValueError(
                f"ViTPyramid reassembles exactly 4 blocks (one per stride 4, 8, 16, 32), got indices {indices}"
            )
        self.backbone = ViTBackbone(vit, indices, readout)
        C, p = self.backbone.embed_dim, self.backbone.patch_size
        if p & (p - 1) or not 2 <= p <= 128:
            raise ValueError(f"the patch size must be a power of 2 from 2 to 128, got {p}")
        channels = (C // 4, C // 2, C, C) if channels is None else tuple(channels)
        if len(channels) != 4:
            raise ValueError(f"channels needs one width per level (4), got {channels}")
        self.in_channels = self.backbone.in_channels
        self.feature_channels: list[int] = list(channels)
        self.feature_strides: list[int] = list(TRANSFORMER_STRIDES)
        self.reassemble = nn.ModuleList(
            nn.Sequential(nn.Conv2d(C, c, kernel_size=1), resample(c, p, s))
            for c, s in zip(channels, self.feature_strides)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_divisible(x, max(32, self.backbone.patch_size), "the pyramid's deepest stride")
        return [reassemble(f) for reassemble, f in zip(self.reassemble, self.backbone(x))]  # (B, c_i, H/s_i, W/s_i)
