"""Chapter 6: a plain ViT, from an image classifier to a segmentation model.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, https://arxiv.org/abs/2010.11929;
Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective
with Transformers" (SETR), CVPR 2021, https://arxiv.org/abs/2012.15840;
Ranftl et al., "Vision Transformers for Dense Prediction" (DPT), ICCV 2021,
https://arxiv.org/abs/2103.13413.

A ViT classifier cuts the image into ``p x p`` patches, turns each into a token, adds
prefix tokens (a CLS token, sometimes registers) and runs a stack of identical blocks
at one resolution, ``H/p x W/p``. Its head reads only the CLS token (or the mean token)
and returns one vector of class logits per image. Segmentation needs one vector per
*pixel*, so every head here starts from the patch tokens of one or more blocks,
reshaped back into a map (:func:`tokens_to_map`):

* :class:`LinearHead` (SETR-Naive): the classifier's linear layer applied to every
  token (a 1x1 convolution), then bilinear upsampling by ``p``;
* :class:`ProgressiveUpsamplingHead` (SETR-PUP): conv and 2x upsampling stages;
* :class:`MultiLevelHead` (SETR-MLA): several blocks aggregated top-down;
* :class:`ViTPyramid` (DPT's reassembly): four blocks resampled to strides 4, 8, 16, 32,
  a backbone that :class:`segnotes.encoders.Encoder` turns into chapter 1's
  ``out_channels`` convention, so the UNet decoder of chapter 2 runs on a plain ViT.

The ViT itself is timm's ``VisionTransformer`` (random init here, pretrained on Colab);
intermediate blocks come from its ``forward_intermediates``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .encoders import Encoder, TRANSFORMER_STRIDES, register_encoder
from .unet import ConvBNReLU, UnetDecoder

__all__ = [
    "Readout",
    "ReadoutMode",
    "VIT_PRESETS",
    "create_vit",
    "evenly_spaced_indices",
    "check_patch_multiple",
    "tokens_to_map",
    "map_to_tokens",
    "attention_weights",
    "ViTBackbone",
    "LinearHead",
    "ProgressiveUpsamplingHead",
    "MultiLevelHead",
    "ViTPyramid",
    "UnetHead",
    "ViTSegmenter",
    "HeadKind",
    "build_segmenter",
]

ReadoutMode = Literal["ignore", "add", "cat"]
HeadKind = Literal["linear", "pup", "mla", "pyramid_unet"]

# timm VisionTransformer keyword arguments. Parameter counts are for num_classes=1000 (tests check them).
VIT_PRESETS: dict[str, dict] = {
    # The book's CPU-sized ViT: 32x32 images -> an 8x8 token grid, trains in seconds on a CPU (0.27M params).
    "book": dict(patch_size=4, embed_dim=64, depth=4, num_heads=2, img_size=32),
    # = timm's vit_tiny_patch16_224 (5.72M params)
    "tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, img_size=224),
    # = timm's vit_small_patch16_224 (22.05M params)
    "small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, img_size=224),
}


# --------------------------------------------------------------------------- the ViT and its tokens


def create_vit(preset: str = "book", num_classes: int = 1000, **kwargs) -> nn.Module:
    """A randomly initialised timm ``VisionTransformer`` that accepts any multiple of its patch size.

    Args:
        preset: a key of :data:`VIT_PRESETS` (``"book"``, ``"tiny"``, ``"small"``).
        num_classes: classifier outputs (0 drops the classification head).
        **kwargs: override any ``VisionTransformer`` argument, e.g. ``depth=6`` or ``reg_tokens=4``.

    Returns:
        The model; ``model(x)`` maps (B, 3, H, W) to class logits (B, num_classes).

    Example:
        >>> create_vit("book", num_classes=5)(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 5])
    """
    if preset not in VIT_PRESETS:
        raise ValueError(f"unknown ViT preset {preset!r}; choose one of {tuple(VIT_PRESETS)}")
    from timm.models.vision_transformer import VisionTransformer

    config = {**VIT_PRESETS[preset], "num_classes": num_classes, "dynamic_img_size": True, **kwargs}
    return VisionTransformer(**config)


def evenly_spaced_indices(depth: int, n: int = 4) -> list[int]:
    """``n`` block indices spread evenly over ``depth`` blocks, ending with the last block.

    Block ``k * depth / n - 1`` for ``k = 1..n``, as in DPT and SMP: ``[2, 5, 8, 11]`` for 12 blocks.

    Example:
        >>> evenly_spaced_indices(12)
        [2, 5, 8, 11]
    """
    if not 1 <= n <= depth:
        raise ValueError(f"cannot take {n} distinct blocks from a ViT with {depth} blocks; choose n in 1..{depth}")
    return [k * depth // n - 1 for k in range(1, n + 1)]


def check_patch_multiple(x: torch.Tensor, patch_size: int) -> None:
    """Raise a ``ValueError`` saying how to pad ``x`` unless it is (B, C, H, W) with H, W multiples of ``patch_size``."""
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}; add a batch dimension with x[None]")
    h, w = x.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(
            f"input size {h}x{w} is not a multiple of the patch size {patch_size}; pad it to "
            f"{math.ceil(h / patch_size) * patch_size}x{math.ceil(w / patch_size) * patch_size}, "
            f"e.g. with segnotes.encoders.pad_to_multiple(x, {patch_size})"
        )


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens (B, h*w, C), in row-major order, -> a feature map (B, C, h, w).

    Example:
        >>> tokens_to_map(torch.randn(2, 8 * 8, 96), (8, 8)).shape
        torch.Size([2, 96, 8, 8])
    """
    h, w = grid
    if tokens.ndim != 3 or tokens.shape[1] != h * w:
        raise ValueError(
            f"expected (B, {h}*{w}={h * w}, C) patch tokens, got shape {tuple(tokens.shape)}; "
            "drop the prefix (CLS/register) tokens first, e.g. with Readout"
        )
    return rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)


