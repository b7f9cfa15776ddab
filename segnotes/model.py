"""The one contract every segmentation model in the book follows: encoder -> decoder -> head.

A segmentation model maps a batch of images (B, C, H, W) to per-pixel class logits.
Every model in segnotes (UNet, UNet++, SegFormer, the ViT heads) is a
:class:`SegmentationModel` made of three parts:

* an **encoder** turns the image into a list of feature maps (a feature pyramid);
* a **decoder** turns that list into one map (B, D, h, w);
* a **head** turns that map into logits (B, num_classes, h', w').

``forward`` is ``forward_head(forward_features(x))`` and nothing else, so a chapter
that swaps a part swaps exactly that part. The input is checked once, here, before
any part sees it.

Two kinds of encoder fill the slot. Pyramid models (UNet, UNet++, DeepLabV3+, SegFormer)
take theirs through :func:`segnotes.encoders.as_encoder` (a timm name, a backbone that
declares ``feature_channels``/``feature_strides``, or an ``Encoder``), build their decoder
from its channels and strides, and check both on every call
(:func:`segnotes.encoders.check_features`). The plain-ViT models (SETR) are the other
kind: their ``ViTBackbone`` returns maps at one stride, the patch size
(:class:`segnotes.dpt.ViTPyramid` turns a ViT into a pyramid). Every model declares
``output_stride``, the stride of its logits: (B, K, ceil(H/s), ceil(W/s)); the training
loop checks it.

The helpers below hold rules that several models share, written once:
:func:`check_images` (what a batch must look like), :func:`check_divisible` and
:func:`pad_to_multiple` (input sizes a strided encoder accepts), :func:`resize`
(bilinear resizing that is skipped when the size already matches) and
:func:`check_choice` (string options typed as ``Literal``).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .init import init_decoder, init_head

__all__ = [
    "SegmentationModel",
    "SegmentationHead",
    "check_images",
    "check_divisible",
    "check_choice",
    "check_positive",
    "eval_mode",
    "pad_to_multiple",
    "resize",
]

T = TypeVar("T")


def check_choice(name: str, value: T, options: Any) -> T:
    """Return ``value`` if it is one of ``options`` (a ``Literal`` type or a sequence), else raise.

    Raises:
        ValueError: naming the argument, the value given and the allowed values.

    Example:
        >>> check_choice("mode", "bilinear", Literal["nearest", "bilinear"])
        'bilinear'
    """
    allowed = get_args(options) or tuple(options)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_positive(name: str, value: int) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer (NumPy's too), else raise a ``ValueError``.

    Example:
        >>> check_positive("epochs", np.int64(3))  # doctest: +SKIP
        3
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_images(
    x: torch.Tensor, in_channels: int, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> None:
    """Raise a ``ValueError`` that says how to fix ``x`` unless it is a float (B, in_channels, H, W) batch.

    Args:
        x: the batch.
        in_channels: the channel count the model expects.
        dtype, device: if given, the model's parameter dtype and device, which ``x`` must
            match (a float64 or float16 batch into a float32 model, or a CPU batch into a
            CUDA model, fails deep inside the first layer otherwise). The dtype is not
            checked under autocast, which casts inputs itself.

    Example:
        >>> check_images(torch.zeros(2, 3, 32, 32), in_channels=3)  # passes silently
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor batch, got {type(x).__name__}; convert with torch.as_tensor(x)")
    if x.ndim != 4:
        hint = "; add a batch dimension with x[None]" if x.ndim == 3 else ""
        raise ValueError(f"expected a (B, {in_channels}, H, W) batch, got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise ValueError(
            f"expected a floating-point batch, got dtype {x.dtype}; convert images with x.float() / 255 for uint8 data"
        )
    if x.shape[1] != in_channels and x.shape[-1] == in_channels:
        raise ValueError(
            f"expected a channels-first (B, {in_channels}, H, W) batch, got shape {tuple(x.shape)}; "
            "move the channels with x.permute(0, 3, 1, 2)"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"expected {in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}); "
            f"build the model with in_channels={x.shape[1]} or convert the images"
        )
    if dtype is not None and x.dtype != dtype and not _autocast_enabled(x.device.type):
        fix = {torch.float32: "x.float()", torch.float64: "x.double()", torch.float16: "x.half()"}.get(
            dtype, "x.to(dtype)"
        )
        raise ValueError(f"the batch is {x.dtype} but the model's weights are {dtype}; pass {fix}")
    if device is not None and x.device != device:
        raise ValueError(f"the batch is on {x.device} but the model is on {device}; pass x.to({str(device)!r})")


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast (mixed precision) is on for ``device_type``; it casts every layer's inputs itself."""
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # torch < 2.4 takes no device type and checks CUDA only
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _parameter(module: nn.Module) -> torch.Tensor | None:
    """The module's first floating-point parameter or buffer (its dtype and device), if any."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t
    return None


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (B, C, H, W) on the bottom and right to multiples of ``multiple``.

    Returns:
        The padded batch and the original ``(H, W)``, to crop the prediction back with
        ``y[..., :H, :W]``.

    Example:
        >>> pad_to_multiple(torch.zeros(1, 3, 30, 33), 32)[0].shape
        torch.Size([1, 3, 32, 64])
    """
    multiple = check_positive("multiple", multiple)
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple)), (h, w)


