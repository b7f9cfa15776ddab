"""Chapter 5: the all-MLP decoder, the whole SegFormer, and loading its published weights.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021, https://arxiv.org/abs/2105.15203.

A :class:`SegFormer` is a :class:`~segnotes.model.SegmentationModel`: the Mix
Transformer of chapter 4 (encoder), the all-MLP decoder (decoder) and a 1x1
classifier (head). The decoder has three steps: (1) a per-stage Linear brings the
four encoder maps (strides 4, 8, 16, 32) to one width, (2) bilinear upsampling brings
them all to 1/4 resolution, (3) they are concatenated and fused by a 1x1 convolution
+ BN + ReLU. The head predicts the logits, still at 1/4 resolution: the last x4 is a
bilinear resize of the logits, done by the loss and the metrics.

At 512x512 the fuse convolution over the concatenated 1/4-resolution maps costs more
than the whole encoder. Steps (1), (2) and the fuse are linear, so the fuse weights
fold into the per-stage projections: each stage is mixed to the output width *before*
upsampling and the four upsampled maps are summed. Same parameters, same state dict,
same outputs up to float rounding. :class:`AllMLPDecoder` does this by default
(``fold=True``) and, in eval mode without gradients, reuses the folded weights for as long
as the weights they were computed from are unchanged (compared element by element).

**Any pyramid encoder.** The decoder is built from the encoder's channels and strides
and reads the maps at stride 4 and deeper, so the encoder slot takes what every
pyramid model takes (:func:`segnotes.encoders.as_encoder`): ``segformer("b0",
num_classes=2, encoder="convnext_atto")`` puts SegFormer's decoder on a ConvNeXt, a
timm Swin (``get_encoder(name, img_size=...)``) or the book's MobileNetV2. Without an
``encoder``, the Mix Transformer of the config sits in the slot as it is (its maps are
already the ones the decoder reads), which keeps the state dict of the published layouts.

Weights convert from three published layouts through ordered key tables (:mod:`segnotes.weights`):
transformers' ``SegformerForSemanticSegmentation`` (:func:`from_transformers`, and back
with :func:`to_transformers`), the original NVlabs/mmseg checkpoints
(:func:`from_original`) and segmentation_models.pytorch's ``Segformer`` (:func:`from_smp`).
The module runs past the book's ~400-line guideline because those tables (one line per
tensor group, three layouts) are part of what the chapter teaches and belong next to the
modules whose names they list; splitting them into another module would hide that.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import mit as _mit
from .encoders import as_encoder, check_features
from .init import init_normal
from .mit import MIT_PRESETS, MiTConfig, MixTransformer
from .model import SegmentationModel, check_choice, check_positive, resize
from .weights import rename_keys

__all__ = [
    "SegFormerConfig",
    "AllMLPDecoder",
    "PixelClassifier",
    "SegFormer",
    "segformer",
    "from_transformers",
    "to_transformers",
    "from_original",
    "from_smp",
    "config_from_transformers",
    "conversion_table",
    "TRANSFORMERS_KEYS",
    "DECODER_KEYS",
    "SEGFORMER_PRESETS",
]


@dataclass(frozen=True)
class SegFormerConfig:
    """A SegFormer: a MiT encoder, the all-MLP decoder and a 1x1 classifier.

    Attributes:
        encoder: the :class:`~segnotes.mit.MiTConfig`.
        decoder_dim: the decoder's common width (256 for B0/B1, 768 for B2-B5).
        num_classes: output channels of the classifier (150: ADE20K, the paper's main benchmark).
        dropout: dropout before the classifier (0.1 in the paper and transformers).
        upsampling: bilinear upsampling of the logits in the head, 1, 2 or 4; 1 (the paper) keeps
            them at 1/4 resolution, 4 returns 4 * ceil(H / 4) like segmentation_models.pytorch.
        decoder_stages: the encoder stages the decoder fuses (0 = stride 4); ``None``: all four,
            as in the paper (see :class:`AllMLPDecoder`'s ``stages``).
    """

    encoder: MiTConfig = field(default_factory=MiTConfig)
    decoder_dim: int = 256
    num_classes: int = 150
    dropout: float = 0.1
    upsampling: int = 1
    decoder_stages: tuple[int, ...] | None = None


class AllMLPDecoder(nn.Module):
    """SegFormer's decoder: per-stage Linear, upsample to 1/4, concatenate, 1x1 fuse + BN + ReLU, dropout.

    Args:
        in_channels: channels of the encoder's maps, shallowest first: a MiT's four maps, or
            an SMP-convention encoder's ``out_channels`` (the input image first).
        dim: common width (256 for B0/B1, 768 for B2-B5).
        dropout: dropout probability after the ReLU (before the classifier).
        fold: apply the fuse per stage before upsampling (exact, much cheaper); ``False``
            runs the paper's steps literally.
        strides: the maps' strides; ``None``: 4, 8, 16, ... (a MiT's). The decoder reads the
            maps at stride 4 and deeper (an encoder's input image and stride-2 map are not read).
        stages: which of those maps to fuse, counted from the stride-4 one; ``None``: all (the
            paper). ``(3,)`` fuses a MiT's stride-32 map alone, still at 1/4 resolution: what
            the fine stages buy (chapter 5).

    Attributes:
        in_channels: channels of the maps it reads, e.g. ``[32, 64, 160, 256]``.

    Shapes:
        [(B, C_i, H / s_i, W / s_i)] -> (B, dim, H / 4, W / 4) (the size of the stride-4 map).

    Example:
        >>> AllMLPDecoder([32, 64], dim=16)([torch.randn(1, 32, 16, 16), torch.randn(1, 64, 8, 8)]).shape
        torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        dim: int,
        dropout: float = 0.1,
        fold: bool = True,
        *,
        strides: Sequence[int] | None = None,
        stages: Sequence[int] | None = None,
    ):
        super().__init__()
        self.encoder_channels = list(in_channels)
        self.encoder_strides = [4 * 2**i for i in range(len(in_channels))] if strides is None else list(strides)
        if len(self.encoder_strides) != len(self.encoder_channels) or 4 not in self.encoder_strides:
            raise ValueError(
                f"AllMLPDecoder needs one stride per map and a map at stride 4, got channels {self.encoder_channels} "
                f"at strides {self.encoder_strides}; build it from the encoder's channels and strides"
            )
        decodable = [i for i, s in enumerate(self.encoder_strides) if s >= 4]
        self.size_from = self.encoder_strides.index(4)  # the output has the stride-4 map's size
        stages = range(len(decodable)) if stages is None else stages
        if not stages or any(not 0 <= k < len(decodable) for k in stages) or len(set(stages)) < len(stages):
            raise ValueError(
                f"stages must be distinct indices into the {len(decodable)} maps at stride 4 and deeper "
                f"(strides {[self.encoder_strides[i] for i in decodable]}), e.g. (3,), got {tuple(stages)}"
            )
        self.read = [decodable[k] for k in sorted(stages)]  # the maps it decodes
        self.in_channels = [check_positive("in_channels", self.encoder_channels[i]) for i in self.read]
        self.out_channels = check_positive("dim", dim)
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in self.in_channels)  # step 1
        # step 3, deepest stage first
        self.fuse = nn.Conv2d(len(self.in_channels) * dim, dim, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.dropout = nn.Dropout(dropout)
        self.fold = fold
        self._cache = None  # (copies of the source weights, folded weights, summed bias), see folded()

    def check(self, features: Sequence[torch.Tensor]) -> None:
        """Raise a ``ValueError`` unless ``features`` are the maps (channels, strides) it was built for."""
        check_features(features, self.encoder_channels, self.encoder_strides, "AllMLPDecoder")

    def mix(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Steps 1-3 up to the fuse convolution, literally: (B, dim, H / 4, W / 4) for ``size`` (H / 4, W / 4)."""
        maps = []
        for f, proj in zip(features, self.proj, strict=True):
            h, w = f.shape[-2:]
            x = proj(rearrange(f, "b c h w -> b (h w) c"))  # (B, h*w, dim)
            maps.append(resize(rearrange(x, "b (h w) c -> b c h w", h=h, w=w), size))  # (B, dim, H/4, W/4)
        return self.fuse(torch.cat(maps[::-1], dim=1))  # (B, n*dim, H/4, W/4) -> (B, dim, H/4, W/4)

    def folded_weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per stage the fuse's slice times the projection, (dim, C_i), and the summed folded bias (dim,)."""
        n, dim = len(self.proj), self.out_channels
        fuse = self.fuse.weight[:, :, 0, 0]  # (dim, n * dim), deepest stage's slice first
        blocks = [fuse[:, (n - 1 - i) * dim : (n - i) * dim] for i in range(n)]  # (dim, dim): reads stage i
        weights = [block @ proj.weight for block, proj in zip(blocks, self.proj)]
        bias = sum(block @ proj.bias for block, proj in zip(blocks, self.proj))  # resizing keeps constants
        return weights, bias

    def folded(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """:meth:`folded_weights`, cached in eval mode without gradients, never stale.

        The cache keeps a copy of the weights it was computed from and is used only while
        the current weights are equal to that copy, element for element (same device and
        dtype too): whatever changed them, an optimizer step, ``load_state_dict``, ``.to()``
        or an EMA update through ``.data``, a stale cache is never used. The comparison
        reads the weights once, much less work than the products it saves. In training, or
        with gradients enabled, the weights are recomputed so gradients reach the
        projections and the fuse.
        """
        if self.training or torch.is_grad_enabled():
            return self.folded_weights()
        projections = [p for proj in self.proj for p in (proj.weight, proj.bias)]
        sources = [self.fuse.weight, *projections]
        if self._cache is None or not _all_equal(self._cache[0], sources):
            # normal tensors, usable outside inference mode
            with torch.inference_mode(False), torch.no_grad():
                copies = [p.detach().clone() for p in sources]
                self._cache = (copies, *self.folded_weights())
        return self._cache[1], self._cache[2]

    def mix_folded(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """The same as :meth:`mix`, with the fuse folded in before upsampling: (B, dim, H / 4, W / 4)."""
        weights, bias = self.folded()
        out = None
        for f, weight in zip(features, weights, strict=True):
            h, w = f.shape[-2:]
            x = F.linear(rearrange(f, "b c h w -> b (h w) c"), weight, bias if out is None else None)  # (B, h*w, dim)
            x = resize(rearrange(x, "b (h w) c -> b c h w", h=h, w=w), size)  # (B, dim, H/4, W/4)
            out = x if out is None else out.add_(x)  # in place: no extra 1/4-resolution buffer
        return out

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        self.check(features)
        size = features[self.size_from].shape[-2:]  # (H / 4, W / 4)
        features = [features[i] for i in self.read]  # the maps it fuses, at stride 4 and deeper
        x = self.mix_folded(features, size) if self.fold else self.mix(features, size)
        return self.dropout(F.relu(self.norm(x), inplace=True))  # (B, dim, H/4, W/4)


def _all_equal(copies: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every tensor has its copy's device, dtype, shape and values (NaN never equals)."""
    return all(
        c.device == t.device and c.dtype == t.dtype and c.shape == t.shape and torch.equal(c, t)
        for c, t in zip(copies, tensors)
    )


class PixelClassifier(nn.Module):
    """SegFormer's head: a 1x1 convolution to class logits, then optional bilinear upsampling.

    The 1x1 convolution runs as a matrix product over channels-last tokens: same weights
    (``classifier``, a ``Conv2d``, so state dicts match the other layouts), faster than
    ``conv2d`` on a CPU because the decoder's map is already channels-last in memory.

    Why not :class:`segnotes.model.SegmentationHead` (a ``Conv2d`` and an upsampling, the
    same function): its weights are ``head.0.*``, and every published SegFormer layout
    (transformers' ``decode_head.classifier``, the key tables below, chapter 5's tables)
    names this one ``head.classifier``; and it runs the 1x1 as a ``conv2d``, the path
    this class avoids on the decoder's channels-last map.

    Args:
        in_channels: the decoder's width.
        num_classes: logits' channels, at least 1.
        upsampling: 1 keeps the decoder's 1/4 resolution; 4 gives 4x larger logits.

    Shapes:
        (B, in_channels, h, w) -> (B, num_classes, h * upsampling, w * upsampling).

    Example:
        >>> PixelClassifier(16, 5)(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 5, 8, 8])
    """

    def __init__(self, in_channels: int, num_classes: int, upsampling: int = 1):
        super().__init__()
        self.classifier = nn.Conv2d(
            check_positive("in_channels", in_channels), check_positive("num_classes", num_classes), 1
        )
        self.upsampling = check_positive("upsampling", upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.classifier.weight[:, :, 0, 0]  # (num_classes, in_channels)
        x = F.linear(rearrange(x, "b c h w -> b h w c"), weight, self.classifier.bias)  # (B, h, w, num_classes)
        x = rearrange(x, "b h w k -> b k h w")  # (B, num_classes, h, w)
        return x if self.upsampling == 1 else resize(x, (x.shape[-2] * self.upsampling, x.shape[-1] * self.upsampling))


class SegFormer(SegmentationModel):
    """SegFormer: a Mix Transformer encoder, the all-MLP decoder and a 1x1 classifier.

    The encoder (chapter 4) gives four maps at strides 4-32; the decoder mixes them at
    1/4 resolution; the head classifies every 1/4-resolution position. There is no
    learned upsampling: :mod:`segnotes.train` resizes the logits to the mask for the loss
    and the metrics (``segnotes.model.resize(logits, x.shape[-2:])`` does it by hand), or
    build the model with ``upsampling=4``. With its MiT it works at any input size (no
    positional encoding, no divisibility requirement).

    Args:
        config: a :class:`SegFormerConfig`; see :func:`segformer` for the presets.
        encoder: ``None``: the Mix Transformer of ``config.encoder``. Otherwise any pyramid
            encoder, through :func:`segnotes.encoders.as_encoder`: a timm name
            (``"convnext_atto"``), a backbone (``MobileNetV2Backbone()``) or an ``Encoder``
            (``get_encoder("swin_tiny_patch4_window7_224", img_size=256)``); it takes
            ``config.encoder.in_channels`` and its own input-size rule.
        encoder_weights: ``None`` or ``"imagenet"`` (timm names only).

    Attributes:
        output_stride: the logits' stride, ``4 // config.upsampling`` (4 in the paper).

    Shapes:
        (B, in_channels, H, W) -> (B, num_classes, ceil(H / 4), ceil(W / 4)).

    Example:
        >>> segformer("b0", num_classes=5)(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 5, 16, 16])
    """

    def __init__(
        self,
        config: SegFormerConfig = SegFormerConfig(),
        *,
        encoder: str | nn.Module | None = None,
        encoder_weights: Literal["imagenet"] | None = None,
    ):
        check_choice("upsampling", config.upsampling, (1, 2, 4))
        check_choice("encoder_weights", encoder_weights, (None, "imagenet"))
        in_channels = config.encoder.in_channels
        if encoder is None and encoder_weights is not None:
            raise ValueError("encoder_weights applies to a timm encoder name; for the MiT use from_pretrained")
        if encoder is None:  # the paper's: its four maps are the ones the decoder reads
            enc = MixTransformer(config.encoder)
            channels, strides = enc.feature_channels, enc.feature_strides
        else:
            enc = as_encoder(encoder, in_channels, pretrained=encoder_weights is not None)
            channels, strides = enc.out_channels, enc.strides
        decoder = AllMLPDecoder(
            channels, config.decoder_dim, config.dropout, strides=strides, stages=config.decoder_stages
        )
        head = PixelClassifier(config.decoder_dim, config.num_classes, config.upsampling)
        super().__init__(enc, decoder, head, in_channels=in_channels)
        self.config = config
        self.output_stride = 4 // config.upsampling  # logits at 1/4 of the input, or upsampled

    def init_weights(self) -> None:
        """Start the decoder and classifier as transformers does: weights N(0, 0.02²), biases 0.

        The MiT starts the same way (its own ``__init__``); another encoder keeps its own.
        """
        init_normal(self.decoder, std=0.02)
        init_normal(self.head, std=0.02)

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | Path, **overrides) -> SegFormer:
        """Load a transformers ``SegformerForSemanticSegmentation`` checkpoint, in eval mode.

        Args:
            repo_id_or_path: a directory written by transformers' ``save_pretrained``
                (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), or a
                model-hub repo id such as ``"nvidia/segformer-b0-finetuned-ade-512-512"``
                (downloaded with ``huggingface_hub``).
            **overrides: :class:`~segnotes.mit.MiTConfig` fields to change, e.g. ``norm_eps=1e-6``;
                by default transformers' numerics are kept, so outputs match transformers'.

        Example:
            >>> model = SegFormer.from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512")  # doctest: +SKIP
        """
        path = Path(repo_id_or_path).expanduser()
        if not path.is_dir():
            if (
                path.exists()
                or str(repo_id_or_path).startswith((".", "/", "~"))
                or str(repo_id_or_path).count("/") != 1
            ):
                raise ValueError(
                    f"{repo_id_or_path!r} is not a checkpoint directory; pass a directory written by "
                    "save_pretrained or a model-hub id such as 'nvidia/segformer-b0-finetuned-ade-512-512'"
                )
            from huggingface_hub import snapshot_download

            patterns = ["config.json", "*.safetensors", "pytorch_model.bin"]
            path = Path(snapshot_download(str(repo_id_or_path), allow_patterns=patterns))
        config = config_from_transformers(json.loads((path / "config.json").read_text()))
        config = replace(config, encoder=replace(config.encoder, **overrides))
        if (path / "model.safetensors").exists():
            from safetensors.torch import load_file

            state_dict = load_file(path / "model.safetensors")
        elif (path / "pytorch_model.bin").exists():
            state_dict = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"{path} has no model.safetensors or pytorch_model.bin; write it with save_pretrained")
        model = cls(config)
        model.load_state_dict(from_transformers(state_dict), strict=True)
        return model.eval()


def segformer(
    preset: str = "b0",
    *,
    num_classes: int,
    encoder: str | nn.Module | None = None,
    encoder_weights: Literal["imagenet"] | None = None,
    **overrides,
) -> SegFormer:
    """A SegFormer from a preset of the paper's Table 1.

    Args:
        preset: one of ``SEGFORMER_PRESETS``: ``"b0"`` ... ``"b5"``.
        num_classes: logits' channels.
        encoder, encoder_weights: another encoder instead of the preset's MiT (see :class:`SegFormer`);
            the preset then only sets the decoder (``decoder_dim``).
        **overrides: :class:`SegFormerConfig` fields (``decoder_dim``, ``dropout``, ``upsampling``, ``decoder_stages``)
            or :class:`~segnotes.mit.MiTConfig` fields (e.g. ``drop_path_rate=0.0``, ``norm_eps=1e-6``).

    Example:
        >>> segformer("b0", num_classes=5, drop_path_rate=0.0).config.encoder.drop_path_rate
        0.0
        >>> segformer("b0", num_classes=2, encoder="convnext_atto").decoder.in_channels
        [40, 80, 160, 320]
    """
    config = SEGFORMER_PRESETS[check_choice("preset", preset, tuple(SEGFORMER_PRESETS))]
    own = {f.name for f in fields(SegFormerConfig)} - {"encoder", "num_classes"}
    encoder_fields = {f.name for f in fields(MiTConfig)}
    unknown = set(overrides) - own - encoder_fields
    if unknown:
        raise ValueError(f"unknown SegFormer overrides {sorted(unknown)}; choose from {sorted(own | encoder_fields)}")
    mit_config = replace(config.encoder, **{k: v for k, v in overrides.items() if k in encoder_fields})
    config = replace(
        config, encoder=mit_config, num_classes=num_classes, **{k: v for k, v in overrides.items() if k in own}
    )
    return SegFormer(config, encoder=encoder, encoder_weights=encoder_weights)


# --- weight conversion ------------------------------------------------------------------------------
# transformers: one row per tensor group, {i}: stage, {j}: block. Columns: segnotes name, transformers
# 4.x name (the model hub's checkpoints, and what 5.x still writes with save_pretrained), transformers 5.x
# module name (model.state_dict()). transformers keeps keys and values in separate Linears: the
# temporary names attn.k / attn.v are joined into segnotes' single attn.kv by _join_kv.
# fmt: off
TRANSFORMERS_KEYS: tuple[tuple[str, str, str], ...] = (
    ("encoder.stages.{i}.patch_embed.proj", "segformer.encoder.patch_embeddings.{i}.proj", "segformer.stages.{i}.patch_embeddings.proj"),  # noqa: E501
    ("encoder.stages.{i}.patch_embed.norm", "segformer.encoder.patch_embeddings.{i}.layer_norm", "segformer.stages.{i}.patch_embeddings.layer_norm"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.norm1", "segformer.encoder.block.{i}.{j}.layer_norm_1", "segformer.stages.{i}.blocks.{j}.layernorm_before"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.attn.q", "segformer.encoder.block.{i}.{j}.attention.self.query", "segformer.stages.{i}.blocks.{j}.attention.q_proj"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.attn.k", "segformer.encoder.block.{i}.{j}.attention.self.key", "segformer.stages.{i}.blocks.{j}.attention.k_proj"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.attn.v", "segformer.encoder.block.{i}.{j}.attention.self.value", "segformer.stages.{i}.blocks.{j}.attention.v_proj"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.attn.sr", "segformer.encoder.block.{i}.{j}.attention.self.sr", "segformer.stages.{i}.blocks.{j}.attention.sequence_reduction.sequence_reduction"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.attn.sr_norm", "segformer.encoder.block.{i}.{j}.attention.self.layer_norm", "segformer.stages.{i}.blocks.{j}.attention.sequence_reduction.layer_norm"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.attn.proj", "segformer.encoder.block.{i}.{j}.attention.output.dense", "segformer.stages.{i}.blocks.{j}.attention.o_proj"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.norm2", "segformer.encoder.block.{i}.{j}.layer_norm_2", "segformer.stages.{i}.blocks.{j}.layernorm_after"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.mlp.fc1", "segformer.encoder.block.{i}.{j}.mlp.dense1", "segformer.stages.{i}.blocks.{j}.mlp.fc1"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.mlp.dwconv", "segformer.encoder.block.{i}.{j}.mlp.dwconv.dwconv", "segformer.stages.{i}.blocks.{j}.mlp.dwconv.dwconv"),  # noqa: E501
    ("encoder.stages.{i}.blocks.{j}.mlp.fc2", "segformer.encoder.block.{i}.{j}.mlp.dense2", "segformer.stages.{i}.blocks.{j}.mlp.fc2"),  # noqa: E501
    ("encoder.stages.{i}.norm", "segformer.encoder.layer_norm.{i}", "segformer.stages.{i}.layer_norm"),
    ("decoder.proj.{i}", "decode_head.linear_c.{i}.proj", "decode_head.linear_projections.{i}.proj"),
    ("decoder.fuse", "decode_head.linear_fuse", "decode_head.linear_fuse"),
    ("decoder.norm", "decode_head.batch_norm", "decode_head.batch_norm"),
    ("head.classifier", "decode_head.classifier", "decode_head.classifier"),
)
# The decoder and head in the original NVlabs/mmseg checkpoints and in segmentation_models.pytorch's
# Segformer (their encoders share one layout, converted by segnotes.mit.from_original). Columns: segnotes,
# original, SMP. The original numbers stages c1..c4 from the shallowest, SMP's mlp_stage from the deepest.
DECODER_KEYS: tuple[tuple[str, str, str], ...] = (
    ("decoder.proj.0", "decode_head.linear_c1.proj", "decoder.mlp_stage.3.linear"),
    ("decoder.proj.1", "decode_head.linear_c2.proj", "decoder.mlp_stage.2.linear"),
    ("decoder.proj.2", "decode_head.linear_c3.proj", "decoder.mlp_stage.1.linear"),
    ("decoder.proj.3", "decode_head.linear_c4.proj", "decoder.mlp_stage.0.linear"),
    ("decoder.fuse", "decode_head.linear_fuse.conv", "decoder.fuse_stage.0"),
    ("decoder.norm", "decode_head.linear_fuse.bn", "decoder.fuse_stage.1"),
    ("head.classifier", "decode_head.linear_pred", "segmentation_head.0"),
)
# fmt: on
# mmseg's BaseDecodeHead always builds a classifier conv_seg that SegFormerHead never calls (it predicts
# with linear_pred): the original checkpoints carry it, and it is dropped.
_UNUSED_ORIGINAL = "decode_head.conv_seg."


def _join_kv(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """attn.k.* and attn.v.* -> attn.kv.* (keys' rows first), the layout of segnotes and the original code."""
    out = {}
    for key, tensor in state_dict.items():
        if ".attn.k." in key:
            out[key.replace(".attn.k.", ".attn.kv.")] = torch.cat(
                [tensor, state_dict[key.replace(".attn.k.", ".attn.v.")]]
            )
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


def _native(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return all(k.startswith(("encoder.stages.", "decoder.", "head.")) for k in state_dict)


def from_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``SegformerForSemanticSegmentation`` state dict -> segnotes :class:`SegFormer` state dict.

    Accepts the 4.x names (model-hub checkpoints, files written by 5.x ``save_pretrained``)
    and the 5.x module names (``model.state_dict()``); a segnotes state dict is returned unchanged.

    Raises:
        ValueError: a key that no row of :data:`TRANSFORMERS_KEYS` maps, named.

    Example:
        >>> model.load_state_dict(from_transformers(hf_model.state_dict()), strict=True)  # doctest: +SKIP
    """
    if _native(state_dict):
        return dict(state_dict)
    # either transformers layout: each row once with its 4.x name, then once with its 5.x name
    either = [(ours, theirs) for ours, *names in TRANSFORMERS_KEYS for theirs in names]
    supported = "transformers' SegformerForSemanticSegmentation, with 4.x or 5.x names"
    renamed = rename_keys(state_dict, either, source=1, target=0, table_name="TRANSFORMERS_KEYS", supported=supported)
    return _join_kv(renamed)  # attn.k and attn.v -> segnotes' fused attn.kv


def to_transformers(
    state_dict: Mapping[str, torch.Tensor], names: Literal["v5", "v4"] = "v5"
) -> dict[str, torch.Tensor]:
    """segnotes :class:`SegFormer` state dict -> transformers ``SegformerForSemanticSegmentation`` names.

    Args:
        state_dict: a segnotes SegFormer's ``state_dict()``.
        names: ``"v5"`` for transformers 5.x modules (``hf_model.load_state_dict(..., strict=True)``),
            ``"v4"`` for transformers 4.x and checkpoint files.
    """
    column = {"v4": 1, "v5": 2}[check_choice("names", names, Literal["v5", "v4"])]
    supported = "a segnotes SegFormer's state dict (encoder.stages.*, decoder.*, head.*)"
    split = _split_kv(state_dict)  # transformers keeps keys and values in two Linears
    return rename_keys(
        split, TRANSFORMERS_KEYS, source=0, target=column, table_name="TRANSFORMERS_KEYS", supported=supported
    )


def _from_mit_layout(
    state_dict: Mapping[str, torch.Tensor], prefix: str, column: int, supported: str
) -> dict[str, torch.Tensor]:
    """Encoder keys under ``prefix`` through :func:`segnotes.mit.from_original`, the rest through ``DECODER_KEYS``."""
    encoder = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    rest = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    out = {"encoder." + k: v for k, v in _mit.from_original(encoder).items()}
    return out | rename_keys(
        rest, DECODER_KEYS, source=column, target=0, table_name="DECODER_KEYS", supported=supported
    )


def from_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SegFormer state dict in the layout of the original NVlabs code -> a segnotes :class:`SegFormer` state dict.

    ``from_original(state_dict)`` means the same in every module that has it: convert a
    checkpoint in the layout of the original NVlabs SegFormer code (mmseg 0.x) to segnotes'
    layout for that module's model. Here the model is the whole SegFormer: ``backbone.*``
    goes through :func:`segnotes.mit.from_original` (the encoder's layout), ``decode_head.*``
    through :data:`DECODER_KEYS`; the unused ``decode_head.conv_seg`` is dropped. The original
    blocks use LayerNorm epsilon 1e-6: build the model with ``norm_eps=1e-6`` to reproduce its outputs.

    Args:
        state_dict: ``checkpoint["state_dict"]``; a state dict already in segnotes' names is returned unchanged.

    Returns:
        The same tensors under segnotes' names, ready for ``load_state_dict(..., strict=True)``.

    Raises:
        ValueError: a whole checkpoint instead of its ``"state_dict"``, or a key that no row of
            :data:`segnotes.mit.ORIGINAL_KEYS` (encoder) or :data:`DECODER_KEYS` maps, named.

    Example:
        >>> model.load_state_dict(from_original(torch.load(path)["state_dict"]), strict=True)  # doctest: +SKIP
    """
    if "state_dict" in state_dict:
        raise ValueError("got a whole mmseg checkpoint; pass checkpoint['state_dict']")
    if _native(state_dict):
        return dict(state_dict)
    used = {k: v for k, v in state_dict.items() if not k.startswith(_UNUSED_ORIGINAL)}
    return _from_mit_layout(used, "backbone.", 1, "an original SegFormer checkpoint's backbone.* and decode_head.*")


def from_smp(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segmentation_models.pytorch ``Segformer("mit_b*")`` state dict -> segnotes :class:`SegFormer` state dict.

    SMP's encoder uses the original layout (``encoder.*``, via :func:`segnotes.mit.from_original`)
    and LayerNorm epsilon 1e-6; its head upsamples by 4 with ``align_corners=True``.

    Raises:
        ValueError: a key that no row of :data:`segnotes.mit.ORIGINAL_KEYS` (encoder) or
            :data:`DECODER_KEYS` maps, named.
    """
    if _native(state_dict):
        return dict(state_dict)
    return _from_mit_layout(state_dict, "encoder.", 2, "smp.Segformer with a mit_b* encoder")


def conversion_table(layout: Literal["transformers", "original", "smp"]) -> list[tuple[str, str]]:
    """The (segnotes name, their name) rows of a layout's key table, to display (e.g. in chapter 5).

    For ``"original"`` and ``"smp"`` these are the decoder and head; the encoder goes through
    :func:`segnotes.mit.from_original`.
    """
    check_choice("layout", layout, Literal["transformers", "original", "smp"])
    if layout == "transformers":
        return [(row[0], row[1]) for row in TRANSFORMERS_KEYS]
    return [(row[0], row[1 if layout == "original" else 2]) for row in DECODER_KEYS]


def config_from_transformers(config: Mapping) -> SegFormerConfig:
    """A transformers ``SegformerConfig`` (as the dict of its ``config.json``) -> :class:`SegFormerConfig`.

    The LayerNorm epsilon stays at transformers' effective 1e-5 (its modules ignore ``layer_norm_eps``).
    """

    def get(key, default):
        value = config.get(key, default)
        return tuple(value) if isinstance(value, list) else value

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
    return SegFormerConfig(
        encoder, config.get("decoder_hidden_size", 256), num_classes, config.get("classifier_dropout_prob", 0.1)
    )


# --- presets: the paper's Table 1 (parameters with 150 ADE20K classes in the comments) ----------------
SEGFORMER_PRESETS: dict[str, SegFormerConfig] = {
    "b0": SegFormerConfig(MIT_PRESETS["b0"], decoder_dim=256),  # 3.8M params
    "b1": SegFormerConfig(MIT_PRESETS["b1"], decoder_dim=256),  # 13.7M params
    "b2": SegFormerConfig(MIT_PRESETS["b2"], decoder_dim=768),  # 27.5M params
    "b3": SegFormerConfig(MIT_PRESETS["b3"], decoder_dim=768),  # 47.3M params
    "b4": SegFormerConfig(MIT_PRESETS["b4"], decoder_dim=768),  # 64.1M params
    "b5": SegFormerConfig(MIT_PRESETS["b5"], decoder_dim=768),  # 84.7M params
}
