"""Chapter 6: a plain ViT classifier, its tokens as feature maps, and what its attention looks at.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, https://arxiv.org/abs/2010.11929;
the readouts are from Ranftl et al., "Vision Transformers for Dense Prediction" (DPT), ICCV 2021,
https://arxiv.org/abs/2103.13413.

A ViT cuts the image into ``p x p`` patches, turns each into a token, puts prefix tokens
(a CLS token, sometimes registers) in front and runs a stack of identical blocks at one
resolution, ``H/p x W/p``. Its classifier reads one token per image. Segmentation needs
one vector per pixel, so the models of chapter 6 (:mod:`segnotes.setr`, :mod:`segnotes.dpt`)
start from the *patch* tokens of one or more blocks, folded back into maps:

* :func:`vit` builds timm's ``VisionTransformer`` from a named preset (:data:`VIT_PRESETS`);
* :func:`tokens_to_map` / :func:`map_to_tokens` fold tokens to a map and back;
* :class:`Readout` decides what happens to the prefix tokens (DPT's three readouts);
* :class:`ViTBackbone` is the encoder of every ViT model in the book: chosen blocks'
  patch tokens as maps at stride ``p``, read with timm's ``forward_intermediates``;
* :func:`attention_weights` and :func:`attention_distance` look inside the blocks.

The ViT itself is timm's (random init here, pretrained weights on Colab): the chapter
teaches what happens *around* it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import nn

from .model import check_choice, check_divisible, check_images, check_positive

__all__ = [
    "ViTConfig",
    "VIT_PRESETS",
    "vit",
    "ReadoutMode",
    "Readout",
    "ViTBackbone",
    "evenly_spaced_indices",
    "tokens_to_map",
    "map_to_tokens",
    "attention_weights",
    "attention_distance",
]

ReadoutMode = Literal["ignore", "add", "cat"]


@dataclass(frozen=True)
class ViTConfig:
    """The shape of a ViT; everything else is timm's default (pre-norm blocks, a CLS token, learned positions).

    Attributes:
        patch_size: p, side of a square patch; the token grid is H/p x W/p.
        embed_dim: C, the token width; a multiple of ``num_heads``.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        img_size: the size the position embeddings are made for; other multiples of
            ``patch_size`` work too (timm interpolates them, ``dynamic_img_size=True``).
        mlp_ratio: hidden width of the MLP as a multiple of ``embed_dim`` (4 in the paper).
    """

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int
    mlp_ratio: float = 4.0


# Parameter counts are with the 1000-class classifier (num_classes=1000); tests check them.
VIT_PRESETS: dict[str, ViTConfig] = {
    # The book's CPU-sized ViT: 4x4 patches of 32x32 images -> an 8x8 token grid (272,424 params).
    "book": ViTConfig(patch_size=4, embed_dim=64, depth=4, num_heads=2, img_size=32),
    # = timm's vit_tiny_patch16_224, ViT-Ti/16 (5,717,416 params)
    "tiny": ViTConfig(patch_size=16, embed_dim=192, depth=12, num_heads=3, img_size=224),
    # = timm's vit_small_patch16_224, ViT-S/16 (22,050,664 params)
    "small": ViTConfig(patch_size=16, embed_dim=384, depth=12, num_heads=6, img_size=224),
}


def vit(preset: str = "book", *, num_classes: int = 1000, in_channels: int = 3, **overrides) -> nn.Module:
    """A randomly initialised timm ``VisionTransformer`` that accepts any multiple of its patch size.

    Args:
        preset: a key of :data:`VIT_PRESETS`: ``"book"``, ``"tiny"`` or ``"small"``.
        num_classes: classifier outputs; 0 drops the classifier (what the segmentation models use).
        in_channels: image channels.
        **overrides: a :class:`ViTConfig` field (``depth=6``, ``patch_size=8``, ...) replaces the
            preset's; any other keyword goes to timm's ``VisionTransformer`` (``reg_tokens=4``,
            ``class_token=False``, ``global_pool="avg"``, ...).

    Returns:
        The model; ``model(x)`` maps (B, in_channels, H, W) to class logits (B, num_classes).

    Example:
        >>> vit("book", num_classes=5)(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 5])
    """
    preset = check_choice("preset", preset, tuple(VIT_PRESETS))
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    config = dataclasses.replace(VIT_PRESETS[preset], **{k: v for k, v in overrides.items() if k in fields})
    if config.embed_dim % config.num_heads:
        raise ValueError(
            f"embed_dim ({config.embed_dim}) must be a multiple of num_heads ({config.num_heads}): "
            "each head gets embed_dim / num_heads channels"
        )
    from timm.models.vision_transformer import VisionTransformer

    timm_kwargs = {k: v for k, v in overrides.items() if k not in fields}
    return VisionTransformer(
        **dataclasses.asdict(config),
        num_classes=num_classes,
        in_chans=check_positive("in_channels", in_channels),
        dynamic_img_size=True,  # any multiple of the patch size, position embeddings interpolated
        **timm_kwargs,
    )


def evenly_spaced_indices(depth: int, n: int = 4) -> list[int]:
    """``n`` block indices spread evenly over ``depth`` blocks, ending with the last block.

    Block ``k * depth / n - 1`` for ``k = 1..n``, as in SETR-MLA, DPT and SMP.

    Example:
        >>> evenly_spaced_indices(12)
        [2, 5, 8, 11]
    """
    if not 1 <= n <= depth:
        raise ValueError(f"cannot take {n} distinct blocks from a ViT with {depth} blocks; choose n in 1..{depth}")
    return [k * depth // n - 1 for k in range(1, n + 1)]


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
    return rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)  # token i sits at row i // w, column i % w


def map_to_tokens(feature: torch.Tensor) -> torch.Tensor:
    """A feature map (B, C, h, w) -> patch tokens (B, h*w, C), the inverse of :func:`tokens_to_map`."""
    if feature.ndim != 4:
        raise ValueError(f"expected a (B, C, h, w) feature map, got shape {tuple(feature.shape)}")
    return rearrange(feature, "b c h w -> b (h w) c")


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

    Example:
        >>> Readout(64, 1, "cat")(torch.randn(2, 1 + 16, 64)).shape
        torch.Size([2, 16, 64])
    """

    def __init__(self, embed_dim: int, num_prefix_tokens: int, mode: ReadoutMode = "ignore"):
        super().__init__()
        self.mode = check_choice("readout", mode, ReadoutMode)
        if mode != "ignore" and num_prefix_tokens == 0:
            raise ValueError(f"readout {mode!r} needs a prefix token, but this ViT has none; use readout='ignore'")
        self.num_prefix_tokens = num_prefix_tokens
        self.project = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) if mode == "cat" else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        prefix, patches = (
            tokens[:, : self.num_prefix_tokens],
            tokens[:, self.num_prefix_tokens :],
        )  # (B, P, C), (B, N, C)
        if self.mode == "add":
            return patches + prefix.mean(1, keepdim=True)
        if self.mode == "cat":
            cls = prefix[:, :1].expand_as(patches)  # (B, N, C)
            return self.project(torch.cat([patches, cls], dim=-1))  # (B, N, 2C) -> (B, N, C)
        return patches


