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
* **Mix-FFN**: a 3x3 depthwise convolution inside the MLP leaks enough position
  information through its zero padding that no positional encoding is needed, so a
  model trained at one resolution runs at any other without interpolating anything.

The encoder declares its pyramid (``feature_channels``, ``feature_strides``) and is
registered as ``mit_b0`` ... ``mit_b5`` for :func:`segnotes.encoders.get_encoder`.
Numerics follow transformers' ``SegformerModel`` (LayerNorm epsilon 1e-5 everywhere);
the original code uses 1e-6 in the blocks' and stages' norms (``MiTConfig.norm_eps``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .encoders import register_encoder

__all__ = [
    "MiTConfig",
    "MIT_CONFIGS",
    "OverlapPatchEmbed",
    "EfficientSelfAttention",
    "MixFFN",
    "MixBlock",
    "MixTransformer",
    "drop_path",
    "mit",
]


@dataclass(frozen=True)
class MiTConfig:
    """The hyper-parameters of one Mix Transformer; one tuple entry per stage.

    Attributes:
        embed_dims: channels of each stage (the paper's C_i).
        depths: transformer blocks per stage (L_i).
        num_heads: attention heads per stage (N_i): head width 32 in B0, 64 in B1-B5.
        sr_ratios: per-axis reduction of keys/values (8, 4, 2, 1); the paper's R_i = sr_ratio**2.
        mlp_ratios: Mix-FFN hidden width / embed dim (E_i = 4 in every stage).
        patch_sizes: patch-embedding kernels; larger than the strides so patches overlap.
        strides: patch-embedding strides; their running product gives strides 4, 8, 16, 32.
        in_channels: image channels.
        drop_path_rate: stochastic depth of the last block, growing linearly from 0 (paper: 0.1).
        norm_eps: epsilon of the blocks' and stages' LayerNorms. transformers uses PyTorch's
            default 1e-5 (needed to reproduce its outputs); the original code uses 1e-6.
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
        fields = ("embed_dims", "depths", "num_heads", "sr_ratios", "mlp_ratios", "patch_sizes", "strides")
        lengths = {name: len(getattr(self, name)) for name in fields}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every per-stage tuple needs one entry per stage, got lengths {lengths}")
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"embed dim {dim} is not divisible by its {heads} heads; choose heads dividing it")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of a random fraction ``p`` of samples.

    Survivors are scaled by 1 / (1 - p) so the expected value is unchanged; identity in eval.
    """
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with overlapping patches, flattened to tokens, then LayerNorm.

    For B0's first stage (kernel 7, stride 4, padding 3): a 512x512x3 image becomes a
    128x128x32 map, i.e. 16384 tokens of width 32. Any input size works: the output
    side is ceil(H / stride).

    Args:
        in_channels: channels of the input map.
        embed_dim: channels (token width) out.
        patch_size: kernel size (7 for stage 1, 3 after); padding is patch_size // 2.
        stride: 4 for stage 1, 2 after.

    Returns (forward):
        tokens (B, h*w, embed_dim) and the map size (h, w).
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)  # PyTorch's default eps in the original and in transformers

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
            self.sr_norm = nn.LayerNorm(dim)  # PyTorch's default eps in the original and in transformers
        self.proj = nn.Linear(dim, dim)

    def reduce(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) -> (B, M, C) key/value tokens, M = floor(h / sr) * floor(w / sr)."""
        if self.sr_ratio == 1:
            return x
        h, w = size
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)  # a view: channels-last memory
        x = self.sr(x)  # (B, C, h / sr, w / sr)
        return self.sr_norm(rearrange(x, "b c h w -> b (h w) c"))  # (B, M, C)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)  # (B, heads, N, d)
        k, v = rearrange(self.kv(self.reduce(x, size)), "b m (two h d) -> two b h m d", two=2, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, C)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv on the token map -> GELU -> Linear.

    The depthwise convolution mixes each token with its 8 neighbours; at the border it
    sees zero padding, which is how the network learns where it is (no positional
    encoding anywhere in MiT).

    Args:
        dim: token width C.
        hidden_dim: width inside (4 C in MiT).

    Shapes:
        (B, N, C) tokens and the map size (h, w) -> (B, N, C).
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
        return self.fc2(self.act(x))


class MixBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mixffn(norm(x)), with stochastic depth.

    Args:
        dim: token width C.
        num_heads: attention heads.
        sr_ratio: key/value reduction per axis.
        mlp_ratio: Mix-FFN hidden width / C.
        drop_path: probability of skipping each residual branch in training.
        norm_eps: LayerNorm epsilon (1e-5 in transformers, 1e-6 in the original code).

    Shapes:
        (B, N, C) tokens and the map size (h, w) -> (B, N, C).
    """

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, norm_eps: float = 1e-5
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), size), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x), size), self.drop_path, self.training)


