"""Chapter 7: what a segmentation model costs and how far it sees.

* :func:`model_card`: parameters, GFLOPs, peak activation memory and CPU latency of
  one forward pass, the four numbers that decide whether a model fits a budget.
  :func:`compare_latency` times several models in interleaved rounds, so that a
  machine that gets busier halfway through slows every model alike.
* :func:`effective_receptive_field`: the *effective* receptive field of Luo et al.,
  "Understanding the Effective Receptive Field in Deep Convolutional Neural
  Networks", NeurIPS 2016, https://arxiv.org/abs/1701.04128: how strongly each
  input pixel moves the centre output pixel, measured as the gradient and averaged
  over random inputs. The theoretical receptive field of a deep CNN covers the
  whole image; the effective one is much smaller and roughly Gaussian. SegFormer
  (Xie et al., 2021, https://arxiv.org/abs/2105.15203) argues that its attention
  encoder sees far more context than a CNN; the chapter measures it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = [
    "ModelCard",
    "Latency",
    "ReceptiveField",
    "count_parameters",
    "count_gflops",
    "peak_activation_memory",
    "compare_latency",
    "model_card",
    "cards_table",
    "effective_receptive_field",
    "show_receptive_fields",
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


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (BatchNorm uses running statistics), then in its old mode again."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# ----------------------------------------------------------------------------- the four costs


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once), trainable or not."""
    return sum(p.numel() for p in model.parameters())


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one attention call: Q K^T and the weighted sum of V (2 per multiply-accumulate)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode knows the GPU attention kernels but not the one F.scaled_dot_product_attention
# runs on the CPU, which it would count as 0 FLOPs: every plain ViT would look free of attention.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_gflops(model: nn.Module, input_size: Sequence[int]) -> float:
    """GFLOPs of one forward pass in eval mode over a batch of ``input_size``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per
    multiply-accumulate of every convolution, matrix multiplication and attention
    product (including ``F.scaled_dot_product_attention`` on the CPU, which the
    counter misses on its own); element-wise operations, normalisation, softmax and
    interpolation are not counted (they are cheap in FLOPs, though not always in
    time). Deterministic: the same model and size give the same count on every machine.

    Args:
        model: maps (B, C, H, W) to anything.
        input_size: (C, H, W) or (B, C, H, W).
    """
    shape = _batch_shape(input_size)
    x = torch.rand(shape, device=_device_of(model))
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


class _LiveTensorBytes(TorchDispatchMode):
    """Follows every storage that an operator allocates and the largest total alive at once.

    After each aten operator, storages that were freed since the last operator are
    subtracted and the operator's new outputs added. Views and in-place results share
    a storage already seen (or one of ``ignore``: weights, input) and add nothing.
    """

    def __init__(self, ignore: Sequence[torch.Tensor]):
        super().__init__()
        self.ignore = {t.untyped_storage()._cdata for t in ignore}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t._is_view():
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in self.ignore:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_activation_memory(model: nn.Module, input_size: Sequence[int]) -> int:
    """Peak bytes of tensors alive at once during one inference forward pass.

    What it measures: every tensor that an operator creates during the pass
    (activations, intermediate results, the output), counted from its creation until
    it is freed, under ``torch.no_grad()`` in eval mode; the weights and the input
    are not counted, nor are scratch buffers a kernel allocates and frees inside one
    operator (e.g. an im2col buffer). It is the "activation memory" that grows with
    the image size, independent of the allocator and of the device. Training needs
    more: the activations saved for the backward pass stay alive.

    Args:
        model: maps (B, C, H, W) to a tensor or a list of tensors.
        input_size: (C, H, W) or (B, C, H, W).

    Returns:
        Peak bytes (an int).
    """
    shape = _batch_shape(input_size)
    x = torch.rand(shape, device=_device_of(model))
    tracker = _LiveTensorBytes(ignore=[x, *model.parameters(), *model.buffers()])
    with _eval_mode(model), torch.no_grad(), tracker:
        out = model(x)
    del out
    return tracker.peak


