"""SegFormer-B0 inference: segnotes vs transformers vs segmentation_models.pytorch (chapter 5).

One 512x512 image, batch 1, CPU, 2 threads, eval + ``torch.inference_mode``. All three
models carry the same weights: a randomly initialised transformers model (with
non-trivial BatchNorm statistics) converted to segnotes with ``from_transformers`` and
copied into SMP's ``Segformer("mit_b0")`` by name. Rounds are interleaved (each round
runs every model once, through ``segnotes.compare.compare_latency``); medians and ratios
are reported. Peak memory is ``segnotes.compare.peak_activation_memory``: the most bytes of
tensors alive at once during one forward pass, weights and input excluded.

segnotes' speed comes from the folded decoder (the 1x1 fuse is applied per stage
before upsampling) and SDPA attention. transformers returns 1/4-resolution logits like
segnotes; SMP returns full-resolution logits (its head upsamples by 4), so segnotes
is also timed with ``full_resolution=True`` for a like-for-like comparison.

Run alone: ``.venv/bin/python benchmarks/segformer.py [rounds] [threads]``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from segnotes.compare import compare_latency, peak_activation_memory

SIZE = 512
NUM_CLASSES = 150
ROUNDS = 15
THREADS = 2
NAMES = ("segnotes", "segnotes full-res", "segnotes literal decoder", "transformers", "smp")


def _transformers_model():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=NUM_CLASSES)).eval()  # B0, default attention
    bn = model.decode_head.batch_norm
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2.0)
    return model


def _smp_state_dict(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segnotes SegFormer names -> SMP ``Segformer("mit_b0")`` names (same tensors)."""
    out = {}
    for key, tensor in ours.items():
        parts = key.split(".")
        if key.startswith("encoder.stages."):
            i, rest = int(parts[2]) + 1, parts[3:]
            if rest[0] == "patch_embed":
                name = f"encoder.patch_embed{i}." + ".".join(rest[1:])
            elif rest[0] == "norm":
                name = f"encoder.norm{i}." + rest[-1]
            else:  # blocks.j....
                tail = ".".join(rest[2:]).replace("attn.sr_norm", "attn.norm").replace("mlp.dwconv", "mlp.dwconv.dwconv")
                name = f"encoder.block{i}.{rest[1]}.{tail}"
        elif key.startswith("decoder.proj."):
            name = f"decoder.mlp_stage.{3 - int(parts[2])}.linear.{parts[3]}"
        else:
            name = {"fuse": "decoder.fuse_stage.0", "norm": "decoder.fuse_stage.1", "classifier": "segmentation_head.0"}[parts[1]]
            name += "." + parts[-1]
        out[name] = tensor
    return out


def _smp_parity(smp_model, ours, x: torch.Tensor) -> float:
    """Max abs difference of SMP's logits before its x4 head upsampling (align_corners=True) and segnotes'
    with SMP's LayerNorm epsilon (1e-6 in the blocks; transformers uses 1e-5)."""
    from segnotes.segformer import segformer_b0

    same_eps = segformer_b0(NUM_CLASSES, norm_eps=1e-6).eval()
    same_eps.load_state_dict(ours.state_dict())
    with torch.inference_mode():
        theirs = smp_model.segmentation_head[0](smp_model.decoder(smp_model.encoder(x)))
        return (same_eps(x) - theirs).abs().max().item()


class _Call(nn.Module):
    """One way of calling ``model`` (e.g. with ``full_resolution=True``), as a module to time."""

    def __init__(self, model: nn.Module, call):
        super().__init__()
        self.model, self.call = model, call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(self.model, x)


def build() -> dict[str, nn.Module]:
    """The models (eval mode), keyed like ``NAMES``, all with the same weights."""
    import segmentation_models_pytorch as smp

    from segnotes.segformer import from_transformers, segformer_b0

    hf = _transformers_model()
    ours = segformer_b0(NUM_CLASSES).eval()
    ours.load_state_dict(from_transformers(hf.state_dict()), strict=True)
    literal = segformer_b0(NUM_CLASSES).eval()
    literal.load_state_dict(ours.state_dict())
    literal.decoder.fold = False
    theirs = smp.Segformer("mit_b0", encoder_weights=None, classes=NUM_CLASSES).eval()
    theirs.load_state_dict(_smp_state_dict(ours.state_dict()), strict=True)
    return {
        "segnotes": ours,
        "segnotes full-res": _Call(ours, lambda m, x: m(x, full_resolution=True)),
        "segnotes literal decoder": literal,
        "transformers": _Call(hf, lambda m, x: m(pixel_values=x).logits),
        "smp": theirs,
    }


def run(rounds: int = ROUNDS, threads: int = THREADS) -> str:
    torch.set_num_threads(threads)
    models = build()
    torch.manual_seed(1)
    x = torch.randn(1, 3, SIZE, SIZE)
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
        res = "512x512" if n in ("smp", "segnotes full-res") else "128x128"
        rows.append(f"| {n} | {res} | {median[n]:.0f} | {median[n] / median['transformers']:.2f} | "
                    f"{median[n] / median['smp']:.2f} | {memory[n]:.0f} |")
    return "\n".join(
        [
            "## SegFormer-B0 inference (chapter 5)",
            "",
            *rows,
            "",
            f"segnotes vs transformers: {median['segnotes'] / median['transformers']:.2f}x the median latency (target <= 0.6), "
            f"max abs logit difference {diff_hf:.1e} (literal decoder: {diff_literal:.1e}; tolerance 1e-4). "
            f"segnotes full-res vs SMP: {median['segnotes full-res'] / median['smp']:.2f}x (target <= 0.45), "
            f"same weights: SMP's 1/4-resolution logits equal segnotes' with SMP's LayerNorm eps 1e-6 to {diff_smp:.1e}.",
            "",
            f"Conditions: SegFormer-B0, {NUM_CLASSES} classes, 1x3x{SIZE}x{SIZE}, CPU, {threads} threads, eval + "
            f"inference_mode, {rounds} interleaved rounds after one warm-up; peak memory = most bytes of tensors "
            "alive at once during one forward, weights and input excluded; torch " + torch.__version__ + ".",
        ]
    )


if __name__ == "__main__":  # usage: segformer.py [rounds] [threads]
    print(run(*(int(a) for a in sys.argv[1:3])))
