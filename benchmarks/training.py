"""Training throughput (images/s) of every model the book trains: segnotes vs SMP / transformers.

One training step is what ``segnotes.train.fit`` does per batch: forward, logits
resized bilinearly to the mask, cross-entropy, backward, AdamW step. Batch 16 of
64x64 images (the size the chapters train at), 5 classes, CPU, 2 threads. Models are
timed in interleaved rounds (every round runs one step of every model, in a rotating
order), so background work slows all of them alike; the table reports the median.

Rows:

* UNet and UNet++ over MobileNetV2 with the book's slim decoder ``(64, 32, 16, 16, 8)``
  and a 1x1 head, next to ``smp.Unet`` / ``smp.UnetPlusPlus`` built the same way;
* SegFormer-B0 (no stochastic depth, as the chapters train it) next to transformers'
  ``SegformerForSemanticSegmentation`` with the B0 configuration and ``smp.Segformer("mit_b0")``;
* the plain-ViT models of chapter 6 (SETR-Naive, SETR-PUP, SETR-MLA, a UNet over the
  DPT-style pyramid) with the book's ViT preset; no library ships them for this ViT;
* UNet, SegFormer-B0 and SETR-PUP once more "as ``fit`` trains them": batches and weights in
  the channels_last memory format and a fused AdamW (what do the two settings buy?). Every
  other row uses the default layout and ``torch.optim.AdamW``'s default implementation.

Run alone: ``.venv/bin/python benchmarks/training.py`` (prints a markdown section);
``SEGNOTES_BENCH_SMOKE=1`` runs one round at 32x32 with batch 4 (checks the script works).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmark-only helpers next to this file
from _models import transformers_segformer_b0  # noqa: E402

SIZE, BATCH, CLASSES, ROUNDS, THREADS = 64, 16, 5, 9, 2
DECODER = (64, 32, 16, 16, 8)
AS_FIT = "as `fit` trains it"  # rows in channels_last with a fused AdamW, as segnotes.train.fit runs


def builders(size: int) -> dict[str, tuple[str, Callable[[], nn.Module]]]:
    """``{row name: (architecture, build)}``; imports stay inside so a missing library fails one row only."""
    import segmentation_models_pytorch as smp

    from segnotes.dpt import ViTPyramid
    from segnotes.segformer import segformer
    from segnotes.setr import SetrMla, SetrNaive, SetrPup
    from segnotes.unet import MobileNetV2Backbone, Unet, UnetPlusPlus
    from segnotes.vit import vit

    unet_kwargs = dict(num_classes=CLASSES, decoder_channels=DECODER, head_kernel_size=1)
    smp_kwargs = dict(encoder_weights=None, classes=CLASSES, decoder_channels=DECODER)
    book_vit = lambda: vit("book", num_classes=0, img_size=size)  # noqa: E731
    return {
        "segnotes `Unet`": ("UNet-MobileNetV2", lambda: Unet(MobileNetV2Backbone(), **unet_kwargs)),
        f"segnotes `Unet`, {AS_FIT}": ("UNet-MobileNetV2", lambda: Unet(MobileNetV2Backbone(), **unet_kwargs)),
        "SMP `Unet`": ("UNet-MobileNetV2", lambda: smp.Unet("mobilenet_v2", **smp_kwargs)),
        "segnotes `UnetPlusPlus`": ("UNet++-MobileNetV2", lambda: UnetPlusPlus(MobileNetV2Backbone(), **unet_kwargs)),
        "SMP `UnetPlusPlus`": ("UNet++-MobileNetV2", lambda: smp.UnetPlusPlus("mobilenet_v2", **smp_kwargs)),
        "segnotes `segformer('b0')`": (
            "SegFormer-B0",
            lambda: segformer("b0", num_classes=CLASSES, drop_path_rate=0.0),
        ),
        f"segnotes `segformer('b0')`, {AS_FIT}": (
            "SegFormer-B0",
            lambda: segformer("b0", num_classes=CLASSES, drop_path_rate=0.0),
        ),
        "transformers `SegformerForSemanticSegmentation`": (
            "SegFormer-B0",
            lambda: transformers_segformer_b0(CLASSES, drop_path_rate=0.0),
        ),
        "SMP `Segformer('mit_b0')`": (
            "SegFormer-B0",
            lambda: smp.Segformer("mit_b0", encoder_weights=None, classes=CLASSES),
        ),
        "segnotes `SetrNaive`": ("ViT (book preset) + SETR-Naive", lambda: SetrNaive(book_vit(), CLASSES)),
        "segnotes `SetrPup`": ("ViT (book preset) + SETR-PUP", lambda: SetrPup(book_vit(), CLASSES)),
        f"segnotes `SetrPup`, {AS_FIT}": ("ViT (book preset) + SETR-PUP", lambda: SetrPup(book_vit(), CLASSES)),
        "segnotes `SetrMla`": ("ViT (book preset) + SETR-MLA", lambda: SetrMla(book_vit(), CLASSES)),
        "segnotes `Unet(ViTPyramid)`": (
            "ViT (book preset) pyramid + UNet",
            lambda: Unet(ViTPyramid(book_vit()), encoder_depth=5, **unet_kwargs),
        ),
    }


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor):
    """One step of ``segnotes.train.fit``: forward, resize logits to the mask, cross-entropy, backward, AdamW."""
    logits = model(images)
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(
    models: dict[str, nn.Module], size: int, batch: int, rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per training step of each model, one value per interleaved round."""
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size)
    masks = torch.randint(0, CLASSES, (batch, size, size))
    as_fit = {n: AS_FIT in n for n in models}
    for n, m in models.items():
        if as_fit[n]:
            m.to(memory_format=torch.channels_last)
    inputs = {n: images.contiguous(memory_format=torch.channels_last) if as_fit[n] else images for n in models}
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=as_fit[n] or None) for n, m in models.items()}
    for n, m in models.items():
        m.train()
        for _ in range(warmup):
            training_step(m, optimizers[n], inputs[n], masks)
    names, times = list(models), {n: [] for n in models}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            training_step(models[n], optimizers[n], inputs[n], masks)
            times[n].append(time.perf_counter() - start)
    return times