def map_to_tokens(feature: torch.Tensor) -> torch.Tensor:
    """A feature map (B, C, h, w) -> patch tokens (B, h*w, C), the inverse of :func:`tokens_to_map`."""
    if feature.ndim != 4:
        raise ValueError(f"expected a (B, C, h, w) feature map, got shape {tuple(feature.shape)}")
    return rearrange(feature, "b c h w -> b (h w) c")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class Readout(nn.Module):
    """What to do with the prefix (CLS/register) tokens when only patch tokens form the map (DPT).

    * ``"ignore"``: drop them;
    * ``"add"``: add their mean to every patch token (global context, no parameters);
    * ``"cat"``: concatenate the first prefix token (CLS) to every patch token, then
      ``Linear(2C, C)`` and GELU.

    Args:
        embed_dim: token width C.
        num_prefix_tokens: prefix tokens in front of the patch tokens (timm's ``num_prefix_tokens``).
        mode: ``"ignore"``, ``"add"`` or ``"cat"``; the last two need at least one prefix token.

    Shapes:
        (B, num_prefix_tokens + N, C) -> (B, N, C)
    """

    def __init__(self, embed_dim: int, num_prefix_tokens: int, mode: ReadoutMode = "ignore"):
        super().__init__()
        _check_choice("readout", mode, get_args(ReadoutMode))
        if mode != "ignore" and num_prefix_tokens == 0:
            raise ValueError(f"readout {mode!r} needs a prefix token, but this ViT has none; use readout='ignore'")
        self.mode = mode
        self.num_prefix_tokens = num_prefix_tokens
        self.project = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) if mode == "cat" else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens :]  # (B, P, C), (B, N, C)
        if self.mode == "add":
            return patches + prefix.mean(1, keepdim=True)
        if self.mode == "cat":
            cls = prefix[:, :1].expand_as(patches)  # (B, N, C)
            return self.project(torch.cat([patches, cls], dim=-1))  # (B, N, 2C) -> (B, N, C)
        return patches


def attention_weights(vit: nn.Module, x: torch.Tensor, block: int = -1) -> torch.Tensor:
    """The softmax attention weights of one block of a timm ViT, for visualisation.

    timm computes attention with a fused kernel (``F.scaled_dot_product_attention``) that
    never materialises the weights, so a forward hook records the block's attention input
    and the weights are recomputed from its ``qkv`` projection: ``softmax(q k^T / sqrt(d))``.

    Args:
        vit: a timm ``VisionTransformer`` with standard ``Attention`` blocks.
        x: images (B, 3, H, W), H and W multiples of the patch size.
        block: which block (negative counts from the end; -1 is the last).

    Returns:
        (B, heads, T, T) with T = prefix tokens + (H/p)(W/p); row ``i`` is how token ``i``
        distributes its attention (each row sums to 1). Row 0 is the CLS token's.

    Example:
        >>> attention_weights(create_vit(), torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 2, 65, 65])
    """
    check_patch_multiple(x, vit.patch_embed.patch_size[0])
    attn = vit.blocks[block].attn
    recorded: list[torch.Tensor] = []
    handle = attn.register_forward_hook(lambda _module, inputs, _output: recorded.append(inputs[0]))
    try:
        with torch.no_grad():
            vit.forward_features(x)
    finally:
        handle.remove()
    with torch.no_grad():
        qkv = rearrange(attn.qkv(recorded[0]), "b t (three heads d) -> three b heads t d", three=3, heads=attn.num_heads)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, T, d)
        return (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, T, T)


