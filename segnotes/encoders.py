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

**Dilation.** DeepLab keeps the deepest maps at stride 16 or 8 by replacing the last
strided convolutions with dilated ones (``get_encoder(name, output_stride=16)``, timm's
``output_stride``). The list keeps ``depth + 1`` entries, and ``strides`` says where
each map really is, e.g. ``[1, 2, 4, 8, 16, 16]``: index ``i`` is stage ``i``, at stride
``min(2**i, output_stride)``. Only CNNs can dilate: a transformer (MiT, Swin, PVTv2, a
ViT) downsamples with strided patch embeddings and is built without ``output_stride``,
so asking for one is an error that names the encoder.

**Two kinds of encoder.** Every *pyramid* model (UNet, UNet++, DeepLabV3+, SegFormer)
takes its encoder through :func:`as_encoder` and builds its decoder from the encoder's
channels *and* strides; every decoder checks both on each call with
:func:`check_features`, the one place that does. The plain-ViT models of chapter 6
(SETR) are the other kind: their encoder, :class:`segnotes.vit.ViTBackbone`, returns
several maps at *one* stride, the patch size (``feature_strides`` ``[p, p, ...]``, not a
pyramid), and their decoders are built for that. :class:`segnotes.dpt.ViTPyramid`
turns such a ViT into a pyramid, which then goes through :func:`as_encoder` like any other.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .model import check_choice, check_divisible, check_images, check_positive

__all__ = [
    "CNN_STRIDES",
    "TRANSFORMER_STRIDES",
    "Encoder",
    "TimmBackbone",
    "FusedEncoder",
    "get_encoder",
    "as_encoder",
    "encoder_style",
    "check_features",
    "OUTPUT_STRIDES",
]

CNN_STRIDES = (2, 4, 8, 16, 32)  # ResNet, MobileNetV2, EfficientNet: a stride-2 stem stage first
TRANSFORMER_STRIDES = (4, 8, 16, 32)  # ConvNeXt, MiT, Swin, PVTv2: a stride-4 patch embedding first
OUTPUT_STRIDES = (8, 16, 32)  # deepest stride: 32 plain; 16 and 8 with dilated last stages (DeepLab)


def encoder_style(strides: Sequence[int]) -> Literal["cnn", "transformer"]:
    """``"cnn"`` for strides (2, 4, ...), ``"transformer"`` for (4, 8, ...).

    A dilated backbone repeats its output stride instead of going deeper, e.g.
    (2, 4, 8, 16, 16) or (4, 8, 8, 8): the pattern capped at its last stride.

    Raises:
        ValueError: for any other pattern, naming the pattern found and the supported ones.

    Example:
        >>> encoder_style([4, 8, 16, 32])
        'transformer'
    """
    strides = tuple(int(s) for s in strides)
    for style, pattern in (("cnn", CNN_STRIDES), ("transformer", TRANSFORMER_STRIDES)):
        capped = tuple(min(p, strides[-1]) for p in pattern[: len(strides)]) if strides else ()
        if len(strides) > 0 and strides == capped:
            return style
    raise ValueError(
        f"unsupported feature strides {strides}: supported are the CNN pattern {CNN_STRIDES} "
        f"and the transformer pattern {TRANSFORMER_STRIDES} (or a prefix of either; a dilated "
        "backbone repeats its last stride, e.g. (2, 4, 8, 16, 16))"
    )


