"""Chapter 1: encoder ``out_channels`` conventions.

segmentation_models.pytorch (SMP) gives every encoder the same interface: a list of
``depth + 1`` feature maps at strides 1, 2, 4, 8, 16, 32 (the input itself first),
and ``out_channels`` with one entry per map. CNNs (ResNet, MobileNetV2) produce a
stride-2 map; transformer-style encoders (ConvNeXt, MiT, Swin, PVTv2) start with a
stride-4 patch embedding, so SMP puts an empty 0-channel placeholder at stride 2,
e.g. ``[3, 0, 96, 192, 384, 768]`` for ConvNeXt-Tiny. Index ``i`` of the list then
always means stride ``2**i``, and one decoder serves every encoder.

This module is the one place in segnotes where the placeholder is made:
:class:`Encoder` adapts any *backbone* (a module returning a feature pyramid and
declaring its ``feature_channels`` and ``feature_strides``) to the convention.
:func:`get_encoder` builds one from a timm model name; the book's own backbones
(MobileNetV2 in chapter 2, the Mix Transformer in chapter 4, the ViT pyramid in
chapter 6) are passed to :class:`Encoder` as objects, and :func:`as_encoder` accepts
either. :class:`FusedEncoder` shows how two encoders of different styles combine
stage by stage. This module imports no chapter module: later chapters import it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .model import check_divisible, check_images, check_positive

__all__ = [
    "CNN_STRIDES",
    "TRANSFORMER_STRIDES",
    "Encoder",
    "TimmBackbone",
    "FusedEncoder",
    "get_encoder",
    "as_encoder",
    "encoder_style",
]

CNN_STRIDES = (2, 4, 8, 16, 32)  # ResNet, MobileNetV2, EfficientNet: a stride-2 stem stage first
TRANSFORMER_STRIDES = (4, 8, 16, 32)  # ConvNeXt, MiT, Swin, PVTv2: a stride-4 patch embedding first


def encoder_style(strides: Sequence[int]) -> Literal["cnn", "transformer"]:
    """``"cnn"`` for strides (2, 4, ...), ``"transformer"`` for (4, 8, ...).

    Raises:
        ValueError: for any other pattern, naming the pattern found and the supported ones.

    Example:
        >>> encoder_style([4, 8, 16, 32])
        'transformer'
    """
    strides = tuple(int(s) for s in strides)
    for style, pattern in (("cnn", CNN_STRIDES), ("transformer", TRANSFORMER_STRIDES)):
        if len(strides) > 0 and strides == pattern[: len(strides)]:
            return style
    raise ValueError(
        f"unsupported feature strides {strides}: supported are the CNN pattern {CNN_STRIDES} "
        f"and the transformer pattern {TRANSFORMER_STRIDES} (or a prefix of either)"
    )


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model that declares its pyramid like the book's own backbones.

    Args:
        name: a timm model name, e.g. ``"convnext_tiny"``.
        in_channels: input channels.
        num_features: keep the first this many feature maps (``None``: all).
        pretrained: load timm's pretrained weights (needs the network or a local cache).

    Shapes:
        (B, in_channels, H, W) -> one (B, C_i, H / s_i, W / s_i) map per declared
        ``feature_channels`` C_i and ``feature_strides`` s_i.
    """

    def __init__(self, name: str, in_channels: int = 3, num_features: int | None = None, pretrained: bool = False):
        super().__init__()
        import timm

        kwargs = {} if num_features is None else {"out_indices": tuple(range(num_features))}
        self.model = timm.create_model(name, features_only=True, pretrained=pretrained, in_chans=in_channels, **kwargs)
        self.in_channels = in_channels
        self.feature_channels: list[int] = list(self.model.feature_info.channels())
        self.feature_strides: list[int] = list(self.model.feature_info.reduction())
        self._channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"  # e.g. Swin

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        if self._channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]  # (B, H, W, C) -> (B, C, H, W)
        return list(features)