class ViTBackbone(nn.Module):
    """A ViT's patch tokens after selected blocks, as feature maps at stride ``patch_size``.

    Args:
        vit: a timm ``VisionTransformer`` (its classification head is not used).
        indices: blocks to read, e.g. ``[2, 5, 8, 11]``; default: the last block only.
        readout: prefix-token handling for every block, see :class:`Readout`.
        norm: pass each block's tokens through the ViT's final LayerNorm (what the classifier sees).

    Attributes:
        patch_size, embed_dim, indices, num_prefix_tokens.

    Shapes:
        (B, 3, H, W) -> ``len(indices)`` maps of shape (B, embed_dim, H/p, W/p).
    """

    def __init__(
        self, vit: nn.Module, indices: Sequence[int] | None = None, readout: ReadoutMode = "ignore", norm: bool = False
    ):
        super().__init__()
        depth = len(vit.blocks)
        indices = [depth - 1] if indices is None else [i % depth if -depth <= i < depth else i for i in indices]
        if not all(0 <= i < depth for i in indices):
            raise ValueError(f"block indices must be in -{depth}..{depth - 1} for this {depth}-block ViT, got {indices}")
        self.vit = vit
        self.indices = indices
        self.norm = norm
        self.patch_size = vit.patch_embed.patch_size[0]
        self.embed_dim = vit.embed_dim
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.readouts = nn.ModuleList(Readout(self.embed_dim, self.num_prefix_tokens, readout) for _ in indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_patch_multiple(x, self.patch_size)
        B, _, H, W = x.shape
        with_prefix = self.num_prefix_tokens > 0  # timm returns (patches, prefix) pairs only when there is a prefix
        blocks = self.vit.forward_intermediates(
            x, indices=self.indices, norm=self.norm, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=with_prefix
        )  # [(patches (B, N, C), prefix (B, P, C)), ...] or [patches (B, N, C), ...]
        tokens = [torch.cat([b[1], b[0]], dim=1) if with_prefix else b for b in blocks]  # (B, P + N, C) each
        grid = (H // self.patch_size, W // self.patch_size)
        return [tokens_to_map(readout(t), grid) for readout, t in zip(self.readouts, tokens)]  # (B, C, h, w) each


# --------------------------------------------------------------------------- heads


def _num_doublings(patch_size: int) -> int:
    n = int(math.log2(patch_size))
    if 2**n != patch_size:
        raise ValueError(f"this head upsamples in 2x steps: the patch size must be a power of 2, got {patch_size}")
    return n


class LinearHead(nn.Module):
    """SETR-Naive: a 1x1 convolution on the last block's token map, then bilinear upsampling.

    A 1x1 convolution is the classifier's ``Linear(C, num_classes)`` applied to every
    token instead of to the pooled one: each patch is classified on its own, and the
    ``p x p`` pixels of a patch share one vector of logits before interpolation.

    Args:
        embed_dim: token width C.
        num_classes: output classes K.
        patch_size: p, the upsampling factor.

    Shapes:
        features: a list whose last map is (B, C, h, w) -> logits (B, K, h*p, w*p).
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.classify = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        logits = self.classify(features[-1])  # (B, K, h, w)
        return F.interpolate(logits, scale_factor=self.patch_size, mode="bilinear", align_corners=False)


class ProgressiveUpsamplingHead(nn.Module):
    """SETR-PUP: ``log2(p)`` stages of 3x3 conv-BN-ReLU and 2x bilinear upsampling, then a 1x1 classifier.

    Upsampling in small steps lets every stage refine the boundary the previous one
    blurred, instead of one big interpolation.

    Args:
        embed_dim: token width C.
        num_classes: output classes K.
        patch_size: p, a power of 2.
        channels: width of the conv stages.

    Shapes:
        features: a list whose last map is (B, C, h, w) -> logits (B, K, h*p, w*p).
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int, channels: int = 32):
        super().__init__()
        stages = []
        for i in range(_num_doublings(patch_size)):
            stages += [ConvBNReLU(embed_dim if i == 0 else channels, channels), nn.Upsample(scale_factor=2, mode="bilinear")]
        self.stages = nn.Sequential(*stages)
        self.classify = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.stages(features[-1]))  # (B, C, h, w) -> (B, ch, h*p, w*p) -> (B, K, h*p, w*p)


