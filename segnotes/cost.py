"""Chapter 7: what a segmentation model costs, measured the same way for every model.

Four numbers decide whether a model fits a budget: its parameters (the checkpoint),
its FLOPs (the arithmetic), its peak activation memory (what grows with the image)
and its latency on the target machine.

* :func:`count_gflops` counts with ``torch.utils.flop_counter.FlopCounterMode``. On the
  CPU that counter does not recognise the kernel ``F.scaled_dot_product_attention``
  runs, and would count attention as free; while counting, the call is routed through
  its two matrix products (``softmax(q k^T) v``) so that the counter sees them.
* :func:`peak_activation_memory` follows every tensor an operator creates during one
  inference pass, from creation until it is freed. It needs a ``TorchDispatchMode``
  (``torch.utils._python_dispatch``, the documented way to see every operator); the
  import is guarded and :func:`memory_tracking_available` says whether it works, else
  the function raises and :func:`model_card` records ``nan`` (shown as "n/a").
* :func:`compare_latency` times several models in interleaved rounds, so that a
  machine that gets busier halfway through slows every model alike.
* :func:`model_card` collects the four numbers; :func:`cards_table` renders cards as a
  markdown table.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .model import eval_mode

__all__ = [
    "ModelCard",
    "Latency",
    "count_parameters",
    "count_gflops",
    "memory_tracking_available",
    "peak_activation_memory",
    "compare_latency",
    "model_card",
    "cards_table",
]


# ----------------------------------------------------------------------------- helpers


def _batch_shape(input_size: Sequence[int]) -> tuple[int, int, int, int]:
    """(C, H, W) or (B, C, H, W) -> (B, C, H, W), with a ValueError for anything else."""
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        size = (1, *size)
    if len(size) != 4 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) or (B, C, H, W) with positive entries, got {tuple(input_size)}")
    return size


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _tensors(out: object) -> Iterator[torch.Tensor]:
    """Every tensor in an operator's output (a tensor, or tuples/lists of them)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for item in out:
            yield from _tensors(item)