def check_features(
    features: Sequence[torch.Tensor], channels: Sequence[int], strides: Sequence[int], owner: str
) -> None:
    """Raise a ``ValueError`` unless ``features`` are maps with these channels at these strides.

    Every decoder calls it first, with the channels and strides it was built from: the
    one place where a decoder checks what it receives. A map at stride ``s`` of an image
    of height ``H`` has height ``H / s`` rounded down or up (convolutions do either), so
    the maps' sizes must all agree with one image size; a map at another stride does not.

    Args:
        features: the maps, e.g. an :class:`Encoder`'s output (the input image first).
        channels, strides: what the owner was built for, one entry per map.
        owner: who checks, for the message, e.g. ``"UnetDecoder"``.

    Example:
        >>> check_features([torch.zeros(1, 8, 16, 16)], [8], [4], "decoder")  # passes silently
    """
    got = [f.shape[1] for f in features]
    if got != list(channels):
        raise ValueError(
            f"{owner} was built for {len(channels)} maps with channels {list(channels)}, got {len(got)} maps "
            f"with channels {got}; build it from the encoder's channels and strides and pass every map it returns"
        )
    for axis, side in ((-2, "height"), (-1, "width")):
        low, high = 1, math.inf  # the image sides that every map so far agrees with
        for i, (f, s) in enumerate(zip(features, strides)):
            n = f.shape[axis]
            low, high = max(low, (n - 1) * s + 1), min(high, (n + 1) * s - 1)
            if low > high:
                raise ValueError(
                    f"{owner} expects maps at strides {list(strides)}, but map {i} ({side} {n}) does not fit the "
                    f"image {side} the maps before it imply (map {side}s {[f.shape[axis] for f in features]}); "
                    "the encoder returns a map at another stride than it declares: fix its feature_strides"
                )


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model that declares its pyramid like the book's own backbones.

    Args:
        name: a timm model name, e.g. ``"convnext_tiny"``.
        in_channels: input channels.
        out_indices: which of timm's feature maps to return; ``None``: timm's default
            selection (``feature_info.out_indices``, which need not start at 0: DLA's is 1..5).
        pretrained: load timm's pretrained weights (needs the network or a local cache).
        **timm_kwargs: options for ``timm.create_model``, e.g. ``output_stride=16`` for a
            dilated CNN or ``img_size=256`` for a Swin.

    Attributes:
        feature_channels: the declared pyramid's channels, read from timm's ``feature_info``.
        feature_strides: the declared pyramid's strides, read from timm's ``feature_info``.
        out_indices: the timm feature indices returned.

    Shapes:
        (B, in_channels, H, W) -> one (B, C_i, H / s_i, W / s_i) map per declared
        ``feature_channels`` C_i and ``feature_strides`` s_i.
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        out_indices: Sequence[int] | None = None,
        pretrained: bool = False,
        **timm_kwargs,
    ):
        super().__init__()
        import timm

        if out_indices is not None:
            timm_kwargs["out_indices"] = tuple(out_indices)
        try:
            self.model = timm.create_model(
                name, features_only=True, pretrained=pretrained, in_chans=in_channels, **timm_kwargs
            )
        except TypeError as error:  # timm hands options it does not know to the model's constructor
            if "output_stride" in str(error):
                raise ValueError(_cannot_dilate(name, timm_kwargs["output_stride"])) from error
            raise ValueError(f"timm's {name} does not accept the options {timm_kwargs}: {error}") from error
        except RuntimeError as error:
            if "features_only" not in str(error):
                raise
            raise ValueError(f"timm's {name} has no feature pyramid (features_only): {error}") from error
        self.in_channels = in_channels
        self.out_indices: list[int] = list(self.model.feature_info.out_indices)
        self.feature_channels: list[int] = list(self.model.feature_info.channels())
        self.feature_strides: list[int] = list(self.model.feature_info.reduction())
        self._channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"  # e.g. Swin
        # Swin and ViT lay out windows / position embeddings for one size: timm's patch embedding says so.
        embed = next((m for m in self.model.modules() if getattr(m, "strict_img_size", False)), None)
        self.fixed_size = None if embed is None or embed.img_size is None else tuple(embed.img_size)
        self.name = name

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.fixed_size is not None and tuple(x.shape[-2:]) != self.fixed_size:
            h, w = x.shape[-2:]
            raise ValueError(
                f"timm's {self.name} is built for {self.fixed_size[0]}x{self.fixed_size[1]} inputs, got {h}x{w}: "
                f"build it for this size, get_encoder({self.name!r}, img_size=({h}, {w}))"
            )
        features = self.model(x)
        if self._channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]  # (B, H, W, C) -> (B, C, H, W)
        return list(features)


def _cannot_dilate(name: str, output_stride: int) -> str:
    return (
        f"{name} cannot dilate to output_stride={output_stride}: segnotes dilates only timm CNNs, whose "
        "strided stages timm rebuilds as dilated ones (a transformer such as MiT, Swin, PVTv2 or a ViT "
        "downsamples by embedding or merging patches, which timm does not dilate); use output_stride=32, "
        "or a CNN such as 'resnet18' or 'convnext_tiny'"
    )


