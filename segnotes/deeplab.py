"""DeepLabV3+: atrous spatial pyramid pooling on a dilated encoder, and a light decoder.

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation" (DeepLabV3+), ECCV 2018, https://arxiv.org/abs/1802.02611.

DeepLab keeps the encoder's deepest map at stride 16 (or 8) instead of 32: the last
strided stage is *dilated* (its 3x3 kernels are spread out by 2 instead of striding,
``get_encoder(name, output_stride=16)``), so it sees as far as before at twice the
resolution. On that map, **ASPP** (atrous spatial pyramid pooling) runs parallel
branches, a 1x1 convolution, 3x3 convolutions dilated by the ``atrous_rates`` (12, 24,
36 at stride 16) and the image's average, and mixes them with a 1x1 projection. The
**decoder** of V3+ is small: the ASPP map is upsampled 4x to stride 4, concatenated
with the encoder's stride-4 map reduced to 48 channels (so it does not drown the 256
ASPP channels), and fused by a 3x3 convolution; the head classifies at stride 4 and
upsamples 4x. 3x3 convolutions are depthwise-separable (depthwise 3x3, then pointwise
1x1), as in the paper's Xception and in segmentation_models.pytorch (SMP).

This module is the README's worked example of adding a model: a decoder built from the
encoder's channels *and* strides, a :class:`~segnotes.model.SegmentationModel` taking
its encoder through :func:`~segnotes.encoders.as_encoder`, one typed config with named
presets, a factory, and a key table that loads SMP's ``DeepLabV3Plus`` weights (the
tests check the logits against SMP's). Numerics follow SMP: one separable 3x3 after
ASPP and one after the concatenation (the paper refines with two), both upsamplings
bilinear with ``align_corners=True`` (the paper's TensorFlow code).

**DeepLab with a transformer encoder** (SMP issues #967 and #1260). Dilation needs
strided convolutions to replace; MiT, Swin, PVTv2 and ViT downsample with patch
embeddings (a ViT has a single stride, the patch size), so ``encoder_output_stride=16``
on one of them is a ``ValueError`` that names the encoder. What does work is
DeepLabV3+ at ``encoder_output_stride=32``: ASPP on the stride-32 map of a MiT (or of
a ViT turned into a pyramid by :class:`segnotes.dpt.ViTPyramid`), upsampled 8x to the
stride-4 skip. The tests build both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from .encoders import as_encoder, check_features
from .model import SegmentationModel, check_choice, check_positive
from .weights import find_fields, rename_keys

__all__ = [
    "DeepLabV3PlusConfig",
    "SeparableConv2d",
    "ASPP",
    "DeepLabV3PlusDecoder",
    "DeepLabV3Plus",
    "from_smp",
    "SMP_KEYS",
    "DEEPLAB_PRESETS",
    "deeplabv3plus",
]

Preset = Literal["smp", "book"]


@dataclass(frozen=True)
class DeepLabV3PlusConfig:
    """Encoder stride, decoder and head options of :class:`DeepLabV3Plus` (see :data:`DEEPLAB_PRESETS`)."""

    # 16: the paper's trade-off; 8 is sharper, its last two stages on 4x the positions; 32: no dilation.
    encoder_output_stride: Literal[8, 16, 32] = 16
    # Width of ASPP and of the decoder (the paper's 256).
    decoder_channels: int = 256
    # Dilations of ASPP's 3x3 branches; the paper's (6, 12, 18) are for stride 16 and 513 px crops,
    # SMP's default (12, 24, 36) is the paper's choice for stride 8. Rates beyond the map's size
    # leave only the centre tap inside the map: the branch becomes a 1x1 convolution.
    decoder_atrous_rates: tuple[int, ...] = (12, 24, 36)
    # Depthwise-separable 3x3 branches (the paper's Xception variant and SMP's default).
    decoder_aspp_separable: bool = True
    # Dropout after ASPP's projection, in training only (SMP's 0.5).
    decoder_aspp_dropout: float = 0.5


class SeparableConv2d(nn.Sequential):
    """A depthwise 3x3 (dilated) convolution, then a pointwise 1x1 one; no bias (a BatchNorm follows).

    Example:
        >>> SeparableConv2d(8, 16, dilation=2)(torch.zeros(1, 8, 9, 9)).shape
        torch.Size([1, 16, 9, 9])
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False
        )
        super().__init__(depthwise, nn.Conv2d(in_channels, out_channels, 1, bias=False))