# ----------------------------------------------------------------------------- parameters and FLOPs


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once), trainable or not."""
    return sum(p.numel() for p in model.parameters())


# Query rows per chunk are chosen so that one chunk's scores hold at most this many numbers
# (16 MB in float32): a plain ViT at 512 px has 16,384 tokens, and a full score matrix would need GBs.
_CHUNK_ELEMENTS = 2**22


def _math_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """``F.scaled_dot_product_attention`` written as its definition: two matrix products and a softmax.

    Only used while counting FLOPs (eval mode, so ``dropout_p`` is ignored). The queries
    are processed in chunks, which changes neither the result nor the FLOP count.
    Grouped query attention is not supported (no model in the book uses it).
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    N, M = query.shape[-2], key.shape[-2]
    rows = max(1, _CHUNK_ELEMENTS // max(1, M * query[..., 0, 0].numel()))  # numel of (B, heads) = B * heads
    causal = torch.ones(N, M, dtype=torch.bool, device=query.device).tril() if is_causal else None
    outputs = []
    for start in range(0, N, rows):
        scores = (query[..., start : start + rows, :] * scale) @ key.transpose(-2, -1)  # (B, heads, rows, M)
        if causal is not None:
            scores = scores.masked_fill(~causal[start : start + rows], float("-inf"))
        if attn_mask is not None:
            mask = attn_mask[..., start : start + rows, :] if attn_mask.shape[-2] == N else attn_mask
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        outputs.append(scores.softmax(-1) @ value)  # (B, heads, rows, d_v)
    return torch.cat(outputs, dim=-2)


class _AttentionAsMatmuls(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` through :func:`_math_attention` (public ``TorchFunctionMode``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return _math_attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def count_gflops(model: nn.Module, input_size: Sequence[int]) -> float:
    """GFLOPs of one forward pass in eval mode over a batch of ``input_size``.

    2 FLOPs per multiply-accumulate of every convolution, matrix multiplication and
    attention product (``F.scaled_dot_product_attention`` is counted as its two matrix
    products on every device); element-wise operations, normalisation, softmax and
    interpolation are not counted (cheap in FLOPs, though not always in time). Papers
    often quote multiply-accumulates ("MACs", sometimes called FLOPs): half this number.
    The count is of a repeated forward pass: one uncounted pass first fills whatever a
    model computes once and caches (SegFormer's folded decoder weights).
    Deterministic: the same model and size give the same count on every machine.

    Args:
        model: maps (B, C, H, W) to anything.
        input_size: (C, H, W) or (B, C, H, W).

    Returns:
        GFLOPs (a float).

    Example:
        >>> count_gflops(nn.Conv2d(3, 8, 3, padding=1), (3, 64, 64))  # 2 * 8 * 3 * 9 * 64 * 64 / 1e9
        0.001769472
    """
    shape = _batch_shape(input_size)
    x = torch.rand(shape, device=_device_of(model))
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad():
        model(x)  # not counted: fills one-time caches (e.g. SegFormer's folded decoder weights)
        with counter, _AttentionAsMatmuls():
            model(x)
    return counter.get_total_flops() / 1e9


# ----------------------------------------------------------------------------- activation memory


def _dispatch_mode_class() -> type | None:
    """``TorchDispatchMode``, or ``None`` when this torch does not provide it where expected."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:
        return None
    return TorchDispatchMode


def memory_tracking_available() -> bool:
    """Whether :func:`peak_activation_memory` can run with this torch (it needs a ``TorchDispatchMode``)."""
    return _dispatch_mode_class() is not None


def _live_bytes_tracker(ignore: Sequence[torch.Tensor]):
    """A dispatch mode that follows every storage operators allocate and the largest total alive at once.

    Public tensor APIs only: a storage is keyed by ``untyped_storage().data_ptr()``; every
    tensor that holds it (the operator's output, later views and in-place results) gets
    a ``weakref.finalize``, and the storage's bytes are subtracted when the last holder
    is collected. Outputs that alias a storage of ``ignore`` (weights, input) add nothing.
    """
    mode_class = _dispatch_mode_class()
    if mode_class is None:
        raise RuntimeError(
            "peak_activation_memory needs torch.utils._python_dispatch.TorchDispatchMode, which this torch "
            f"({torch.__version__}) does not provide; model_card records nan (shown as n/a) instead"
        )

    class LiveBytes(mode_class):
        def __init__(self):
            super().__init__()
            self.ignore = {t.untyped_storage().data_ptr() for t in ignore}
            self.holders: dict[int, int] = {}  # storage address -> tensors alive that hold it
            self.nbytes: dict[int, int] = {}
            self.current = self.peak = 0

        def _release(self, key: int) -> None:
            self.holders[key] -= 1
            if self.holders[key] == 0:
                del self.holders[key]
                self.current -= self.nbytes.pop(key)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in _tensors(out):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes == 0 or key in self.ignore:
                    continue
                if key not in self.holders:  # a new storage: count its bytes
                    self.holders[key], self.nbytes[key] = 0, nbytes
                    self.current += nbytes
                self.holders[key] += 1
                weakref.finalize(t, self._release, key)
            self.peak = max(self.peak, self.current)
            return out

    return LiveBytes()


def peak_activation_memory(model: nn.Module, input_size: Sequence[int]) -> int:
    """Peak bytes of tensors alive at once during one inference forward pass.

    What it measures: every tensor that an operator creates during the pass
    (activations, intermediate results, the output), counted from its creation until
    it is freed, under ``torch.no_grad()`` in eval mode; the weights and the input are
    not counted, nor are scratch buffers a kernel allocates and frees inside one
    operator (e.g. an im2col buffer). It is the "activation memory" that grows with
    the image size, independent of the allocator and of the device. Training needs
    more: the activations saved for the backward pass stay alive.

    Args:
        model: maps (B, C, H, W) to a tensor or a list of tensors.
        input_size: (C, H, W) or (B, C, H, W).

    Returns:
        Peak bytes (an int).

    Raises:
        RuntimeError: this torch has no ``TorchDispatchMode`` (see :func:`memory_tracking_available`).

    Example:
        >>> peak_activation_memory(nn.Conv2d(3, 8, 3, padding=1), (3, 64, 64))  # 8 x 64 x 64 float32
        131072
    """
    shape = _batch_shape(input_size)
    x = torch.rand(shape, device=_device_of(model))
    tracker = _live_bytes_tracker(ignore=[x, *model.parameters(), *model.buffers()])
    with eval_mode(model), torch.no_grad(), tracker:
        out = model(x)
    del out
    return tracker.peak


# ----------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Latency:
    """Milliseconds per forward pass of one model, one value per interleaved round.

    Attributes:
        times_ms: per-round mean milliseconds of one forward pass.
        threads: ``torch.get_num_threads()`` during the measurement.
    """

    times_ms: tuple[float, ...]
    threads: int

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def iqr_ms(self) -> float:
        """Interquartile range of the rounds; it says how noisy the machine was."""
        if len(self.times_ms) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4)
        return q3 - q1


def compare_latency(
    models: Mapping[str, nn.Module],
    input_size: Sequence[int],
    *,
    rounds: int = 15,
    warmup: int = 2,
    min_seconds: float = 0.02,
) -> dict[str, Latency]:
    """Latency of several models on their device, measured in interleaved rounds.

    Every round times each model once, ``number`` forward passes in a row (chosen per
    model during the warm-up so that one timing lasts at least ``min_seconds``); the
    order of the models rotates from round to round. Interleaving makes the models
    share whatever else the machine is doing; the median over rounds ignores rounds
    hit by a burst of background work. Runs in eval mode under
    ``torch.inference_mode()`` with the current ``torch.get_num_threads()``; on a GPU
    each timing waits for the device to finish.

    Args:
        models: ``{"name": model}``; each maps (B, C, H, W) to anything.
        input_size: (C, H, W) or (B, C, H, W).
        rounds: number of interleaved rounds (the median is over these), >= 1.
        warmup: untimed passes per model first (allocations, lazy initialisation), >= 1.
        min_seconds: shortest single timing.

    Returns:
        ``{"name": Latency}`` in the order of ``models``.

    Example:
        >>> lat = compare_latency({"a": nn.Conv2d(3, 8, 3)}, (3, 64, 64), rounds=3)
        >>> lat["a"].median_ms > 0
        True
    """
    if not models:
        raise ValueError("models is empty: pass {'name': model, ...}")
    if rounds < 1 or warmup < 1:
        raise ValueError(f"rounds and warmup must be >= 1, got rounds={rounds}, warmup={warmup}")
    shape = _batch_shape(input_size)
    names = list(models)
    inputs = {name: torch.rand(shape, device=_device_of(models[name])) for name in names}

    def timed(name: str, number: int) -> float:
        device = inputs[name].device
        start = time.perf_counter()
        for _ in range(number):
            models[name](inputs[name])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in names}
    number: dict[str, int] = {}
    with ExitStack() as stack, torch.inference_mode():
        for model in models.values():
            stack.enter_context(eval_mode(model))
        for name in names:  # warm up, and pick how many passes make one timing
            elapsed = min(timed(name, 1) for _ in range(warmup))
            number[name] = max(1, math.ceil(min_seconds / max(elapsed, 1e-6)))
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                times[name].append(1e3 * timed(name, number[name]) / number[name])
    return {name: Latency(tuple(times[name]), torch.get_num_threads()) for name in names}


# ----------------------------------------------------------------------------- cards


@dataclass(frozen=True)
class ModelCard:
    """The costs of one model at one input size.

    Attributes:
        name: display name.
        input_size: (B, C, H, W) the costs were measured at.
        params: number of parameters.
        gflops: GFLOPs of one forward pass over the batch (see :func:`count_gflops`).
        peak_mib: peak activation memory in MiB (see :func:`peak_activation_memory`);
            ``nan`` when this torch cannot track it.
        latency: latency (see :func:`compare_latency`), ``None`` when not measured.
    """

    name: str
    input_size: tuple[int, int, int, int]
    params: int
    gflops: float
    peak_mib: float
    latency: Latency | None = None

    @property
    def latency_ms(self) -> float:
        """Median milliseconds per forward pass (``nan`` when latency was not measured)."""
        return self.latency.median_ms if self.latency is not None else float("nan")


def model_card(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    name: str | None = None,
    latency: Latency | None = None,
    rounds: int = 15,
) -> ModelCard:
    """Parameters, GFLOPs, peak activation memory and latency of ``model``.

    Args:
        model: maps (B, C, H, W) to a tensor or a list of tensors.
        input_size: (C, H, W) or (B, C, H, W); (C, H, W) means a batch of one.
        name: display name; default: the class name.
        latency: a :class:`Latency` already measured (e.g. by :func:`compare_latency`
            together with other models); otherwise it is measured here.
        rounds: rounds of the latency measurement; 0 skips it (``latency=None``).

    Returns:
        A :class:`ModelCard`.

    Example:
        >>> card = model_card(nn.Conv2d(3, 8, 3, padding=1), (3, 64, 64), rounds=0)
        >>> card.params, round(card.gflops, 4), card.peak_mib
        (224, 0.0018, 0.125)
    """
    shape = _batch_shape(input_size)
    name = name or type(model).__name__
    if latency is None and rounds > 0:
        latency = compare_latency({name: model}, shape, rounds=rounds)[name]
    peak_mib = peak_activation_memory(model, shape) / 2**20 if memory_tracking_available() else float("nan")
    return ModelCard(name, shape, count_parameters(model), count_gflops(model, shape), peak_mib, latency)


def _fmt(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def cards_table(cards: Sequence[ModelCard], extra: Mapping[str, Sequence[str]] | None = None) -> str:
    """A markdown table of model cards, one row per card.

    Args:
        cards: the cards, in display order.
        extra: more columns, ``{"header": [one string per card]}`` (e.g. mIoU).

    Returns:
        The table as a markdown string (render it with ``IPython.display.Markdown``).
        The latency column appears only when some card has a latency (so a table of
        machine-independent costs stays machine-independent); values that were not
        measured read "n/a".

    Example:
        >>> print(cards_table([model_card(nn.Conv2d(3, 8, 1), (3, 8, 8), rounds=0)]))
        | model | params (M) | GFLOPs | peak activations (MiB) |
        | --- | ---: | ---: | ---: |
        | Conv2d | 0.00 | 0.000 | 0.0 |
    """
    extra = dict(extra or {})
    for header, values in extra.items():
        if len(values) != len(cards):
            raise ValueError(f"extra column {header!r} has {len(values)} values for {len(cards)} cards")
    timed = any(c.latency is not None for c in cards)
    headers = ["model", "params (M)", "GFLOPs", "peak activations (MiB)", *(["latency (ms)"] * timed), *extra]
    lines = ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1)]
    for i, c in enumerate(cards):
        row = [c.name, f"{c.params / 1e6:.2f}", f"{c.gflops:.3f}", _fmt(c.peak_mib, ".1f")]
        row += [_fmt(c.latency_ms, ".1f")] * timed
        lines.append("| " + " | ".join(row + [values[i] for values in extra.values()]) + " |")
    return "\n".join(lines)
