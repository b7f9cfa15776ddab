"""Effective receptive fields on models whose answer is known, and measures that can fail."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from einops import rearrange
from torch import nn

from segnotes.erf import ReceptiveField, effective_receptive_field
from segnotes.viz import show_receptive_fields


class PixelAttention(nn.Module):
    """One global self-attention layer over all pixels: every output sees every input."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 1)
        self.attn = nn.MultiheadAttention(dim, num_heads=1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        t = rearrange(self.embed(x), "b c h w -> b (h w) c")  # (B, N, C)
        t, _ = self.attn(t, t, t)
        return rearrange(t, "b (h w) c -> b c h w", h=H, w=W)


class Blind(nn.Module):
    """An output that ignores its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 0


def conv_stack(depth: int, channels: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
    for _ in range(depth - 1):
        layers += [nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- the measures


def test_a_radius_alone_saturates_and_the_relative_radius_does_not():
    uniform = ReceptiveField.uniform((64, 64))
    # no locality at all, yet 90% of the mass lies within 36 px: "r90 >= 25 px" holds for any map
    assert uniform.radius(0.9) == pytest.approx(35.67, abs=0.01)
    assert uniform.relative_radius(0.9) == 1.0 and uniform.relative_radius(0.5) == 1.0
    # a check on the relative radius can fail: the uniform map fails "concentrated", a point passes
    point = torch.zeros(64, 64)
    point[32, 32] = 1.0
    peaked = ReceptiveField(point, (32.0, 32.0), (64, 64))
    assert not uniform.relative_radius(0.5) < 0.5
    assert peaked.relative_radius(0.5) == 0.0 and peaked.mass_within(0) == 1.0


def test_mass_within_of_a_uniform_map_is_the_area_share():
    uniform = ReceptiveField.uniform((64, 64))
    assert uniform.mass_within(8) == pytest.approx(math.pi * 8**2 / 64**2, rel=0.05)
    assert uniform.mass_within(100) == 1.0 and uniform.mass_within(0.1) == 0.0


def test_radius_fraction_must_be_a_share():
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        ReceptiveField.uniform((8, 8)).radius(0.0)


# ----------------------------------------------------------------------------- the measurement


def test_erf_of_one_conv_is_its_kernel_support():
    erf = effective_receptive_field(nn.Conv2d(3, 2, 5, padding=2), (3, 32, 32), n=3)
    assert erf.map.shape == (32, 32) and erf.centre == (16.0, 16.0) and erf.output_size == (32, 32)
    assert erf.map.sum().item() == pytest.approx(1.0)
    support = erf.map > 0
    assert support[14:19, 14:19].all() and support.sum() == 25
    assert erf.radius(1.0) == pytest.approx(2 * math.sqrt(2)) and erf.mass_within(2 * math.sqrt(2)) == pytest.approx(1)
    assert erf.relative_radius(0.9) < 0.2


def test_erf_centre_of_a_strided_output():
    # a 2x2 stride-2 conv: output pixel (8, 8) of 16x16 reads input rows and columns 16 and 17
    erf = effective_receptive_field(nn.Conv2d(3, 1, 2, stride=2), (3, 32, 32), n=2)
    assert erf.output_size == (16, 16) and erf.centre == (16.5, 16.5)
    assert (erf.map > 0).nonzero().tolist() == [[16, 16], [16, 17], [17, 16], [17, 17]]
    assert erf.radius(0.9) == pytest.approx(math.sqrt(0.5))


def test_erf_grows_with_depth_and_attention_spreads_over_everything():
    torch.manual_seed(0)
    shallow = effective_receptive_field(conv_stack(2), (3, 48, 48), n=4)
    deep = effective_receptive_field(conv_stack(8), (3, 48, 48), n=4)
    attention = effective_receptive_field(PixelAttention(), (3, 24, 24), n=4)
    assert shallow.radius(1.0) <= 2 * math.sqrt(2) < deep.radius(1.0) <= 8 * math.sqrt(2)
    assert shallow.relative_radius(0.9) < deep.relative_radius(0.9) < 0.5
    # one attention layer: every pixel gets a share, the map is not concentrated at the centre
    assert (attention.map > 0).all() and attention.relative_radius(0.9) > 0.8


def test_erf_uses_eval_mode_so_batching_does_not_matter():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    model.train()
    one = effective_receptive_field(model, (3, 16, 16), n=4, batch_size=1)
    four = effective_receptive_field(model, (3, 16, 16), n=4, batch_size=4)
    torch.testing.assert_close(one.map, four.map)
    assert model.training


def test_erf_of_an_encoder_feature_list():
    encoder = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3))
    deepest = effective_receptive_field(encoder, (3, 64, 64), n=2, select=lambda features: features[-1])
    assert deepest.output_size == (4, 4) and deepest.centre == (39.5, 39.5)


def test_erf_over_given_images():
    conv = nn.Conv2d(3, 1, 3, padding=1)
    images = torch.rand(5, 3, 16, 16)
    erf = effective_receptive_field(conv, (3, 16, 16), inputs=images, batch_size=2)
    assert (erf.map > 0).sum() == 9  # a linear layer: the gradient is the kernel, whatever the input
    with pytest.raises(ValueError, match=r"inputs must be \(N, 3, 16, 16\)"):
        effective_receptive_field(conv, (3, 16, 16), inputs=torch.rand(2, 3, 8, 8))


def test_erf_errors():
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\)"):
        effective_receptive_field(nn.Conv2d(3, 1, 1), (1, 3, 16, 16))
    with pytest.raises(ValueError, match="n and batch_size must be >= 1"):
        effective_receptive_field(nn.Conv2d(3, 1, 1), (3, 16, 16), n=0)
    encoder = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2))
    with pytest.raises(ValueError, match="pass select= to pick one"):
        effective_receptive_field(encoder, (3, 16, 16), n=1)
    with pytest.raises(ValueError, match="reduce must be one of"):
        effective_receptive_field(nn.Conv2d(3, 2, 1), (3, 16, 16), n=1, reduce="mean")
    with pytest.raises(ValueError, match="needs K >= 2 output channels"):
        effective_receptive_field(nn.Conv2d(3, 1, 1), (3, 16, 16), n=1, reduce="margin")


class Opposite(nn.Module):
    """Two logits a(x) and -a(x): their sum never depends on x, their difference does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        return torch.cat([a, -a], dim=1)


class Shifted(nn.Module):
    """Two logits that differ by a constant: the prediction never depends on x, their sum does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        return torch.cat([a, a + 1.0], dim=1)


@pytest.mark.parametrize("reduce", ["sum", "margin"])
def test_an_output_that_ignores_the_input_gives_an_empty_field_not_an_error(reduce):
    blind = nn.Sequential(Blind(), nn.Conv2d(1, 2, 1))  # two logits, neither depends on x
    erf = effective_receptive_field(blind, (3, 16, 16), n=2, reduce=reduce)
    assert erf.empty and erf.map.shape == (16, 16) and erf.map.sum() == 0
    assert math.isnan(erf.radius(0.5)) and math.isnan(erf.relative_radius(0.5)) and math.isnan(erf.mass_within(4))
    assert not erf.mass_within(4) >= 0.0  # a threshold check on an empty field prints False, it does not raise
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        erf.radius(2.0)


def test_margin_measures_what_softmax_sees_and_sum_does_not():
    torch.manual_seed(0)
    # logits a and -a: the sum is constant (empty field), the margin is 2a (the 3x3 kernel)
    assert effective_receptive_field(Opposite(), (3, 16, 16), n=2).empty
    margin = effective_receptive_field(Opposite(), (3, 16, 16), n=2, reduce="margin")
    assert not margin.empty and (margin.map > 0).sum() == 9
    # logits a and a + 1: softmax (and the margin) ignore x, the sum does not
    assert not effective_receptive_field(Shifted(), (3, 16, 16), n=2).empty
    assert effective_receptive_field(Shifted(), (3, 16, 16), n=2, reduce="margin").empty
    # on a real 2-class model the margin field is a proper map
    unet = nn.Sequential(conv_stack(3), nn.Conv2d(4, 2, 1))
    field = effective_receptive_field(unet, (3, 24, 24), n=2, reduce="margin")
    assert field.map.sum().item() == pytest.approx(1.0) and field.radius(1.0) <= 3 * math.sqrt(2)


def test_show_receptive_fields_draws_one_panel_per_field_and_a_colorbar():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = {
        f"k{k}": effective_receptive_field(nn.Conv2d(3, 1, k, padding=k // 2), (3, 16, 16), n=1) for k in (1, 3, 5)
    }
    fig = show_receptive_fields(fields, columns=2)
    assert len(fig.axes) == 5  # 4 panels (one empty) and the shared colorbar
    assert fig.axes[0].get_title().startswith("k1") and "x uniform" in fig.axes[0].get_title()
    limits = {fig.axes[i].images[0].get_clim() for i in range(3)}
    assert len(limits) == 1  # one colour scale for every panel
    plt.close(fig)
    with pytest.raises(ValueError, match="fields is empty"):
        show_receptive_fields({})