def run(smoke: bool | None = None) -> str:
    """Measure every row and return a markdown section."""
    smoke = os.environ.get("SEGNOTES_BENCH_SMOKE") == "1" if smoke is None else smoke
    size, batch, rounds = (32, 4, 1) if smoke else (SIZE, BATCH, ROUNDS)
    torch.set_num_threads(THREADS)
    rows, models, failed = builders(size), {}, []
    for name, (_, build) in rows.items():
        try:
            models[name] = build()
        except Exception as error:  # a library that changed its API fails its row, not the table
            failed.append(f"{name}: {type(error).__name__}: {error}")
    times = measure(models, size, batch, rounds, warmup=1 if smoke else 2)
    lines = [
        "| architecture | implementation | parameters (M) | ms per step | images/s | vs segnotes |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    reference: dict[str, float] = {}
    for name, (arch, _) in rows.items():
        if name not in models:
            continue
        ms = 1e3 * statistics.median(times[name])
        reference.setdefault(arch, ms)  # the first row of an architecture is segnotes' eager model
        params = sum(p.numel() for p in models[name].parameters()) / 1e6
        lines.append(
            f"| {arch} | {name} | {params:.2f} | {ms:.0f} | {batch / ms * 1e3:.0f} | {reference[arch] / ms:.2f}x |"
        )
    notes = "".join(f"\n\nNot measured: {f}" for f in failed)
    return "\n".join(
        [
            "## Training throughput (`benchmarks/training.py`)",
            "",
            *lines,
            "",
            f"One training step as in `segnotes.train.fit` (forward, logits resized to the mask, cross-entropy, "
            f"backward, AdamW); batch {batch}, {size}x{size}, {CLASSES} classes, {THREADS} threads, "
            f"torch {torch.__version__}, {platform.machine()}; medians of {rounds} interleaved rounds. "
            'images/s = batch / median step time; "vs segnotes" > 1 means faster than segnotes\' eager model '
            "of the same architecture (default layout, AdamW's default implementation). Rows "
            f'"{AS_FIT}" train as `segnotes.train.fit` does: channels_last batches and weights, fused AdamW.'
            + (" SMOKE RUN: not a measurement." if smoke else "")
            + notes,
        ]
    )


if __name__ == "__main__":
    print(run())