@dataclass(frozen=True)
class Latency:
    """Seconds per forward pass of one model, one value per interleaved round.

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
        """Interquartile range of the rounds: how noisy the machine was."""
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
    """CPU (or current device) latency of several models, measured in interleaved rounds.

    Every round times each model once, ``number`` forward passes in a row (chosen per
    model during the warm-up so that one timing lasts at least ``min_seconds``); the
    order of the models rotates from round to round. Interleaving makes the models
    share whatever else the machine is doing; the median over rounds ignores rounds
    hit by a burst of background work. Runs in eval mode under
    ``torch.inference_mode()`` with the current ``torch.get_num_threads()``.

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
    times: dict[str, list[float]] = {name: [] for name in names}
    number: dict[str, int] = {}
    with ExitStack() as stack, torch.inference_mode():
        for model in models.values():
            stack.enter_context(_eval_mode(model))
        for name in names:  # warm up, and pick how many passes make one timing
            for _ in range(warmup):
                start = time.perf_counter()
                models[name](inputs[name])
                elapsed = time.perf_counter() - start
            number[name] = max(1, math.ceil(min_seconds / max(elapsed, 1e-6)))
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                start = time.perf_counter()
                for _ in range(number[name]):
                    models[name](inputs[name])
                times[name].append(1e3 * (time.perf_counter() - start) / number[name])
    return {name: Latency(tuple(times[name]), torch.get_num_threads()) for name in names}


@dataclass(frozen=True)
class ModelCard:
    """The costs of one model at one input size.

    Attributes:
        name: display name.
        input_size: (B, C, H, W) the costs were measured at.
        params: number of parameters.
        gflops: GFLOPs of one forward pass over the batch (see :func:`count_gflops`).
        peak_mib: peak activation memory in MiB (see :func:`peak_activation_memory`).
        latency: CPU latency (see :func:`compare_latency`), ``None`` when not measured.
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
    """Parameters, GFLOPs, peak activation memory and CPU latency of ``model``.

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
        >>> card = model_card(nn.Conv2d(3, 8, 3, padding=1), (3, 64, 64), rounds=3)
        >>> card.params, round(card.gflops, 4), card.peak_mib
        (224, 0.0018, 0.125)
    """
    shape = _batch_shape(input_size)
    name = name or type(model).__name__
    if latency is None and rounds > 0:
        latency = compare_latency({name: model}, shape, rounds=rounds)[name]
    return ModelCard(
        name=name,
        input_size=shape,
        params=count_parameters(model),
        gflops=count_gflops(model, shape),
        peak_mib=peak_activation_memory(model, shape) / 2**20,
        latency=latency,
    )


def cards_table(cards: Sequence[ModelCard], extra: Mapping[str, Sequence[str]] | None = None) -> str:
    """A markdown table of model cards, one row per card.

    Args:
        cards: the cards, in display order.
        extra: more columns, ``{"header": [one string per card]}`` (e.g. mIoU).

    Returns:
        The table as a markdown string (``print`` it, or render it with ``IPython.display.Markdown``).
    """
    extra = dict(extra or {})
    for header, values in extra.items():
        if len(values) != len(cards):
            raise ValueError(f"extra column {header!r} has {len(values)} values for {len(cards)} cards")
    headers = ["model", "params (M)", "GFLOPs", "peak activations (MiB)", "CPU latency (ms)", *extra]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for i, c in enumerate(cards):
        row = [c.name, f"{c.params / 1e6:.2f}", f"{c.gflops:.3f}", f"{c.peak_mib:.1f}", f"{c.latency_ms:.1f}"]
        lines.append("| " + " | ".join(row + [values[i] for values in extra.values()]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- effective receptive field


@dataclass(frozen=True)
class ReceptiveField:
    """An effective receptive field.

    Attributes:
        map: (H, W) float tensor, non-negative, summing to 1: the share of the
            gradient magnitude that falls on each input pixel.
        centre: (y, x) input coordinates of the centre of the output pixel that was
            differentiated (half-integers when the output stride is even).
        radius90: radius in input pixels of the smallest disc around ``centre``
            holding 90% of the map's mass.
        output_size: (h, w) of the output map the centre pixel was taken from.
    """

    map: torch.Tensor
    centre: tuple[float, float]
    radius90: float
    output_size: tuple[int, int]

    def radius(self, fraction: float) -> float:
        """Radius in input pixels of the smallest disc around the centre that holds ``fraction`` of the mass."""
        return _mass_radius(self.map, self.centre, fraction)


def _mass_radius(erf_map: torch.Tensor, centre: tuple[float, float], fraction: float) -> float:
    """Distance from ``centre`` within which the (H, W) map holds ``fraction`` of its mass."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    H, W = erf_map.shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    dist = torch.hypot(yy - centre[0], xx - centre[1]).flatten()  # (H * W,)
    order = dist.argsort()
    mass = erf_map.double().flatten()[order].cumsum(0)  # mass inside each growing disc
    k = int(torch.searchsorted(mass, torch.tensor([fraction * float(mass[-1]) - 1e-12], dtype=torch.float64)))
    return float(dist[order][min(k, len(order) - 1)])


