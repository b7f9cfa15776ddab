"""Chapter 7: how much of the image one output pixel actually uses, its effective receptive field.

The *theoretical* receptive field of an output pixel is every input pixel that can
influence it; for a deep CNN it soon covers the whole image. Luo et al.,
"Understanding the Effective Receptive Field in Deep Convolutional Neural Networks",
NeurIPS 2016 (https://arxiv.org/abs/1701.04128) measure how strongly each input pixel
*does* move the output: the gradient of the centre output pixel with respect to the
input, in absolute value, averaged over inputs. It is concentrated in a small, roughly
Gaussian blob. SegFormer (Xie et al., 2021, https://arxiv.org/abs/2105.15203,
section 3.2, "Effective Receptive Field Analysis", figure 3) uses the same measurement
on Cityscapes: DeepLabV3+'s ERF stays small even at its deepest stage, MiT's stage-4
ERF is non-local, and the all-MLP head's ERF is local *and* non-local.

A radius that holds a share of the gradient mass must be read against a reference:
on a 64 px image, even a perfectly uniform map (no locality at all) puts 90% of its
mass within ~36 px of the centre, so "r90 >= 25 px" is true of every map.
:meth:`ReceptiveField.relative_radius` divides by that uniform map's radius (1 means
"as spread as a uniform map", near 0 "concentrated at the centre"), and
:meth:`ReceptiveField.mass_within` gives the share of the mass inside a disc, which
can be compared with the uniform share (the disc's area over the image's).

What is differentiated matters for logits. Softmax ignores a constant added to every
logit, so training never moves the sum of the logits; differentiating that sum
(``reduce="sum"``, right for feature maps) can measure an untrained direction, or
nothing at all. ``reduce="margin"`` differentiates what decides the prediction: the
predicted class's logit minus the mean of the others. A centre pixel whose value does
not depend on the input (a dead unit, a constant prediction) gives an *empty* field,
whose measures are ``nan``, instead of an error: a measurement on a model trained
elsewhere must not stop a notebook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .model import check_choice, eval_mode

__all__ = ["ReceptiveField", "Reduction", "effective_receptive_field"]

Reduction = Literal["sum", "margin"]


def _distances(shape: tuple[int, int], centre: tuple[float, float]) -> torch.Tensor:
    """(H, W) float64 distances of every pixel from ``centre`` (y, x)."""
    H, W = shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return torch.hypot(yy - centre[0], xx - centre[1])


def _mass_radius(erf_map: torch.Tensor, centre: tuple[float, float], fraction: float) -> float:
    """Distance from ``centre`` of the smallest disc that holds ``fraction`` of the (H, W) map's mass."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    dist = _distances(tuple(erf_map.shape), centre).flatten()  # (H * W,)
    order = dist.argsort(stable=True)
    mass = erf_map.double().flatten()[order].cumsum(0)  # mass inside each growing disc
    target = torch.tensor([fraction * float(mass[-1]) - 1e-12], dtype=torch.float64)
    k = int(torch.searchsorted(mass, target))
    return float(dist[order][min(k, len(order) - 1)])


@dataclass(frozen=True)
class ReceptiveField:
    """An effective receptive field.

    Attributes:
        map: (H, W) float tensor, non-negative, summing to 1: the share of the gradient
            magnitude that falls on each input pixel; all zeros for an *empty* field
            (:attr:`empty`), whose measures are ``nan``.
        centre: (y, x) input coordinates of the centre of the output pixel that was
            differentiated (half-integers when the output stride is even).
        output_size: (h, w) of the output map the centre pixel was taken from.
    """

    map: torch.Tensor
    centre: tuple[float, float]
    output_size: tuple[int, int]

    @classmethod
    def uniform(cls, size: Sequence[int]) -> ReceptiveField:
        """The reference with no locality at all: every pixel of an (H, W) image weighs the same.

        Example:
            >>> round(ReceptiveField.uniform((64, 64)).radius(0.9), 1)
            35.7
        """
        H, W = (int(s) for s in size)
        return cls(torch.full((H, W), 1.0 / (H * W)), ((H - 1) / 2, (W - 1) / 2), (H, W))

    @property
    def empty(self) -> bool:
        """Whether no input pixel moved the output (all gradients are zero); then every measure is ``nan``."""
        return not bool(self.map.double().sum() > 0)

    def radius(self, fraction: float) -> float:
        """Radius in input pixels of the smallest disc around the centre that holds ``fraction`` of the mass."""
        if self.empty:
            _mass_radius(torch.ones_like(self.map), self.centre, fraction)  # still validates ``fraction``
            return float("nan")
        return _mass_radius(self.map, self.centre, fraction)

    def relative_radius(self, fraction: float) -> float:
        """:meth:`radius` divided by the same radius of a uniform map with the same grid and centre.

        1.0 means the mass is as spread out as if every pixel weighed the same; 0.2 means
        the disc is five times narrower than the uniform one.
        """
        return self.radius(fraction) / _mass_radius(torch.ones_like(self.map), self.centre, fraction)

    def mass_within(self, radius: float) -> float:
        """Share of the mass within ``radius`` input pixels of the centre, in [0, 1].

        For a uniform map this is (about) the disc's area over the image's area.
        """
        if self.empty:
            return float("nan")
        inside = _distances(tuple(self.map.shape), self.centre) <= radius
        return float(self.map.double()[inside].sum() / self.map.double().sum())


