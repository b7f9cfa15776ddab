"""Benchmark-only inference tricks (imported by the benchmark scripts, not a benchmark itself).

:func:`fuse_for_inference` folds every BatchNorm into the convolution before it and
switches to channels_last: the speed a deployed model can have, measured next to the
eager models the book teaches. It lives here, not in ``segnotes``, because no chapter
teaches it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fuse_for_inference"]


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the preceding conv, in channels_last.

    Folding computes ``conv(x) * gamma / sqrt(var + eps) + (beta - mean * gamma / sqrt(var + eps))``
    as one convolution with scaled weights and a bias: one pass over the feature map
    instead of two. channels_last (NHWC) is the layout oneDNN's CPU convolutions prefer.
    The outputs equal the original model's up to float rounding (about 1e-6). Only a
    ``Conv2d`` directly followed by a ``BatchNorm2d`` in the same container is folded.

    Args:
        model: any module; it is not modified.

    Returns:
        The fused copy, in eval mode.
    """
    fused = copy.deepcopy(model).eval()

    def fold(module: nn.Module) -> None:
        children = list(module.named_children())
        for (a, conv), (b, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, a, nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
                setattr(module, b, nn.Identity())
        for child in module.children():
            fold(child)

    fold(fused)
    return fused.to(memory_format=torch.channels_last)
