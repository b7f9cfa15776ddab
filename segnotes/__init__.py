"""segnotes: the companion package of the segnotes book.

Every chapter starts with ``device = segnotes.setup()``, which makes the chapter's
numbers reproducible (seeds, thread count) and picks the device. The modules are
named after what they teach; the shared ones come first, and no shared module
imports a chapter module:

=================  ==========================================================
``model``          the contract: ``SegmentationModel`` = encoder -> decoder -> head
``encoders``       chapter 1: the SMP ``out_channels`` convention, ``get_encoder``
``data``           synthetic shapes with difficulty knobs, bundled photos
``nuclei``         real microscopy tiles and masks (chapters 2, 3 and 7)
``train``          ``fit`` / ``fit_seeds`` / ``evaluate``, mIoU and boundary IoU
``viz``            image/mask grids, feature maps, training curves
``inspect``        ``trace`` (shapes, strides, channels) and ``show_source``
``unet``           chapter 2: MobileNetV2 skips, the UNet and UNet++ decoders
``upsample``       chapter 3: interpolation and learnable upsamplers
``mit``            chapter 4: the Mix Transformer encoder
``segformer``      chapter 5: the all-MLP decoder and SegFormer
``vit``            chapter 6: a plain ViT, its tokens and intermediate blocks
``setr``           chapter 6: SETR's heads (naive, progressive, multi-level)
``dpt``            chapter 6: DPT's reassembly of a ViT into a pyramid
``cost``           chapter 7: parameters, FLOPs, memory, latency
``erf``            chapter 7: effective receptive fields
=================  ==========================================================
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["setup", "__version__"]
__version__ = "0.1.0"


def setup(seed: int = 0, threads: int | None = 2, figure_dpi: int = 100) -> torch.device:
    """Make a chapter reproducible and return the device to run it on.

    Seeds Python, NumPy and torch, fixes torch's intra-op thread count (results of
    float reductions depend on it), asks cuDNN for deterministic kernels and GPUs for
    exact float32 (no TF32), and sets a figure resolution legible at page width.

    Args:
        seed: seed for ``random``, ``numpy`` and ``torch`` (all devices).
        threads: torch CPU threads; ``None`` keeps torch's default. The book's
            stored outputs are produced with 2 (CI machines have 2 cores).
        figure_dpi: matplotlib's inline figure resolution (100: legible at page width, small files).

    Returns:
        ``cuda`` when a GPU is present (Colab), otherwise ``cpu``.

    Example:
        >>> device = setup()
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads}")
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # Exact float32 matmuls and convolutions on GPUs too (TF32 rounds to 10 mantissa bits): the chapters'
    # equivalence checks (folded vs literal, conv vs Linear) must hold on Colab as on a CPU.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    import matplotlib

    matplotlib.rcParams["figure.dpi"] = figure_dpi
    matplotlib.rcParams["savefig.dpi"] = figure_dpi
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
