"""How a model's weights start: the schemes of the libraries the book's models are checked against.

PyTorch's own defaults (``kaiming_uniform_(a=sqrt(5))`` for every convolution and linear
layer, a uniform bias) are nobody's published recipe. Each part of a segnotes model starts
as it does in the library it matches, so a from-scratch run in the book trains like the
library's would:

* **segmentation_models.pytorch** (UNet, UNet++, DeepLabV3+, and the decoder and head of
  every :class:`~segnotes.model.SegmentationModel` unless it says otherwise):
  :func:`init_decoder` and :func:`init_head`, SMP's ``initialize_decoder`` /
  ``initialize_head``. Kaiming-uniform for the decoder's ReLU convolutions keeps the
  variance of activations constant through them; Xavier-uniform for the head keeps the
  first logits small and class-balanced.
* **transformers** (SegFormer: the MiT encoder, the all-MLP decoder and the classifier):
  :func:`init_normal`, ``_init_weights`` with ``initializer_range=0.02``: every linear and
  convolution weight drawn from N(0, 0.02²), biases 0.
* Norm layers start as the identity everywhere (weight 1, bias 0).

Encoders from timm (ResNet, MobileNetV2, ConvNeXt, ViT, ...) and torchvision keep the
initialisation their library gives them; a pretrained encoder keeps its weights.
"""

from __future__ import annotations

from torch import nn

__all__ = ["init_decoder", "init_head", "init_normal"]

_NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


def _identity_norm(m: nn.Module) -> None:
    if getattr(m, "weight", None) is not None:  # affine=False norms have no parameters
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _zero_bias(m: nn.Module) -> None:
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def init_decoder(module: nn.Module) -> None:
    """SMP's decoder scheme, in place: convolutions Kaiming-uniform (fan in, ReLU), linear layers
    Xavier-uniform, biases 0, norms the identity.

    Example:
        >>> conv = nn.Conv2d(16, 8, 3); init_decoder(conv); bool((conv.bias == 0).all())
        True
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            _zero_bias(m)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            _zero_bias(m)
        elif isinstance(m, _NORMS):
            _identity_norm(m)


def init_head(module: nn.Module) -> None:
    """SMP's head scheme, in place: convolutions and linear layers Xavier-uniform, biases 0.

    Example:
        >>> head = nn.Conv2d(16, 2, 1); init_head(head); bool((head.bias == 0).all())
        True
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            _zero_bias(m)


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """transformers' scheme, in place: linear and convolution weights N(0, std²), biases 0,
    norms the identity (``std`` is the config's ``initializer_range``).

    Example:
        >>> fc = nn.Linear(256, 256); init_normal(fc); round(fc.weight.std().item(), 2)
        0.02
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            _zero_bias(m)
        elif isinstance(m, _NORMS):
            _identity_norm(m)