class ViTBackbone(nn.Module):
    """The encoder of the book's ViT models: chosen blocks' patch tokens as maps at stride ``patch_size``.

    Args:
        vit: a timm ``VisionTransformer`` (its classifier is not used), e.g. ``vit("book", num_classes=0)``.
        indices: blocks to read, e.g. ``[2, 5, 8, 11]``; negative counts from the end; default: the last block.
        readout: prefix-token handling for every block, ``"ignore"``, ``"add"`` or ``"cat"`` (see :class:`Readout`).
        norm: pass each block's tokens through the ViT's final LayerNorm (what the classifier sees).

    Attributes:
        patch_size: p, the ViT's patch size (the stride of every map).
        embed_dim: C, the token width (the channels of every map).
        in_channels: image channels the ViT takes.
        indices: the blocks read, as non-negative indices.
        num_prefix_tokens: CLS and register tokens in front of the patch tokens.
        feature_channels: the declared maps' channels, ``embed_dim`` each.
        feature_strides: the declared maps' strides, ``patch_size`` each.

    Shapes:
        (B, in_channels, H, W) -> ``len(indices)`` maps of shape (B, embed_dim, H/p, W/p);
        H and W must be multiples of p.

    Example:
        >>> [f.shape for f in ViTBackbone(vit(num_classes=0), [1, 3])(torch.randn(1, 3, 32, 32))]
        [torch.Size([1, 64, 8, 8]), torch.Size([1, 64, 8, 8])]
    """

    def __init__(
        self, vit: nn.Module, indices: Sequence[int] | None = None, readout: ReadoutMode = "ignore", norm: bool = False
    ):
        super().__init__()
        depth = len(vit.blocks)
        indices = [-1] if indices is None else list(indices)
        if not all(-depth <= i < depth for i in indices):
            raise ValueError(
                f"block indices must be in -{depth}..{depth - 1} for this {depth}-block ViT, got {indices}"
            )
        self.vit = vit
        self.indices = [i % depth for i in indices]
        self.norm = norm
        self.patch_size = vit.patch_embed.patch_size[0]
        self.embed_dim = vit.embed_dim
        self.in_channels = vit.patch_embed.proj.in_channels
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.feature_channels = [self.embed_dim] * len(indices)
        self.feature_strides = [self.patch_size] * len(indices)
        self.readouts = nn.ModuleList(Readout(self.embed_dim, self.num_prefix_tokens, readout) for _ in indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        weight = self.vit.patch_embed.proj.weight  # a float64 or CUDA batch gets a clear error, not one from conv2d
        check_images(x, self.in_channels, weight.dtype, weight.device)
        check_divisible(x, self.patch_size, "the ViT's patch size")
        B, _, H, W = x.shape
        with_prefix = self.num_prefix_tokens > 0  # timm returns (patches, prefix) pairs only when there is a prefix
        blocks = self.vit.forward_intermediates(
            x, self.indices, norm=self.norm, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=with_prefix
        )  # [(patches (B, N, C), prefix (B, P, C)), ...] or [patches (B, N, C), ...]
        tokens = [torch.cat([b[1], b[0]], dim=1) if with_prefix else b for b in blocks]  # (B, P + N, C) each
        grid = (H // self.patch_size, W // self.patch_size)
        return [tokens_to_map(readout(t), grid) for readout, t in zip(self.readouts, tokens)]  # (B, C, h, w) each


def attention_weights(vit: nn.Module, x: torch.Tensor, blocks: Sequence[int] | None = None) -> list[torch.Tensor]:
    """The softmax attention weights of blocks of a timm ViT, for looking inside.

    timm computes attention with a fused kernel (``F.scaled_dot_product_attention``) that
    never materialises the weights, so forward hooks record each block's attention input
    and the weights are recomputed from its ``qkv`` projection: ``softmax(q k^T / sqrt(d))``.

    Args:
        vit: a timm ``VisionTransformer`` with standard ``Attention`` blocks.
        x: images (B, C, H, W), H and W multiples of the patch size.
        blocks: which blocks (negative counts from the end); default: all.

    Returns:
        One (B, heads, T, T) tensor per block, T = prefix tokens + (H/p)(W/p); row ``i`` is
        how token ``i`` distributes its attention (each row sums to 1).

    Example:
        >>> attention_weights(vit(), torch.randn(1, 3, 32, 32), blocks=[-1])[0].shape
        torch.Size([1, 2, 65, 65])
    """
    check_images(x, vit.patch_embed.proj.in_channels)
    check_divisible(x, vit.patch_embed.patch_size[0], "the ViT's patch size")
    blocks = range(len(vit.blocks)) if blocks is None else blocks
    attns = [vit.blocks[b].attn for b in blocks]
    recorded: dict[int, torch.Tensor] = {}
    handles = [a.register_forward_hook(lambda m, inputs, _out: recorded.setdefault(id(m), inputs[0])) for a in attns]
    try:
        with torch.no_grad():
            vit.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
    weights = []
    with torch.no_grad():
        for attn in attns:
            qkv = attn.qkv(recorded[id(attn)])  # (B, T, 3 * heads * d)
            q, k, _ = rearrange(qkv, "b t (three heads d) -> three b heads t d", three=3, heads=attn.num_heads)
            q, k = attn.q_norm(q), attn.k_norm(k)
            weights.append((q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1))  # (B, heads, T, T)
    return weights


def attention_distance(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean attention distance in pixels, per block and head (the ViT paper's Figure 7).

    For every patch token, the distance between its patch centre and every other patch's
    centre, weighted by how much attention it pays to that patch (attention to the prefix
    tokens left out, the rest renormalised), averaged over patches and images (a query whose
    attention all went to the prefix tokens, exactly 0 on every patch in float32, has no distance
    and is left out of the mean; ``nan`` only for a head where every query does so). A head that
    looks only at its own patch scores 0; one that attends uniformly scores the mean
    distance between two patches of the image.

    Args:
        vit: a timm ``VisionTransformer``.
        x: images (B, C, H, W), H and W multiples of the patch size.

    Returns:
        (depth, heads), in pixels of ``x``.

    Example:
        >>> attention_distance(vit(), torch.randn(1, 3, 32, 32)).shape
        torch.Size([4, 2])
    """
    p, prefix = vit.patch_embed.patch_size[0], vit.num_prefix_tokens
    h, w = x.shape[-2] // p, x.shape[-1] // p
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = p * torch.stack([rows.flatten(), cols.flatten()], dim=1).float().to(x.device)  # (N, 2)
    distance = torch.cdist(centres, centres)  # (N, N) pixels between patch centres
    result = []
    for weights in attention_weights(vit, x):
        patches = weights[:, :, prefix:, prefix:]  # (B, heads, N, N): patch-to-patch attention
        mass = patches.sum(-1)  # (B, heads, N): what each query pays the patches, the rest went to the prefix
        per_query = (patches * distance).sum(-1) / mass  # renormalised; nan where a query attends only the prefix
        result.append(per_query.nanmean(dim=(0, 2)))  # (heads,), over the queries that look at patches
    return torch.stack(result)  # (depth, heads)
