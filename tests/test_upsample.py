"""segnotes.upsample: every mode's shapes (odd sizes included), exact initialisations, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segnotes.upsample import INTERPOLATION_MODES, MODES, bilinear_kernel, make_upsample


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(10, 14), (9, 13), (11, 15), (23, 8)])
def test_every_mode_reaches_any_target_size(mode, size):
    x = torch.randn(2, 4, 5, 7)
    y = make_upsample(mode, channels=4)(x, size)
    assert y.shape == (2, 4, *size)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [2, 3])
def test_default_target_is_scale_times_input(mode, scale):
    assert make_upsample(mode, 3, scale)(torch.randn(1, 3, 5, 4)).shape == (1, 3, 5 * scale, 4 * scale)


def test_default_mode_is_nearest_like_smp():
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(make_upsample()(x), F.interpolate(x, scale_factor=2, mode="nearest"))


@pytest.mark.parametrize("mode", INTERPOLATION_MODES)
def test_interpolation_modes_equal_f_interpolate_with_align_corners_false(mode):
    x = torch.randn(1, 3, 6, 5)
    up = make_upsample(mode)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    assert torch.equal(up(x, (11, 9)), F.interpolate(x, size=(11, 9), mode=mode, **kwargs))
    assert sum(p.numel() for p in up.parameters()) == 0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_transposed_starts_as_exact_bilinear_borders_included(scale):
    x = torch.randn(2, 3, 7, 6)
    y = make_upsample("transposed", 3, scale)(x)
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("scale", [2, 3])
def test_pixelshuffle_icnr_starts_as_exact_nearest(scale):
    x = torch.randn(2, 3, 7, 6)
    y = make_upsample("pixelshuffle", 3, scale)(x)
    assert torch.equal(y, F.interpolate(x, scale_factor=scale, mode="nearest"))


def test_bilinear_kernel_is_the_known_2x_kernel():
    w = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.equal(bilinear_kernel(2), torch.outer(w, w))


def test_learnable_modes_crop_the_ceil_row_and_resize_otherwise():
    x = torch.randn(1, 2, 5, 5)
    for mode, ref_mode in (("pixelshuffle", "nearest"), ("transposed", "bilinear")):
        up = make_upsample(mode, 2)
        full = up(x)  # (10, 10)
        assert torch.equal(up(x, (9, 10)), full[..., :9, :])  # odd skip of a stride-2 conv: crop
        resized = F.interpolate(full, size=(13, 7), mode="bilinear", align_corners=False)
        assert torch.equal(up(x, (13, 7)), resized), ref_mode


def test_learnable_modes_are_depthwise_and_trainable():
    up = make_upsample("transposed", 8)
    assert sum(p.numel() for p in up.parameters()) == 8 * 4 * 4
    ps = make_upsample("pixelshuffle", 8)
    assert sum(p.numel() for p in ps.parameters()) == 8 * 4 * 9 + 8 * 4
    assert all(p.requires_grad for p in ps.parameters())


def test_bad_arguments_raise_value_errors_listing_the_options():
    with pytest.raises(ValueError, match="choose one of"):
        make_upsample("linear")
    with pytest.raises(ValueError, match="channel"):
        make_upsample("transposed")
    with pytest.raises(ValueError, match="scale"):
        make_upsample("nearest", scale=1)