class Encoder(nn.Module):
    """Adapts a backbone to the SMP convention: ``depth + 1`` maps at strides 1, 2, ..., 2**depth.

    Entry 0 is the input itself. For a transformer-style backbone, entry 1 is an empty
    (B, 0, H/2, W/2) placeholder, so index ``i`` always means stride ``2**i``.

    Args:
        backbone: a module declaring ``feature_channels`` and ``feature_strides`` (CNN
            pattern 2, 4, ... or transformer pattern 4, 8, ...) whose forward returns
            those feature maps.
        in_channels: channels of the input image, at least 1.
        depth: number of downsampling stages to return, 1..5 (2..5 for a transformer-style backbone).

    Attributes:
        out_channels: ``depth + 1`` channel counts, e.g. ``[3, 0, 96, 192, 384, 768]``.
        strides: ``[1, 2, 4, ...]``, ``depth + 1`` entries.
        style: ``"cnn"`` or ``"transformer"``.

    Example:
        >>> [f.shape[1] for f in get_encoder("convnext_tiny")(torch.randn(1, 3, 64, 64))]
        [3, 0, 96, 192, 384, 768]
    """

    def __init__(self, backbone: nn.Module, in_channels: int = 3, depth: int = 5):
        super().__init__()
        channels, strides = getattr(backbone, "feature_channels", None), getattr(backbone, "feature_strides", None)
        if not isinstance(backbone, nn.Module) or channels is None or strides is None or len(channels) != len(strides):
            raise ValueError(
                f"cannot adapt {type(backbone).__name__}: pass an nn.Module that declares feature_channels and "
                "feature_strides (one entry per feature map its forward returns), or a timm name to get_encoder"
            )
        check_positive("in_channels", in_channels)
        # A backbone that says what it takes must agree with the encoder, or the first batch fails deep inside.
        declared_in = getattr(backbone, "in_channels", None)
        if declared_in is not None and declared_in != in_channels:
            raise ValueError(
                f"{type(backbone).__name__} takes {declared_in} input channels but in_channels={in_channels} was "
                f"asked for: pass in_channels={declared_in}, or build the backbone with in_channels={in_channels}"
            )
        if not 1 <= depth <= 5:
            raise ValueError(f"depth must be in 1..5, got {depth}")
        self.style = encoder_style(strides)
        # A transformer-style backbone fills the stride-2 slot with the placeholder, so it needs one map fewer.
        self._num_real = depth if self.style == "cnn" else depth - 1
        if not 1 <= self._num_real <= len(strides):
            lowest = 1 if self.style == "cnn" else 2
            highest = min(5, len(strides) + lowest - 1)
            raise ValueError(
                f"depth={depth} needs {self._num_real} feature maps from this {self.style}-style backbone, "
                f"which declares {len(strides)}; choose depth in {lowest}..{highest}"
            )
        self.backbone = backbone
        self.in_channels = in_channels
        self.depth = depth
        placeholder = [0] if self.style == "transformer" else []
        self.out_channels: list[int] = [in_channels, *placeholder, *channels[: self._num_real]]
        self.strides: list[int] = [2**i for i in range(depth + 1)]

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature map; inputs must be a multiple of it."""
        return self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> ``depth + 1`` maps, map ``i`` of shape (B, out_channels[i], H / 2**i, W / 2**i)."""
        check_images(x, self.in_channels)
        check_divisible(x, self.output_stride, "the encoder's output stride")
        B, _, H, W = x.shape
        features = list(self.backbone(x))[: self._num_real]
        declared = self.backbone.feature_channels[: self._num_real]
        if [f.shape[1] for f in features] != declared:
            raise ValueError(
                f"{type(self.backbone).__name__} returned maps with channels {[f.shape[1] for f in features]} "
                f"but declares feature_channels {declared}: make its forward return one map per declared entry"
            )
        if self.style == "transformer":
            placeholder = x.new_empty(B, 0, H // 2, W // 2)  # no stride-2 stage: keep index = log2(stride)
            features = [placeholder, *features]
        return [x, *features]


def get_encoder(name: str, in_channels: int = 3, depth: int = 5, pretrained: bool = False) -> Encoder:
    """Build an SMP-convention encoder from a timm model name.

    Args:
        name: any timm model that supports ``features_only``, with or without a
            pretrained tag: ``"resnet18"``, ``"resnet18.a1_in1k"``, ``"mobilenetv2_100"``,
            ``"convnext_tiny"``, ``"pvt_v2_b0"``, ... The book's own backbones are not
            looked up by name: wrap them, e.g. ``Encoder(MobileNetV2Backbone())``.
        in_channels: input channels.
        depth: number of downsampling stages, 1..5 (5 gives strides up to 32; 2..5 for
            transformer-style models).
        pretrained: load timm's pretrained weights (network or local cache needed).

    Returns:
        An :class:`Encoder` with ``out_channels`` and ``strides``.

    Raises:
        ValueError: unknown name (with close matches), unsupported stride pattern, bad depth.

    Example:
        >>> get_encoder("mobilenetv2_100").out_channels
        [3, 16, 24, 32, 96, 320]
    """
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ValueError(
            f"unknown timm model {name!r}{hint} (the book's own backbones are passed as objects: "
            "Encoder(MobileNetV2Backbone()), Encoder(mit('b0')))"
        )
    with torch.device("meta"):  # read the declared pyramid without allocating weights
        probe = TimmBackbone(name, in_channels)
    # Only build the stages this depth uses: Encoder checks the depth against the probe's pyramid.
    num_real = Encoder(probe, in_channels, depth)._num_real
    return Encoder(TimmBackbone(name, in_channels, num_real, pretrained), in_channels, depth)


def as_encoder(
    encoder: str | nn.Module, in_channels: int = 3, depth: int | None = None, pretrained: bool = False
) -> Encoder | FusedEncoder:
    """The one way models accept an encoder: a timm name, a backbone, or a ready encoder.

    Args:
        encoder: a timm model name (see :func:`get_encoder`); a backbone declaring
            ``feature_channels`` and ``feature_strides`` (wrapped in :class:`Encoder`);
            or an :class:`Encoder` / :class:`FusedEncoder`, returned as it is.
        in_channels: input channels; a ready encoder must have the same.
        depth: downsampling stages, 1..5; ``None``: 5 for names and backbones, a ready
            encoder's own depth. A ready encoder built with another depth is an error.
        pretrained: timm's pretrained weights; only for names.

    Raises:
        ValueError: an object that is none of these, or a ready encoder whose ``in_channels``
            or depth differ from the ones asked for (the message says what to pass).

    Example:
        >>> as_encoder("resnet18", depth=3).out_channels
        [3, 64, 64, 128]
    """
    if isinstance(encoder, str):
        return get_encoder(encoder, in_channels, 5 if depth is None else depth, pretrained)
    if pretrained:
        raise ValueError("pretrained=True only applies to timm names; load weights into your backbone object yourself")
    if isinstance(encoder, (Encoder, FusedEncoder)):
        if encoder.in_channels != in_channels:
            raise ValueError(
                f"the encoder takes {encoder.in_channels} input channels; pass in_channels={encoder.in_channels}"
            )
        if depth is not None and len(encoder.strides) - 1 != depth:
            raise ValueError(
                f"the encoder was built with depth {len(encoder.strides) - 1}; pass that depth, not {depth}"
            )
        return encoder
    if isinstance(encoder, nn.Module):
        return Encoder(encoder, in_channels, 5 if depth is None else depth)  # checks the declared pyramid
    raise ValueError(
        f"cannot use {type(encoder).__name__} as an encoder: pass a timm model name, an Encoder, or a backbone "
        "module that declares feature_channels and feature_strides"
    )


class FusedEncoder(nn.Module):
    """Two encoders fused stage by stage into one SMP-convention feature list.

    Stage ``i`` of the result is ``conv1x1(cat(a[i], b[i]))``. Both encoders follow the
    convention, so stage ``i`` has the same spatial size in both, and a 0-channel
    placeholder concatenates like any other map: a CNN + transformer pair gets its
    stride-2 stage from the CNN alone. The one rule: a stage empty in both encoders
    stays an empty placeholder (``nn.Identity``, no convolution), and only such a stage.

    Args:
        a, b: encoders with the same ``in_channels`` and ``strides`` (same depth).
        out_channels: channels per stage after fusion, entry 0 the input channels;
            default: ``a``'s, or ``b``'s where ``a`` has 0.

    Example:
        >>> FusedEncoder(get_encoder("mobilenetv2_100"), get_encoder("convnext_tiny")).out_channels
        [3, 16, 24, 32, 96, 320]
    """

    def __init__(self, a: Encoder, b: Encoder, out_channels: Sequence[int] | None = None):
        super().__init__()
        if a.strides != b.strides or a.in_channels != b.in_channels:
            raise ValueError(
                f"cannot fuse encoders with strides {a.strides} / {b.strides} and in_channels "
                f"{a.in_channels} / {b.in_channels}: build both with the same depth and in_channels"
            )
        default = [ca or cb for ca, cb in zip(a.out_channels, b.out_channels)]
        out_channels = list(default if out_channels is None else out_channels)
        if len(out_channels) != len(default) or out_channels[0] != a.in_channels:
            raise ValueError(
                f"out_channels must have {len(default)} entries starting with {a.in_channels}, got {out_channels}"
            )
        stages = list(zip(a.out_channels[1:], b.out_channels[1:], out_channels[1:]))
        if any((ca + cb == 0) != (co == 0) for ca, cb, co in stages):
            raise ValueError(
                f"out_channels {out_channels} must be 0 exactly where both encoders have 0 "
                f"({a.out_channels} and {b.out_channels}): a stage that is empty in both stays empty"
            )
        self.a, self.b = a, b
        self.in_channels, self.strides, self.out_channels = a.in_channels, a.strides, out_channels
        self.proj = nn.ModuleList(
            nn.Conv2d(ca + cb, co, kernel_size=1) if co else nn.Identity() for ca, cb, co in stages
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> ``depth + 1`` maps with ``self.out_channels`` channels."""
        fa, fb = self.a(x), self.b(x)
        if not len(fa) == len(fb) == len(self.out_channels):
            raise ValueError(
                f"expected {len(self.out_channels)} feature maps from each encoder, got {len(fa)} and {len(fb)}: "
                "fuse encoders that return depth + 1 maps, the input first"
            )
        fused = [proj(torch.cat([ma, mb], dim=1)) for proj, ma, mb in zip(self.proj, fa[1:], fb[1:])]  # (B, Co, h, w)
        return [x, *fused]