def effective_receptive_field(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    n: int = 16,
    batch_size: int = 8,
    select: Callable[[object], torch.Tensor] | None = None,
    seed: int = 0,
    inputs: torch.Tensor | None = None,
) -> ReceptiveField:
    """The gradient-based effective receptive field of the centre output pixel.

    For each of ``n`` random inputs x (uniform in [0, 1], like the book's images), the
    output map y (B, K, h, w) is reduced to the centre pixel summed over channels,
    s = sum_k y[k, h // 2, w // 2], and the map is |ds/dx| summed over input channels.
    The maps are averaged over the inputs and normalised to sum 1. The model runs in
    eval mode (BatchNorm with running statistics, so the samples of a batch do not
    interact) and is left in the mode it was in.

    Args:
        model: maps (B, C, H, W) to a (B, K, h, w) map, or to anything ``select`` turns into one.
        input_size: (C, H, W).
        n: number of random inputs averaged, >= 1.
        batch_size: inputs per backward pass.
        select: picks the map from the model's output, e.g. ``lambda features: features[-1]``
            for an encoder returning a feature list; default: the output itself.
        seed: seed of the random inputs.
        inputs: (N, C, H, W) images to average over instead of random inputs (a trained
            model's gradients are more telling on the images it was trained for); then
            ``n`` is ignored and ``input_size`` must match.

    Returns:
        A :class:`ReceptiveField` with the (H, W) map and its 90% radius.

    Raises:
        ValueError: bad ``input_size`` or ``n``, an output that is not (B, K, h, w), or an
            output that does not depend on the input.

    Example:
        >>> erf = effective_receptive_field(nn.Conv2d(3, 1, 5, padding=2), (3, 32, 32), n=2)
        >>> erf.map.shape, erf.radius90 <= 2 * 2**0.5
        (torch.Size([32, 32]), True)
    """
    if len(input_size) != 3 or min(input_size) < 1:
        raise ValueError(f"input_size must be (C, H, W) with positive entries, got {tuple(input_size)}")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    C, H, W = (int(s) for s in input_size)
    if inputs is not None:
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != (C, H, W) or len(inputs) == 0:
            raise ValueError(f"inputs must be (N, {C}, {H}, {W}) with N >= 1 to match input_size, got {tuple(inputs.shape)}")
        n = len(inputs)
    device = _device_of(model)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(H, W, dtype=torch.float64)
    with _eval_mode(model), torch.enable_grad():
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = torch.rand(b, C, H, W, generator=generator) if inputs is None else inputs[start : start + b].detach().float()
            x = x.to(device).requires_grad_(True)  # (b, C, H, W)
            out = model(x)
            y = select(out) if select is not None else out
            if not isinstance(y, torch.Tensor) or y.ndim != 4 or y.shape[0] != b:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(
                    f"the output must be a (B, K, h, w) map, got {got}; pass select= to pick one, "
                    "e.g. select=lambda features: features[-1] for an encoder"
                )
            h, w = y.shape[-2:]
            (grad,) = torch.autograd.grad(y[:, :, h // 2, w // 2].sum(), x)  # (b, C, H, W)
            total += grad.abs().sum(dim=(0, 1)).double().cpu()
    if total.sum() == 0:
        raise ValueError("the centre output pixel does not depend on the input (all gradients are zero)")
    erf_map = (total / total.sum()).float()
    centre = ((h // 2 + 0.5) * H / h - 0.5, (w // 2 + 0.5) * W / w - 0.5)
    return ReceptiveField(erf_map, centre, _mass_radius(erf_map, centre, 0.9), (int(h), int(w)))


def show_receptive_fields(fields: Mapping[str, ReceptiveField], log: bool = True, size: float = 2.2, columns: int | None = None):
    """One panel per receptive field, with the disc that holds 90% of its mass.

    Args:
        fields: ``{"title": ReceptiveField}``.
        log: colour by log10 of the map (shows the faint far-away floor that a linear scale hides).
        size: inches per panel.
        columns: panels per row; default: all in one row.

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    if not fields:
        raise ValueError("fields is empty: pass {'title': ReceptiveField, ...}")
    columns = columns or len(fields)
    rows = math.ceil(len(fields) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows + 0.2), squeeze=False)
    for ax in axes.flat[len(fields) :]:
        ax.set_axis_off()
    for ax, (title, field) in zip(axes.flat, fields.items()):
        image = field.map.clamp(min=1e-12).log10() if log else field.map
        ax.imshow(image.numpy(), cmap="magma", vmin=float(image.max()) - 4 if log else None)
        ax.add_patch(Circle(field.centre[::-1], field.radius90, fill=False, color="cyan", lw=1))
        ax.set_title(f"{title}\nr90 = {field.radius90:.0f} px", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig
