"""Chapter 4: the Mix Transformer (MiT) encoder of SegFormer, written from scratch.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021, https://arxiv.org/abs/2105.15203.

MiT is a four-stage pyramid of transformer blocks. Three ideas make it work for
dense prediction at high resolution:

* **Overlapping patch embedding**: a strided convolution whose kernel is larger than
  its stride (7x7 stride 4, then 3x3 stride 2), so neighbouring patches share pixels.
* **Efficient self-attention**: queries come from all N tokens, keys and values from
  a map shrunk by a strided convolution (kernel = stride = ``sr_ratio`` per axis), so
  attention costs O(N^2 / sr_ratio^2). The paper's reduction ratio R counts tokens
  (R = 64, 16, 4, 1); the code's ``sr_ratio`` counts pixels per axis (8, 4, 2, 1),
  and R = sr_ratio^2.
* **Mix-FFN**: a 3x3 depthwise convolution inside the MLP. Its zero padding, like the
  padding of the overlapping patch embeddings, tells tokens near the border where they
  are, so MiT has no positional encoding and runs at any resolution.

The encoder declares its pyramid (``feature_channels``, ``feature_strides``) where it
builds its stages; wrap it with :class:`segnotes.encoders.Encoder` for SMP's
``out_channels`` convention. Numerics follow transformers' ``SegformerModel`` (LayerNorm
epsilon 1e-5 everywhere); the original code and SMP use 1e-6 in the blocks' and stages'
norms (``MiTConfig.norm_eps``). :func:`from_original` converts the original layout's
state dicts (NVlabs' SegFormer code and checkpoints, SMP's ``mit_b*`` encoders).

Order: config, blocks, model, factory, weight conversion, presets. The module is a little over
400 lines because the encoder and the key table that loads other layouts into it belong
together; over a third of it is the docstrings the chapter and the API reference show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath
from torch import nn

from .init import init_normal
from .model import check_choice, check_images
from .weights import rename_keys

__all__ = [
    "MiTConfig",
    "MIT_PRESETS",
    "MiTPreset",
    "OverlapPatchEmbed",
    "EfficientSelfAttention",
    "MixFFN",
    "MixBlock",
    "MixTransformer",
    "mit",
    "from_original",
    "ORIGINAL_KEYS",
]

MiTPreset = Literal["b0", "b1", "b2", "b3", "b4", "b5"]  # the names of MIT_PRESETS


@dataclass(frozen=True)
class MiTConfig:
    """The hyper-parameters of one Mix Transformer; one tuple entry per stage.

    Attributes:
        embed_dims: channels of each stage (the paper's C_i).
        depths: transformer blocks per stage (L_i).
        num_heads: attention heads per stage (N_i): head width 32 in B0, 64 in B1-B5.
        sr_ratios: per-axis reduction of keys/values (8, 4, 2, 1); the paper's R_i = sr_ratio**2.
        mlp_ratios: Mix-FFN hidden width / embed dim. 4 in every stage, as in the released code
            (the paper's appendix table lists 8, 8, 4, 4; chapter 4 shows which one the weights have).
        patch_sizes: patch-embedding kernels; larger than the strides so patches overlap.
        strides: patch-embedding strides; their running product gives strides 4, 8, 16, 32.
        in_channels: image channels.
        drop_path_rate: stochastic depth of the last block, growing linearly from 0 (paper: 0.1).
        norm_eps: epsilon of the blocks' and stages' LayerNorms. transformers uses PyTorch's
            default 1e-5 (needed to reproduce its outputs); the original code and SMP use 1e-6.
    """

    embed_dims: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    in_channels: int = 3
    drop_path_rate: float = 0.1
    norm_eps: float = 1e-5

    def __post_init__(self):
        stage_fields = ("embed_dims", "depths", "num_heads", "sr_ratios", "mlp_ratios", "patch_sizes", "strides")
        for name in stage_fields:  # accept lists (e.g. from JSON), store tuples so the config stays hashable
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v > 0 for v in value):
                raise ValueError(f"{name} must be a tuple of positive integers, one per stage, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        lengths = {name: len(getattr(self, name)) for name in stage_fields}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every per-stage tuple needs one entry per stage, got lengths {lengths}")
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"embed dim {dim} is not divisible by its {heads} heads; choose heads dividing it")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {self.in_channels!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r} (the paper uses 0.1)")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps!r} (1e-5 or 1e-6)")


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with overlapping patches, flattened to tokens, then LayerNorm.

    For B0's first stage (kernel 7, stride 4, padding 3): a 512x512x3 image becomes a
    128x128x32 map, i.e. 16384 tokens of width 32. Any input size works: for odd
    kernels the output side is ceil(H / stride).

    Args:
        in_channels: channels of the input map.
        embed_dim: channels (token width) out.
        patch_size: kernel size (7 for stage 1, 3 after); padding is patch_size // 2.
        stride: 4 for stage 1, 2 after.

    Returns (forward):
        tokens (B, h*w, embed_dim) and the map size (h, w).

    Example:
        >>> OverlapPatchEmbed(3, 32, 7, 4)(torch.zeros(1, 3, 64, 64))[0].shape
        torch.Size([1, 256, 32])
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)  # PyTorch's default eps, in the original code too

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)  # (B, C, h, w)
        h, w = x.shape[-2:]
        x = rearrange(x, "b c h w -> b (h w) c")  # (B, N, C)
        return self.norm(x), (h, w)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a spatially reduced map.

    Queries: all N = h*w tokens. Keys/values: the token map shrunk by a convolution with
    kernel = stride = ``sr_ratio`` (+ LayerNorm), i.e. N / sr_ratio**2 tokens, so the
    attention matrix is N x N / sr_ratio**2 instead of N x N. Keys and values share one
    Linear (``kv``) because they read the same reduced tokens.

    Args:
        dim: token width C.
        num_heads: heads; head width is C / num_heads.
        sr_ratio: per-axis reduction (8, 4, 2, 1 in MiT); 1 means plain self-attention.

    Shapes:
        (B, N, C) tokens and the map size (h, w) with h*w = N -> (B, N, C).

    Example:
        >>> EfficientSelfAttention(32, 1, 8)(torch.zeros(1, 64 * 64, 32), (64, 64)).shape
        torch.Size([1, 4096, 32])
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)  # PyTorch's default eps, in the original code too
        self.proj = nn.Linear(dim, dim)

    def reduce(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) -> (B, M, C) key/value tokens, M = floor(h / sr) * floor(w / sr)."""
        if self.sr_ratio == 1:
            return x
        h, w = size
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)  # a view: channels-last memory
        x = self.sr(x)  # (B, C, h / sr, w / sr): one token per sr x sr block
        return self.sr_norm(rearrange(x, "b c h w -> b (h w) c"))  # (B, M, C)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)  # (B, heads, N, d)
        kv = self.kv(self.reduce(x, size))  # (B, M, 2C): keys first, then values
        k, v = rearrange(kv, "b m (two h d) -> two b h m d", two=2, h=self.num_heads)  # (B, heads, M, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v: (B, heads, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, C)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv on the token map -> GELU -> Linear.

    The depthwise convolution mixes each token with its 8 neighbours; at the border it
    sees zero padding, which tells border tokens where they are (MiT has no positional
    encoding; the patch embeddings' padding does the same).

    Args:
        dim: token width C.
        hidden_dim: width inside (4 C in MiT).

    Shapes:
        (B, N, C) tokens and the map size (h, w) -> (B, N, C).

    Example:
        >>> MixFFN(8, 32)(torch.zeros(2, 5 * 7, 8), (5, 7)).shape
        torch.Size([2, 35, 8])
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        x = rearrange(self.fc1(x), "b (h w) c -> b c h w", h=h, w=w)  # a view: channels-last memory
        x = rearrange(self.dwconv(x), "b c h w -> b (h w) c")  # (B, N, hidden)
        return self.fc2(self.act(x))  # (B, N, C)


class MixBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mixffn(norm(x)).

    Stochastic depth (skipping a residual branch for a random part of the batch in
    training) is timm's ``DropPath``: the chapter does not teach it, so it is not rewritten.

    Args:
        dim: token width C.
        num_heads: attention heads.
        sr_ratio: key/value reduction per axis.
        mlp_ratio: Mix-FFN hidden width / C.
        drop_path: probability of skipping each residual branch in training.
        norm_eps: LayerNorm epsilon (1e-5 in transformers, 1e-6 in the original code).

    Shapes:
        (B, N, C) tokens and the map size (h, w) -> (B, N, C).

    Example:
        >>> MixBlock(32, 1, 8)(torch.zeros(1, 32 * 32, 32), (32, 32)).shape
        torch.Size([1, 1024, 32])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))  # (B, N, C)
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class _Stage(nn.Module):
    """Patch embedding, ``len(drop_paths)`` MixBlocks, LayerNorm: (B, C_in, H, W) -> (B, C, H / s, W / s)."""

    def __init__(self, in_channels: int, dim: int, config: MiTConfig, i: int, drop_paths: list[float]):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, config.patch_sizes[i], config.strides[i])
        self.blocks = nn.ModuleList(
            MixBlock(dim, config.num_heads[i], config.sr_ratios[i], config.mlp_ratios[i], p, config.norm_eps)
            for p in drop_paths
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = self.patch_embed(x)  # (B, N, C)
        for block in self.blocks:
            x = block(x, (h, w))
        return rearrange(self.norm(x), "b (h w) c -> b c h w", h=h, w=w)  # (B, C, h, w), channels-last memory


class MixTransformer(nn.Module):
    """The MiT encoder: four stages returning maps at strides 4, 8, 16, 32.

    Args:
        config: a :class:`MiTConfig`, e.g. ``MIT_PRESETS["b0"]``; or use :func:`mit`.

    Attributes:
        feature_channels: channels of the four maps (``config.embed_dims``).
        feature_strides: their strides, ``[4, 8, 16, 32]`` (the running product of the patch strides).

    Shapes:
        (B, in_channels, H, W) float -> [(B, C_i, ceil(H / s_i), ceil(W / s_i)) for the four stages];
        any H, W of at least :attr:`min_input_size` works (odd included).

    Example:
        >>> [f.shape[1] for f in MixTransformer(MIT_PRESETS["b0"])(torch.randn(1, 3, 64, 64))]
        [32, 64, 160, 256]
    """

    def __init__(self, config: MiTConfig = MiTConfig()):
        super().__init__()
        self.config = config
        n = sum(config.depths)
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # one per block, 0 -> max
        self.stages = nn.ModuleList()
        self.feature_channels: list[int] = []
        self.feature_strides: list[int] = []
        in_channels, stride, start = config.in_channels, 1, 0
        for i, (dim, depth) in enumerate(zip(config.embed_dims, config.depths)):
            self.stages.append(_Stage(in_channels, dim, config, i, rates[start : start + depth]))
            stride *= config.strides[i]
            self.feature_channels.append(dim)  # the pyramid, declared where it is built
            self.feature_strides.append(stride)
            in_channels, start = dim, start + depth
        init_normal(self, std=0.02)  # transformers' initializer_range: every linear and conv weight N(0, 0.02^2)

    @property
    def in_channels(self) -> int:
        """Channels of the input image (from the config)."""
        return self.config.in_channels

    def map_sides(self, side: int) -> list[int]:
        """The side of each stage's map for an input side, by the convolution size formula."""
        sides = []
        for k, s in zip(self.config.patch_sizes, self.config.strides):
            side = (side + 2 * (k // 2) - k) // s + 1
            sides.append(side)
        return sides

    @property
    def min_input_size(self) -> int:
        """The smallest input side for which every stage's map is at least ``sr_ratio`` wide (its reduction conv)."""
        side = 1
        while any(m < r for m, r in zip(self.map_sides(side), self.config.sr_ratios)):
            side += 1
        return side

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        weight = next(self.parameters())  # a float64 or CUDA batch gets a clear error, not one from conv2d
        check_images(x, self.config.in_channels, weight.dtype, weight.device)
        if min(x.shape[-2:]) < self.min_input_size:
            m = self.min_input_size
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is too small: the key/value reduction needs at least "
                f"{m}x{m} pixels; pad the image (e.g. segnotes.model.pad_to_multiple(x, 32)) or resize it"
            )
        features = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H / s_i, W / s_i)
            features.append(x)
        return features


def mit(preset: MiTPreset = "b0", **overrides) -> MixTransformer:
    """A Mix Transformer from a preset name, with optional config overrides.

    Args:
        preset: one of ``MIT_PRESETS``: ``"b0"`` ... ``"b5"``.
        **overrides: :class:`MiTConfig` fields to change, e.g. ``norm_eps=1e-6``, ``in_channels=1``.

    Raises:
        ValueError: unknown preset or field, or a field value :class:`MiTConfig` rejects.

    Example:
        >>> mit("b0", drop_path_rate=0.0).feature_strides
        [4, 8, 16, 32]
    """
    check_choice("preset", preset, MiTPreset)
    unknown = set(overrides) - {f.name for f in fields(MiTConfig)}
    if unknown:
        raise ValueError(
            f"MiTConfig has no field {sorted(unknown)}; its fields are {[f.name for f in fields(MiTConfig)]}"
        )
    return MixTransformer(replace(MIT_PRESETS[preset], **overrides))


# --- weight conversion -------------------------------------------------------------------------------
# The original layout: NVlabs' SegFormer (mix_transformer.py, its ImageNet mit_b*.pth files; its whole
# SegFormer checkpoints add the prefix "backbone.") and SMP's mit_b* encoders use these names. (mmseg's own
# MiT is a third layout: layers.*, a packed attn.in_proj_weight, 1x1 convs.) One row per tensor group, in model
# order: original name, segnotes name, read by segnotes.weights.rename_keys. {s}: stage counted from 1
# (patch_embed1), {i}: from 0, {j}: block. Keys and values are one fused Linear in both layouts, so renaming
# is all it takes.
# fmt: off
ORIGINAL_KEYS: tuple[tuple[str, str], ...] = (
    ("patch_embed{s}.proj",            "stages.{i}.patch_embed.proj"),
    ("patch_embed{s}.norm",            "stages.{i}.patch_embed.norm"),
    ("block{s}.{j}.norm1",             "stages.{i}.blocks.{j}.norm1"),
    ("block{s}.{j}.attn.q",            "stages.{i}.blocks.{j}.attn.q"),
    ("block{s}.{j}.attn.kv",           "stages.{i}.blocks.{j}.attn.kv"),
    ("block{s}.{j}.attn.sr",           "stages.{i}.blocks.{j}.attn.sr"),
    ("block{s}.{j}.attn.norm",         "stages.{i}.blocks.{j}.attn.sr_norm"),
    ("block{s}.{j}.attn.proj",         "stages.{i}.blocks.{j}.attn.proj"),
    ("block{s}.{j}.norm2",             "stages.{i}.blocks.{j}.norm2"),
    ("block{s}.{j}.mlp.fc1",           "stages.{i}.blocks.{j}.mlp.fc1"),
    ("block{s}.{j}.mlp.dwconv.dwconv", "stages.{i}.blocks.{j}.mlp.dwconv"),
    ("block{s}.{j}.mlp.fc2",           "stages.{i}.blocks.{j}.mlp.fc2"),
    ("norm{s}",                        "stages.{i}.norm"),
)
# fmt: on


def from_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MiT state dict in the layout of the original NVlabs code -> a segnotes :class:`MixTransformer` state dict.

    ``from_original(state_dict)`` means the same in every module that has it: convert a
    checkpoint in the layout of the original NVlabs SegFormer code to segnotes' layout for
    that module's model. Here the model is the encoder, and the layout is the original MiT's
    (``patch_embed1.proj.weight``, ``block1.0.attn.kv.weight``, ``norm1.weight``, ...): NVlabs'
    ImageNet ``mit_b*.pth`` files, and SMP's ``mit_b*`` encoders, which kept it. A whole
    SegFormer checkpoint (``backbone.*``, ``decode_head.*``) goes to
    :func:`segnotes.segformer.from_original`, which calls this function for its encoder.
    Build the model with ``norm_eps=1e-6`` to reproduce the original outputs.

    Args:
        state_dict: encoder tensors; a state dict already in segnotes' names is returned unchanged.

    Returns:
        The same tensors under segnotes' names, ready for ``load_state_dict(..., strict=True)``.

    Raises:
        ValueError: a key that no row of :data:`ORIGINAL_KEYS` maps, named (e.g. the ImageNet
            classifier ``head.*`` of the ``mit_b*.pth`` files: drop it).

    Example:
        >>> mit("b0", norm_eps=1e-6).load_state_dict(from_original(smp_encoder.state_dict()))  # doctest: +SKIP
    """
    if all(key.startswith("stages.") for key in state_dict):
        return dict(state_dict)
    supported = (
        "the original MiT encoder's keys (patch_embed1.*, block1.0.*, norm1.*); drop the classifier head.*, "
        "and convert a whole SegFormer checkpoint (backbone.*) with segnotes.segformer.from_original"
    )
    derived = {"i": lambda f: f["s"] - 1}  # patch_embed1 -> stages.0
    return rename_keys(
        state_dict, ORIGINAL_KEYS, source=0, target=1, table_name="ORIGINAL_KEYS", supported=supported, derived=derived
    )


# --- presets -----------------------------------------------------------------------------------------
# From the paper's appendix and the released code: B1-B5 share widths (and heads 1, 2, 5, 8: head width 64)
# and differ only in depth; B0 is half as wide. Encoder parameters (no classification head) in the comments.
_WIDE = (64, 128, 320, 512)
MIT_PRESETS: dict[str, MiTConfig] = {
    "b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),  # 3.3M params
    "b1": MiTConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2)),  # 13.2M params
    "b2": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3)),  # 24.2M params
    "b3": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3)),  # 44.1M params
    "b4": MiTConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3)),  # 60.8M params
    "b5": MiTConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3)),  # 81.4M params
}
