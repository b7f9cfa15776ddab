"""SegFormer-B0 inference: segnotes vs transformers vs segmentation_models.pytorch (chapter 5).

One 512x512 image, batch 1, CPU, 2 threads, eval + ``torch.inference_mode``. All three
models carry the same weights: a randomly initialised SMP ``Segformer("mit_b0")`` (with
non-trivial BatchNorm statistics) converted to segnotes with ``from_smp`` and to
transformers with ``to_transformers``. Rounds are interleaved (each round runs every
model once, through ``segnotes.cost.compare_latency``); medians and ratios are
reported. Peak memory is ``segnotes.cost.peak_activation_memory``: the most bytes of
tensors alive at once during one forward pass, weights and input excluded.

segnotes' speed comes from the folded decoder (the 1x1 fuse is applied per stage
before upsampling, with weights folded once in eval mode) and SDPA attention.
transformers returns 1/4-resolution logits like segnotes; SMP returns full-resolution
logits (its head upsamples by 4), so segnotes is also timed with a head that upsamples
by 4 (``segformer("b0", ..., upsampling=4)``) for a like-for-like comparison.

Run alone: ``.venv/bin/python benchmarks/segformer.py [rounds] [threads] [--size N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from segnotes.cost import compare_latency, peak_activation_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmark-only helpers next to this file
from _models import transformers_segformer_b0  # noqa: E402

SIZE = 512
NUM_CLASSES = 150
ROUNDS = 15
THREADS = 2
NAMES = ("segnotes", "segnotes full-res", "segnotes literal decoder", "transformers", "smp")


def build() -> dict[str, nn.Module]:
    """The models (eval mode), keyed like ``NAMES``, all with the same weights.

    SMP's randomly initialised ``Segformer`` (with non-trivial BatchNorm statistics) is
    converted to segnotes with ``segnotes.segformer.from_smp`` and from there to
    transformers with ``to_transformers``: the module's own key tables, nothing else.
    """
    import segmentation_models_pytorch as smp

    from segnotes.segformer import from_smp, segformer, to_transformers

    torch.manual_seed(0)
    theirs = smp.Segformer("mit_b0", encoder_weights=None, classes=NUM_CLASSES).eval()
    bn = theirs.decoder.fuse_stage[1]
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2.0)
    weights = from_smp(theirs.state_dict())
    models = {}
    for name, options in [("segnotes", {}), ("segnotes full-res", {"upsampling": 4}), ("segnotes literal decoder", {})]:
        models[name] = segformer("b0", num_classes=NUM_CLASSES, **options)
        models[name].load_state_dict(weights, strict=True)
        models[name].eval()
    models["segnotes literal decoder"].decoder.fold = False
    hf = transformers_segformer_b0(NUM_CLASSES).eval()  # default attention
    hf.model.load_state_dict(to_transformers(weights), strict=True)
    models["transformers"] = hf
    models["smp"] = theirs
    return models


def _smp_parity(theirs, ours, x: torch.Tensor) -> float:
    """Max abs difference of SMP's logits before its x4 head upsampling (align_corners=True) and segnotes'
    with SMP's LayerNorm epsilon (1e-6 in the blocks; transformers uses 1e-5)."""
    from segnotes.segformer import segformer

    same_eps = segformer("b0", num_classes=NUM_CLASSES, norm_eps=1e-6).eval()
    same_eps.load_state_dict(ours.state_dict(), strict=True)
    with torch.inference_mode():
        quarter = theirs.segmentation_head[0](theirs.decoder(theirs.encoder(x)))
        return (same_eps(x) - quarter).abs().max().item()


def run(rounds: int = ROUNDS, threads: int = THREADS, size: int = SIZE, smoke: bool = False) -> str:
    """Time, measure and compare the models; a markdown section (``smoke``: 64x64, one round, not a measurement)."""
    if smoke:
        rounds, size = 1, 64
    torch.set_num_threads(threads)
    models = build()
    torch.manual_seed(1)
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        outputs = {n: models[n](x) for n in NAMES}  # the outputs to compare
    latency = compare_latency(models, tuple(x.shape), rounds=rounds, warmup=1)
    memory = {n: peak_activation_memory(models[n], tuple(x.shape)) / 2**20 for n in NAMES}
    reference = outputs["transformers"]
    diff_hf = (outputs["segnotes"] - reference).abs().max().item()
    diff_literal = (outputs["segnotes literal decoder"] - reference).abs().max().item()
    diff_smp = _smp_parity(models["smp"], models["segnotes"], x)
    median = {n: latency[n].median_ms for n in NAMES}
    rows = [
        "| model | logits | median ms | x transformers | x SMP | peak memory (MB) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for n in NAMES:
        res = f"{size}x{size}" if n in ("smp", "segnotes full-res") else f"{size // 4}x{size // 4}"
        rows.append(
            f"| {n} | {res} | {median[n]:.0f} | {median[n] / median['transformers']:.2f} | "
            f"{median[n] / median['smp']:.2f} | {memory[n]:.0f} |"
        )
    return "\n".join(
        [
            "## SegFormer-B0 inference (chapter 5)",
            "",
            *rows,
            "",
            f"segnotes vs transformers: {median['segnotes'] / median['transformers']:.2f}x the median latency "
            "(target <= 0.6), "
            f"max abs logit difference {diff_hf:.1e} (literal decoder: {diff_literal:.1e}; tolerance 1e-4). "
            f"segnotes full-res vs SMP: {median['segnotes full-res'] / median['smp']:.2f}x (target <= 0.45), "
            "same weights: SMP's 1/4-resolution logits equal segnotes' with SMP's LayerNorm eps 1e-6 to "
            f"{diff_smp:.1e}.",
            "",
            f"Conditions: SegFormer-B0, {NUM_CLASSES} classes, 1x3x{size}x{size}, CPU, {threads} threads, eval + "
            f"inference_mode, {rounds} interleaved rounds after one warm-up; peak memory = most bytes of tensors "
            "alive at once during one forward, weights and input excluded; torch "
            + torch.__version__
            + "."
            + (" SMOKE RUN: not a measurement." if smoke else ""),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=ROUNDS, help="interleaved timing rounds")
    parser.add_argument("threads", type=int, nargs="?", default=THREADS, help="torch CPU threads")
    parser.add_argument("--size", type=int, default=SIZE, help="image side (e.g. 64 for a quick smoke run)")
    args = parser.parse_args()
    print(run(args.rounds, args.threads, args.size))
