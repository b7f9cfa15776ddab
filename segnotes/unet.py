"""Chapter 2: MobileNetV2 as a UNet encoder, and the UNet and UNet++ decoders.

Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, https://arxiv.org/abs/1505.04597.
Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation", 2018,
https://arxiv.org/abs/1807.10165.
Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
https://arxiv.org/abs/1801.04381.

**Where the skips come from.** A UNet taps the encoder right *before* each downsampling:
the last, most processed map at every resolution. For torchvision's MobileNetV2 (the
layout segmentation_models.pytorch, SMP, uses) these are ``features[1, 3, 6, 13]`` at
strides 2, 4, 8, 16 (16, 24, 32, 96 channels) and, at stride 32, the final 1x1
convolution ``features[18]`` (1280 channels); :func:`skip_points` measures them with
:func:`segnotes.inspect.trace`. :class:`MobileNetV2Backbone` is passed to a model as an
object, like every backbone of the book (:func:`segnotes.encoders.as_encoder`).

**The decoders** are built from ``encoder.out_channels`` alone (chapter 1's
convention, index ``i`` = stride ``2**i``). A :class:`DecoderBlock` upsamples to its
skip's size, concatenates the skip and applies two 3x3 conv-BN-ReLU (torchvision's
``Conv2dNormActivation``). Every block receives a skip tensor; where there is nothing to
concatenate it receives that map with 0 of its channels (``f[:, :0]``): the input image
at stride 1, a transformer encoder's stride-2 placeholder (already 0 channels), and
every skip of the no-skip ablation. ``torch.cat`` with a 0-channel tensor and a
convolution over ``C + 0`` channels need no special case, so the code has none. UNet++
replaces the single skip by a grid of nested nodes; nodes whose row has 0 channels are
not built (as in SMP, so the state dicts match). The upsampling of every block is
:func:`segnotes.upsample.make_upsample` (chapter 3), which validates the mode.

**One preset convention.** The decoder and head options live in one typed
:class:`UnetConfig`; :data:`UNET_PRESETS` names two of them: ``"smp"`` (SMP's
defaults, ``decoder_channels=(256, 128, 64, 32, 16)`` and a 3x3 head; also the defaults
of :class:`Unet`) and ``"book"`` (``(64, 32, 16, 16, 8)`` and a 1x1 head, the
decoder the chapters train: 0.57 times the FLOPs of a training step at 64x64).
:func:`unet` builds either model from a preset and overrides.

The module is longer than the book's ~400-line guide because the backbone, both decoders
and the SMP weight conversion are one chapter's topic and share their blocks; more than
half of it is docstrings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from .encoders import as_encoder, check_features
from .inspect import trace
from .model import SegmentationHead, SegmentationModel, check_choice, check_positive
from .upsample import UpsampleMode, make_upsample
from .weights import find_fields, rename_keys

__all__ = [
    "UnetConfig",
    "MOBILENET_V2_SKIPS",
    "skip_points",
    "MobileNetV2Backbone",
    "DecoderBlock",
    "UnetDecoder",
    "UnetPlusPlusDecoder",
    "Unet",
    "UnetPlusPlus",
    "convert_smp_state_dict",
    "SMP_KEYS",
    "UNET_PRESETS",
    "unet",
    "EncoderWeights",
]

Preset = Literal["smp", "book"]
EncoderWeights = Literal["imagenet"] | None


@dataclass(frozen=True)
class UnetConfig:
    """Decoder and head options of :class:`Unet` and :class:`UnetPlusPlus` (see :data:`UNET_PRESETS`)."""

    # Output channels of each decoder block, deepest first; one block per encoder stage.
    # SMP's default; the width halves as the resolution doubles, so every block costs about the same.
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    # How every block upsamples (chapter 3); "nearest" is SMP's default and has no parameters.
    decoder_interpolation: UpsampleMode = "nearest"
    # 3: SMP's head. 1 is enough after the decoder's 3x3 convolutions (a per-pixel classifier).
    head_kernel_size: Literal[1, 3] = 3


# Indices into torchvision's ``mobilenet_v2().features`` whose outputs are the skips
# (strides 2, 4, 8, 16) and the bottleneck (stride 32); ``skip_points`` measures them.
MOBILENET_V2_SKIPS = (1, 3, 6, 13, 18)


def skip_points(features: nn.Module, size: int = 64, in_channels: int = 3) -> list[int]:
    """Indices of the children of ``features`` whose output is the last one at its stride.

    Args:
        features: a sequential CNN body, e.g. ``torchvision.models.mobilenet_v2().features``.
        size: side of the square probe input (a multiple of the network's output stride).
        in_channels: channels of the probe input.

    Returns:
        One child index per stride, e.g. ``[1, 3, 6, 13, 18]`` for MobileNetV2.

    Example:
        >>> skip_points(torchvision.models.mobilenet_v2().features)
        [1, 3, 6, 13, 18]
    """
    points = trace(features, torch.zeros(1, in_channels, size, size)).downsampling_points()
    return [int(p.name) for p in points]


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 body, returning the maps a UNet taps.

    Args:
        in_channels: input channels (a new stem convolution when not 3).
        pretrained: torchvision's ImageNet weights (needs the network or a local cache).

    Shapes:
        (B, in_channels, H, W) -> 5 maps (B, C_i, H / s_i, W / s_i) with
        ``feature_channels`` C = (16, 24, 32, 96, 1280) and ``feature_strides`` s = (2, 4, 8, 16, 32).

    Example:
        >>> Unet(MobileNetV2Backbone(), num_classes=2).encoder.out_channels
        [3, 16, 24, 32, 96, 1280]
    """

    def __init__(self, in_channels: int = 3, pretrained: bool = False):
        super().__init__()
        import torchvision

        if pretrained and in_channels != 3:
            raise ValueError(f"ImageNet weights expect in_channels=3, got {in_channels}; use pretrained=False")
        net = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1" if pretrained else None)
        self.features = net.features  # 19 children: stem conv, 17 inverted residuals, 1x1 conv to 1280
        if in_channels != 3:
            self.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self.in_channels = in_channels
        self.taps = MOBILENET_V2_SKIPS
        self.feature_channels: list[int] = [self.features[i].out_channels for i in self.taps]
        self.feature_strides: list[int] = [2, 4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:  # the last child before the next stride-2 child (or the end)
                maps.append(x)
        return maps


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two 3x3 conv-BN-ReLU.

    Args:
        in_channels: channels of the incoming decoder map.
        skip_channels: channels of the skip; 0 where there is nothing to concatenate.
        out_channels: channels out.
        interpolation: upsampling mode, one of :data:`segnotes.upsample.MODES`.

    Shapes:
        x (B, in_channels, h, w), skip (B, skip_channels, H, W) -> (B, out_channels, H, W).

    Example:
        >>> DecoderBlock(32, 16, 8)(torch.randn(1, 32, 4, 4), torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, interpolation: UpsampleMode = "nearest"
    ):
        super().__init__()
        self.upsample = make_upsample(interpolation, in_channels)
        self.conv1 = Conv2dNormActivation(in_channels + skip_channels, out_channels)  # 3x3, no bias, BN, ReLU
        self.conv2 = Conv2dNormActivation(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x, skip.shape[-2:])  # (B, in, H, W): the skip's size, odd sizes included
        if skip.shape[1]:  # (B, in + skip, H, W)
            # An empty skip (the image at stride 1, or use_skips=False) adds nothing, but torch.cat would
            # still copy the whole map, and in channels_last convert its layout (a third of the fused latency).
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


def _check_channels(encoder_channels: Sequence[int], decoder_channels: Sequence[int]) -> int:
    """Raise a ``ValueError`` unless there is one positive decoder width per encoder stage; return the depth."""
    depth = len(encoder_channels) - 1
    if depth < 1:
        raise ValueError(f"encoder_channels needs the input and at least one stage, got {list(encoder_channels)}")
    if len(decoder_channels) != depth:
        raise ValueError(
            f"decoder_channels needs one entry per encoder stage ({depth} for encoder_channels "
            f"{list(encoder_channels)}), got {len(decoder_channels)}: {tuple(decoder_channels)}"
        )
    for c in decoder_channels:
        check_positive("every decoder_channels entry", c)
    return depth


def _check_strides(encoder_strides: Sequence[int] | None, depth: int) -> list[int]:
    """The encoder's strides, which must be 1, 2, 4, ..., 2**depth (``None``: those); else a ``ValueError``."""
    plain = [2**i for i in range(depth + 1)]
    if encoder_strides is not None and list(encoder_strides) != plain:
        raise ValueError(
            f"a UNet decoder doubles the resolution in every block, so it needs an encoder at strides {plain}, "
            f"got {list(encoder_strides)}: build the encoder without dilation (output_stride=32)"
        )
    return plain


class UnetDecoder(nn.Module):
    """The UNet decoder for any encoder following the SMP ``out_channels`` convention.

    Block ``k`` (deepest first) upsamples to stride ``2**(depth-1-k)`` and concatenates the
    encoder map there. The last block ends at stride 1, where the map is the input image:
    it is passed with 0 channels (a UNet never concatenates the image), as is every skip
    when ``use_skips=False``.

    Args:
        encoder_channels: the encoder's ``out_channels`` (input first), e.g. ``[3, 16, 24, 32, 96, 1280]``.
        decoder_channels: output channels of each block, deepest first; ``len(encoder_channels) - 1`` entries.
        interpolation: upsampling mode of every block, one of :data:`segnotes.upsample.MODES`.
        use_skips: ``False`` builds the same blocks without skip connections (an ablation).
        encoder_strides: the encoder's ``strides``, ``[1, 2, 4, ...]`` (``None``: those);
            a dilated encoder is refused. Every call checks the maps' channels and strides.

    Shapes:
        ``depth + 1`` maps, map ``i`` (B, encoder_channels[i], H / 2**i, W / 2**i)
        -> (B, decoder_channels[-1], H, W).

    Example:
        >>> UnetDecoder([3, 0, 8, 16], (16, 8, 4)).blocks[1].conv1[0].in_channels  # 16 + a 0-channel skip
        16
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = UnetConfig.decoder_channels,
        *,
        interpolation: UpsampleMode = "nearest",
        use_skips: bool = True,
        encoder_strides: Sequence[int] | None = None,
    ):
        super().__init__()
        depth = _check_channels(encoder_channels, decoder_channels)
        self.encoder_channels = list(encoder_channels)
        self.encoder_strides = _check_strides(encoder_strides, depth)
        # Channels each block takes from the map at its stride:
        # strides 2**(depth-1), ..., 2, then 1 (the image).
        self.skip_channels = [*encoder_channels[-2:0:-1], 0] if use_skips else [0] * depth
        ins = [encoder_channels[-1], *decoder_channels[:-1]]
        triples = zip(ins, self.skip_channels, decoder_channels)
        blocks = [DecoderBlock(i, s, o, interpolation) for i, s, o in triples]
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = decoder_channels[-1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        check_features(features, self.encoder_channels, self.encoder_strides, "UnetDecoder")
        x = features[-1]  # the bottleneck
        for block, skip, c in zip(self.blocks, features[-2::-1], self.skip_channels):
            x = block(x, skip[:, :c])  # all of the map's channels, or none
        return x


class UnetPlusPlusDecoder(nn.Module):
    """UNet++: nested, densely connected skip pathways over an SMP-convention encoder.

    Node ``X[i, j]`` lives at stride ``2**i``; ``X[i, 0]`` is the encoder map and, for
    ``j >= 1``, ``X[i, j] = block(X[i+1, j-1], cat(X[i, j-1], ..., X[i, 0]))``. The main
    path ``X[depth-j, j]`` has ``decoder_channels[j-1]`` channels and ends at ``X[0, depth]``;
    every other node has the channels of its row's encoder map. Row 0 (the input image)
    and, without skips, every row but the bottleneck count 0 channels, as does a
    transformer encoder's stride-2 placeholder; their off-path nodes are not built.
    ``UnetDecoder`` is the special case that keeps only the main path.

    Args:
        encoder_channels, decoder_channels, interpolation, use_skips, encoder_strides: as
            :class:`UnetDecoder`.

    Shapes:
        ``depth + 1`` maps -> (B, decoder_channels[-1], H, W).

    Example:
        >>> sorted(UnetPlusPlusDecoder([3, 0, 8, 16], (16, 8, 4)).blocks)  # no node in the empty row 1
        ['x_0_3', 'x_1_2', 'x_2_1']
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = UnetConfig.decoder_channels,
        *,
        interpolation: UpsampleMode = "nearest",
        use_skips: bool = True,
        encoder_strides: Sequence[int] | None = None,
    ):
        super().__init__()
        depth = self.depth = _check_channels(encoder_channels, decoder_channels)
        self.encoder_channels = list(encoder_channels)
        self.encoder_strides = _check_strides(encoder_strides, depth)
        rows = [0, *encoder_channels[1:-1]] if use_skips else [0] * depth
        self.row_channels = [*rows, encoder_channels[-1]]  # channels of X[i, 0] that the grid uses

        def channels(i: int, j: int) -> int:
            return decoder_channels[j - 1] if j > 0 and i + j == depth else self.row_channels[i]

        blocks = {}
        for j in range(1, depth + 1):  # column by column: the order of computation
            for i in range(depth - j, -1, -1):
                if channels(i, j) > 0:  # a 0-channel node would still register empty weights SMP does not have
                    skip = sum(channels(i, k) for k in range(j))
                    blocks[f"x_{i}_{j}"] = DecoderBlock(channels(i + 1, j - 1), skip, channels(i, j), interpolation)
        self.blocks = nn.ModuleDict(blocks)
        self.out_channels = decoder_channels[-1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        owner = "UnetPlusPlusDecoder"
        check_features(features, self.encoder_channels, self.encoder_strides, owner)
        X = {(i, 0): f[:, :c] for i, (f, c) in enumerate(zip(features, self.row_channels))}
        for name, block in self.blocks.items():
            i, j = map(int, name[2:].split("_"))
            # Nodes not built would add 0 channels: leaving them out changes nothing.
            row = [X[i, k] for k in reversed(range(j)) if (i, k) in X]
            skip = torch.cat(row, dim=1)  # (B, sum C, H_i, W_i)
            X[i, j] = block(X[i + 1, j - 1], skip)
        return X[0, self.depth]


class Unet(SegmentationModel):
    """UNet: an encoder, a decoder that upsamples and concatenates the encoder's skips, a head.

    The arguments follow segmentation_models.pytorch's ``smp.Unet``, whose defaults
    (:data:`UNET_PRESETS` ``"smp"``) are this class's: with the same weights the outputs
    are equal. Differences: the encoder is a timm name or a backbone *object* (SMP:
    names only), ``num_classes`` is SMP's ``classes``, weights default to random (the
    book runs offline), the head kernel is a choice, ``decoder_interpolation`` also
    accepts the learnable ``"transposed"`` and ``"pixelshuffle"`` (chapter 3), and
    ``use_skips=False`` builds the chapter's ablation.

    Args:
        encoder: a timm model name (``"resnet18"``, ``"convnext_tiny"``, ...) or a backbone
            object such as :class:`MobileNetV2Backbone` (see :func:`segnotes.encoders.as_encoder`).
        num_classes: output channels (logits), at least 1.
        encoder_depth: downsampling stages, 1..5; ``len(decoder_channels)`` must equal it.
        encoder_weights: ``None`` (random) or ``"imagenet"`` (timm names only).
        decoder_channels: channels of each decoder block, deepest first.
        decoder_interpolation: one of :data:`segnotes.upsample.MODES`.
        head_kernel_size: 1 or 3.
        use_skips: ``False`` drops every skip connection.
        in_channels: input channels, at least 1.

    Attributes:
        output_stride: 1, the logits' stride: (H, W), the input's size.

    Shapes:
        (B, in_channels, H, W) -> (B, num_classes, H, W); H and W multiples of ``2**encoder_depth``.

    Example:
        >>> Unet(MobileNetV2Backbone(), num_classes=5)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 5, 64, 64])
    """

    decoder_class: type[nn.Module] = UnetDecoder
    output_stride = 1  # the logits have the input's size

    def __init__(
        self,
        encoder: str | nn.Module,
        *,
        num_classes: int = 1,
        encoder_depth: int = 5,
        encoder_weights: EncoderWeights = None,
        decoder_channels: Sequence[int] = UnetConfig.decoder_channels,
        decoder_interpolation: UpsampleMode = UnetConfig.decoder_interpolation,
        head_kernel_size: Literal[1, 3] = UnetConfig.head_kernel_size,
        use_skips: bool = True,
        in_channels: int = 3,
    ):
        check_positive("in_channels", in_channels)  # before timm builds a 0-channel stem
        check_choice("encoder_weights", encoder_weights, (None, "imagenet"))
        # Checked here, so the message names the argument as the caller wrote it.
        check_choice("decoder_interpolation", decoder_interpolation, UpsampleMode)
        pretrained = encoder_weights is not None
        enc = as_encoder(encoder, in_channels, encoder_depth, pretrained=pretrained)
        decoder = self.decoder_class(
            enc.out_channels,
            decoder_channels,
            interpolation=decoder_interpolation,
            use_skips=use_skips,
            encoder_strides=enc.strides,
        )
        k = head_kernel_size
        head = SegmentationHead(decoder.out_channels, num_classes, kernel_size=k)
        super().__init__(enc, decoder, head, in_channels=in_channels)


class UnetPlusPlus(Unet):
    """UNet++ (nested dense skips, :class:`UnetPlusPlusDecoder`) with the arguments of :class:`Unet`.

    Unlike SMP's ``UnetPlusPlus``, which rejects its MiT encoders, any encoder works: the
    nodes of a 0-channel row are not built. ``use_skips=False`` leaves only the main path
    without skips, the same decoder as ``Unet(use_skips=False)``.

    Example:
        >>> UnetPlusPlus(MobileNetV2Backbone(), num_classes=5)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 5, 64, 64])
    """

    decoder_class = UnetPlusPlusDecoder


# SMP name -> segnotes name, in segnotes.weights' template syntax; below each row both layouts are the same
# modules. In the UNet++ row, SMP's node x_{d}_{l} (row l counted from the bottleneck, d columns left of the
# main path) is node x_{i}_{j} with i = depth - 1 - l, j = l - d + 1 (SMP's last node x_0_{depth-1} is
# x_0_{depth}). SMP's head is Sequential(conv, upsampling, activation); ours Sequential(conv, upsampling).
# SMP's center block and attention have no row: segnotes builds neither.
# fmt: off
SMP_KEYS: tuple[tuple[str, str], ...] = (
    ("encoder.features",                 "encoder.backbone.features"),  # mobilenet_v2
    ("encoder.model",                    "encoder.backbone.model"),  # tu- (timm)
    ("decoder.blocks.{k}.conv{c}",       "decoder.blocks.{k}.conv{c}"),  # UNet
    ("decoder.blocks.x_{d}_{l}.conv{c}", "decoder.blocks.x_{i}_{j}.conv{c}"),  # UNet++
    ("segmentation_head.0",              "head.0"),
)
# fmt: on


def convert_smp_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``smp.Unet`` / ``smp.UnetPlusPlus`` state dict to :class:`Unet` / :class:`UnetPlusPlus` keys.

    Supports SMP's ``mobilenet_v2`` encoder (load it into :class:`MobileNetV2Backbone`) and
    its ``tu-`` timm encoders (load it into the same timm name). A dict that already has
    segnotes keys is returned unchanged.

    Args:
        state_dict: ``smp_model.state_dict()``.

    Returns:
        A new dict with the same tensors under segnotes keys, for ``load_state_dict(..., strict=True)``.

    Raises:
        ValueError: a key that no row of :data:`SMP_KEYS` maps (e.g. SMP's ``center`` block or attention), named.

    Example:
        >>> ours.load_state_dict(convert_smp_state_dict(smp_unet.state_dict()))  # doctest: +SKIP
    """
    if any(k.startswith("encoder.backbone.") for k in state_dict):
        return dict(state_dict)
    rows = [f["l"] for f in find_fields(state_dict, "decoder.blocks.x_{d}_{l}")]
    depth = max(rows, default=-1) + 1  # UNet++ only: SMP's last node is x_0_{depth-1}
    supported = "smp.Unet / smp.UnetPlusPlus with the 'mobilenet_v2' or a 'tu-' encoder, without center or attention"
    derived = {"i": lambda f: depth - 1 - f["l"], "j": lambda f: f["l"] - f["d"] + 1}  # UNet++ node names
    return rename_keys(
        state_dict, SMP_KEYS, source=0, target=1, table_name="SMP_KEYS", supported=supported, derived=derived
    )


# Parameter counts with MobileNetV2Backbone() and num_classes=2 (tests/test_unet.py checks them).
UNET_PRESETS: dict[str, UnetConfig] = {
    "smp": UnetConfig(),  # 6,629,090 parameters, as smp.Unet("mobilenet_v2", classes=2)
    "book": UnetConfig(decoder_channels=(64, 32, 16, 16, 8), head_kernel_size=1),  # 3,109,746 parameters
}


def unet(preset: Preset, encoder: str | nn.Module, *, nested: bool = False, **overrides: Any) -> Unet:
    """A :class:`Unet` (or, with ``nested=True``, a :class:`UnetPlusPlus`) from a named preset.

    Args:
        preset: a key of :data:`UNET_PRESETS`: ``"smp"`` or ``"book"``.
        encoder: as :class:`Unet`.
        nested: build UNet++ instead of UNet.
        **overrides: any keyword argument of :class:`Unet`, e.g. ``num_classes=2`` or
            ``decoder_channels=(32, 16, 16, 8, 8)``; they win over the preset.

    Example:
        >>> unet("book", MobileNetV2Backbone(), num_classes=2).decoder.out_channels
        8
    """
    config = UNET_PRESETS[check_choice("preset", preset, Preset)]
    return (UnetPlusPlus if nested else Unet)(encoder, **{**asdict(config), **overrides})
