"""Architecture diagrams of every model the book builds, drawn from the models themselves.

Each function takes a model object (or its config) and draws its architecture with
matplotlib patches, arrows and text. Every channel count, stride, map size and reduction
ratio on a diagram is read from the model (``encoder.out_channels``, the decoder's
layers, the :class:`~segnotes.mit.MiTConfig`) or measured by a forward pass, never typed
in, so ``python -m segnotes.diagrams book/figures`` redraws the book's figures whenever
the code changes. One colour per role on every diagram: encoder, decoder, head; grey for
tensors, dashed for the 0-channel slots and the nodes that are not built.

Where the book shows them:

* :func:`draw_unet`: chapter 1 (the 0-channel slot of a transformer-style encoder) and
  chapter 2 (the UNet on MobileNetV2);
* :func:`draw_unet_plus_plus`: chapter 7 (UNet++ in one screen);
* :func:`draw_mit_block` and :func:`draw_mit_pyramid`: chapter 4;
* :func:`draw_all_mlp_decoder`: chapter 5 (the decoder and its fold);
* :func:`draw_setr` and :func:`draw_dpt`: chapter 6.

:func:`draw_all` writes one PNG per diagram (the book's models, 100 dpi, few colours).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from torch import nn

from .dpt import ViTPyramid
from .encoders import Encoder
from .mit import MiTConfig, MixTransformer
from .model import SegmentationModel, eval_mode
from .segformer import AllMLPDecoder, SegFormer
from .setr import MlaDecoder, NaiveDecoder, PupDecoder
from .unet import UnetDecoder, UnetPlusPlusDecoder

__all__ = [
    "ROLE_COLORS",
    "draw_unet",
    "draw_unet_plus_plus",
    "draw_mit_block",
    "draw_mit_pyramid",
    "draw_all_mlp_decoder",
    "draw_setr",
    "draw_dpt",
    "draw_all",
    "save_png",
]

DPI = 100  # 9 inches = 900 px: the page column
FONT = 10  # points; no text on a diagram is smaller
# Fill and edge colour per role, the same on every diagram.
ROLE_COLORS: dict[str, tuple[str, str]] = {
    "encoder": ("#d6e6f5", "#2b5d94"),
    "decoder": ("#fbe3c8", "#a85400"),
    "head": ("#dcefd3", "#357a25"),
    "tensor": ("#eeeeee", "#555555"),  # inputs, feature maps, outputs
    "empty": ("#ffffff", "#8c8c8c"),  # 0-channel slots and nodes that are not built (dashed)
}
_ARROW = "#333333"
_LEGEND_LABELS = {
    "encoder": "encoder",
    "decoder": "decoder",
    "head": "head",
    "tensor": "tensor",
    "empty": "0 channels / not built",
}


# --- drawing primitives: a canvas in inches, boxes, arrows -------------------------------------


@dataclass(frozen=True)
class _Box:
    """A drawn box: centre (x, y), width, height, in inches from the bottom-left corner."""

    x: float
    y: float
    w: float
    h: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.w / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.h / 2)

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        """The point at fractions (fx, fy) of the box, (0, 0) = bottom-left, (1, 1) = top-right."""
        return (self.x + (fx - 0.5) * self.w, self.y + (fy - 0.5) * self.h)


class _Canvas:
    """A figure whose data coordinates are inches, so text sizes and gaps are planned in one unit."""

    def __init__(self, width: float, height: float, title: str):
        self.width, self.height = width, height
        self.fig = plt.figure(figsize=(width, height), dpi=DPI)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.set_axis_off()
        self.text(width / 2, height - 0.22, title, weight="bold", fontsize=FONT + 1)

    def text(self, x: float, y: float, s: str, *, ha="center", va="center", weight="normal", fontsize=FONT, **kw):
        return self.ax.text(x, y, s, ha=ha, va=va, fontsize=fontsize, fontweight=weight, zorder=4, **kw)

    def box(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        text: str = "",
        role: str = "tensor",
        *,
        dashed: bool = False,
        bold: bool = False,
        weight: str = "normal",
    ) -> _Box:
        fill, edge = ROLE_COLORS[role]
        patch = FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.06",
            facecolor=fill,
            edgecolor=edge,
            linewidth=2.2 if bold else 1.1,
            linestyle=(0, (4, 2)) if dashed or role == "empty" else "solid",
            zorder=2,
        )
        self.ax.add_patch(patch)
        if text:
            self.text(x, y, text, weight=weight, color="#555555" if role == "empty" else "black")
        return _Box(x, y, w, h)

    def circle(self, x: float, y: float, text: str = "+", role: str = "decoder", r: float = 0.14) -> _Box:
        fill, edge = ROLE_COLORS[role]
        self.ax.add_patch(Circle((x, y), r, facecolor=fill, edgecolor=edge, linewidth=1.1, zorder=2))
        self.text(x, y, text, weight="bold")
        return _Box(x, y, 2 * r, 2 * r)

    def arrow(
        self,
        start: tuple[float, float],
        end: tuple[float, float],
        *,
        dashed: bool = False,
        rad: float = 0.0,
        color: str = _ARROW,
        lw: float = 1.1,
        head: bool = True,
    ) -> None:
        self.ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>" if head else "-",
                mutation_scale=11,
                linewidth=lw,
                color=color,
                linestyle=(0, (4, 2)) if dashed else "solid",
                connectionstyle=f"arc3,rad={rad}",
                shrinkA=0,
                shrinkB=0,
                zorder=3,
            )
        )

    def legend(self, roles: Sequence[str], y: float = 0.25) -> None:
        """One swatch and label per role, centred in a row at height ``y``."""
        widths = [0.45 + 0.085 * len(_LEGEND_LABELS[r]) for r in roles]
        x = (self.width - sum(widths)) / 2
        for role, w in zip(roles, widths):
            self.box(x + 0.15, y, 0.3, 0.22, role=role)
            self.text(x + 0.38, y, _LEGEND_LABELS[role], ha="left")
            x += w


def save_png(fig: Figure, path: str | Path, colors: int = 48) -> Path:
    """Write ``fig`` as a small palette PNG (``colors`` colours, no dithering, no timestamp).

    Args:
        fig: a figure from one of the ``draw_*`` functions.
        path: the file to write.
        colors: size of the palette; diagrams have a few flat colours plus text edges.

    Returns:
        The path written.

    Example:
        >>> save_png(draw_mit_pyramid(mit("b0")), "mit_pyramid.png")  # doctest: +SKIP
    """
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=colors, dither=Image.Dither.NONE)
    path = Path(path)
    image.save(path, optimize=True)
    return path


def _side(size: int | Sequence[int]) -> str:
    return f"{size}×{size}" if isinstance(size, int) else f"{size[-2]}×{size[-1]}"


def _record(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor) -> dict[str, list]:
    """Run ``model(x)`` once (eval mode, no grad) and return each named module's output shape(s) without B."""
    shapes: dict[str, list] = {}

    def hook(name):
        def record(_module, _inputs, out):
            outs = out if isinstance(out, (list, tuple)) else [out]
            shapes[name] = [tuple(o.shape[1:]) for o in outs]

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _probe(model: nn.Module, in_channels: int, size: int) -> torch.Tensor:
    parameter = next(model.parameters())
    return torch.zeros(1, in_channels, size, size, device=parameter.device, dtype=parameter.dtype)


