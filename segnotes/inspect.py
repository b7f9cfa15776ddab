"""Looking inside: where a network changes resolution, and the code that does it.

:func:`trace` runs a model once with forward hooks on its named submodules and
records every output's shape, its stride relative to the input and its channel
count. Chapters use it to find a CNN's downsampling points (where UNet skips are
taken) and to show a transformer's token grid at each stage.

:func:`show_source` puts the package's own source of a class or function on the
page, so the code a chapter explains is the code it runs (one source of truth).
"""

from __future__ import annotations

import inspect as _inspect
import textwrap
from dataclasses import dataclass, field

import torch
from torch import nn

from .model import eval_mode

__all__ = ["Stage", "Trace", "trace", "source", "show_source"]


def source(obj: object, member: str | None = None) -> str:
    """The source code of a class, function or method, dedented.

    Args:
        obj: a class, function or method of segnotes (or any importable Python object).
        member: with a class, the name of one of its methods to show alone, e.g. ``"forward"``.

    Raises:
        ValueError: ``member`` is not defined on ``obj`` (names what is), or the source
            is not available (a built-in).

    Example:
        >>> source(source).splitlines()[0]
        'def source(obj: object, member: str | None = None) -> str:'
    """
    if member is not None:
        if member not in vars(obj):
            own = sorted(k for k, v in vars(obj).items() if callable(v) and not k.startswith("__"))
            raise ValueError(f"{getattr(obj, '__name__', obj)!r} defines no {member!r}; its methods are {own}")
        obj = vars(obj)[member]
    try:
        return textwrap.dedent(_inspect.getsource(obj)).rstrip()
    except (OSError, TypeError) as error:
        raise ValueError(
            f"no Python source for {obj!r} ({error}); pass a class or function defined in Python"
        ) from None


def show_source(obj: object, member: str | None = None):
    """Display :func:`source` as a highlighted Python block in a notebook.

    Returns an ``IPython.display.Markdown`` object: the last expression of a cell
    renders it (Jupyter, Colab, the built book), and its plain-text form is a
    fixed placeholder, so nbval compares it without depending on the code.

    Example:
        >>> show_source(trace)  # doctest: +SKIP
    """
    from IPython.display import Markdown

    return Markdown(f"```python\n{source(obj, member)}\n```")


@dataclass(frozen=True)
class Stage:
    """One traced submodule: its name, output shape, stride and channel count."""

    name: str
    shape: tuple[int, ...]
    stride: int | None  # input height / output height for 4-D (B, C, H, W) outputs, else None
    channels: int


@dataclass
class Trace:
    """The table returned by :func:`trace`; prints as text, indexes like a list of :class:`Stage`."""

    stages: list[Stage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, i: int) -> Stage:
        return self.stages[i]

    def __iter__(self):
        return iter(self.stages)

    def downsampling_points(self) -> list[Stage]:
        """For each stride reached, the last stage *before* the next stride increase.

        These are the places a UNet taps its skips: the highest-level feature map at
        each resolution, right before the network halves the resolution again.
        """
        points: list[Stage] = []
        spatial = [s for s in self.stages if s.stride is not None]
        for prev, nxt in zip(spatial, spatial[1:] + [None]):
            if nxt is None or nxt.stride > prev.stride:
                points.append(prev)
        return points

    def __str__(self) -> str:
        rows = [("name", "shape", "stride", "channels")]
        rows += [
            (s.name, "x".join(map(str, s.shape)), "-" if s.stride is None else str(s.stride), str(s.channels))
            for s in self.stages
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
        ]
        return "\n".join(lines)

    __repr__ = __str__


def trace(model: nn.Module, x: torch.Tensor, depth: int | None = 1, leaves: bool = False) -> Trace:
    """Run ``model(x)`` once and tabulate every named submodule's output.

    Args:
        model: any ``nn.Module``; it is run in eval mode under ``torch.no_grad`` and
            put back in its previous mode afterwards.
        x: a (B, C, H, W) input batch.
        depth: trace submodules whose dotted name has at most this many parts
            (``1``: direct children only, ``2``: their children too). ``None``: all.
        leaves: trace only modules without children (overrides ``depth``).

    Returns:
        A :class:`Trace`: one row per traced module in execution order, with the output
        shape, the stride ``H_in / H_out`` (for 4-D outputs; ``None`` otherwise, e.g. tokens)
        and the channel count (dim 1 of 4-D outputs, the last dim otherwise). Modules
        returning several tensors get one row per tensor, named ``name[i]``.

    Example:
        >>> t = trace(torchvision.models.mobilenet_v2().features, torch.randn(1, 3, 224, 224))
        >>> print(t)  # doctest: +SKIP
    """
    if x.ndim != 4:
        raise ValueError(f"trace expects a (B, C, H, W) input, got shape {tuple(x.shape)}")
    H = x.shape[-2]
    stages: list[Stage] = []

    def record(name: str, out: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor):
            return
        if out.ndim == 4:
            stride = H // out.shape[-2] if out.shape[-2] else None
            stages.append(Stage(name, tuple(out.shape), stride, out.shape[1]))
        else:
            stages.append(Stage(name, tuple(out.shape), None, out.shape[-1] if out.ndim else 1))

    def hook(name: str):
        def fn(_module, _inputs, out):
            if isinstance(out, (list, tuple)):
                for i, o in enumerate(out):
                    record(f"{name}[{i}]", o)
            else:
                record(name, out)

        return fn

    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        if leaves:
            if any(True for _ in module.children()):
                continue
        elif depth is not None and name.count(".") + 1 > depth:
            continue
        handles.append(module.register_forward_hook(hook(name)))
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return Trace(stages)