def effective_receptive_field(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    n: int = 16,
    batch_size: int = 8,
    select: Callable[[object], torch.Tensor] | None = None,
    seed: int = 0,
    inputs: torch.Tensor | None = None,
    reduce: Reduction = "sum",
) -> ReceptiveField:
    """The gradient-based effective receptive field of the centre output pixel.

    For each of ``n`` random inputs x (uniform in [0, 1], like the book's images), or
    each of the given ``inputs``, the output map y (B, K, h, w) is reduced to one number
    s at the centre pixel (h // 2, w // 2), and the map is ``|ds/dx|`` summed over input
    channels. ``reduce="sum"`` takes s = sum_k y[k] (for feature maps);
    ``reduce="margin"`` takes the predicted class's logit minus the mean of the other
    logits, s = y[k*] - mean_{j != k*} y[j] with k* = argmax_k y[k] (for logits: it is
    unchanged by a constant added to every logit, which softmax ignores). The maps are
    averaged over the inputs and normalised to sum 1. The model runs in eval mode
    (BatchNorm with running statistics, so the samples of a batch do not interact) and
    is left in the mode it was in.

    Args:
        model: maps (B, C, H, W) to a (B, K, h, w) map, or to anything ``select`` turns into one.
        input_size: (C, H, W).
        n: number of random inputs averaged, >= 1.
        batch_size: inputs per backward pass, >= 1.
        select: picks the map from the model's output, e.g. ``lambda features: features[-1]``
            for an encoder returning a feature list; default: the output itself.
        seed: seed of the random inputs.
        inputs: (N, C, H, W) images to average over instead of random inputs (a trained
            model's gradients are more telling on the images it was trained for); then
            ``n`` is ignored and ``input_size`` must match.
        reduce: ``"sum"`` or ``"margin"`` (see above; ``"margin"`` needs K >= 2 channels).

    Returns:
        A :class:`ReceptiveField` with the (H, W) map; an empty one (all zeros,
        :attr:`ReceptiveField.empty`, measures ``nan``) when the centre pixel does not
        depend on the input.

    Raises:
        ValueError: bad ``input_size``, ``n`` or ``reduce``, or an output that is not
            (B, K, h, w) (with K >= 2 for ``reduce="margin"``).

    Example:
        >>> erf = effective_receptive_field(nn.Conv2d(3, 1, 5, padding=2), (3, 32, 32), n=2)
        >>> erf.map.shape, erf.radius(1.0) <= 2 * 2**0.5
        (torch.Size([32, 32]), True)
    """
    if len(input_size) != 3 or min(input_size) < 1:
        raise ValueError(f"input_size must be (C, H, W) with positive entries, got {tuple(input_size)}")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    check_choice("reduce", reduce, Reduction)
    C, H, W = (int(s) for s in input_size)
    if inputs is not None:
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != (C, H, W) or len(inputs) == 0:
            raise ValueError(
                f"inputs must be (N, {C}, {H}, {W}) with N >= 1 to match input_size, got {tuple(inputs.shape)}"
            )
        n = len(inputs)
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(H, W, dtype=torch.float64)
    with eval_mode(model), torch.enable_grad():
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            if inputs is None:
                x = torch.rand(b, C, H, W, generator=generator)
            else:
                x = inputs[start : start + b].detach().float()
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
            s = _reduce_centre(y[:, :, h // 2, w // 2], reduce)  # (b,)
            if s.requires_grad:  # else the centre pixel does not depend on x at all
                (grad,) = torch.autograd.grad(s.sum(), x)  # (b, C, H, W)
                total += grad.abs().sum(dim=(0, 1)).double().cpu()
    centre = ((h // 2 + 0.5) * H / h - 0.5, (w // 2 + 0.5) * W / w - 0.5)
    field = total / total.sum() if total.sum() > 0 else total  # all zeros: an empty field
    return ReceptiveField(field.float(), centre, (int(h), int(w)))


def _reduce_centre(centre: torch.Tensor, reduce: Reduction) -> torch.Tensor:
    """(b, K) values at the centre pixel -> (b,) numbers to differentiate (see ``reduce``)."""
    if reduce == "sum":
        return centre.sum(1)
    K = centre.shape[1]
    if K < 2:
        raise ValueError(f'reduce="margin" compares classes and needs K >= 2 output channels, got {K}; use "sum"')
    top = centre.detach().argmax(1, keepdim=True)  # (b, 1): the predicted class, a constant for autograd
    winner = centre.gather(1, top)[:, 0]  # (b,)
    return winner - (centre.sum(1) - winner) / (K - 1)
