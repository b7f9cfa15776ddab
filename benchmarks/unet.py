"""UNet-MobileNetV2 inference latency: segnotes vs segmentation_models.pytorch (SMP).

Same configuration (512x512, batch 1, CPU, 2 threads, 1 class, 3x3 head as SMP) and the
same weights: SMP's state dict is loaded into segnotes' ``Unet`` through
``convert_smp_state_dict``. Rows, timed in interleaved rounds in one process:

* SMP eager, segnotes eager (outputs identical to SMP's, bit for bit);
* segnotes through ``fuse_for_inference`` (``benchmarks/_fusion.py``: BatchNorm folded into
  the convolutions, channels_last): outputs equal to SMP's up to float rounding (max abs
  difference printed);
* one row per ``decoder_interpolation`` mode, all with the fused fast path.

Run: ``.venv/bin/python benchmarks/unet.py`` (prints a markdown section).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from segnotes.cost import compare_latency
from segnotes.unet import MobileNetV2Backbone, Unet, convert_smp_state_dict
from segnotes.upsample import MODES

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmark-only helpers next to this file
from _fusion import fuse_for_inference  # noqa: E402

SIZE, ROUNDS, WARMUP, THREADS = 512, 7, 2, 2


def run(rounds: int = ROUNDS, smoke: bool = False) -> str:
    """Time every variant in interleaved rounds and return a markdown section (``smoke``: 64x64, one round)."""
    size, rounds, warmup, modes = (64, 1, 1, MODES[:1]) if smoke else (SIZE, rounds, WARMUP, MODES)
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    x = torch.rand(1, 3, size, size)
    ref = smp.Unet("mobilenet_v2", encoder_weights=None, classes=1).eval()
    ours = Unet(MobileNetV2Backbone(), num_classes=1, head_kernel_size=3).eval()
    ours.load_state_dict(convert_smp_state_dict(ref.state_dict()), strict=True)
    variants = {
        "SMP `Unet` (eager)": ref,
        "segnotes `Unet` (eager)": ours,
        "segnotes `fuse_for_inference`": fuse_for_inference(ours),
    }
    for mode in modes:
        variants[f"segnotes fused, `decoder_interpolation={mode!r}`"] = fuse_for_inference(
            Unet(MobileNetV2Backbone(), num_classes=1, head_kernel_size=3, decoder_interpolation=mode)
        )
    with torch.inference_mode():
        y = ref(x)
        same = torch.equal(ours(x), y)
        fused_diff = (variants["segnotes `fuse_for_inference`"](x) - y).abs().max().item()
    latency = compare_latency(variants, tuple(x.shape), rounds=rounds, warmup=warmup)
    base = latency["SMP `Unet` (eager)"].median_ms
    rows = ["| model | median ms | vs SMP |", "| --- | ---: | ---: |"]
    for name, lat in latency.items():
        rows.append(f"| {name} | {lat.median_ms:.1f} | {lat.median_ms / base:.2f}x |")
    return "\n".join(
        [
            "## UNet-MobileNetV2 (`benchmarks/unet.py`)",
            "",
            *rows,
            "",
            f"Outputs for SMP's weights: eager identical to SMP: {same}; fused max abs difference {fused_diff:.1e}. "
            f"{size}x{size}, batch 1, {THREADS} threads, torch {torch.__version__}, {platform.machine()}, "
            f"medians of {rounds} interleaved rounds after {warmup} warm-up runs, `torch.inference_mode`."
            + (" SMOKE RUN: not a measurement." if smoke else ""),
        ]
    )


if __name__ == "__main__":
    print(run())
