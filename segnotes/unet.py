"""Chapters 1-2: the UNet decoder over an SMP-convention encoder.

Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, https://arxiv.org/abs/1505.04597.

The decoder is built from ``encoder.out_channels`` alone: block ``i`` upsamples to
the size of the skip at stride ``2**(depth - 1 - i)``, concatenates it and applies
two conv-BN-ReLU. A skip with 0 channels (the stride-2 placeholder of a
transformer-style encoder) is simply not concatenated: the block upsamples only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "DecoderBlock", "UnetDecoder"]


class ConvBNReLU(nn.Sequential):
    """3x3 (by default) convolution without bias, BatchNorm, ReLU: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample, concatenate the skip (if it has channels), two conv-BN-ReLU.

    Args:
        in_channels: channels of the incoming decoder map.
        skip_channels: channels of the skip; 0 means there is no skip at this stride.
        out_channels: channels out.
        interpolation: ``F.interpolate`` mode used to reach the skip's size.

    Shapes:
        x (B, in_channels, h, w), skip (B, skip_channels, H, W) -> (B, out_channels, H, W);
        without a skip the output is (B, out_channels, 2h, 2w).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, interpolation: str = "nearest"):
        super().__init__()
        self.skip_channels = skip_channels
        self.interpolation = interpolation
        self.conv1 = ConvBNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode=self.interpolation)
        if self.skip_channels > 0:
            x = torch.cat([x, skip], dim=1)  # (B, in + skip, H, W)
        return self.conv2(self.conv1(x))


class UnetDecoder(nn.Module):
    """The UNet decoder for any encoder following the SMP ``out_channels`` convention.

    Args:
        encoder_channels: the encoder's ``out_channels`` (input first), e.g. ``[3, 0, 96, 192, 384, 768]``.
        decoder_channels: output channels of each block, deepest first; one block per
            downsampling stage, so ``len(decoder_channels) == len(encoder_channels) - 1``.
        interpolation: upsampling mode of every block.

    Shapes:
        features: list of ``depth + 1`` maps from the encoder -> (B, decoder_channels[-1], H, W)
        at the input resolution.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        interpolation: str = "nearest",
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        if len(decoder_channels) != depth:
            raise ValueError(
                f"decoder_channels needs one entry per encoder stage ({depth}), got {len(decoder_channels)}: {tuple(decoder_channels)}"
            )
        # Skips at strides 2**(depth-1) ... 2**1, then none at stride 1 (the input is not used as a skip).
        skips = list(encoder_channels[1:-1])[::-1] + [0]
        ins = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o, interpolation) for i, s, o in zip(ins, skips, decoder_channels)
        )
        self.out_channels = decoder_channels[-1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x, skips = features[-1], list(features[1:-1])[::-1] + [None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x