def _encoder_name(encoder: nn.Module) -> str:
    return type(getattr(encoder, "backbone", encoder)).__name__


# --- UNet and UNet++ ---------------------------------------------------------------------------


def _check_model(model: object, decoder_type: type, what: str) -> None:
    if not isinstance(model, SegmentationModel) or not isinstance(model.decoder, decoder_type):
        raise ValueError(f"pass {what}, got {type(model).__name__}")


def draw_unet(model: SegmentationModel) -> Figure:
    """The UNet: encoder maps by stride, decoder blocks, skips, the head; 0-channel skips dashed.

    Rows are strides 1, 2, 4, ... (index ``i`` of ``encoder.out_channels`` is stride
    ``2**i``). Every label comes from the model: the encoder's ``out_channels``, each
    block's input, skip and output channels, the head's kernel and classes. A
    transformer-style encoder shows its empty stride-2 placeholder, which the block at
    stride 2 receives as a 0-channel skip, like the image at stride 1.

    Args:
        model: a :class:`segnotes.unet.Unet`, e.g. ``unet("book", MobileNetV2Backbone(), num_classes=2)``.

    Returns:
        The figure (8.8 x 5.4 inches for a depth-5 encoder).

    Raises:
        ValueError: for a model whose decoder is not a :class:`~segnotes.unet.UnetDecoder`.

    Example:
        >>> fig = draw_unet(unet("book", mit("b0"), num_classes=2))  # doctest: +SKIP
    """
    if isinstance(model, SegmentationModel) and isinstance(model.decoder, UnetPlusPlusDecoder):
        raise ValueError("this is a UNet++: draw it with draw_unet_plus_plus(model)")
    _check_model(model, UnetDecoder, "a segnotes.unet.Unet (a SegmentationModel with a UnetDecoder)")
    encoder, decoder, head = model.encoder, model.decoder, model.head
    channels, strides = list(encoder.out_channels), list(encoder.strides)
    depth = len(channels) - 1
    style = getattr(encoder, "style", "cnn")
    dy, bh = 0.6, 0.4
    height = 1.05 + depth * dy + 1.35
    c = _Canvas(8.8, height, f"UNet on {_encoder_name(encoder)} ({style}-style): out_channels = {channels}")
    ex, dx, hx = 1.75, 5.75, 7.85  # column centres: encoder, decoder, head
    ew, dw, hw = 2.4, 2.3, 1.6
    top = height - 1.05
    ys = [top - i * dy for i in range(depth + 1)]
    for x, label in ((ex, "encoder maps"), (dx, "decoder blocks"), (hx, "head")):
        c.text(x, top + 0.5, label, weight="bold")
    enc = []
    for i, (ch, s) in enumerate(zip(channels, strides)):
        if i == 0:
            enc.append(c.box(ex, ys[i], ew, bh, f"[0] image: {ch} ch, 1/1", "tensor"))
        elif ch == 0:
            enc.append(c.box(ex, ys[i], ew, bh, f"[{i}] 0 ch at 1/{s}: placeholder", "empty"))
        else:
            enc.append(c.box(ex, ys[i], ew, bh, f"[{i}] {ch} ch at 1/{s}", "encoder"))
    # the encoder's path: through every real map; around the placeholder
    real = [i for i in range(depth + 1) if i == 0 or channels[i] > 0]
    for a, b in zip(real, real[1:]):
        if b == a + 1:
            c.arrow(enc[a].bottom, enc[b].top)
        else:
            c.arrow(enc[a].left, enc[b].left, rad=0.6)
    dec = {}
    for k, block in enumerate(decoder.blocks):
        i = depth - 1 - k  # block k ends at stride 2**i
        skip = decoder.skip_channels[k]
        cin = block.conv1[0].in_channels - skip
        cout = block.conv2[0].out_channels
        text = f"block {k}: ↑, {cin} + {skip} → {cout} ch"
        dec[i] = c.box(dx, ys[i], dw, bh, text, "decoder")
        # the skip from the encoder map at the same stride
        start, end = enc[i].right, dec[i].left
        mid = (start[0] + end[0]) / 2
        if skip:
            c.arrow(start, end)
            c.text(mid, ys[i] + 0.13, f"concat {skip} ch")
        else:
            c.arrow(start, end, dashed=True, color=ROLE_COLORS["empty"][1])
            c.text(mid, ys[i] + 0.13, "0 ch: empty skip", color="#555555")
        below = enc[depth].right if k == 0 else dec[i + 1].top
        c.arrow(below, dec[i].bottom if k else dec[i].at(0.12, 0))
    conv, up = head[0], head[1]
    k = conv.kernel_size[0]
    scale = int(up.scale_factor) if isinstance(up, nn.Upsample) else 1
    where = f"1/{strides[0]}" + (f", then ×{scale}" if scale > 1 else "")
    text = f"{k}×{k} conv\n{conv.in_channels} → {conv.out_channels} logits\nat {where}"
    hbox = c.box(hx, ys[0], hw, 0.75, text, "head")
    c.arrow(dec[0].right, hbox.left)
    mode = getattr(decoder.blocks[0].upsample, "mode", type(decoder.blocks[0].upsample).__name__)
    c.text(c.width / 2, ys[-1] - 0.5, f"block: upsample ({mode}) to the skip's size, concatenate, two 3×3 conv-BN-ReLU")
    c.legend(["encoder", "decoder", "head", "tensor", "empty"])
    return c.fig