class MultiLevelHead(nn.Module):
    """SETR-MLA: several blocks' maps projected, aggregated top-down, refined and concatenated.

    Deeper blocks are added into shallower ones (``agg_i = proj_i + agg_{i+1}``), like an
    FPN whose levels all share one resolution: a plain ViT has no pyramid, but its
    blocks see increasingly global context.

    Args:
        embed_dim: token width C.
        num_classes: output classes K.
        patch_size: p, the final upsampling factor.
        num_levels: L, the number of block maps the head receives.
        channels: width of each level's stream.

    Shapes:
        features: L maps (B, C, h, w), shallow to deep -> logits (B, K, h*p, w*p).
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int, num_levels: int = 4, channels: int = 32):
        super().__init__()
        self.patch_size = patch_size
        self.num_levels = num_levels
        self.project = nn.ModuleList(nn.Conv2d(embed_dim, channels, kernel_size=1) for _ in range(num_levels))
        self.refine = nn.ModuleList(ConvBNReLU(channels, channels) for _ in range(num_levels))
        self.classify = nn.Conv2d(num_levels * channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != self.num_levels:
            raise ValueError(f"MultiLevelHead was built for {self.num_levels} block maps, got {len(features)}")
        streams, aggregate = [], None
        for project, refine, f in zip(self.project[::-1], self.refine[::-1], features[::-1]):  # deep to shallow
            aggregate = project(f) if aggregate is None else project(f) + aggregate  # (B, ch, h, w)
            streams.append(refine(aggregate))
        logits = self.classify(torch.cat(streams, dim=1))  # (B, L*ch, h, w) -> (B, K, h, w)
        return F.interpolate(logits, scale_factor=self.patch_size, mode="bilinear", align_corners=False)


class ViTPyramid(nn.Module):
    """DPT's reassembly: four blocks of a plain ViT resampled into a pyramid at strides 4, 8, 16, 32.

    Each block's token map (stride p) goes through a 1x1 convolution to its level's
    width, then is resampled by ``p / stride``: a transposed convolution (kernel = stride
    = factor) to go up, identity at 1, a 3x3 strided convolution to go down. For p = 16
    that is 4x up, 2x up, identity, 2x down, exactly DPT's. The pyramid is declared
    with ``feature_channels`` / ``feature_strides``, so ``Encoder(ViTPyramid(...))`` gives
    chapter 1's transformer-style ``out_channels`` (with the 0-channel stride-2 placeholder).

    Args:
        vit: a timm ``VisionTransformer`` with a power-of-2 patch size from 2 to 128.
        channels: width of the four levels, shallow to deep; default ``(C/4, C/2, C, C)``.
        indices: the four blocks, shallow to deep; default :func:`evenly_spaced_indices`.
        readout: prefix-token handling, see :class:`Readout`.

    Shapes:
        (B, 3, H, W) -> [(B, channels[i], H / s_i, W / s_i) for s_i in (4, 8, 16, 32)];
        H and W must be multiples of 32 and of p.

    Example:
        >>> Encoder(ViTPyramid(create_vit())).out_channels
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
            raise ValueError(f"ViTPyramid reassembles exactly 4 blocks (one per stride 4, 8, 16, 32), got indices {indices}")
        self.backbone = ViTBackbone(vit, indices, readout)
        C, p = self.backbone.embed_dim, self.backbone.patch_size
        _num_doublings(p)
        channels = (C // 4, C // 2, C, C) if channels is None else tuple(channels)
        if len(channels) != 4:
            raise ValueError(f"channels needs one width per level (4), got {channels}")
        self.feature_channels: list[int] = list(channels)
        self.feature_strides: list[int] = list(TRANSFORMER_STRIDES)
        self.reassemble = nn.ModuleList(
            nn.Sequential(nn.Conv2d(C, c, kernel_size=1), self._resample(c, p, s)) for c, s in zip(channels, self.feature_strides)
        )

    @staticmethod
    def _resample(channels: int, patch_size: int, stride: int) -> nn.Module:
        """Stride ``patch_size`` -> stride ``stride``: transposed conv (up), identity, or strided conv (down)."""
        if patch_size > stride:
            f = patch_size // stride
            return nn.ConvTranspose2d(channels, channels, kernel_size=f, stride=f)
        if patch_size < stride:
            return nn.Conv2d(channels, channels, kernel_size=3, stride=stride // patch_size, padding=1)
        return nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_patch_multiple(x, max(32, self.backbone.patch_size))
        return [reassemble(f) for reassemble, f in zip(self.reassemble, self.backbone(x))]


class UnetHead(nn.Module):
    """The book's UNet decoder over an SMP-convention feature list, then a 1x1 classifier.

    Args:
        encoder_channels: the encoder's ``out_channels``, e.g. ``[3, 0, 16, 32, 64, 64]``.
        num_classes: output classes K.
        decoder_channels: one width per decoder block, deepest first.

    Shapes:
        features: ``depth + 1`` maps, map i at stride 2**i -> logits (B, K, H, W).
    """

    def __init__(self, encoder_channels: Sequence[int], num_classes: int, decoder_channels: Sequence[int] = (64, 32, 16, 16, 8)):
        super().__init__()
        self.decoder = UnetDecoder(encoder_channels, decoder_channels)
        self.classify = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.decoder(features))


# --------------------------------------------------------------------------- model


class ViTSegmenter(nn.Module):
    """A segmentation model: a backbone producing feature maps, a head turning them into logits.

    Args:
        backbone: (B, 3, H, W) -> list of feature maps, e.g. :class:`ViTBackbone` or
            ``Encoder(ViTPyramid(vit))``.
        head: list of feature maps -> logits at the input's size, e.g. :class:`LinearHead`.

    Shapes:
        (B, 3, H, W) -> (B, K, H, W).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)  # feature maps; the backbone checks the input size
        return self.head(features)  # (B, K, H, W)


def build_segmenter(
    kind: HeadKind, vit: nn.Module, num_classes: int, readout: ReadoutMode = "ignore", channels: int = 32
) -> ViTSegmenter:
    """One of the chapter's four models around a given timm ViT.

    Args:
        kind: ``"linear"`` (SETR-Naive), ``"pup"`` (SETR-PUP), ``"mla"`` (SETR-MLA over 4
            evenly spaced blocks) or ``"pyramid_unet"`` (DPT reassembly + the UNet decoder).
        vit: a timm ``VisionTransformer``; its classification head is left unused.
        num_classes: output classes K.
        readout: prefix-token handling, see :class:`Readout`.
        channels: width of the PUP and MLA heads.

    Returns:
        A :class:`ViTSegmenter` mapping (B, 3, H, W) to (B, K, H, W).

    Example:
        >>> build_segmenter("linear", create_vit(), 5)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 5, 64, 64])
    """
    _check_choice("kind", kind, get_args(HeadKind))
    C, p = vit.embed_dim, vit.patch_embed.patch_size[0]
    if kind == "pyramid_unet":
        encoder = Encoder(ViTPyramid(vit, readout=readout))
        return ViTSegmenter(encoder, UnetHead(encoder.out_channels, num_classes))
    if kind == "mla":
        return ViTSegmenter(
            ViTBackbone(vit, evenly_spaced_indices(len(vit.blocks)), readout),
            MultiLevelHead(C, num_classes, p, num_levels=4, channels=channels),
        )
    backbone = ViTBackbone(vit, readout=readout, norm=True)  # the last block, normalised as the classifier sees it
    head = LinearHead(C, num_classes, p) if kind == "linear" else ProgressiveUpsamplingHead(C, num_classes, p, channels)
    return ViTSegmenter(backbone, head)


# --------------------------------------------------------------------------- presets


@register_encoder("vit_pyramid")
def _vit_pyramid(
    in_channels: int = 3,
    pretrained: bool = False,
    model_name: str | None = None,
    preset: str = "book",
    channels: Sequence[int] | None = None,
    indices: Sequence[int] | None = None,
    readout: ReadoutMode = "ignore",
    **vit_kwargs,
) -> ViTPyramid:
    """``get_encoder("vit_pyramid")``: a :class:`ViTPyramid` around a preset ViT, or around a
    timm model name (``model_name="vit_small_patch16_224"``, ``pretrained=True`` on Colab)."""
    if model_name is None:
        if pretrained:
            raise ValueError("presets are randomly initialised; for pretrained weights pass a timm model_name")
        vit = create_vit(preset, num_classes=0, in_chans=in_channels, **vit_kwargs)
    else:
        import timm

        vit = timm.create_model(
            model_name, pretrained=pretrained, num_classes=0, in_chans=in_channels, dynamic_img_size=True, **vit_kwargs
        )
    return ViTPyramid(vit, channels, indices, readout)
