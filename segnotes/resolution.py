"""Chapter 6: output resolution, measured: where a model's last non-linear layer runs, and what that allows.

A segmentation model's logits can only be as sharp as the finest map on which it still
computes something non-linear. Everything after the last activation is linear and acts
pixel by pixel (1x1 convolutions, batch norm in eval mode, bilinear upsampling), so
logits upsampled from stride ``s`` are a bilinear interpolation of a stride-``s`` logit map:

* :func:`map_sizes` records, with forward hooks, the spatial size of every layer's
  output (e.g. of every 3x3 convolution of a decoder);
* :func:`decision_stride` is the stride of the finest map a non-linear activation
  (ReLU, GELU, ...) writes: the resolution at which a model makes its decisions;
* :func:`block_ceiling` is the best IoU that *any* predictor constant on ``s x s``
  blocks can reach on a set of masks, computed exactly, without training;
* :func:`bilinear_fit` is the IoU that stride-``s`` logits, bilinearly upsampled, reach
  when they are fitted directly to the masks: what a head that decides at stride ``s``
  can draw at best (approximately: a convex fit, then the best threshold).

On thin structures (:class:`segnotes.data.Lines`) the ceiling falls fast with the
stride: a 1-pixel line covers at most a quarter of a 4x4 block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .model import check_positive, eval_mode

__all__ = ["NONLINEAR", "map_sizes", "decision_stride", "block_ceiling", "bilinear_fit"]

# Activations that make a layer non-linear. Batch norm in eval mode, convolutions, linear
# layers and interpolation are linear, so they do not count.
NONLINEAR: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.Tanh,
)


def map_sizes(
    model: nn.Module, x: torch.Tensor, types: Sequence[type[nn.Module]] = (nn.Conv2d,)
) -> dict[str, tuple[int, int]]:
    """The (h, w) of the output map of every submodule of ``types``, in the order they run.

    Forward hooks record the output of each matching submodule during one forward pass
    of ``model`` on ``x`` (in eval mode, without gradients). Outputs that are not
    (B, C, h, w) maps, e.g. the (B, N, C) tokens inside a ViT, are left out.

    Args:
        model: any module.
        x: an input batch for ``model``.
        types: the module classes to record, e.g. ``(nn.Conv2d,)`` or :data:`NONLINEAR`.

    Returns:
        ``{qualified module name: (h, w)}``; a module called twice keeps its last size.

    Example:
        >>> map_sizes(nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.zeros(1, 3, 8, 8))
        {'': (4, 4)}
    """
    types = tuple(types)
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise ValueError(f"types must be nn.Module classes, e.g. (nn.Conv2d,), got {types!r}")
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                sizes[name] = (int(output.shape[-2]), int(output.shape[-1]))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, types)]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def decision_stride(model: nn.Module, x: torch.Tensor) -> int:
    """The stride of the finest map that a non-linear activation of ``model`` writes.

    After that activation only linear, per-pixel layers (1x1 convolutions, batch norm in
    eval mode) and bilinear upsampling follow in the SETR heads, and those commute: the
    logits are a bilinear upsampling of logits computed at this stride.

    Args:
        model: a segmentation model whose activations are modules in :data:`NONLINEAR`.
        x: images (B, C, H, W).

    Returns:
        ``H // h`` for the largest ``h`` among the activations' output maps.

    Example:
        >>> down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        >>> net = nn.Sequential(down, nn.ReLU(), nn.Upsample(scale_factor=2))
        >>> decision_stride(net, torch.zeros(1, 3, 8, 8))
        2
    """
    sizes = map_sizes(model, x, NONLINEAR)
    if not sizes:
        raise ValueError(
            "no activation module of segnotes.resolution.NONLINEAR wrote a (B, C, h, w) map; "
            "this measure needs activations as modules (nn.ReLU, nn.GELU, ...), not F.relu calls"
        )
    return x.shape[-2] // max(h for h, _ in sizes.values())


def block_ceiling(masks: torch.Tensor, stride: int, target: int = 1) -> float:
    """The best IoU of class ``target`` of any predictor constant on s x s blocks.

    Such a predictor labels each ``stride x stride`` block all ``target`` or all
    something else (a stride-s map upsampled with nearest neighbours). A block with
    ``a`` target pixels adds ``a`` to the intersection and ``s*s - a`` to the union,
    so the best choice takes the blocks with the most target pixels first: the
    ceiling is the best IoU over how many blocks are taken, over all masks together
    (like the dataset IoU of :func:`segnotes.train.evaluate`). No training: exact.

    Args:
        masks: (N, H, W) integer class masks, H and W multiples of ``stride``.
        stride: block side s (1 gives 1.0 whenever ``target`` occurs).
        target: the class whose IoU is bounded.

    Returns:
        The ceiling in [0, 1] (``nan`` if ``target`` occurs in no mask).

    Example:
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> masks[0, 1, :] = 1  # a horizontal 1-pixel line
        >>> block_ceiling(masks, 2)
        0.5
    """
    _check_masks(masks, stride)
    N, H, W = masks.shape
    hits = (masks == target).to(torch.float64)
    total = hits.sum()  # |T|, the target pixels
    if total == 0:
        return float("nan")
    blocks = hits.reshape(N, H // stride, stride, W // stride, stride)
    a = blocks.sum((2, 4)).flatten().sort(descending=True).values  # most first
    intersection = a.cumsum(0)  # taking the k best blocks, k = 1, 2, ...
    union = total + (stride * stride - a).cumsum(0)  # |T| + their wrong pixels
    return float((intersection / union).max())


def _check_masks(masks: torch.Tensor, stride: int) -> None:
    check_positive("stride", stride)
    if masks.ndim != 3 or masks.dtype.is_floating_point:
        raise ValueError(f"masks must be (N, H, W) integer class indices, got {masks.dtype} {tuple(masks.shape)}")
    if masks.shape[1] % stride or masks.shape[2] % stride:
        raise ValueError(
            f"mask size {masks.shape[1]}x{masks.shape[2]} is not a multiple of stride {stride}; "
            "crop or pad the masks first"
        )


def _best_threshold_iou(scores: torch.Tensor, hits: torch.Tensor) -> float:
    """The highest IoU of ``scores > t`` against the boolean ``hits`` over every threshold t."""
    ranked = hits.flatten()[scores.flatten().argsort(descending=True)].to(torch.float64)
    intersection = ranked.cumsum(0)
    union = hits.sum() + (1 - ranked).cumsum(0)
    return float((intersection / union).max())


def bilinear_fit(masks: torch.Tensor, stride: int, target: int = 1, steps: int = 300, pos_weight: float = 4.0) -> float:
    """The IoU of class ``target`` that bilinearly upsampled stride-``s`` logits reach when fitted to ``masks``.

    The SETR heads end in logits at a stride ``s`` that are bilinearly upsampled.
    Unlike a block predictor (:func:`block_ceiling`), bilinear logits can put an edge
    inside a block, but only where the interpolation between the ``s``-spaced logits
    crosses zero. This fits one free logit per ``s x s`` cell of every mask, with the
    answer in hand: Adam on a weighted binary cross-entropy, which is convex in the
    logits because the upsampling is linear, then the threshold with the best IoU over
    all masks together. No network can do better than the best such logits, so the
    result approximates the ceiling of a head that decides at stride ``s`` (from below:
    the fit is not IoU itself).

    Args:
        masks: (N, H, W) integer class masks, H and W multiples of ``stride``.
        stride: ``s``; 1 gives 1.0.
        target: the class whose IoU is fitted.
        steps: Adam steps (learning rate 0.3).
        pos_weight: weight of the ``target`` pixels in the cross-entropy (they are rare).

    Returns:
        The IoU in [0, 1] (``nan`` if ``target`` occurs in no mask).

    Example:
        >>> masks = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> masks[0, 4, :] = 1
        >>> bilinear_fit(masks, 2) > block_ceiling(masks, 2)
        True
    """
    _check_masks(masks, stride)
    check_positive("steps", steps)
    hits = masks == target
    if not hits.any():
        return float("nan")
    N, H, W = masks.shape
    truth = hits.float()[:, None]  # (N, 1, H, W)
    logits = torch.zeros(N, 1, H // stride, W // stride, requires_grad=True)  # one per s x s cell
    optimizer = torch.optim.Adam([logits], lr=0.3)
    weight = torch.tensor(float(pos_weight))
    with torch.enable_grad():
        for _ in range(steps):
            upsampled = F.interpolate(logits, scale_factor=stride, mode="bilinear")  # (N, 1, H, W)
            loss = F.binary_cross_entropy_with_logits(upsampled, truth, pos_weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        upsampled = F.interpolate(logits, scale_factor=stride, mode="bilinear")[:, 0]
    return _best_threshold_iou(upsampled, hits)
