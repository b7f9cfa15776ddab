"""One matrix over every model of the book, in timm's style: shapes, gradients, bad inputs.

Each model is built tiny (a few thousand to a few hundred thousand parameters) so the
whole matrix runs in seconds; what is checked is the wiring, which does not depend on size.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segnotes.deeplab import DeepLabV3Plus
from segnotes.mit import mit
from segnotes.segformer import segformer
from segnotes.setr import SetrMla, SetrNaive, SetrPup
from segnotes.unet import Unet, UnetPlusPlus
from segnotes.vit import ViTBackbone, vit

pytestmark = pytest.mark.usefixtures("one_thread")
K = 3  # classes


class TinyCNN(nn.Module):
    """Five stride-2 conv stages: a CNN-style backbone (strides 2..32) in a few thousand parameters."""

    feature_channels, feature_strides = [4, 8, 8, 16, 16], [2, 4, 8, 16, 32]

    def __init__(self):
        super().__init__()
        ins = [3, *self.feature_channels[:-1]]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), nn.ReLU())
            for i, o in zip(ins, self.feature_channels)
        )

    def forward(self, x):
        maps = []
        for stage in self.stages:
            maps.append(x := stage(x))
        return maps


def _tiny_mit(**kwargs):
    return segformer("b0", num_classes=K, depths=(1, 1, 1, 1), decoder_dim=16, drop_path_rate=0.0, **kwargs)


# name -> (builder, odd sizes supported)
MODELS = {
    "Unet": (lambda: Unet(TinyCNN(), num_classes=K, decoder_channels=(16, 8, 8, 4, 4)), False),
    "UnetPlusPlus": (lambda: UnetPlusPlus(TinyCNN(), num_classes=K, decoder_channels=(16, 8, 8, 4, 4)), False),
    "DeepLabV3Plus": (
        lambda: DeepLabV3Plus(
            TinyCNN(), num_classes=K, encoder_output_stride=32, decoder_channels=8, decoder_atrous_rates=(1, 2, 3)
        ),
        False,
    ),
    "DeepLabV3Plus-dilated": (
        lambda: DeepLabV3Plus("resnet10t", num_classes=K, decoder_channels=8, decoder_atrous_rates=(1, 2, 3)),
        False,
    ),
    "SegFormer": (_tiny_mit, True),
    "SegFormer-CNN": (lambda: segformer("b0", num_classes=K, decoder_dim=16, encoder=TinyCNN()), False),
    "SetrNaive": (lambda: SetrNaive(vit("book", num_classes=0), K, channels=8), False),
    "SetrPup": (lambda: SetrPup(vit("book", num_classes=0), K, channels=8), False),
    "SetrMla": (lambda: SetrMla(vit("book", num_classes=0), K, channels=8), False),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    build, odd = MODELS[request.param]
    torch.manual_seed(0)
    return build(), odd


def _expected(model, h, w):
    s = getattr(model, "output_stride", 1)  # the logits' stride, declared by the model
    return (2, K, -(-h // s), -(-w // s))


def test_forward_shapes_even_and_odd(case):
    model, odd = case
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32)).shape == _expected(model, 64, 32)
        if odd:
            assert model(torch.randn(2, 3, 61, 45)).shape == _expected(model, 61, 45)
        else:
            with pytest.raises(ValueError, match="pad it to"):
                model(torch.randn(2, 3, 61, 45))


# Parameters a model holds but never uses. SETR-MLA reads intermediate blocks before the ViT's final
# LayerNorm, which stays in the model unused (reported; segnotes.setr decides whether to drop it).
UNUSED = {"SetrMla": ["encoder.vit.norm.weight", "encoder.vit.norm.bias"]}


def test_backward_reaches_every_parameter(case, request):
    model, _ = case
    model.train().zero_grad()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    assert missing == UNUSED.get(request.node.callspec.params["case"], []), f"no gradient for {missing[:5]}"


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(3, 64, 64), "add a batch dimension"),
        (torch.randn(2, 1, 64, 64), "input channels"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), r"x.float\(\) / 255"),
        (torch.randn(2, 3, 64, 64).numpy(), "torch.as_tensor"),
    ],
)
def test_bad_inputs_raise_value_errors(case, x, message):
    model, _ = case
    with pytest.raises(ValueError, match=message):
        model(x)


@pytest.mark.parametrize("build", [lambda: mit("b0"), lambda: ViTBackbone(vit("book", num_classes=0))])
def test_standalone_transformer_encoders_name_the_dtype_to_pass(build):
    """MiT and a ViT used on their own (outside SegmentationModel) check the batch's dtype too."""
    with pytest.raises(ValueError, match=r"pass x\.float\(\)"):
        build()(torch.randn(1, 3, 64, 64, dtype=torch.float64))