def check_divisible(x: torch.Tensor, multiple: int, what: str) -> None:
    """Raise a ``ValueError`` that says how to pad ``x`` unless H and W are multiples of ``multiple``.

    Args:
        x: a (B, C, H, W) batch.
        multiple: the required multiple, e.g. an encoder's output stride or a ViT's patch size.
        what: what imposes it, for the message, e.g. ``"the encoder's output stride"``.
    """
    multiple = check_positive("multiple", multiple)
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"input size {h}x{w} is not a multiple of {what} ({multiple}); pad it to "
            f"{math.ceil(h / multiple) * multiple}x{math.ceil(w / multiple) * multiple}, "
            f"e.g. with segnotes.model.pad_to_multiple(x, {multiple}), and crop the prediction back"
        )


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) of (B, C, h, w) to ``size``; the identity when it already matches.

    Skipping the call is not only faster: ``F.interpolate`` to the same size is the
    identity anyway, so the result is the same either way.
    """
    size = (int(size[0]), int(size[1]))
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"size must be two positive integers (height, width), got {size}")
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (BatchNorm uses running statistics, dropout is off), then in its old mode again.

    Measurements (cost, receptive fields, traces) must not change the model they measure.

    Example:
        >>> with eval_mode(model):  # doctest: +SKIP
        ...     y = model(x)
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class SegmentationHead(nn.Sequential):
    """The last layer: a convolution to class logits, then (optionally) bilinear upsampling.

    Args:
        in_channels: channels of the decoder's map.
        num_classes: output channels (logits), at least 1.
        kernel_size: 1 (the book's default) or 3 (segmentation_models.pytorch's default).
        upsampling: factor of the final bilinear upsampling; 1 keeps the decoder's resolution.

    Shapes:
        (B, in_channels, h, w) -> (B, num_classes, h * upsampling, w * upsampling).

    Example:
        >>> SegmentationHead(16, 5)(torch.zeros(1, 16, 8, 8)).shape
        torch.Size([1, 5, 8, 8])
    """

    def __init__(self, in_channels: int, num_classes: int, kernel_size: int = 1, upsampling: int = 1):
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        check_choice("kernel_size", kernel_size, (1, 3))
        check_positive("upsampling", upsampling)
        conv = nn.Conv2d(in_channels, num_classes, kernel_size, padding=kernel_size // 2)
        up = nn.Upsample(scale_factor=upsampling, mode="bilinear") if upsampling > 1 else nn.Identity()
        super().__init__(conv, up)


class SegmentationModel(nn.Module):
    """Encoder -> decoder -> head: the contract of every segmentation model in the book.

    Args:
        encoder: images (B, in_channels, H, W) -> a list of feature maps. It checks what
            only it knows (e.g. that H and W are multiples of its output stride).
        decoder: the list of feature maps -> one map (B, D, h, w).
        head: (B, D, h, w) -> logits (B, num_classes, h', w').
        in_channels: channels of the images the model accepts; checked on every call.

    Shapes:
        (B, in_channels, H, W) -> (B, num_classes, h', w'): the input size for UNets and
        the ViT heads, H/4 x W/4 for SegFormer (its logits are resized by the loss).

    Example:
        >>> model = SegmentationModel(encoder, decoder, head, in_channels=3)  # doctest: +SKIP
        >>> model(torch.randn(1, 3, 64, 64)).shape  # doctest: +SKIP
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, *, in_channels: int = 3):
        super().__init__()
        self.in_channels = check_positive("in_channels", in_channels)
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.init_weights()

    def init_weights(self) -> None:
        """Start the decoder and head as segmentation_models.pytorch does (:mod:`segnotes.init`).

        The encoder keeps its own initialisation (timm's, torchvision's, or its pretrained
        weights). Models matched against another library override this (SegFormer).
        """
        init_decoder(self.decoder)
        init_head(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_channels, H, W) -> the decoder's map (B, D, h, w)."""
        p = _parameter(self)
        check_images(x, self.in_channels, *((p.dtype, p.device) if p is not None else ()))
        try:
            return self.decoder(self.encoder(x))
        except ValueError as error:
            if self.training and str(error).startswith("Expected more than 1 value per channel when training"):
                raise ValueError(
                    f"in train mode BatchNorm needs more than one value per channel, but a batch of "
                    f"{x.shape[0]} image(s) of {x.shape[-2]}x{x.shape[-1]} reaches a 1x1 map ({error}); "
                    "train with batches of 2 or more images, use larger images, "
                    "or call model.eval() to predict"
                ) from error
            raise

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's map (B, D, h, w) -> logits (B, num_classes, h', w')."""
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
