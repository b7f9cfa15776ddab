"""Chapter 5: the all-MLP decoder, the whole SegFormer, and its weights.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021, https://arxiv.org/abs/2105.15203.

The decoder has four steps: (1) a per-stage Linear brings the four encoder maps
(strides 4, 8, 16, 32) to one width, (2) bilinear upsampling brings them all to 1/4
resolution, (3) they are concatenated and fused by a 1x1 convolution + BN + ReLU,
(4) a 1x1 classifier predicts the logits, still at 1/4 resolution.

At 512x512 the fuse convolution over the concatenated 1/4-resolution maps is most
of the model's FLOPs. Steps (1), (2) and the fuse convolution are all linear, so the
fuse weights can be folded into the per-stage projections: each stage is mixed to
the output width *before* upsampling, and the four upsampled maps are summed. Same
parameters, same state dict, same outputs up to float rounding; BatchNorm and ReLU
follow the sum. :class:`AllMLPDecoder` does this by default (``fold=True``).

Weights convert both ways with transformers' ``SegformerForSemanticSegmentation``
(:func:`from_transformers`, :func:`to_transformers`), and
:meth:`SegFormer.from_pretrained` loads a checkpoint directory or model-hub repo.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .mit import MIT_CONFIGS, MiTConfig, MixTransformer

__all__ = [
    "SegFormerConfig",
    "AllMLPDecoder",
    "SegFormer",
    "from_transformers",
    "to_transformers",
    "config_from_transformers",
    "SEGFORMER_CONFIGS",
    "segformer_b0",
    "segformer_b1",
    "segformer_b2",
    "segformer_b3",
    "segformer_b4",
    "segformer_b5",
]


@dataclass(frozen=True)
class SegFormerConfig:
    """A SegFormer: a MiT encoder and the all-MLP decoder.

    Attributes:
        encoder: the :class:`~segnotes.mit.MiTConfig`.
        decoder_dim: the decoder's common width (256 for B0/B1, 768 for B2-B5).
        num_classes: output channels of the classifier.
        dropout: dropout before the classifier (0.1 in the paper and transformers).
    """

    encoder: MiTConfig = field(default_factory=MiTConfig)
    decoder_dim: int = 256
    num_classes: int = 150  # ADE20K, the paper's main benchmark
    dropout: float = 0.1


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False), skipped when the size already matches (it is the identity then)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AllMLPDecoder(nn.Module):
    """SegFormer's decoder: per-stage Linear, upsample to 1/4, concatenate, 1x1 fuse + BN + ReLU, 1x1 classifier.

    Args:
        in_channels: channels of the encoder's maps, shallowest (stride 4) first.
        dim: common width (256 for B0/B1, 768 for B2-B5).
        num_classes: logits' channels.
        dropout: dropout probability before the classifier.
        fold: compute the fuse convolution per stage before upsampling (exact, much
            cheaper); ``False`` runs the paper's four steps literally.

    Shapes:
        [(B, C_i, H / s_i, W / s_i)] -> (B, num_classes, H / 4, W / 4) (the size of the first map).

    Example:
        >>> dec = AllMLPDecoder([32, 64, 160, 256], dim=256, num_classes=5)
        >>> dec([torch.randn(1, c, 64 // s, 64 // s) for c, s in zip([32, 64, 160, 256], [4, 8, 16, 32])]).shape
        torch.Size([1, 5, 16, 16])
    """

    def __init__(self, in_channels: Sequence[int], dim: int, num_classes: int, dropout: float = 0.1, fold: bool = True):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in in_channels)  # step 1
        self.fuse = nn.Conv2d(len(in_channels) * dim, dim, kernel_size=1, bias=False)  # step 3, input deepest stage first
        self.norm = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)  # step 4
        self.fold = fold

    def mix(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Steps 1-3 up to the fuse convolution, literally: (B, dim, H / 4, W / 4)."""
        size = features[0].shape[-2:]
        maps = []
        for f, proj in zip(features, self.proj):
            h, w = f.shape[-2:]
            x = proj(rearrange(f, "b c h w -> b (h w) c"))  # (B, h*w, dim)
            maps.append(_resize(rearrange(x, "b (h w) c -> b c h w", h=h, w=w), size))  # (B, dim, H/4, W/4)
        return self.fuse(torch.cat(maps[::-1], dim=1))  # (B, 4 dim, H/4, W/4) -> (B, dim, H/4, W/4)

    def folded_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per stage, the fuse convolution's slice times the projection: weight (dim, C_i) and bias (dim,)."""
        n, dim = len(self.proj), self.fuse.out_channels
        fuse = self.fuse.weight[:, :, 0, 0]  # (dim, n * dim), deepest stage's slice first
        out = []
        for i, proj in enumerate(self.proj):
            block = fuse[:, (n - 1 - i) * dim : (n - i) * dim]  # (dim, dim): the slice that reads stage i
            out.append((block @ proj.weight, block @ proj.bias))
        return out

    def mix_folded(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The same as :meth:`mix`, with the fuse folded in before upsampling: (B, dim, H / 4, W / 4)."""
        size = features[0].shape[-2:]
        weights = self.folded_weights()
        bias = torch.stack([b for _, b in weights]).sum(0)  # bilinear resizing keeps constants: add all biases once
        out = None
        for f, (weight, _) in zip(features, weights):
            h, w = f.shape[-2:]
            x = F.linear(rearrange(f, "b c h w -> b (h w) c"), weight, bias if out is None else None)  # (B, h*w, dim)
            x = _resize(rearrange(x, "b (h w) c -> b c h w", h=h, w=w), size)  # (B, dim, H/4, W/4)
            out = x if out is None else out.add_(x)  # in place: no extra 1/4-resolution buffer
        return out

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.mix_folded(features) if self.fold else self.mix(features)
        x = self.dropout(F.relu(self.norm(x), inplace=True))
        # The 1x1 classifier as a matmul over channels-last tokens: same weights, faster than conv2d on CPU.
        weight = self.classifier.weight[:, :, 0, 0]  # (num_classes, dim)
        x = F.linear(rearrange(x, "b c h w -> b h w c"), weight, self.classifier.bias)  # (B, H/4, W/4, num_classes)
        return rearrange(x, "b h w k -> b k h w")  # (B, num_classes, H/4, W/4)


class SegFormer(nn.Module):
    """SegFormer: a Mix Transformer encoder and the all-MLP decoder.

    The encoder (chapter 4) gives four maps at strides 4-32; the decoder mixes them at
    1/4 resolution. Logits come out at 1/4 of the input: the only upsampling to full
    resolution is a bilinear resize of the logits, done by the loss/metrics (see
    :mod:`segnotes.train`) or here with ``full_resolution=True``. Works at any input
    size (no positional encoding, no divisibility requirement).

    Args:
        config: a :class:`SegFormerConfig`; see :func:`segformer_b0` ... :func:`segformer_b5`.

    Shapes:
        (B, in_channels, H, W) -> (B, num_classes, ceil(H / 4), ceil(W / 4)), or (B, num_classes, H, W).

    Example:
        >>> segformer_b0(num_classes=5)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 5, 16, 16])
    """

    def __init__(self, config: SegFormerConfig = SegFormerConfig()):
        super().__init__()
        self.config = config
        self.encoder = MixTransformer(config.encoder)
        self.decoder = AllMLPDecoder(self.encoder.feature_channels, config.decoder_dim, config.num_classes, config.dropout)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> the encoder's four maps (B, C_i, H / s_i, W / s_i)."""
        if x.ndim != 4 or x.shape[1] != self.config.encoder.in_channels:
            raise ValueError(
                f"expected a (B, {self.config.encoder.in_channels}, H, W) batch, got shape {tuple(x.shape)}"
                + ("; add a batch dimension with x[None]" if x.ndim == 3 else "")
            )
        return self.encoder(x)

    def forward_head(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Four encoder maps -> logits (B, num_classes, H / 4, W / 4)."""
        return self.decoder(features)

    def forward(self, x: torch.Tensor, full_resolution: bool = False) -> torch.Tensor:
        logits = self.forward_head(self.forward_features(x))
        return _resize(logits, x.shape[-2:]) if full_resolution else logits

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | Path, **overrides) -> SegFormer:
        """Load a transformers ``SegformerForSemanticSegmentation`` checkpoint.

        Args:
            repo_id_or_path: a directory written by transformers' ``save_pretrained``
                (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), or a
                model-hub repo id such as ``"nvidia/segformer-b0-finetuned-ade-512-512"``
                (downloaded with ``huggingface_hub``).
            **overrides: :class:`~segnotes.mit.MiTConfig` fields to change, e.g. ``norm_eps=1e-6``;
                by default transformers' numerics are kept, so outputs match transformers'.

        Returns:
            The model in eval mode.

        Example:
            >>> model = SegFormer.from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512")  # doctest: +SKIP
        """
        path = Path(repo_id_or_path)
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(repo_id_or_path), allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin"]))
        config = config_from_transformers(json.loads((path / "config.json").read_text()))
        config = replace(config, encoder=replace(config.encoder, **overrides))
        if (path / "model.safetensors").exists():
            from safetensors.torch import load_file

            state_dict = load_file(path / "model.safetensors")
        elif (path / "pytorch_model.bin").exists():
            state_dict = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"{path} has no model.safetensors or pytorch_model.bin; save it with transformers' save_pretrained")
        model = cls(config)
        model.load_state_dict(from_transformers(state_dict), strict=True)
        return model.eval()


# --- weight conversion -------------------------------------------------------------------------------
# One row per tensor group: segnotes name, transformers 4.x name (the model hub's checkpoints, and what
# transformers 5.x still writes with save_pretrained), transformers 5.x module name (model.state_dict()).
# {i}: stage, {j}: block. Keys and values are separate Linears in transformers: the temporary names
# attn.k / attn.v are joined into segnotes' single attn.kv by _join_kv.
_KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    ("encoder.stages.{i}.patch_embed.proj", "segformer.encoder.patch_embeddings.{i}.proj", "segformer.stages.{i}.patch_embeddings.proj"),
    ("encoder.stages.{i}.patch_embed.norm", "segformer.encoder.patch_embeddings.{i}.layer_norm", "segformer.stages.{i}.patch_embeddings.layer_norm"),
    ("encoder.stages.{i}.blocks.{j}.norm1", "segformer.encoder.block.{i}.{j}.layer_norm_1", "segformer.stages.{i}.blocks.{j}.layernorm_before"),
    ("encoder.stages.{i}.blocks.{j}.attn.q", "segformer.encoder.block.{i}.{j}.attention.self.query", "segformer.stages.{i}.blocks.{j}.attention.q_proj"),
    ("encoder.stages.{i}.blocks.{j}.attn.k", "segformer.encoder.block.{i}.{j}.attention.self.key", "segformer.stages.{i}.blocks.{j}.attention.k_proj"),
    ("encoder.stages.{i}.blocks.{j}.attn.v", "segformer.encoder.block.{i}.{j}.attention.self.value", "segformer.stages.{i}.blocks.{j}.attention.v_proj"),
    ("encoder.stages.{i}.blocks.{j}.attn.sr", "segformer.encoder.block.{i}.{j}.attention.self.sr", "segformer.stages.{i}.blocks.{j}.attention.sequence_reduction.sequence_reduction"),
    ("encoder.stages.{i}.blocks.{j}.attn.sr_norm", "segformer.encoder.block.{i}.{j}.attention.self.layer_norm", "segformer.stages.{i}.blocks.{j}.attention.sequence_reduction.layer_norm"),
    ("encoder.stages.{i}.blocks.{j}.attn.proj", "segformer.encoder.block.{i}.{j}.attention.output.dense", "segformer.stages.{i}.blocks.{j}.attention.o_proj"),
    ("encoder.stages.{i}.blocks.{j}.norm2", "segformer.encoder.block.{i}.{j}.layer_norm_2", "segformer.stages.{i}.blocks.{j}.layernorm_after"),
    ("encoder.stages.{i}.blocks.{j}.mlp.fc1", "segformer.encoder.block.{i}.{j}.mlp.dense1", "segformer.stages.{i}.blocks.{j}.mlp.fc1"),
    ("encoder.stages.{i}.blocks.{j}.mlp.dwconv", "segformer.encoder.block.{i}.{j}.mlp.dwconv.dwconv", "segformer.stages.{i}.blocks.{j}.mlp.dwconv.dwconv"),
    ("encoder.stages.{i}.blocks.{j}.mlp.fc2", "segformer.encoder.block.{i}.{j}.mlp.dense2", "segformer.stages.{i}.blocks.{j}.mlp.fc2"),
    ("encoder.stages.{i}.norm", "segformer.encoder.layer_norm.{i}", "segformer.stages.{i}.layer_norm"),
    ("decoder.proj.{i}", "decode_head.linear_c.{i}.proj", "decode_head.linear_projections.{i}.proj"),
    ("decoder.fuse", "decode_head.linear_fuse", "decode_head.linear_fuse"),
    ("decoder.norm", "decode_head.batch_norm", "decode_head.batch_norm"),
    ("decoder.classifier", "decode_head.classifier", "decode_head.classifier"),
)
_SUFFIX = r"\.(?P<suffix>weight|bias|running_mean|running_var|num_batches_tracked)"


def _pattern(template: str) -> re.Pattern:
    regex = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(regex + _SUFFIX)


_COLUMNS = {"segnotes": 0, "v4": 1, "v5": 2}
_PATTERNS = [tuple(_pattern(t) for t in row) for row in _KEY_TABLE]


def _rename(state_dict: Mapping[str, torch.Tensor], source: Sequence[str], target: str) -> dict[str, torch.Tensor]:
    """Rename every key through the table from any of the ``source`` columns to the ``target`` column."""
    out, unmapped = {}, []
    for key, tensor in state_dict.items():
        for row, patterns in zip(_KEY_TABLE, _PATTERNS):
            match = next((m for m in (patterns[_COLUMNS[s]].fullmatch(key) for s in source) if m), None)
            if match:
                out[row[_COLUMNS[target]].format(**match.groupdict()) + "." + match["suffix"]] = tensor
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"{len(unmapped)} keys have no entry in the conversion table, e.g. {unmapped[:5]}")
    return out


def _join_kv(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """attn.k.* and attn.v.* -> attn.kv.* (keys' rows first)."""
    out = {}
    for key, tensor in state_dict.items():
        if ".attn.k." in key:
            out[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([tensor, state_dict[key.replace(".attn.k.", ".attn.v.")]])
        elif ".attn.v." not in key:
            out[key] = tensor
    return out


def _split_kv(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """attn.kv.* -> attn.k.* and attn.v.* (the inverse of :func:`_join_kv`)."""
    out = {}
    for key, tensor in state_dict.items():
        if ".attn.kv." in key:
            k, v = tensor.chunk(2)
            out[key.replace(".attn.kv.", ".attn.k.")], out[key.replace(".attn.kv.", ".attn.v.")] = k, v
        else:
            out[key] = tensor
    return out


def from_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``SegformerForSemanticSegmentation`` state dict -> segnotes :class:`SegFormer` state dict.

    Accepts the 4.x names (model-hub checkpoints, and files written by 5.x ``save_pretrained``)
    and the 5.x module names (``model.state_dict()``). A state dict already in segnotes'
    names is returned unchanged.

    Raises:
        ValueError: a key that no row of the conversion table matches.

    Example:
        >>> model.load_state_dict(from_transformers(hf_model.state_dict()))  # doctest: +SKIP
    """
    if all(k.startswith(("encoder.", "decoder.")) for k in state_dict):
        return dict(state_dict)
    return _join_kv(_rename(state_dict, ("v4", "v5"), "segnotes"))


def to_transformers(state_dict: Mapping[str, torch.Tensor], names: Literal["v5", "v4"] = "v5") -> dict[str, torch.Tensor]:
    """segnotes :class:`SegFormer` state dict -> transformers ``SegformerForSemanticSegmentation`` names.

    Args:
        state_dict: a segnotes SegFormer's ``state_dict()``.
        names: ``"v5"`` for transformers 5.x modules (``hf_model.load_state_dict(..., strict=True)``),
            ``"v4"`` for transformers 4.x and checkpoint files.
    """
    if names not in ("v5", "v4"):
        raise ValueError(f"names must be 'v5' or 'v4', got {names!r}")
    return _rename(_split_kv(state_dict), ("segnotes",), names)


def config_from_transformers(config: Mapping) -> SegFormerConfig:
    """A transformers ``SegformerConfig`` (as the dict of its ``config.json``) -> :class:`SegFormerConfig`.

    The LayerNorm epsilon stays at transformers' effective 1e-5 (its modules ignore ``layer_norm_eps``).
    """
    def get(key, default):
        return tuple(config[key]) if isinstance(config.get(key, default), list) else config.get(key, default)

    defaults = MiTConfig()
    encoder = MiTConfig(
        embed_dims=get("hidden_sizes", defaults.embed_dims),
        depths=get("depths", defaults.depths),
        num_heads=get("num_attention_heads", defaults.num_heads),
        sr_ratios=get("sr_ratios", defaults.sr_ratios),
        mlp_ratios=get("mlp_ratios", defaults.mlp_ratios),
        patch_sizes=get("patch_sizes", defaults.patch_sizes),
        strides=get("strides", defaults.strides),
        in_channels=config.get("num_channels", 3),
        drop_path_rate=config.get("drop_path_rate", 0.1),
    )
    num_classes = len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2)
    return SegFormerConfig(encoder, config.get("decoder_hidden_size", 256), num_classes, config.get("classifier_dropout_prob", 0.1))


# --- presets: the paper's Table 1 (parameters with 150 ADE20K classes in the comments) ----------------
SEGFORMER_CONFIGS: dict[str, SegFormerConfig] = {
    "segformer_b0": SegFormerConfig(MIT_CONFIGS["mit_b0"], decoder_dim=256),  # 3.8M params
    "segformer_b1": SegFormerConfig(MIT_CONFIGS["mit_b1"], decoder_dim=256),  # 13.7M params
    "segformer_b2": SegFormerConfig(MIT_CONFIGS["mit_b2"], decoder_dim=768),  # 27.5M params
    "segformer_b3": SegFormerConfig(MIT_CONFIGS["mit_b3"], decoder_dim=768),  # 47.3M params
    "segformer_b4": SegFormerConfig(MIT_CONFIGS["mit_b4"], decoder_dim=768),  # 64.1M params
    "segformer_b5": SegFormerConfig(MIT_CONFIGS["mit_b5"], decoder_dim=768),  # 84.7M params
}


def _build(name: str, num_classes: int, **overrides) -> SegFormer:
    config = SEGFORMER_CONFIGS[name]
    return SegFormer(replace(config, num_classes=num_classes, encoder=replace(config.encoder, **overrides)))


def segformer_b0(num_classes: int = 150, **overrides) -> SegFormer:
    """SegFormer-B0 (3.8M parameters with 150 classes); ``overrides`` change :class:`~segnotes.mit.MiTConfig` fields."""
    return _build("segformer_b0", num_classes, **overrides)


def segformer_b1(num_classes: int = 150, **overrides) -> SegFormer:
    """SegFormer-B1 (13.7M parameters with 150 classes)."""
    return _build("segformer_b1", num_classes, **overrides)


def segformer_b2(num_classes: int = 150, **overrides) -> SegFormer:
    """SegFormer-B2 (27.5M parameters with 150 classes)."""
    return _build("segformer_b2", num_classes, **overrides)


def segformer_b3(num_classes: int = 150, **overrides) -> SegFormer:
    """SegFormer-B3 (47.3M parameters with 150 classes)."""
    return _build("segformer_b3", num_classes, **overrides)


def segformer_b4(num_classes: int = 150, **overrides) -> SegFormer:
    """SegFormer-B4 (64.1M parameters with 150 classes)."""
    return _build("segformer_b4", num_classes, **overrides)


def segformer_b5(num_classes: int = 150, **overrides) -> SegFormer:
    """SegFormer-B5 (84.7M parameters with 150 classes)."""
    return _build("segformer_b5", num_classes, **overrides)
