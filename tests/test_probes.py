"""segnotes.probes: the stride ceiling, the checkerboard energy, zeroing skips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segnotes.probes import checkerboard_energy, skips_zeroed, stride_ceiling
from segnotes.resolution import block_ceiling
from segnotes.unet import MobileNetV2Backbone, unet


def _random_masks(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(6, 1, 32, 32, generator=g)
    blobs = F.avg_pool2d(noise, 5, stride=1, padding=2)[:, 0]
    return (blobs > 0.55).long()


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_nearest_ceiling_is_the_exact_block_ceiling(stride):
    masks = _random_masks()
    exact = block_ceiling(masks, stride)
    assert stride_ceiling(masks, stride, "nearest") == pytest.approx(exact)


def test_ceiling_of_a_line_is_one_over_the_stride():
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[:, 4] = 1
    for stride in (2, 4, 8):
        assert stride_ceiling(masks, stride) == pytest.approx(1 / stride)
    assert stride_ceiling(masks, 1) == 1.0


def test_bilinear_oracle_draws_a_line_between_cells_better_than_nearest():
    masks = torch.zeros(1, 32, 32, dtype=torch.long)
    masks[0, :, 9] = 1  # a vertical line off the cell centres
    assert stride_ceiling(masks, 2, "bilinear") >= stride_ceiling(masks, 2, "nearest")


def test_ceiling_rejects_bad_input():
    masks = torch.zeros(1, 12, 12, dtype=torch.long)
    with pytest.raises(ValueError, match="multiple of stride"):
        stride_ceiling(masks, 8)
    with pytest.raises(ValueError, match="positive integer"):
        stride_ceiling(masks, 0)
    with pytest.raises(ValueError, match="mode"):
        stride_ceiling(masks, 2, "bicubic")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        stride_ceiling(masks[0], 2)


def test_checkerboard_energy():
    board = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)
    assert checkerboard_energy(board) == pytest.approx(1.0)
    assert checkerboard_energy(torch.ones(8, 8)) == 0.0
    x = torch.randn(2, 3, 8, 8)
    nearest = F.interpolate(x, scale_factor=2, mode="nearest")
    assert checkerboard_energy(nearest) < 1e-12  # repeated pairs: no power at Nyquist
    torch.manual_seed(0)
    up = nn.ConvTranspose2d(3, 3, 3, stride=2, padding=1, output_padding=1)
    with torch.no_grad():
        assert checkerboard_energy(up(x)) > 0.01
    with pytest.raises(ValueError, match="even"):
        checkerboard_energy(torch.ones(7, 8))


def test_skips_zeroed_removes_a_skip_and_restores_it():
    torch.manual_seed(0)
    model = unet("book", MobileNetV2Backbone(), num_classes=2).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with skips_zeroed(model, (2,)):
            maps = model.encoder(x)
            dropped = model(x)
        after = model(x)
    assert torch.equal(before, after)  # the hook is gone
    assert not torch.equal(before, dropped)
    assert maps[1].abs().sum() == 0 and maps[2].abs().sum() > 0
    with pytest.raises(ValueError, match="not skips"):
        with skips_zeroed(model, (32,)):
            pass
    with pytest.raises(ValueError, match="encoder"):
        with skips_zeroed(nn.Conv2d(3, 3, 1), (2,)):
            pass