class Encoder(nn.Module):
    """Adapts a backbone to the SMP convention: ``depth + 1`` maps, stage ``i`` at stride ``2**i``.

    Entry 0 is the input itself. For a transformer-style backbone, entry 1 is an empty
    (B, 0, H/2, W/2) placeholder, so index ``i`` always means stage ``i``: stride ``2**i``,
    or less for a dilated backbone, whose deepest maps repeat its output stride.

    Args:
        backbone: a module declaring ``feature_channels`` and ``feature_strides`` (CNN
            pattern 2, 4, ... or transformer pattern 4, 8, ..., possibly dilated) whose
            forward returns those feature maps.
        in_channels: channels of the input image, at least 1.
        depth: number of downsampling stages to return, 1..5 (2..5 for a transformer-style backbone).

    Attributes:
        out_channels: ``depth + 1`` channel counts, e.g. ``[3, 0, 96, 192, 384, 768]``.
        strides: the maps' strides, ``depth + 1`` entries: ``[1, 2, 4, 8, 16, 32]``, or
            e.g. ``[1, 2, 4, 8, 16, 16]`` for a backbone dilated to output stride 16.
        style: ``"cnn"`` or ``"transformer"``.

    Example:
        >>> [f.shape[1] for f in get_encoder("convnext_tiny")(torch.randn(1, 3, 64, 64))]
        [3, 0, 96, 192, 384, 768]
    """

    def __init__(self, backbone: nn.Module, in_channels: int = 3, depth: int = 5):
        super().__init__()
        name = type(backbone).__name__
        channels = getattr(backbone, "feature_channels", None)
        strides = getattr(backbone, "feature_strides", None)
        declared = None not in (channels, strides) and len(channels) == len(strides)
        if not isinstance(backbone, nn.Module) or not declared:
            raise ValueError(
                f"cannot adapt {name}: pass an nn.Module that declares feature_channels "
                "and feature_strides (one entry per feature map its forward returns), "
                "or a timm name to get_encoder"
            )
        check_positive("in_channels", in_channels)
        # A backbone that says what it takes must agree, or the first batch fails.
        takes = getattr(backbone, "in_channels", None)
        if takes is not None and takes != in_channels:
            raise ValueError(
                f"{name} takes {takes} input channels but in_channels={in_channels} "
                f"was asked for: pass in_channels={takes}, or build the backbone "
                f"with in_channels={in_channels}"
            )
        if not isinstance(depth, numbers.Integral) or not 1 <= depth <= 5:
            raise ValueError(f"depth must be in 1..5, got {depth}")
        self.style = encoder_style(strides)
        # A transformer-style backbone has no stride-2 map: the placeholder takes its slot.
        gap = int(self.style == "transformer")
        self._num_real = depth - gap  # how many of the backbone's maps this depth uses
        if not 1 <= self._num_real <= len(strides):
            lowest, highest = 1 + gap, min(5, len(strides) + gap)
            raise ValueError(
                f"depth={depth} needs {self._num_real} feature maps from this "
                f"{self.style}-style backbone, which declares {len(strides)}; "
                f"choose depth in {lowest}..{highest}"
            )
        self.backbone = backbone
        self.in_channels = in_channels
        self.depth = int(depth)
        n = self._num_real
        self.out_channels: list[int] = [in_channels, *[0] * gap, *channels[:n]]
        self.strides: list[int] = [1, *[2] * gap, *strides[:n]]  # as declared (dilated?)

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature map; inputs must be a multiple of it."""
        return self.strides[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> ``depth + 1`` maps, (B, out_channels[i], H / s_i, W / s_i)."""
        check_images(x, self.in_channels)
        check_divisible(x, self.output_stride, "the encoder's output stride")
        B, _, H, W = x.shape
        maps = list(self.backbone(x))[: self._num_real]
        got = [f.shape[1] for f in maps]
        declared = self.backbone.feature_channels[: self._num_real]
        if got != declared:
            raise ValueError(
                f"{type(self.backbone).__name__} returned maps with channels {got} but "
                f"declares feature_channels {declared}: make its forward return one "
                "map per declared entry"
            )
        if self.style == "transformer":
            placeholder = x.new_empty(B, 0, H // 2, W // 2)  # no stride-2 stage
            maps = [placeholder, *maps]
        features = [x, *maps]
        name = type(self.backbone).__name__
        check_features(features, self.out_channels, self.strides, name)  # strides too
        return features


def get_encoder(
    name: str,
    in_channels: int = 3,
    depth: int = 5,
    pretrained: bool = False,
    output_stride: int = 32,
    **timm_kwargs,
) -> Encoder:
    """Build an SMP-convention encoder from a timm model name.

    Args:
        name: any timm model that supports ``features_only``, with or without a
            pretrained tag: ``"resnet18"``, ``"resnet18.a1_in1k"``, ``"mobilenetv2_100"``,
            ``"convnext_tiny"``, ``"pvt_v2_b0"``, ``"dla34"``, ... The book's own backbones are not
            looked up by name: wrap them, e.g. ``Encoder(MobileNetV2Backbone())``.
        in_channels: input channels.
        depth: number of downsampling stages, 1..5 (5 gives strides up to 32; 2..5 for
            transformer-style models).
        pretrained: load timm's pretrained weights (network or local cache needed).
        output_stride: 32, or 16 / 8 to dilate a CNN's last stages (DeepLab); a
            transformer cannot dilate (a ``ValueError`` names it).
        **timm_kwargs: further options for ``timm.create_model``, e.g. ``img_size=256``
            for a Swin, whose attention windows are laid out for one input size.

    Returns:
        An :class:`Encoder` with ``out_channels`` and ``strides``.

    Raises:
        ValueError: unknown name (with close matches), unsupported stride pattern, bad
            depth or output stride, an option timm's model does not take.

    Example:
        >>> get_encoder("mobilenetv2_100").out_channels
        [3, 16, 24, 32, 96, 320]
        >>> get_encoder("resnet18", output_stride=16).strides
        [1, 2, 4, 8, 16, 16]
    """
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ValueError(
            f"unknown timm model {name!r}{hint} (the book's own backbones are passed as objects: "
            "Encoder(MobileNetV2Backbone()), Encoder(mit('b0')))"
        )
    check_choice("output_stride", output_stride, OUTPUT_STRIDES)
    if output_stride != 32:
        timm_kwargs["output_stride"] = output_stride  # timm dilates the stages past it
    with torch.device("meta"):  # read the declared pyramid without allocating weights
        probe = TimmBackbone(name, in_channels, **timm_kwargs)
    if max(probe.feature_strides) > output_stride:  # a model that took the option but ignores it
        raise ValueError(_cannot_dilate(name, output_stride))
    # Only build the stages this depth uses: Encoder checks the depth against the probe's pyramid.
    out_indices = probe.out_indices[: Encoder(probe, in_channels, depth)._num_real]
    return Encoder(TimmBackbone(name, in_channels, out_indices, pretrained, **timm_kwargs), in_channels, depth)


def as_encoder(
    encoder: str | nn.Module,
    in_channels: int = 3,
    depth: int | None = None,
    pretrained: bool = False,
    output_stride: int | None = None,
    **timm_kwargs,
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
        output_stride: the deepest map's stride wanted (8, 16 or 32); ``None``: whatever
            the encoder has (32 for names). Names are dilated to it; a backbone or a ready
            encoder must already have it (capped by ``2**depth``), else a ``ValueError``
            says what it has: the book's MiT and ViT backbones cannot dilate.
        **timm_kwargs: options for ``timm.create_model``; only for names.

    Raises:
        ValueError: an object that is none of these, or a ready encoder whose ``in_channels``,
            depth or output stride differ from the ones asked for (the message says what to pass).

    Example:
        >>> as_encoder("resnet18", depth=3).out_channels
        [3, 64, 64, 128]
    """
    if output_stride is not None:
        check_choice("output_stride", output_stride, OUTPUT_STRIDES)
    if isinstance(encoder, str):
        return get_encoder(
            encoder, in_channels, 5 if depth is None else depth, pretrained, output_stride or 32, **timm_kwargs
        )
    if pretrained:
        raise ValueError("pretrained=True only applies to timm names; load weights into your backbone object yourself")
    if timm_kwargs:
        raise ValueError(f"timm options {sorted(timm_kwargs)} only apply to timm names, not to a module")
    if isinstance(encoder, (Encoder, FusedEncoder)):
        if encoder.in_channels != in_channels:
            raise ValueError(
                f"the encoder takes {encoder.in_channels} input channels; pass in_channels={encoder.in_channels}"
            )
        if depth is not None and len(encoder.strides) - 1 != depth:
            raise ValueError(
                f"the encoder was built with depth {len(encoder.strides) - 1}; pass that depth, not {depth}"
            )
        ready = encoder
    elif isinstance(encoder, nn.Module):
        ready = Encoder(encoder, in_channels, 5 if depth is None else depth)  # checks the declared pyramid
    else:
        raise ValueError(
            f"cannot use {type(encoder).__name__} as an encoder: pass a timm model name, an Encoder, or a backbone "
            "module that declares feature_channels and feature_strides"
        )
    wanted = None if output_stride is None else min(output_stride, 2 ** (len(ready.strides) - 1))
    if wanted is not None and ready.output_stride != wanted:
        name = type(ready.backbone).__name__ if isinstance(ready, Encoder) else "the fused encoder"
        raise ValueError(
            f"{name} has its deepest map at stride {ready.output_stride} (strides {ready.strides}), not "
            f"{wanted}; a module is used as it is, segnotes dilates only timm CNNs built by name "
            f"(get_encoder(name, output_stride={output_stride})). Pass output_stride={ready.output_stride}: "
            "a transformer such as MiT or a ViT downsamples with strided patch embeddings, which segnotes "
            "does not dilate (SMP dilates MiT's by hand)"
        )
    return ready


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
        self.output_stride = a.output_stride
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