class _Stage(nn.Module):
    """Patch embedding, ``depth`` MixBlocks, LayerNorm: (B, C_in, H, W) -> (B, C, H / s, W / s)."""

    def __init__(self, in_channels: int, dim: int, depth: int, patch_size: int, stride: int, num_heads: int,
                 sr_ratio: int, mlp_ratio: float, drop_paths: list[float], norm_eps: float):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, stride)
        self.blocks = nn.ModuleList(MixBlock(dim, num_heads, sr_ratio, mlp_ratio, p, norm_eps) for p in drop_paths)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = self.patch_embed(x)  # (B, N, C)
        for block in self.blocks:
            x = block(x, (h, w))
        return rearrange(self.norm(x), "b (h w) c -> b c h w", h=h, w=w)  # (B, C, h, w), channels-last memory


class MixTransformer(nn.Module):
    """The MiT encoder: four stages returning maps at strides 4, 8, 16, 32.

    Args:
        config: a :class:`MiTConfig`, e.g. ``MIT_CONFIGS["mit_b0"]``.

    Attributes:
        feature_channels: channels of the four maps (``config.embed_dims``).
        feature_strides: their strides, ``[4, 8, 16, 32]`` (from the patch-embedding strides).

    Shapes:
        (B, in_channels, H, W) -> [(B, C_i, ceil(H / s_i), ceil(W / s_i)) for the four stages];
        any H, W works (odd included).

    Example:
        >>> [f.shape[1] for f in MixTransformer(MIT_CONFIGS["mit_b0"])(torch.randn(1, 3, 64, 64))]
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
        for i, depth in enumerate(config.depths):
            dim = config.embed_dims[i]
            self.stages.append(_Stage(in_channels, dim, depth, config.patch_sizes[i], config.strides[i], config.num_heads[i],
                                      config.sr_ratios[i], config.mlp_ratios[i], rates[start : start + depth], config.norm_eps))
            stride *= config.strides[i]
            self.feature_channels.append(dim)
            self.feature_strides.append(stride)
            in_channels, start = dim, start + depth

    @property
    def min_input_size(self) -> int:
        """Smallest input side: every stage's map must be at least ``sr_ratio`` wide for the reduction conv."""
        return max((r - 1) * s + 1 for r, s in zip(self.config.sr_ratios, self.feature_strides))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is too small: the key/value reduction needs at least "
                f"{self.min_input_size}x{self.min_input_size} pixels; pad or resize the image"
            )
        features = []
        for stage in self.stages:
            x = stage(x)  # (B, C_i, H / s_i, W / s_i)
            features.append(x)
        return features


def mit(name: str = "mit_b0", **overrides) -> MixTransformer:
    """A Mix Transformer from a preset name, with optional config overrides.

    Args:
        name: one of ``MIT_CONFIGS`` (``"mit_b0"`` ... ``"mit_b5"``).
        **overrides: :class:`MiTConfig` fields to change, e.g. ``norm_eps=1e-6``.

    Example:
        >>> mit("mit_b0", drop_path_rate=0.0).feature_strides
        [4, 8, 16, 32]
    """
    if name not in MIT_CONFIGS:
        raise ValueError(f"unknown MiT preset {name!r}; choose one of {sorted(MIT_CONFIGS)}")
    return MixTransformer(replace(MIT_CONFIGS[name], **overrides))


# Presets from the paper's appendix: B1-B5 share widths (and heads 1, 2, 5, 8: head width 64) and differ
# only in depth; B0 is half as wide. Encoder parameters (no classification head) in the comments.
_WIDE = (64, 128, 320, 512)
MIT_CONFIGS: dict[str, MiTConfig] = {
    "mit_b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),  # 3.3M params
    "mit_b1": MiTConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2)),  # 13.2M params
    "mit_b2": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3)),  # 24.2M params
    "mit_b3": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3)),  # 44.1M params
    "mit_b4": MiTConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3)),  # 60.8M params
    "mit_b5": MiTConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3)),  # 81.4M params
}


def _register(name: str) -> None:
    @register_encoder(name)
    def factory(in_channels: int = 3, pretrained: bool = False, **overrides) -> MixTransformer:
        if pretrained:
            raise ValueError(
                f"{name}: no ImageNet weights ship with segnotes; build it with pretrained=False and load a "
                "SegFormer checkpoint with segnotes.segformer.SegFormer.from_pretrained"
            )
        return mit(name, in_channels=in_channels, **overrides)


for _preset in MIT_CONFIGS:
    _register(_preset)
