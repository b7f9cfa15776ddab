"""segnotes.upsample against independent references: hand-computed values, scikit-image, the Keys cubic kernel.

No test compares a mode with the ``F.interpolate`` call the module itself makes: the
references are values worked out by hand on a 4-pixel row, scikit-image's ``resize``
(which defines nearest-exact and bilinear with the same pixel-centre rule) and
``np.repeat`` for nearest upsampling.
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch
from skimage.transform import resize as sk_resize

from segnotes.upsample import (
    INTERPOLATION_MODES,
    MODES,
    UpConv,
    UpsampleMode,
    bilinear_kernel,
    make_upsample,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROW = torch.arange(4.0).view(1, 1, 1, 4)  # the row 0, 1, 2, 3


def _row(mode: str, width: int) -> list[float]:
    y = make_upsample(mode)(ROW, (1, width))
    return [round(v, 4) for v in y.flatten().tolist()]


def _keys(d: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (IEEE TASSP 1981) with PyTorch's a = -0.75."""
    d = abs(d)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0


def _sk(x: torch.Tensor, size: tuple[int, int], order: int) -> torch.Tensor:
    """scikit-image resize of every (h, w) plane of (B, C, h, w), no anti-aliasing, edge-replicating."""
    planes = x.double().numpy().reshape(-1, *x.shape[-2:])
    out = [sk_resize(p, size, order=order, mode="edge", anti_aliasing=False) for p in planes]
    return torch.from_numpy(np.stack(out)).reshape(*x.shape[:-2], *size).float()


def test_the_mode_type_is_one_literal_listing_every_mode():
    assert MODES == get_args(UpsampleMode)
    assert set(INTERPOLATION_MODES) < set(MODES)
    assert len(MODES) == len(set(MODES)) == 7


# Hand-computed: output pixel o samples source position (o + 0.5) / s - 0.5 (bilinear, clamped at 0),
# floor(o / s) (nearest), floor((o + 0.5) / s) (nearest-exact), the covered input interval's mean (area).
@pytest.mark.parametrize(
    "mode, width, expected",
    [
        ("nearest", 8, [0, 0, 1, 1, 2, 2, 3, 3]),
        ("nearest-exact", 8, [0, 0, 1, 1, 2, 2, 3, 3]),
        ("area", 8, [0, 0, 1, 1, 2, 2, 3, 3]),
        ("bilinear", 8, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3]),
        ("nearest", 6, [0, 0, 1, 2, 2, 3]),
        ("nearest-exact", 6, [0, 1, 1, 2, 3, 3]),
        ("area", 6, [0, 0.5, 1, 2, 2.5, 3]),
        ("bilinear", 6, [0, 0.5, 1.1667, 1.8333, 2.5, 3]),
    ],
)
def test_interpolation_modes_give_the_hand_computed_values(mode, width, expected):
    assert _row(mode, width) == pytest.approx(expected, abs=1e-4)


def test_bicubic_is_keys_cubic_convolution_with_a_minus_three_quarters():
    x = (torch.arange(8.0) ** 2).view(1, 1, 1, 8)  # a parabola: cubic convolution does not reproduce it exactly
    y = make_upsample("bicubic")(x, (1, 16)).flatten()
    for o in range(4, 12):  # output pixels whose four source neighbours are all inside the row
        t = (o + 0.5) / 2 - 0.5
        i = int(np.floor(t))
        expected = sum(_keys(t - j) * float(x[0, 0, 0, j]) for j in range(i - 1, i + 3))
        assert float(y[o]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("size", [(10, 14), (9, 13), (11, 15), (23, 8)])
def test_nearest_exact_and_bilinear_match_scikit_image_at_odd_sizes(size):
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(make_upsample("nearest-exact")(x, size), _sk(x, size, order=0))
    torch.testing.assert_close(make_upsample("bilinear")(x, size), _sk(x, size, order=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(10, 14), (9, 13), (11, 15), (23, 8)])
def test_every_mode_reaches_any_target_size(mode, size):
    y = make_upsample(mode, channels=4)(torch.randn(2, 4, 5, 7), size)
    assert y.shape == (2, 4, *size)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [2, 3])
def test_default_target_is_scale_times_input(mode, scale):
    assert make_upsample(mode, 3, scale)(torch.randn(1, 3, 5, 4)).shape == (1, 3, 5 * scale, 4 * scale)


