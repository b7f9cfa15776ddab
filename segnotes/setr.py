"""Chapter 6: the SETR heads, three ways to segment from a plain ViT's token maps.

Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective
with Transformers" (SETR), CVPR 2021, https://arxiv.org/abs/2012.15840, Section 3.3.

A plain ViT (:func:`segnotes.vit.vit`) gives maps at one stride, the patch size p. The
paper's three decoders differ in how they get from there back to the image's resolution:

* :class:`NaiveDecoder` (SETR-Naive): 1x1 conv + BN + ReLU on the last block's map; the
  1x1 classifier and one bilinear upsampling by p follow;
* :class:`PupDecoder` (SETR-PUP, progressive upsampling): ``log2(p)`` stages of 3x3
  conv + BN + ReLU and 2x bilinear upsampling;
* :class:`MlaDecoder` (SETR-MLA, multi-level aggregation): four evenly spaced blocks,
  projected and added top-down, refined, upsampled *per stream*, then concatenated.

Each model is a :class:`segnotes.model.SegmentationModel`: encoder = a
:class:`segnotes.vit.ViTBackbone`, decoder = one of the three above, head = a
:class:`segnotes.model.SegmentationHead` (the 1x1 classifier and the remaining upsampling).
The conv-BN-ReLU unit is torchvision's ``Conv2dNormActivation``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from .model import SegmentationHead, SegmentationModel, check_positive
from .vit import ReadoutMode, ViTBackbone, evenly_spaced_indices

__all__ = ["NaiveDecoder", "PupDecoder", "MlaDecoder", "SetrNaive", "SetrPup", "SetrMla"]


def _num_doublings(patch_size: int) -> int:
    n = int(math.log2(patch_size))
    if patch_size < 2 or 2**n != patch_size:
        raise ValueError(
            f"this head upsamples in 2x steps: the patch size must be a power of 2 (>= 2), got {patch_size}"
        )
    return n


def _check_maps(features: Sequence[torch.Tensor], expected: int, name: str) -> None:
    if len(features) != expected:
        raise ValueError(f"{name} was built for {expected} block map(s), got {len(features)}; build it with that many")


class NaiveDecoder(nn.Module):
    """SETR-Naive's first layer: 1x1 conv + BN + ReLU on the last block's map.

    The paper's decoder is "1x1 conv + sync batch norm (w/ ReLU) + 1x1 conv", then bilinear
    upsampling to the image: this module is the first half, the model's
    :class:`~segnotes.model.SegmentationHead` the second. Every patch is still classified
    from its own token: a 1x1 conv never looks at a neighbour.

    Args:
        embed_dim: token width C.
        channels: hidden width.

    Shapes:
        [..., (B, C, h, w)] -> (B, channels, h, w)
    """

    def __init__(self, embed_dim: int, channels: int = 64):
        super().__init__()
        self.out_channels = check_positive("channels", channels)
        self.block = Conv2dNormActivation(embed_dim, channels, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.block(features[-1])  # (B, C, h, w) -> (B, ch, h, w)


class PupDecoder(nn.Module):
    """SETR-PUP: ``log2(p)`` stages of 3x3 conv + BN + ReLU and 2x bilinear upsampling.

    Upsampling in 2x steps (the paper's choice, to limit the noise one big step adds) lets
    every stage refine what the previous interpolation blurred.

    Args:
        embed_dim: token width C.
        patch_size: p, a power of 2: the map goes from stride p to stride 1.
        channels: width of the conv stages.

    Shapes:
        [..., (B, C, h, w)] -> (B, channels, h*p, w*p)
    """

    def __init__(self, embed_dim: int, patch_size: int, channels: int = 32):
        super().__init__()
        self.out_channels = check_positive("channels", channels)
        stages = []
        for i in range(_num_doublings(patch_size)):
            stages += [
                Conv2dNormActivation(embed_dim if i == 0 else channels, channels, kernel_size=3),
                nn.Upsample(scale_factor=2, mode="bilinear"),
            ]
        self.stages = nn.Sequential(*stages)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.stages(features[-1])  # (B, C, h, w) -> (B, ch, h*p, w*p)


class MlaDecoder(nn.Module):
    """SETR-MLA: L block maps, aggregated top-down, each stream upsampled, then concatenated.

    Following the paper, stream ``i`` is: a 1x1 conv (C -> ch), the top-down aggregation
    (``agg_i = proj_i + agg_{i+1}``, deep into shallow), a 3x3 conv on the sum, two more
    3x3 convs (the last halving the width), and a bilinear upsampling by
    ``upsampling`` (4 in the paper) *before* the streams are concatenated. The classifier
    and the rest of the upsampling (p / 4 in the paper) follow in the head.

    Args:
        embed_dim: token width C.
        num_levels: L, how many block maps the decoder receives (4 in the paper).
        channels: width of each stream; ``channels // 2`` after its last conv.
        upsampling: each stream's upsampling factor, at most the patch size.

    Shapes:
        L maps (B, C, h, w), shallow to deep -> (B, L * channels // 2, h*up, w*up)
    """

    def __init__(self, embed_dim: int, num_levels: int = 4, channels: int = 32, upsampling: int = 4):
        super().__init__()
        self.num_levels = check_positive("num_levels", num_levels)
        check_positive("channels", channels)
        self.out_channels = num_levels * (channels // 2)
        self.project = nn.ModuleList(nn.Conv2d(embed_dim, channels, kernel_size=1) for _ in range(num_levels))
        self.aggregate = nn.ModuleList(Conv2dNormActivation(channels, channels, 3) for _ in range(num_levels))
        self.streams = nn.ModuleList(
            nn.Sequential(
                Conv2dNormActivation(channels, channels, 3),
                Conv2dNormActivation(channels, channels // 2, 3),
                nn.Upsample(scale_factor=check_positive("upsampling", upsampling), mode="bilinear"),
            )
            for _ in range(num_levels)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_maps(features, self.num_levels, "MlaDecoder")
        outputs, total = [], None
        for i in reversed(range(self.num_levels)):  # deep to shallow
            projected = self.project[i](features[i])  # (B, ch, h, w)
            total = projected if total is None else projected + total  # top-down aggregation
            outputs.append(self.streams[i](self.aggregate[i](total)))  # (B, ch/2, h*up, w*up)
        return torch.cat(outputs[::-1], dim=1)  # (B, L*ch/2, h*up, w*up), shallow first


class SetrNaive(SegmentationModel):
    """SETR-Naive: classify every token of the last block, upsample the logits bilinearly by p.

    Args:
        vit: a timm ``VisionTransformer``, e.g. ``segnotes.vit.vit("book", num_classes=0)``.
        num_classes: output classes K (>= 1).
        channels: hidden width of the decoder.
        readout: prefix-token handling, ``"ignore"``, ``"add"`` or ``"cat"`` (:class:`segnotes.vit.Readout`).

    Shapes:
        (B, in_channels, H, W) -> (B, K, H, W); H and W multiples of p.

    Example:
        >>> SetrNaive(vit(num_classes=0), 5)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 5, 32, 32])
    """

    output_stride = 1  # the head upsamples its logits to the input's size

    def __init__(self, vit: nn.Module, num_classes: int, *, channels: int = 64, readout: ReadoutMode = "ignore"):
        encoder = ViTBackbone(vit, readout=readout, norm=True)  # the last block, normalised as the classifier sees it
        decoder = NaiveDecoder(encoder.embed_dim, channels)
        head = SegmentationHead(channels, num_classes, upsampling=encoder.patch_size)
        super().__init__(encoder, decoder, head, in_channels=encoder.in_channels)


class SetrPup(SegmentationModel):
    """SETR-PUP: the last block's map, upsampled 2x at a time by conv stages, then classified.

    Args:
        vit: a timm ``VisionTransformer`` with a power-of-2 patch size.
        num_classes: output classes K (>= 1).
        channels: width of the conv stages.
        readout: prefix-token handling, ``"ignore"``, ``"add"`` or ``"cat"``.

    Shapes:
        (B, in_channels, H, W) -> (B, K, H, W); H and W multiples of p.

    Example:
        >>> SetrPup(vit(num_classes=0), 5)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 5, 32, 32])
    """

    output_stride = 1  # the head upsamples its logits to the input's size

    def __init__(self, vit: nn.Module, num_classes: int, *, channels: int = 32, readout: ReadoutMode = "ignore"):
        encoder = ViTBackbone(vit, readout=readout, norm=True)
        decoder = PupDecoder(encoder.embed_dim, encoder.patch_size, channels)
        head = SegmentationHead(channels, num_classes)
        super().__init__(encoder, decoder, head, in_channels=encoder.in_channels)


class SetrMla(SegmentationModel):
    """SETR-MLA: four evenly spaced blocks, aggregated top-down, upsampled per stream, concatenated, classified.

    Each stream is upsampled by ``min(4, p)`` (the paper's 4 for p = 16), the classifier's
    logits by the remaining ``p / min(4, p)``.

    Args:
        vit: a timm ``VisionTransformer`` with at least 4 blocks and a power-of-2 patch size.
        num_classes: output classes K (>= 1).
        channels: width of each stream (halved before the concatenation).
        readout: prefix-token handling, ``"ignore"``, ``"add"`` or ``"cat"``.

    Shapes:
        (B, in_channels, H, W) -> (B, K, H, W); H and W multiples of p.

    Example:
        >>> SetrMla(vit(num_classes=0), 5)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 5, 32, 32])
    """

    output_stride = 1  # the head upsamples its logits to the input's size

    def __init__(self, vit: nn.Module, num_classes: int, *, channels: int = 32, readout: ReadoutMode = "ignore"):
        encoder = ViTBackbone(vit, evenly_spaced_indices(len(vit.blocks), 4), readout=readout)
        p = encoder.patch_size
        _num_doublings(p)
        stream_up = min(4, p)  # the paper's 4 (for p = 16), or all of p for patches of 2 or 4
        decoder = MlaDecoder(encoder.embed_dim, 4, channels, upsampling=stream_up)
        head = SegmentationHead(decoder.out_channels, num_classes, upsampling=p // stream_up)
        super().__init__(encoder, decoder, head, in_channels=encoder.in_channels)