def _conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1x1, dilated 3x3 and image-pooling branches, projected.

    Args:
        in_channels: channels of the encoder's deepest map.
        out_channels: width of every branch and of the result.
        atrous_rates: one dilated 3x3 branch per rate.
        separable: depthwise-separable 3x3 branches.
        dropout: dropout after the projection.

    Shapes:
        (B, in_channels, h, w) -> (B, out_channels, h, w).

    Example:
        >>> ASPP(32, 16, (1, 2))(torch.zeros(2, 32, 4, 4)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(
        self, in_channels: int, out_channels: int, atrous_rates: Sequence[int], separable: bool, dropout: float
    ):
        super().__init__()
        for rate in atrous_rates:
            check_positive("every atrous rate", rate)

        def atrous(rate: int) -> nn.Module:
            if separable:
                return _conv_bn_relu(SeparableConv2d(in_channels, out_channels, rate), out_channels)
            return Conv2dNormActivation(in_channels, out_channels, 3, dilation=rate)

        one_by_one = Conv2dNormActivation(in_channels, out_channels, 1)  # 1x1 conv, BN, ReLU
        self.branches = nn.ModuleList([one_by_one, *(atrous(r) for r in atrous_rates)])
        average = Conv2dNormActivation(in_channels, out_channels, 1)
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), *average)  # the image's average, mixed
        projection = Conv2dNormActivation((len(self.branches) + 1) * out_channels, out_channels, 1)
        self.project = nn.Sequential(*projection, nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, h, w = x.shape
        pooled = self.pooling(x).expand(-1, -1, h, w)  # (B, out, 1, 1): the image's average, everywhere
        maps = [branch(x) for branch in self.branches] + [pooled]  # each (B, out, h, w)
        return self.project(torch.cat(maps, dim=1))  # (B, n * out, h, w) -> (B, out, h, w)


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest map, upsampled to the stride-4 map, concatenated with it (48 channels), fused.

    Args:
        encoder_channels: the encoder's ``out_channels``, e.g. ``[3, 64, 64, 128, 256, 512]``.
        encoder_strides: its ``strides``, e.g. ``[1, 2, 4, 8, 16, 16]``; one map must be at
            stride 4 (the skip) and the deepest at 8 or more.
        channels, atrous_rates, separable, dropout: ASPP's (see :class:`DeepLabV3PlusConfig`).
        skip_channels: the stride-4 map is reduced to this many channels (the paper's 48).

    Shapes:
        the encoder's maps -> (B, channels, H / 4, W / 4).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        channels: int = 256,
        atrous_rates: Sequence[int] = (12, 24, 36),
        separable: bool = True,
        dropout: float = 0.5,
        skip_channels: int = 48,
    ):
        super().__init__()
        self.encoder_channels, self.encoder_strides = list(encoder_channels), list(encoder_strides)
        if 4 not in self.encoder_strides or self.encoder_strides[-1] < 8:
            raise ValueError(
                f"DeepLabV3+ needs a map at stride 4 (its skip) and a deepest map at stride 8 or more, got strides "
                f"{self.encoder_strides}: use encoder_depth 3..5"
            )
        self.skip_index = self.encoder_strides.index(4)
        check_positive("decoder_channels", channels)
        self.aspp = ASPP(encoder_channels[-1], channels, atrous_rates, separable, dropout)
        self.refine = _conv_bn_relu(SeparableConv2d(channels, channels), channels)
        skip_in = encoder_channels[self.skip_index]
        self.skip = Conv2dNormActivation(skip_in, skip_channels, 1)
        self.fuse = _conv_bn_relu(SeparableConv2d(channels + skip_channels, channels), channels)
        self.out_channels = channels

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_features(features, self.encoder_channels, self.encoder_strides, "DeepLabV3PlusDecoder")
        skip = self.skip(features[self.skip_index])  # (B, 48, H/4, W/4)
        x = self.refine(self.aspp(features[-1]))  # (B, C, H/s, W/s), s = 8, 16 or 32
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)  # (B, C, H/4, W/4)
        return self.fuse(torch.cat([x, skip], dim=1))  # (B, C + 48, H/4, W/4) -> (B, C, H/4, W/4)


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+: a (dilated) encoder, ASPP and a stride-4 decoder, a head that upsamples 4x.

    The arguments follow SMP's ``smp.DeepLabV3Plus`` (``num_classes`` is its ``classes``),
    whose defaults (:data:`DEEPLAB_PRESETS` ``"smp"``) are this class's: with the same weights
    on the same timm encoder (SMP's ``"tu-"`` names) the logits are equal.

    Args:
        encoder: a timm name (dilated by name), a backbone, or an ``Encoder``
            (:func:`segnotes.encoders.as_encoder`).
        num_classes: output channels (logits), at least 1.
        encoder_depth: 3..5.
        encoder_weights: ``None`` (random) or ``"imagenet"`` (timm names only).
        encoder_output_stride: 8, 16 (dilated CNNs) or 32 (any encoder, transformers included).
        decoder_channels, decoder_atrous_rates, decoder_aspp_separable, decoder_aspp_dropout:
            see :class:`DeepLabV3PlusConfig`.
        in_channels: input channels.

    Attributes:
        output_stride: 1, the logits' stride: (H, W), the input's size.

    Shapes:
        (B, in_channels, H, W) -> (B, num_classes, H, W); H and W multiples of the encoder's
        output stride.

    Example:
        >>> DeepLabV3Plus("resnet18", num_classes=3)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    output_stride = 1  # the logits have the input's size

    def __init__(
        self,
        encoder: str | nn.Module,
        *,
        num_classes: int = 1,
        encoder_depth: int = 5,
        encoder_weights: Literal["imagenet"] | None = None,
        encoder_output_stride: Literal[8, 16, 32] = DeepLabV3PlusConfig.encoder_output_stride,
        decoder_channels: int = DeepLabV3PlusConfig.decoder_channels,
        decoder_atrous_rates: Sequence[int] = DeepLabV3PlusConfig.decoder_atrous_rates,
        decoder_aspp_separable: bool = DeepLabV3PlusConfig.decoder_aspp_separable,
        decoder_aspp_dropout: float = DeepLabV3PlusConfig.decoder_aspp_dropout,
        in_channels: int = 3,
    ):
        check_positive("in_channels", in_channels)
        check_choice("encoder_depth", encoder_depth, (3, 4, 5))
        check_choice("encoder_weights", encoder_weights, (None, "imagenet"))
        pretrained = encoder_weights is not None
        enc = as_encoder(encoder, in_channels, encoder_depth, pretrained, output_stride=encoder_output_stride)
        decoder = DeepLabV3PlusDecoder(
            enc.out_channels,
            enc.strides,
            decoder_channels,
            decoder_atrous_rates,
            decoder_aspp_separable,
            decoder_aspp_dropout,
        )
        classifier = nn.Conv2d(decoder.out_channels, check_positive("num_classes", num_classes), 1)
        up = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)  # stride 4 -> 1
        super().__init__(enc, decoder, nn.Sequential(classifier, up), in_channels=in_channels)

    def init_weights(self) -> None:
        """Keep PyTorch's default initialisation, as SMP's ``DeepLabV3Plus`` does.

        SMP's DeepLab models never call its ``initialize()`` (SMP issues #524 and #664, open
        since 2021), so their decoder and head start from PyTorch's defaults; this model
        starts where the one it is checked against starts.
        """


