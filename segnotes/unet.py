"""Chapters 1-3: MobileNetV2 as a UNet encoder, the UNet and UNet++ decoders.

Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, https://arxiv.org/abs/1505.04597.
Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
2018, https://arxiv.org/abs/1807.10165.
Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
https://arxiv.org/abs/1801.04381.

A UNet taps the encoder right *before* each downsampling: the last, most processed
map at every resolution. For torchvision's MobileNetV2 (the layout
segmentation_models.pytorch (SMP) uses) these are ``features[1, 3, 6, 13]`` at
strides 2, 4, 8, 16 (16, 24, 32, 96 channels) and, at stride 32, the final 1x1
convolution ``features[18]`` (1280 channels). :func:`skip_points` finds them with
:func:`segnotes.inspect.trace`. timm's ``mobilenetv2_100`` has the same blocks, but
its ``features_only`` pyramid stops at the last inverted residual (320 channels at
stride 32) and leaves out the 1x1 "head" convolution to 1280 channels.

The decoders are built from ``encoder.out_channels`` alone (chapter 1's convention):
block ``i`` upsamples to the size of the map at stride ``2**i``, concatenates it as a
skip and applies two conv-BN-ReLU. A skip with 0 channels (the stride-2 placeholder
of a transformer-style encoder) is not concatenated: the block only upsamples. UNet++
replaces the single skip by a dense grid of intermediate nodes; nodes that would have
0 channels are simply not built. The upsampling mode of every block comes from
:func:`segnotes.upsample.make_upsample` (chapter 3).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .encoders import get_encoder, register_encoder
from .upsample import MODES, make_upsample

__all__ = [
    "MOBILENET_V2_SKIPS",
    "skip_points",
    "MobileNetV2Backbone",
    "ConvBNReLU",
    "DecoderBlock",
    "UnetDecoder",
    "UnetPlusPlusDecoder",
    "Unet",
    "UnetPlusPlus",
    "convert_smp_state_dict",
    "fuse_for_inference",
]

# Indices into torchvision's ``mobilenet_v2().features`` whose outputs are the skips
# (strides 2, 4, 8, 16) and the bottleneck (stride 32); ``skip_points`` recomputes them.
MOBILENET_V2_SKIPS = (1, 3, 6, 13, 18)


def skip_points(features: nn.Module, size: int = 64, in_channels: int = 3) -> list[int]:
    """Indices of the children of ``features`` whose output is the last one at its stride.

    Args:
        features: a sequential CNN body, e.g. ``torchvision.models.mobilenet_v2().features``.
        size: side of the square probe input (a multiple of the network's output stride).
        in_channels: channels of the probe input.

    Returns:
        One child index per stride, e.g. ``[1, 3, 6, 13, 18]`` for MobileNetV2.
    """
    from .inspect import trace

    points = trace(features, torch.zeros(1, in_channels, size, size)).downsampling_points()
    return [int(p.name) for p in points]


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 body returning the maps a UNet taps.

    Args:
        in_channels: input channels (a new stem convolution when not 3).
        pretrained: torchvision's ImageNet weights (needs the network or a local cache).

    Shapes:
        (B, in_channels, H, W) -> 5 maps (B, C_i, H / s_i, W / s_i) with
        ``feature_channels`` C = (16, 24, 32, 96, 1280) and ``feature_strides`` s = (2, 4, 8, 16, 32).
    """

    def __init__(self, in_channels: int = 3, pretrained: bool = False):
        super().__init__()
        import torchvision

        if pretrained and in_channels != 3:
            raise ValueError(f"pretrained MobileNetV2 weights expect in_channels=3, got {in_channels}; use pretrained=False")
        net = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1" if pretrained else None)
        self.features = net.features  # 19 children: stem, 17 inverted residuals, 1x1 conv to 1280
        if in_channels != 3:
            self.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self.taps = MOBILENET_V2_SKIPS
        self.feature_channels: list[int] = [self.features[i].out_channels for i in self.taps]
        self.feature_strides: list[int] = [2, 4, 8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                features.append(x)
        return features


@register_encoder("mobilenet_v2")
def _mobilenet_v2(in_channels: int = 3, pretrained: bool = False) -> MobileNetV2Backbone:
    return MobileNetV2Backbone(in_channels, pretrained)


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
        interpolation: upsampling mode, one of :data:`segnotes.upsample.MODES`.

    Shapes:
        x (B, in_channels, h, w), skip (B, skip_channels, H, W) -> (B, out_channels, H, W).
        The target size is ``size`` if given, else the skip's, else (2h, 2w).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, interpolation: str = "nearest"):
        super().__init__()
        self.skip_channels = skip_channels
        self.upsample = make_upsample(interpolation, in_channels)
        self.conv1 = ConvBNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: Sequence[int] | None = None) -> torch.Tensor:
        if size is None and skip is not None:
            size = skip.shape[-2:]
        x = self.upsample(x, size)
        if self.skip_channels > 0:
            x = torch.cat([x, skip], dim=1)  # (B, in + skip, H, W)
        return self.conv2(self.conv1(x))


def _check_decoder_args(encoder_channels: Sequence[int], decoder_channels: Sequence[int], interpolation: str) -> None:
    depth = len(encoder_channels) - 1
    if len(decoder_channels) != depth:
        raise ValueError(
            f"decoder_channels needs one entry per encoder stage ({depth}), got {len(decoder_channels)}: {tuple(decoder_channels)}"
        )
    if interpolation not in MODES:
        raise ValueError(f"unknown decoder interpolation {interpolation!r}; choose one of {MODES}")


class UnetDecoder(nn.Module):
    """The UNet decoder for any encoder following the SMP ``out_channels`` convention.

    Args:
        encoder_channels: the encoder's ``out_channels`` (input first), e.g. ``[3, 0, 96, 192, 384, 768]``.
        decoder_channels: output channels of each block, deepest first; one block per
            downsampling stage, so ``len(decoder_channels) == len(encoder_channels) - 1``.
        interpolation: upsampling mode of every block, one of :data:`segnotes.upsample.MODES`.
        use_skips: ``False`` builds the same decoder without skip connections (an ablation).

    Shapes:
        features: list of ``depth + 1`` maps from the encoder -> (B, decoder_channels[-1], H, W)
        at the input resolution.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        interpolation: str = "nearest",
        use_skips: bool = True,
    ):
        super().__init__()
        _check_decoder_args(encoder_channels, decoder_channels, interpolation)
        # Block k (deepest first) ends at stride 2**(depth-1-k) and takes that map as its skip;
        # the last block ends at stride 1, where the "skip" is the input image: never used.
        skips = [*list(encoder_channels[1:-1])[::-1], 0] if use_skips else [0] * len(decoder_channels)
        ins = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o, interpolation) for i, s, o in zip(ins, skips, decoder_channels))
        self.out_channels = decoder_channels[-1]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1]):  # strides 2**(depth-1), ..., 2, 1
            x = block(x, skip)  # a 0-channel block only reads the skip's size
        return x


class UnetPlusPlusDecoder(nn.Module):
    """UNet++: nested, densely connected skip pathways over an SMP-convention encoder.

    Node ``X[i, j]`` lives at stride ``2**i``; ``X[i, 0]`` is the encoder map and, for
    ``j >= 1``, ``X[i, j] = block(up(X[i+1, j-1]), cat(X[i, j-1], ..., X[i, 0]))``.
    The main path ``X[depth-j, j]`` has ``decoder_channels[j-1]`` channels, the other
    nodes as many as the encoder map at their stride (0-channel nodes are not built),
    and a last block ``X[0, depth]`` upsamples to the input size without a skip. The
    UNet is the special case that keeps only the main path.

    Args:
        encoder_channels, decoder_channels, interpolation: as :class:`UnetDecoder`.

    Shapes:
        features: ``depth + 1`` maps -> (B, decoder_channels[-1], H, W).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        interpolation: str = "nearest",
    ):
        super().__init__()
        _check_decoder_args(encoder_channels, decoder_channels, interpolation)
        depth = self.depth = len(encoder_channels) - 1

        def channels(i: int, j: int) -> int:
            if j > 0 and i + j == depth:
                return decoder_channels[j - 1]  # main path
            return encoder_channels[i]  # encoder map and nested nodes at stride 2**i

        blocks = {}
        for i, j in self._nodes():
            skip = sum(channels(i, k) for k in range(j)) if i > 0 else 0
            if channels(i, j) > 0:
                blocks[f"x_{i}_{j}"] = DecoderBlock(channels(i + 1, j - 1), skip, channels(i, j), interpolation)
        self.blocks = nn.ModuleDict(blocks)
        self.out_channels = decoder_channels[-1]

    def _nodes(self) -> list[tuple[int, int]]:
        """(i, j) of every decoder node in computation order (column by column)."""
        d = self.depth
        return [(i, j) for j in range(1, d + 1) for i in range(d - j, 0 if j < d else -1, -1)]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        X = {(i, 0): f for i, f in enumerate(features)}
        for i, j in self._nodes():
            block = self.blocks[f"x_{i}_{j}"] if f"x_{i}_{j}" in self.blocks else None
            if block is None:  # a 0-channel node (stride-2 placeholder of a transformer encoder)
                X[i, j] = features[i]
                continue
            skips = [X[i, k] for k in reversed(range(j))] if i > 0 else []
            skip = torch.cat(skips, dim=1) if block.skip_channels > 0 else None  # (B, sum C, H, W)
            X[i, j] = block(X[i + 1, j - 1], skip, size=features[i].shape[-2:])
        return X[0, self.depth]