def draw_unet_plus_plus(model: SegmentationModel) -> Figure:
    """The UNet++ node grid: node ``X^{i,j}`` at stride ``2**i``, its upsampled input and its dense skips.

    Column 0 is the encoder's ``out_channels``; a node ``X^{i,j}`` (``j >= 1``) takes the
    upsampled ``X^{i+1,j-1}`` and every node to its left on row ``i``. The main path
    (bold) is the UNet decoder; the nodes of a row with 0 channels (the image's, a
    transformer encoder's placeholder) are not built (dashed), as in the model.

    Args:
        model: a :class:`segnotes.unet.UnetPlusPlus`, e.g. ``unet("book", MobileNetV2Backbone(), nested=True)``.

    Returns:
        The figure (8.9 x 6.1 inches for a depth-5 encoder).

    Raises:
        ValueError: for a model whose decoder is not a :class:`~segnotes.unet.UnetPlusPlusDecoder`.
    """
    _check_model(model, UnetPlusPlusDecoder, "a segnotes.unet.UnetPlusPlus (a model with a UnetPlusPlusDecoder)")
    decoder, encoder = model.decoder, model.encoder
    depth, rows = decoder.depth, decoder.row_channels
    built = {tuple(map(int, name[2:].split("_"))): block for name, block in decoder.blocks.items()}
    dy, bw, bh, step = 0.8, 0.98, 0.42, 1.18
    height = 1.35 + depth * dy + 0.75
    title = f"UNet++ on {_encoder_name(encoder)}: out_channels = {list(encoder.out_channels)}"
    c = _Canvas(8.9, height, title)
    top = height - 1.1
    c.text(
        c.width / 2,
        height - 0.58,
        r"$X^{i,j}$ = block(upsampled $X^{i+1,j-1}$, concat $X^{i,0} \ldots X^{i,j-1}$);  bold: the UNet's main path",
    )
    nodes: dict[tuple[int, int], _Box] = {}
    has_channels = set()
    for i in range(depth + 1):
        y = top - i * dy
        c.text(0.3, y, f"1/{2**i}")
        for j in range(depth + 1 - i):
            x = 1.08 + j * step
            label = f"$X^{{{i},{j}}}$"
            if j == 0:
                ch = encoder.out_channels[i]
                used = rows[i]
                if i == 0:
                    nodes[i, j] = c.box(x, y, bw, bh, f"{label} image", "tensor" if used else "empty")
                else:
                    nodes[i, j] = c.box(x, y, bw, bh, f"{label} {ch}", "encoder" if ch else "empty")
                if used:
                    has_channels.add((i, j))
            elif (i, j) in built:
                ch = built[i, j].conv2[0].out_channels
                nodes[i, j] = c.box(x, y, bw, bh, f"{label} {ch}", "decoder", bold=i + j == depth)
                has_channels.add((i, j))
            else:
                nodes[i, j] = c.box(x, y, bw, bh, label, "empty")
    for i in range(depth):  # the encoder's path down column 0
        c.arrow(nodes[i, 0].at(0.1, 0), nodes[i + 1, 0].at(0.1, 1))
    for (i, j), box in nodes.items():
        if (i, j) not in built:
            continue
        below = nodes[i + 1, j - 1]
        c.arrow(below.at(1, 0.85), box.at(0.2, 0))  # upsampled from the row below
        for k in range(j):
            if (i, k) not in has_channels:
                continue
            if k == j - 1:
                c.arrow(nodes[i, k].right, box.left)
                continue
            # A dense skip that jumps over nodes: an arc above the row. Longer jumps leave further left,
            # arrive further right and rise higher, so the arcs nest instead of crossing.
            gap = j - k
            start, end = nodes[i, k].at(0.55 - 0.15 * (gap - 2), 1), box.at(0.45 + 0.15 * (gap - 2), 1)
            peak = 0.09 + 0.08 * (gap - 2)
            c.arrow(start, end, rad=-2 * peak / (end[0] - start[0]), lw=0.8, color="#7a7a7a")
    conv = model.head[0]
    hx = 1.08 + depth * step + 1.25
    hbox = c.box(hx, top, 1.0, 0.62, f"head\n{conv.in_channels} → {conv.out_channels}", "head")
    c.arrow(nodes[0, depth].right, hbox.left)
    c.legend(["encoder", "decoder", "head", "tensor", "empty"])
    return c.fig


# --- the Mix Transformer ---------------------------------------------------------------------


def _mit_config(model: MixTransformer | MiTConfig | SegFormer) -> MiTConfig:
    if isinstance(model, SegFormer):
        return model.encoder.config
    if isinstance(model, MixTransformer):
        return model.config
    if isinstance(model, MiTConfig):
        return model
    raise ValueError(f"pass a MixTransformer, a MiTConfig or a SegFormer, got {type(model).__name__}")