# SMP name -> segnotes name, in segnotes.weights' template syntax, tried in order: {pool} is SMP's last ASPP
# branch, the image pooling (index len(atrous_rates) + 1), so its row goes before the other branches'. Below
# these names both layouts are the same modules.
# fmt: off
SMP_KEYS: tuple[tuple[str, str], ...] = (
    ("encoder.model",               "encoder.backbone.model"),  # SMP's "tu-" (timm) encoders
    ("decoder.aspp.0.convs.{pool}", "decoder.aspp.pooling"),
    ("decoder.aspp.0.convs",        "decoder.aspp.branches"),  # 1x1, then one per atrous rate
    ("decoder.aspp.0.project",      "decoder.aspp.project"),
    ("decoder.aspp.1",              "decoder.refine.0"),  # the separable 3x3 after ASPP
    ("decoder.aspp.2",              "decoder.refine.1"),  # and its BatchNorm
    ("decoder.block1",              "decoder.skip"),  # the 48-channel reduction of the stride-4 map
    ("decoder.block2",              "decoder.fuse"),
    ("segmentation_head.0",         "head.0"),
)
# fmt: on


def from_smp(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``smp.DeepLabV3Plus`` state dict (``"tu-"`` encoder) to :class:`DeepLabV3Plus` keys.

    A state dict that already has segnotes keys is returned unchanged.

    Raises:
        ValueError: a key that no row of :data:`SMP_KEYS` maps (e.g. SMP's own ``"resnet18"``
            encoder: build SMP's model with ``"tu-resnet18"``), named.

    Example:
        >>> ours.load_state_dict(from_smp(smp_model.state_dict()), strict=True)  # doctest: +SKIP
    """
    if any(k.startswith("encoder.backbone.") for k in state_dict):
        return dict(state_dict)
    pool = max((f["n"] for f in find_fields(state_dict, "decoder.aspp.0.convs.{n}")), default=-1)
    supported = "smp.DeepLabV3Plus with a 'tu-' (timm) encoder"
    return rename_keys(
        state_dict, SMP_KEYS, source=0, target=1, table_name="SMP_KEYS", supported=supported, given={"pool": pool}
    )


# Parameter counts with encoder "resnet18" and num_classes=2 (tests/test_deeplab.py checks them).
DEEPLAB_PRESETS: dict[str, DeepLabV3PlusConfig] = {
    "smp": DeepLabV3PlusConfig(),  # 12,329,554 parameters, as smp.DeepLabV3Plus("tu-resnet18", classes=2)
    # The book's 64 px images give a 4x4 map at stride 16: rates 1-3 keep every tap inside it.
    "book": DeepLabV3PlusConfig(decoder_channels=64, decoder_atrous_rates=(1, 2, 3)),  # 11,391,826 parameters
}


def deeplabv3plus(preset: Preset, encoder: str | nn.Module, **overrides: Any) -> DeepLabV3Plus:
    """A :class:`DeepLabV3Plus` from a named preset (:data:`DEEPLAB_PRESETS`) and overrides.

    Args:
        preset: ``"smp"`` or ``"book"``.
        encoder: as :class:`DeepLabV3Plus`.
        **overrides: any keyword argument of :class:`DeepLabV3Plus`, e.g. ``num_classes=2``.

    Example:
        >>> deeplabv3plus("book", "resnet18", num_classes=2).decoder.out_channels
        64
    """
    config = DEEPLAB_PRESETS[check_choice("preset", preset, Preset)]
    return DeepLabV3Plus(encoder, **{**asdict(config), **overrides})
