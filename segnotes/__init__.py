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
``train``          ``fit`` / ``fit_seeds`` / ``evaluate``, mIoU and boundary IoU, baselines
``viz``            image/mask grids, feature maps, training curves
``inspect``        ``trace`` (shapes, strides, channels) and ``show_source``
``unet``           chapter 2: MobileNetV2 skips, the UNet and UNet++ decoders
``deeplab``        DeepLabV3+: the worked example of adding a model (README)
``upsample``       chapter 3: interpolation and learnable upsamplers
``probes``         chapters 2 and 3: stride ceilings, checkerboard energy, skip ablation
``mit``            chapter 4: the Mix Transformer encoder
``segformer``      chapter 5: the all-MLP decoder and SegFormer
``vit``            chapter 6: a plain ViT, its tokens and intermediate blocks
``setr``           chapter 6: SETR's heads (naive, progressive, multi-level)
``dpt``            chapter 6: DPT's reassembly of a ViT into a pyramid
``resolution``     chapter 6: where a model decides, and the IoU ceiling of a stride
``cost``           chapter 7: parameters, FLOPs, memory, latency
``erf``            chapter 7: effective receptive fields
``diagrams``       every architecture drawn from the model itself (all chapters)
=================  ==========================================================
"""

from __future__ import annotations

import math
import numbers
import os
import random
import warnings

import numpy as np
import torch

__all__ = ["setup", "__version__"]

# matplotlib 3.10.0 (Colab's in 2026) calls pyparsing's camelCase API, which pyparsing >= 3.3 deprecates
# with a UserWarning at `import matplotlib`: every chapter's import cell would print five of them to
# stderr. The locked matplotlib (3.11) uses the new names; for older ones, hide exactly these, before matplotlib loads.
warnings.filterwarnings("ignore", message=r"(In .*: )?'\w+' deprecated - use '\w+'", category=UserWarning)
__version__ = "0.1.0"


def setup(seed: int = 0, threads: int | None = 2, figure_dpi: int = 100, deterministic: bool = True) -> torch.device:
    """Make a chapter reproducible and return the device to run it on.

    Seeds Python, NumPy and torch, fixes torch's intra-op thread count (results of
    float reductions depend on it), asks GPUs for exact float32 (no TF32) and, with
    ``deterministic``, for deterministic kernels, and sets a figure resolution legible
    at page width. Every argument is checked before any global state changes.

    What it cannot fix:

    * ``PYTHONHASHSEED`` (the order of a ``set`` of strings) is read when Python
      starts; set it in the environment before starting Jupyter if a result depends
      on it (nothing in segnotes does).
    * On a GPU, ``deterministic=True`` also turns on
      ``torch.use_deterministic_algorithms(True, warn_only=True)`` (and
      ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for cuBLAS, if unset; cuBLAS reads it
      at its first call, so call ``setup`` before any CUDA work): operations with a
      deterministic implementation use it. The few without one still run
      nondeterministically, each with one warning per session; the training loop
      meets two: the backward pass of bilinear ``F.interpolate`` (decoders, and the
      loss when logits are smaller than the mask) and ``NLLLoss`` (inside
      cross-entropy). GPU training is therefore repeatable only up to the float
      rounding of their atomic additions; the book's checked claims keep a margin
      for it. On a CPU, the same seed, thread count and torch build give the same
      numbers, and nothing else is changed (no warning either).

    Args:
        seed: seed for ``random``, ``numpy`` and ``torch`` (all devices), 0 .. 2**32 - 1.
        threads: torch CPU threads; ``None`` keeps torch's default. The book's
            stored outputs are produced with 2 (CI machines have 2 cores).
        figure_dpi: matplotlib's inline figure resolution (100: legible at page width, small files).
        deterministic: deterministic cuDNN (and, on a GPU, the deterministic
            algorithms above); ``False`` lets cuDNN pick the fastest kernels.

    Returns:
        ``cuda`` when a GPU is present (Colab), otherwise ``cpu``.

    Example:
        >>> device = setup()
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in 0 .. 2**32 - 1 (NumPy's range), got {seed!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    if isinstance(figure_dpi, bool) or not isinstance(figure_dpi, numbers.Real) or not 0 < figure_dpi < math.inf:
        raise ValueError(f"figure_dpi must be a positive number, got {figure_dpi!r}")
    if not isinstance(deterministic, bool):
        raise ValueError(f"deterministic must be True or False, got {deterministic!r}")
    cuda = torch.cuda.is_available()
    if threads is not None:
        torch.set_num_threads(int(threads))
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))  # seeds CUDA too
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    if cuda:  # the CPU path stays as it was: no global switch, no warning
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        # One line per operation that has no deterministic kernel, not one per call site.
        warnings.filterwarnings("once", message=".*does not have a deterministic implementation")
    # Exact float32 matmuls and convolutions on GPUs too (TF32 rounds to 10 mantissa bits): the chapters'
    # equivalence checks (folded vs literal, conv vs Linear) must hold on Colab as on a CPU.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    import matplotlib

    matplotlib.rcParams["figure.dpi"] = figure_dpi
    matplotlib.rcParams["savefig.dpi"] = figure_dpi
    return torch.device("cuda" if cuda else "cpu")