def _sides(config: MiTConfig, side: int) -> list[int]:
    """Each stage's map side for an input side (the convolution size formula, as MixTransformer.map_sides)."""
    sides = []
    for k, s in zip(config.patch_sizes, config.strides):
        side = (side + 2 * (k // 2) - k) // s + 1
        sides.append(side)
    return sides


def draw_mit_pyramid(model: MixTransformer | MiTConfig | SegFormer, size: int = 512) -> Figure:
    """MiT's four stages: patch embedding, width, depth, heads, reduction and map size per stage.

    Args:
        model: a :class:`~segnotes.mit.MixTransformer`, its :class:`~segnotes.mit.MiTConfig`,
            or a :class:`~segnotes.segformer.SegFormer` (its encoder).
        size: the input side the map sizes are given for (512: the paper's ADE20K crops).

    Returns:
        The figure (9 x 3.95 inches).

    Example:
        >>> fig = draw_mit_pyramid(mit("b0"))  # doctest: +SKIP
    """
    config = _mit_config(model)
    sides = _sides(config, size)
    n = len(config.embed_dims)
    stride, strides = 1, []
    for s in config.strides:
        stride *= s
        strides.append(stride)
    height = 3.95
    c = _Canvas(9.0, height, f"Mix Transformer: {n} stages, embed_dims {list(config.embed_dims)}")
    step, w = 1.95, 1.7
    y, h = 2.3, 1.75
    image = c.box(0.62, y, 0.9, 1.0, f"image\n{config.in_channels} ch\n{_side(size)}", "tensor")
    previous = image
    for i in range(n):
        x = 1.35 + w / 2 + i * step
        k, s, sr = config.patch_sizes[i], config.strides[i], config.sr_ratios[i]
        side, reduced = sides[i], sides[i] // sr
        lines = [
            f"patch {k}×{k}, stride {s}",
            f"C = {config.embed_dims[i]}, {config.depths[i]} blocks",
            f"{config.num_heads[i]} head{'s' if config.num_heads[i] > 1 else ''}",
            f"sr {sr}: R = {sr * sr}",
            f"N = {side}×{side} = {side * side}",
            f"keys, values: {reduced}×{reduced}",
        ]
        box = c.box(x, y, w, h, "\n".join(lines), "encoder")
        c.text(x, y + h / 2 + 0.2, f"stage {i + 1}", weight="bold")
        c.arrow(previous.right, box.left)
        out = c.box(x, 0.85, w * 0.8, 0.36, f"1/{strides[i]}: {config.embed_dims[i]} ch", "tensor")
        if i == 0:
            c.text(0.62, 0.85, "outputs")
        c.arrow(box.bottom, out.top)
        previous = box
    c.text(c.width / 2, 0.35, "R = sr²: keys and values come from the map shrunk by an sr×sr conv with stride sr")
    return c.fig


def draw_mit_block(model: MixTransformer | MiTConfig | SegFormer, stage: int = 0, size: int = 512) -> Figure:
    """One MiT stage in detail: overlapping patch embedding, efficient self-attention with reduction, Mix-FFN.

    Args:
        model: a :class:`~segnotes.mit.MixTransformer`, its :class:`~segnotes.mit.MiTConfig`,
            or a :class:`~segnotes.segformer.SegFormer`.
        stage: which stage, from 0 (the paper's stage 1).
        size: the input side the token counts are given for.

    Returns:
        The figure (9 x 5.75 inches).

    Raises:
        ValueError: a stage the config does not have.

    Example:
        >>> fig = draw_mit_block(mit("b0"), stage=0)  # doctest: +SKIP
    """
    config = _mit_config(model)
    if not 0 <= stage < len(config.embed_dims):
        raise ValueError(f"stage must be in 0..{len(config.embed_dims) - 1} for this config, got {stage}")
    i = stage
    C, L, heads, sr = config.embed_dims[i], config.depths[i], config.num_heads[i], config.sr_ratios[i]
    k, s = config.patch_sizes[i], config.strides[i]
    cin = config.in_channels if i == 0 else config.embed_dims[i - 1]
    side_in = size if i == 0 else _sides(config, size)[i - 1]
    side = _sides(config, size)[i]
    N, reduced = side * side, side // sr
    M = reduced * reduced
    hidden = int(C * config.mlp_ratios[i])
    height = 5.75
    title = f"MiT stage {i + 1} (of {len(config.embed_dims)}) at {_side(size)}: C = {C}, sr = {sr}, R = {sr * sr}"
    c = _Canvas(9.0, height, title)
    # main path, top to bottom
    x, w, bh = 1.95, 2.9, 0.5
    ys = [4.95, 4.2, 3.45, 2.65, 1.85, 1.05]
    inp = c.box(x, ys[0], w, bh, f"{'image' if i == 0 else 'map'}: {cin} ch, {_side(side_in)}", "tensor")
    text = f"overlapping patch embedding\nconv {k}×{k}, stride {s}, pad {k // 2}; LN"
    embed = c.box(x, ys[1], w, bh, text, "encoder")
    tokens = c.box(x, ys[2], w, bh, f"N = {side}×{side} = {N} tokens\nof width C = {C}", "tensor")
    attn = c.box(x, ys[3], w, bh, "LN → efficient self-attention\n→ + residual", "encoder", bold=True)
    ffn = c.box(x, ys[4], w, bh, "LN → Mix-FFN\n→ + residual", "encoder", bold=True)
    norm = c.box(x, ys[5], w, bh, f"LN, tokens → map\n{C} ch, {_side(side)} (1/{_stage_stride(config, i)})", "tensor")
    for a, b in ((inp, embed), (embed, tokens), (tokens, attn), (attn, ffn), (ffn, norm)):
        c.arrow(a.bottom, b.top)
    # the repeated block: a bracket on the left, with the number of blocks
    x0 = x - w / 2 - 0.12
    c.ax.plot([x0 + 0.06, x0, x0, x0 + 0.06], [ys[3] + 0.3, ys[3] + 0.3, ys[4] - 0.3, ys[4] - 0.3], color=_ARROW)
    c.text(x0 - 0.06, (ys[3] + ys[4]) / 2, f"× {L}", ha="right", weight="bold")
    # efficient self-attention, top right: queries from all tokens, keys and values from the reduced map
    cols, ws = (4.38, 6.25, 8.18), (1.4, 1.95, 1.5)
    plural = "s" if heads > 1 else ""
    c.text(6.3, 5.17, f"efficient self-attention, {heads} head{plural} of width {C // heads}", weight="bold")
    xin = c.box(cols[0], 4.7, ws[0], bh, f"N tokens\n{N} × {C}", "tensor")
    q = c.box(cols[1], 4.7, ws[1], bh, f"q: Linear {C} → {C}\nN queries", "encoder")
    text = f"conv {sr}×{sr},\nstride {sr}; LN\nM = {reduced}×{reduced} = {M}"
    red = c.box(cols[0], 3.75, ws[0], 0.75, text, "encoder")
    kv = c.box(cols[1], 3.75, ws[1], bh, f"k, v: Linear {C} → {2 * C}\nM = N / {sr * sr} tokens", "encoder")
    att = c.box(cols[2], 4.25, ws[2], 0.75, f"softmax(q kᵀ/√{C // heads}) v\nN × M =\n{N} × {M}", "encoder")
    proj = c.box(cols[2], 3.2, ws[2], bh, f"proj: Linear\n{C} → {C}", "encoder")
    c.arrow(xin.right, q.left)
    c.arrow(xin.bottom, red.top)
    c.arrow(red.right, kv.left)
    c.arrow(q.right, att.at(0, 0.75))
    c.arrow(kv.right, att.at(0, 0.25))
    c.arrow(att.bottom, proj.top)
    c.arrow(attn.right, xin.left, dashed=True)
    # Mix-FFN, bottom right
    c.text(6.3, 2.35, f"Mix-FFN, hidden width {hidden} = {config.mlp_ratios[i]} C", weight="bold")
    fw, gap, fy = 1.15, 0.22, 1.8
    xs = [3.72 + fw / 2 + j * (fw + gap) for j in range(4)]
    parts = [f"fc1\n{C} → {hidden}", f"3×3 depthwise\n{hidden} groups", "GELU", f"fc2\n{hidden} → {C}"]
    boxes = [c.box(xx, fy, fw, bh, text, "encoder") for xx, text in zip(xs, parts)]
    for a, b in zip(boxes, boxes[1:]):
        c.arrow(a.right, b.left)
    c.arrow(ffn.right, boxes[0].left, dashed=True)
    c.text(
        (xs[0] + xs[-1]) / 2,
        1.1,
        f"the depthwise conv runs on the {_side(side)} map; its zero\npadding tells border tokens where they are",
    )
    c.legend(["encoder", "tensor"], y=0.3)
    return c.fig


def _stage_stride(config: MiTConfig, i: int) -> int:
    stride = 1
    for s in config.strides[: i + 1]:
        stride *= s
    return stride


# --- SegFormer's all-MLP decoder ---------------------------------------------------------------


def draw_all_mlp_decoder(model: SegFormer, size: int = 512) -> Figure:
    """The all-MLP decoder as published (concatenate, then fuse) and folded (fuse per stage, then sum).

    Both paths compute the same function with the same parameters: the fuse's column
    block ``F_i`` that reads stage ``i`` is folded into that stage's Linear ``P_i``, so
    each stage goes to the output width before upsampling and the 1/4-resolution
    concatenation is never built. Widths, map sizes and the FLOPs (2 per multiply-add)
    of the Linear layers and the fuse come from the model.

    Args:
        model: a :class:`~segnotes.segformer.SegFormer`, e.g. ``segformer("b0", num_classes=150)``.
        size: the input side the map sizes are given for.

    Returns:
        The figure (9 x 6.55 inches).

    Raises:
        ValueError: for anything but a SegFormer with an :class:`~segnotes.segformer.AllMLPDecoder`.
    """
    _check_model(model, AllMLPDecoder, "a segnotes.segformer.SegFormer")
    decoder, encoder = model.decoder, model.encoder
    chans, strides, D = decoder.in_channels, encoder.feature_strides, decoder.out_channels
    n = len(chans)
    sides = _sides(encoder.config, size)
    K = model.head.classifier.out_channels
    q = sides[0]
    stage_flops = 2 * sum(side * side * ch * D for side, ch in zip(sides, chans))  # 2 FLOPs per multiply-add
    fuse_flops = 2 * q * q * n * D * D
    height = 6.55
    c = _Canvas(9.0, height, f"SegFormer's all-MLP decoder at {_side(size)}: widths {chans} → D = {D}")
    cols = [0.72, 2.25, 3.75, 5.12, 6.5, 8.1]  # centres: map, Linear, upsample, merge, fuse/BN, head
    widths = [1.3, 1.4, 1.25, 1.1, 1.3, 1.45]
    dy, bh = 0.55, 0.46
    for panel, (top, folded) in enumerate(((5.45, False), (2.65, True))):
        gflops = (stage_flops if folded else stage_flops + fuse_flops) / 1e9
        if folded:
            header = f"folded (fold=True): the fuse folded into each stage's Linear; {gflops:.2f} GFLOPs"
        else:
            header = f"as published (fold=False): upsample, concat, then fuse; {gflops:.2f} GFLOPs"
        c.text(c.width / 2, top + 0.45, header, weight="bold")
        ys = [top - j * dy for j in range(n)]
        ups = []
        for j in range(n):
            side, ch = sides[j], chans[j]
            m = c.box(cols[0], ys[j], widths[0], bh, f"stage {j + 1}: {ch} ch\n{_side(side)}", "encoder")
            lin = (
                f"Linear {ch} → {D}\n$W_{j + 1} = F_{j + 1} P_{j + 1}$" if folded else f"Linear {ch} → {D}\n$P_{j + 1}$"
            )
            p = c.box(cols[1], ys[j], widths[1], bh, lin, "decoder")
            factor = strides[j] // strides[0]
            up_text = f"×{factor} bilinear\n→ {_side(q)}" if factor > 1 else f"kept at\n{_side(q)}"
            u = c.box(cols[2], ys[j], widths[2], bh, up_text, "decoder")
            c.arrow(m.right, p.left)
            c.arrow(p.right, u.left)
            ups.append(u)
        mid = (ys[0] + ys[-1]) / 2
        span = ys[0] - ys[-1] + bh
        if folded:
            merge = c.box(cols[3], mid, widths[3], 1.0, f"sum\n+ Σ $F_i b_i$\n{D} ch", "decoder")
            fuse = c.box(cols[4], mid, widths[4], 0.8, f"BN, ReLU,\ndropout\n{D} ch", "decoder")
        else:
            merge = c.box(cols[3], mid, widths[3], span, f"concat\n{n} × {D}\n= {n * D} ch\ndeepest\nfirst", "decoder")
            text = f"fuse 1×1\n{n * D} → {D}\n$[F_{n} \\dots F_1]$\nBN, ReLU,\ndropout"
            fuse = c.box(cols[4], mid, widths[4], span, text, "decoder")
        for u in ups:
            c.arrow(u.right, (merge.x - widths[3] / 2, u.y if not folded else mid + (u.y - mid) * 0.35))
        c.arrow(merge.right, fuse.left)
        head = c.box(cols[5], mid, widths[5], 0.8, f"classifier 1×1\n{D} → {K}\n{_side(q)} (1/{strides[0]})", "head")
        c.arrow(fuse.right, head.left)
        if panel == 0:
            c.ax.plot([0.15, c.width - 0.15], [top - n * dy + 0.05] * 2, color="#bbbbbb", lw=1)
    note = "GFLOPs of the Linears and the fuse (2 per multiply-add); $F_i$: the fuse's columns that read stage i"
    c.text(c.width / 2, 0.6, note)
    c.legend(["encoder", "decoder", "head"], y=0.22)
    return c.fig


# --- SETR's three heads and DPT's reassembly ----------------------------------------------------


def _vit_size(backbone: nn.Module, size: int | None) -> int:
    if size is not None:
        return size
    img = getattr(backbone.vit.patch_embed, "img_size", None)
    return int(img[0]) if img else 16 * backbone.patch_size


def draw_setr(
    naive: SegmentationModel, pup: SegmentationModel, mla: SegmentationModel, size: int | None = None
) -> Figure:
    """SETR's three heads side by side, with the channels and resolution after every step.

    The resolutions are measured: each model runs once on a ``size`` x ``size`` input
    (eval mode, no gradients) with forward hooks on its layers.

    Args:
        naive, pup, mla: :class:`~segnotes.setr.SetrNaive`, :class:`~segnotes.setr.SetrPup`
            and :class:`~segnotes.setr.SetrMla` models (on ViTs of the same shape).
        size: the input side; default the ViT's ``img_size`` (32 for the book's preset).

    Returns:
        The figure (9 x 6.5 inches).

    Raises:
        ValueError: a model whose decoder is not the head its argument names.
    """
    _check_model(naive, NaiveDecoder, "a SetrNaive as naive")
    _check_model(pup, PupDecoder, "a SetrPup as pup")
    _check_model(mla, MlaDecoder, "a SetrMla as mla")
    size = _vit_size(naive.encoder, size)
    p, C = naive.encoder.patch_size, naive.encoder.embed_dim
    depth = len(naive.encoder.vit.blocks)

    def fmt(shape) -> str:
        return f"{shape[0]} × {_side(shape)}"

    height = 6.5
    c = _Canvas(9.0, height, f"SETR's three heads on a {depth}-block ViT, {_side(size)} input")
    g = size // p
    vit_box = c.box(
        c.width / 2,
        5.65,
        8.4,
        0.42,
        f"ViT: {p}×{p} patches → {_side(g)} tokens of width {C}, {depth} blocks",
        "encoder",
    )
    bh, dy = 0.5, 0.68
    # SETR-Naive
    s = _record(
        naive,
        {"enc": naive.encoder, "dec": naive.decoder, "cls": naive.head[0], "up": naive.head[1]},
        _probe(naive, naive.in_channels, size),
    )
    steps = [
        (f"last block, normed\n{fmt(s['enc'][0])}", "tensor"),
        (f"1×1 conv-BN-ReLU\n{fmt(s['dec'][0])}", "decoder"),
        (f"1×1 conv\n{fmt(s['cls'][0])}", "head"),
    ]
    up = naive.head[1]
    if isinstance(up, nn.Upsample):
        steps.append((f"{up.mode} ×{int(up.scale_factor)}\n{fmt(s['up'][0])}", "head"))
    _column(c, "SETR-Naive", 1.15, 4.55, 1.9, bh, dy, steps, vit_box)
    # SETR-PUP
    layers = list(pup.decoder.stages)
    mods = {"enc": pup.encoder, "cls": pup.head[0]} | {f"s{j}": m for j, m in enumerate(layers)}
    s = _record(pup, mods, _probe(pup, pup.in_channels, size))
    steps = [(f"last block, normed\n{fmt(s['enc'][0])}", "tensor")]
    for j in range(0, len(layers), 2):
        before, after, up = s[f"s{j}"][0], s[f"s{j + 1}"][0], layers[j + 1]
        text = f"3×3 conv-BN-ReLU\n{up.mode} ×{int(up.scale_factor)}\n{before[0]} × {_side(before)} → {_side(after)}"
        steps.append((text, "decoder"))
    steps.append((f"1×1 conv\n{fmt(s['cls'][0])}", "head"))
    _column(c, "SETR-PUP", 3.35, 4.5, 2.1, 0.62, 0.8, steps, vit_box)
    # SETR-MLA
    dec = mla.decoder
    L = dec.num_levels
    mods = {"enc": mla.encoder, "cls": mla.head[0], "up": mla.head[1], "dec": dec}
    for j in range(L):
        mods |= {f"p{j}": dec.project[j], f"a{j}": dec.aggregate[j], f"t{j}": dec.streams[j]}
    s = _record(mla, mods, _probe(mla, mla.in_channels, size))
    x0, sw, sg = 4.95, 0.9, 0.1
    xs = [x0 + sw / 2 + j * (sw + sg) for j in range(L)]
    c.text((xs[0] + xs[-1]) / 2, 5.1, "SETR-MLA", weight="bold")
    indices = mla.encoder.indices
    rows = [4.55, 3.85, 3.3, 2.75, 2.05]
    sums = []
    for j in range(L):
        b = c.box(xs[j], rows[0], sw, bh, f"block {indices[j]}\n{fmt(s['enc'][j])}", "tensor")
        c.arrow((xs[j], vit_box.y - 0.21), b.top)
        pr = c.box(xs[j], rows[1], sw, bh, f"1×1\n→ {s['p' + str(j)][0][0]}", "decoder")
        c.arrow(b.bottom, pr.top)
        sums.append(c.circle(xs[j], rows[2]))
        c.arrow(pr.bottom, sums[j].top)
        t = s["t" + str(j)][0]
        st = c.box(xs[j], rows[3], sw, bh, f"three 3×3\n→ {t[0]}", "decoder")
        c.arrow(sums[j].bottom, st.top)
        up = dec.streams[j][-1].scale_factor
        u = c.box(xs[j], rows[4], sw, bh, f"×{int(up)}\n{fmt(t)}", "decoder")
        c.arrow(st.bottom, u.top)
    for j in range(L - 1, 0, -1):  # top-down: deep into shallow
        c.arrow(sums[j].left, sums[j - 1].right)
    cat = c.box((xs[0] + xs[-1]) / 2, 1.35, 3.9, 0.42, f"concat, shallow first: {fmt(s['dec'][0])}", "decoder")
    for xx in xs:
        c.arrow((xx, rows[4] - bh / 2), (xx, cat.y + 0.21))
    up = mla.head[1]
    last = f"1×1 conv: {fmt(s['cls'][0])}"
    if isinstance(up, nn.Upsample):
        last += f", ×{int(up.scale_factor)}: {_side(s['up'][0])}"
    hb = c.box(cat.x, 0.8, 3.9, 0.42, last, "head")
    c.arrow(cat.bottom, hb.top)
    c.text(
        2.25,
        1.0,
        "MLA: blocks projected, summed deep → shallow (+),\n"
        "refined by three 3×3 convs (the last halves\nthe width), upsampled per stream, concatenated",
    )
    c.legend(["encoder", "decoder", "head", "tensor"], y=0.22)
    return c.fig


def _column(c: _Canvas, title: str, x: float, top: float, w: float, bh: float, dy: float, steps, source: _Box) -> None:
    """A titled column of boxes ``steps`` [(text, role)] from ``top`` down, chained by arrows, fed from ``source``."""
    c.text(x - w / 2, 5.1, title, ha="left", weight="bold")
    feed = x + 0.3 * w  # the arrow from the source enters right of the title
    previous = None
    for j, (text, role) in enumerate(steps):
        box = c.box(x, top - j * dy, w, bh, text, role)
        if previous is None:
            c.arrow((feed, source.y - source.h / 2), (feed, box.y + bh / 2))
        else:
            c.arrow(previous.bottom, box.top)
        previous = box


def _pyramid(model: nn.Module) -> ViTPyramid:
    for candidate in (
        model,
        getattr(model, "backbone", None),
        getattr(getattr(model, "encoder", None), "backbone", None),
    ):
        if isinstance(candidate, ViTPyramid):
            return candidate
    raise ValueError(
        "pass a segnotes.dpt.ViTPyramid, an Encoder(ViTPyramid(...)) or a model built on one, "
        f"got {type(model).__name__}"
    )


def _resample_text(module: nn.Module) -> str:
    """What :func:`segnotes.dpt.resample` chose, from the layer itself."""
    if isinstance(module, nn.ConvTranspose2d):
        f = module.stride[0]
        return f"transposed conv\n{f}×{f}, stride {f}: ↑{f}"
    if isinstance(module, nn.Conv2d):
        k, f = module.kernel_size[0], module.stride[0]
        return f"{k}×{k} conv\nstride {f}: ↓{f}"
    return "identity\n(stride kept)"


def draw_dpt(model: nn.Module, size: int | None = None) -> Figure:
    """DPT's reassembly: four blocks' tokens -> read-out -> map -> 1x1 conv -> resample -> fusion.

    Block ``i``'s tokens (prefix + patches) lose their prefix by the read-out, fold into a
    map at stride ``p``, are projected by a 1x1 convolution to the level's width and
    resampled to stride ``4 * 2**i``; the four levels are fused deep to shallow. Sizes
    are measured with forward hooks on a ``size`` x ``size`` input.

    Args:
        model: a :class:`~segnotes.dpt.ViTPyramid`, an ``Encoder(ViTPyramid(...))`` or a
            model whose encoder is one (e.g. ``Unet(Encoder(ViTPyramid(vit)), ...)``).
        size: the input side; default the ViT's ``img_size`` (a multiple of 32 and of p).

    Returns:
        The figure (9 x 4.95 inches).

    Raises:
        ValueError: a model without a ViTPyramid.
    """
    pyramid = _pyramid(model)
    backbone = pyramid.backbone
    size = _vit_size(backbone, size)
    p, C, prefix = backbone.patch_size, backbone.embed_dim, backbone.num_prefix_tokens
    mods = {"vit": backbone} | {f"c{j}": r[0] for j, r in enumerate(pyramid.reassemble)}
    mods |= {f"r{j}": r[1] for j, r in enumerate(pyramid.reassemble)}
    s = _record(pyramid, mods, _probe(pyramid, pyramid.in_channels, size))
    g = size // p
    height = 4.95
    out_channels = Encoder(pyramid, pyramid.in_channels).out_channels
    c = _Canvas(9.0, height, f"DPT's reassembly of a {len(backbone.vit.blocks)}-block ViT, {_side(size)} input")
    cols = [0.8, 2.4, 3.86, 5.35, 6.8, 8.2]
    widths = [1.45, 1.4, 1.15, 1.45, 1.15, 1.2]
    heads = ["ViT block", "read-out, reshape", "project", "resample", "level", "fusion"]
    top, dy, bh = 3.7, 0.78, 0.52
    for x, label in zip(cols, heads):
        c.text(x, top + 0.5, label, weight="bold")
    fusion = []
    for j in range(len(pyramid.reassemble)):
        y = top - j * dy
        b = c.box(cols[0], y, widths[0], bh, f"block {backbone.indices[j]}\n({prefix} + {g * g}) × {C}", "encoder")
        mode = backbone.readouts[j].mode
        r = c.box(cols[1], y, widths[1], bh, f"read-out: {mode}\n→ {C} × {_side(s['vit'][j])}", "encoder")
        conv = s[f"c{j}"][0]
        pr = c.box(cols[2], y, widths[2], bh, f"1×1 conv\n{C} → {conv[0]}", "encoder")
        rs = c.box(cols[3], y, widths[3], bh, _resample_text(pyramid.reassemble[j][1]), "encoder")
        out = s[f"r{j}"][0]
        stride = size // out[-1]
        lv = c.box(cols[4], y, widths[4], bh, f"1/{stride}\n{out[0]} × {_side(out)}", "tensor")
        last = j == len(pyramid.reassemble) - 1
        f = c.box(cols[5], y, widths[5], bh, f"1/{stride}: start" if last else f"↑2, fuse\nat 1/{stride}", "decoder")
        for a, z in ((b, r), (r, pr), (pr, rs), (rs, lv), (lv, f)):
            c.arrow(a.right, z.left)
        fusion.append(f)
    for j in range(len(fusion) - 1, 0, -1):
        c.arrow(fusion[j].top, fusion[j - 1].bottom)
    c.text(
        c.width / 2,
        top - len(fusion) * dy + 0.1,
        f"Encoder(ViTPyramid) out_channels = {out_channels}: the book fuses with the UNet decoder\n"
        "of chapter 2 (upsample ×2, concatenate, convolve); DPT with its residual fusion blocks",
    )
    c.legend(["encoder", "decoder", "tensor"], y=0.22)
    return c.fig


# --- all diagrams of the book --------------------------------------------------------------------


def _book_diagrams() -> dict[str, Callable[[], Figure]]:
    """File stem -> a function that draws the diagram of the book's model.

    The models are built on the meta device: their shapes are all a diagram needs, and
    nothing is allocated or initialised (the forward passes that measure sizes run there too).
    """
    from .mit import mit
    from .segformer import segformer
    from .setr import SetrMla, SetrNaive, SetrPup
    from .unet import MobileNetV2Backbone, unet
    from .vit import vit

    def book_vit():
        return vit("book", num_classes=0)

    drawings = {
        "unet_mobilenetv2": lambda: draw_unet(unet("book", MobileNetV2Backbone(), num_classes=2)),
        "unet_mit": lambda: draw_unet(unet("book", mit("b0"), num_classes=2)),
        "unetpp_mobilenetv2": lambda: draw_unet_plus_plus(
            unet("book", MobileNetV2Backbone(), nested=True, num_classes=2)
        ),
        "mit_pyramid": lambda: draw_mit_pyramid(mit("b0")),
        "mit_block": lambda: draw_mit_block(mit("b0"), stage=0),
        "segformer_decoder": lambda: draw_all_mlp_decoder(segformer("b0", num_classes=150)),
        "setr_heads": lambda: draw_setr(
            SetrNaive(book_vit(), 2), SetrPup(book_vit(), 2), SetrMla(book_vit(), 2, channels=16)
        ),
        "dpt_reassembly": lambda: draw_dpt(ViTPyramid(book_vit())),
        # DPT's own case: 16x16 patches, so two levels go up (transposed convolutions), one stays, one goes down
        "dpt_reassembly_vit_tiny": lambda: draw_dpt(ViTPyramid(vit("tiny", num_classes=0)), size=256),
    }

    def on_meta(draw: Callable[[], Figure]) -> Callable[[], Figure]:
        def run() -> Figure:
            with torch.device("meta"):
                return draw()

        return run

    return {name: on_meta(draw) for name, draw in drawings.items()}


def draw_all(outdir: str | Path) -> list[Path]:
    """Draw every diagram of the book's models and write one PNG each into ``outdir``.

    Args:
        outdir: the folder to write to (created if missing), e.g. ``"book/figures"``.

    Returns:
        The paths written, one ``<name>.png`` per diagram.

    Example:
        >>> draw_all("book/figures")  # doctest: +SKIP
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in _book_diagrams().items():
        fig = draw()
        try:
            paths.append(save_png(fig, outdir / f"{name}.png"))
        finally:
            plt.close(fig)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m segnotes.diagrams OUTDIR")
    for written in draw_all(sys.argv[1]):
        print(written)