def test_interpolation_modes_have_no_parameters():
    assert all(sum(p.numel() for p in make_upsample(m).parameters()) == 0 for m in INTERPOLATION_MODES)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_transposed_starts_as_exact_bilinear_borders_included(scale):
    x = torch.rand(2, 3, 7, 6, generator=torch.Generator().manual_seed(1))
    y = make_upsample("transposed", 3, scale)(x)  # every pixel compared, the first and last rows/columns too
    torch.testing.assert_close(y, _sk(x, (7 * scale, 6 * scale), order=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [2, 3])
def test_pixelshuffle_icnr_starts_as_exact_nearest(scale):
    x = torch.randn(2, 3, 7, 6)
    expected = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)  # every pixel copied s x s times
    assert torch.equal(make_upsample("pixelshuffle", 3, scale)(x), expected)


def test_bilinear_kernel_is_the_known_2x_kernel():
    w = torch.tensor([0.25, 0.75, 0.75, 0.25])  # distances 1.5, 0.5, 0.5, 1.5 from the centre, tent of radius 2
    assert torch.equal(bilinear_kernel(2), torch.outer(w, w))


def test_learnable_modes_crop_the_ceil_row_and_resize_otherwise():
    x = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    for mode in ("pixelshuffle", "transposed"):
        up = make_upsample(mode, 2)
        full = up(x)  # (10, 10)
        assert torch.equal(up(x, (9, 10)), full[..., :9, :])  # odd skip of a stride-2 conv: crop
        assert torch.equal(up(x, (10, 9)), full[..., :, :9])
        torch.testing.assert_close(up(x, (13, 7)), _sk(full.detach(), (13, 7), order=1), atol=1e-5, rtol=0)


def test_learnable_modes_are_depthwise_and_trainable():
    assert sum(p.numel() for p in make_upsample("transposed", 8).parameters()) == 8 * 4 * 4
    ps = make_upsample("pixelshuffle", 8)
    assert sum(p.numel() for p in ps.parameters()) == 8 * 4 * 9 + 8 * 4
    assert all(p.requires_grad for p in ps.parameters())


def test_upconv_reduces_channels_with_the_unet_papers_parameter_count():
    up = UpConv(1280, 256)
    assert sum(p.numel() for p in up.parameters()) == 1280 * 256 * 2 * 2 + 256  # 1.31M, not 26M
    assert up(torch.zeros(1, 1280, 2, 3)).shape == (1, 256, 4, 6)


@pytest.mark.parametrize("init", ["icnr", "random"])
def test_upconv_is_a_1x1_conv_followed_by_pixel_shuffle(init):
    torch.manual_seed(0)
    up, x = UpConv(6, 4, init=init), torch.randn(2, 6, 5, 7)
    w = up.conv.weight  # (C_in, C_out, s, s) -> 1x1 conv weight (C_out * s * s, C_in, 1, 1)
    conv = torch.nn.Conv2d(6, 4 * 4, 1)
    with torch.no_grad():
        conv.weight.copy_(w.permute(1, 2, 3, 0).reshape(16, 6, 1, 1))
        conv.bias.copy_(up.conv.bias.repeat_interleave(4))
    torch.testing.assert_close(up(x), torch.nn.PixelShuffle(2)(conv(x)), atol=1e-5, rtol=0)


def test_upconv_icnr_starts_as_nearest_and_random_init_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 5, 5)
    icnr, random = UpConv(6, 4), UpConv(6, 4, init="random")
    for up, is_nearest in ((icnr, True), (random, False)):
        y = up(x)
        assert torch.equal(y, y[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1)) is is_nearest


def test_bad_arguments_raise_value_errors_listing_the_options():
    with pytest.raises(ValueError, match=r"mode must be one of \('nearest'.*'pixelshuffle'\), got 'linear'"):
        make_upsample("linear")
    with pytest.raises(ValueError, match="pass the input's channel count"):
        make_upsample("transposed")
    with pytest.raises(ValueError, match="scale must be an integer >= 2"):
        make_upsample("nearest", scale=1)
    with pytest.raises(ValueError, match="scale must be an integer >= 2"):
        make_upsample("pixelshuffle", 4, scale=2.0)
    with pytest.raises(ValueError, match="init must be one of"):
        UpConv(4, 2, init="kaiming")
    with pytest.raises(ValueError, match="out_channels must be a positive integer"):
        UpConv(4, 0)