class _EncoderDecoder(nn.Module):
    """Encoder -> decoder -> head; subclasses choose the decoder."""

    decoder_class: type[nn.Module] = UnetDecoder

    def __init__(
        self,
        encoder_name: str = "mobilenet_v2",
        encoder_depth: int = 5,
        encoder_weights: str | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_interpolation: str = "nearest",
        in_channels: int = 3,
        classes: int = 1,
        head_kernel_size: int = 1,
        **decoder_kwargs,
    ):
        super().__init__()
        if encoder_weights not in (None, "imagenet"):
            raise ValueError(f"encoder_weights must be None or 'imagenet', got {encoder_weights!r}")
        if head_kernel_size not in (1, 3):
            raise ValueError(f"head_kernel_size must be 1 or 3, got {head_kernel_size}")
        if classes < 1:
            raise ValueError(f"classes must be a positive integer, got {classes}")
        self.encoder = get_encoder(encoder_name, in_channels, encoder_depth, pretrained=encoder_weights is not None)
        self.decoder = self.decoder_class(self.encoder.out_channels, decoder_channels, decoder_interpolation, **decoder_kwargs)
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], classes, head_kernel_size, padding=head_kernel_size // 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> decoder map (B, decoder_channels[-1], H, W)."""
        return self.decoder(self.encoder(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder map -> logits (B, classes, H, W)."""
        return self.segmentation_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)  # depth + 1 maps, index i at stride 2**i; checks the input size
        decoded = self.decoder(features)  # (B, decoder_channels[-1], H, W)
        return self.segmentation_head(decoded)  # (B, classes, H, W)


class Unet(_EncoderDecoder):
    """UNet: an encoder, a decoder that upsamples and concatenates the encoder's skips, a 1x1 head.

    Argument names follow segmentation_models.pytorch's ``smp.Unet``. Differences: the
    head is a 1x1 convolution by default (SMP: 3x3, ``head_kernel_size=3`` matches it),
    weights default to random (the book runs offline), and ``decoder_interpolation``
    also accepts the learnable ``"transposed"`` and ``"pixelshuffle"``.

    Args:
        encoder_name: ``"mobilenet_v2"`` or any name :func:`segnotes.encoders.get_encoder` knows
            (a timm model such as ``"resnet18"`` or ``"convnext_tiny"``, a book encoder).
        encoder_depth: downsampling stages, 1..5; ``len(decoder_channels)`` must equal it.
        encoder_weights: ``None`` (random init) or ``"imagenet"``.
        decoder_channels: channels of each decoder block, deepest first.
        decoder_interpolation: one of :data:`segnotes.upsample.MODES`; default ``"nearest"``.
        in_channels: input channels.
        classes: output channels (logits).
        head_kernel_size: 1 (default) or 3.
        use_skips: ``False`` drops every skip connection (the chapter's ablation).

    Shapes:
        (B, in_channels, H, W) -> (B, classes, H, W); H and W divisible by ``2**encoder_depth``.

    Example:
        >>> Unet("mobilenet_v2", classes=5)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 5, 64, 64])
    """

    decoder_class = UnetDecoder


class UnetPlusPlus(_EncoderDecoder):
    """UNet++ (nested dense skips) with the arguments of :class:`Unet` (except ``use_skips``).

    Unlike segmentation_models.pytorch, which rejects its MiT encoders for UNet++, any
    encoder works: nodes at a 0-channel placeholder stride are not built.

    Example:
        >>> UnetPlusPlus("mobilenet_v2", classes=5)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 5, 64, 64])
    """

    decoder_class = UnetPlusPlusDecoder


# segmentation_models.pytorch -> segnotes key renames, applied in order.
_SMP_KEYS = (
    (r"^encoder\.features\.", "encoder.backbone.features."),  # torchvision MobileNetV2 body
    (r"^encoder\.model\.", "encoder.backbone.model."),  # timm ("tu-") encoders
    (r"^segmentation_head\.0\.", "segmentation_head."),  # SMP's head is Sequential(conv, upsampling, activation)
)


def convert_smp_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``smp.Unet`` / ``smp.UnetPlusPlus`` state dict to :class:`Unet` / :class:`UnetPlusPlus` keys.

    UNet++ nodes: SMP's ``x_{d}_{l}`` (row ``l`` counted from the bottleneck, ``d``
    columns left of the main path) is node ``x_{i}_{j}`` with ``i = depth - 1 - l``,
    ``j = l - d + 1``; SMP's last node ``x_0_{depth-1}`` is ``x_0_{depth}``.
    Returns the dict unchanged if it already has segnotes keys.

    Raises:
        ValueError: a key that no rule maps.
    """
    if any(k.startswith("encoder.backbone.") for k in state_dict):
        return dict(state_dict)
    nodes = [re.match(r"decoder\.blocks\.x_(\d+)_(\d+)\.", k) for k in state_dict]
    depth = 1 + max((int(m.group(2)) for m in nodes if m), default=-1)
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _SMP_KEYS:
            new = re.sub(pattern, repl, new)
        m = re.match(r"decoder\.blocks\.x_(\d+)_(\d+)\.", key)
        if m:
            d, l = int(m.group(1)), int(m.group(2))
            new = f"decoder.blocks.x_{depth - 1 - l}_{l - d + 1}." + key[m.end() :]
        if new == key and not key.startswith("decoder.blocks."):
            raise ValueError(f"no rule maps SMP key {key!r}; only SMP Unet/UnetPlusPlus with a MobileNetV2 or tu- encoder are supported")
        out[new] = value
    return out


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the preceding conv, in channels_last.

    Folding computes ``conv(x) * gamma / sqrt(var + eps) + (beta - mean * gamma / sqrt(var + eps))``
    as one convolution with scaled weights and a bias: one pass over the feature map
    instead of two. channels_last (NHWC) is the layout oneDNN's CPU convolutions prefer.
    The outputs equal the original model's up to float rounding (about 1e-6).
    """
    fused = copy.deepcopy(model).eval()

    def fold(module: nn.Module) -> None:
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
        for child in module.children():
            fold(child)

    fold(fused)
    return fused.to(memory_format=torch.channels_last)
