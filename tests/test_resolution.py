"""segnotes.resolution (decision stride, block ceiling) and the Lines dataset it is measured on."""

import itertools

import pytest
import torch
from torch import nn

from segnotes.data import Lines
from segnotes.resolution import bilinear_fit, block_ceiling, decision_stride, map_sizes
from segnotes.setr import SetrMla, SetrNaive, SetrPup
from segnotes.vit import vit


def _brute_force_ceiling(masks: torch.Tensor, stride: int) -> float:
    """Best IoU over every subset of blocks (only for a handful of blocks)."""
    N, H, W = masks.shape
    blocks = masks.reshape(N, H // stride, stride, W // stride, stride).permute(0, 1, 3, 2, 4)
    blocks = blocks.reshape(-1, stride * stride).sum(1).tolist()
    total, best = sum(blocks), 0.0
    for chosen in itertools.product([0, 1], repeat=len(blocks)):
        inter = sum(a for a, c in zip(blocks, chosen) if c)
        union = total + sum(stride * stride - a for a, c in zip(blocks, chosen) if c)
        best = max(best, inter / union)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_block_ceiling_is_the_best_subset_of_blocks(seed):
    generator = torch.Generator().manual_seed(seed)
    masks = (torch.rand(2, 4, 6, generator=generator) < 0.3).long()
    masks[0, 0, 0] = 1  # at least one target pixel
    assert block_ceiling(masks, 2) == pytest.approx(_brute_force_ceiling(masks, 2))


def test_block_ceiling_of_a_line():
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, 3, :] = 1  # one pixel wide, horizontal
    assert block_ceiling(masks, 1) == 1.0
    assert block_ceiling(masks, 2) == 0.5
    assert block_ceiling(masks, 4) == 0.25
    assert torch.isnan(torch.tensor(block_ceiling(torch.zeros(1, 4, 4, dtype=torch.long), 2)))


def test_block_ceiling_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of stride"):
        block_ceiling(torch.zeros(1, 6, 6, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="integer class indices"):
        block_ceiling(torch.zeros(1, 4, 4), 2)
    with pytest.raises(ValueError):
        block_ceiling(torch.zeros(1, 4, 4, dtype=torch.long), 0)


def test_bilinear_fit_between_the_block_ceiling_and_one():
    masks = Lines(8, size=32, seed=0).masks
    assert bilinear_fit(masks, 1) == 1.0
    for stride in (2, 4):
        assert block_ceiling(masks, stride) < bilinear_fit(masks, stride, steps=100) < 1.0
    assert bilinear_fit(masks, 2, steps=100) > bilinear_fit(masks, 4, steps=100)
    with pytest.raises(ValueError, match="multiple of stride"):
        bilinear_fit(masks[:, :30], 4)


def test_decision_stride_of_the_setr_heads():
    x = torch.rand(1, 3, 32, 32)
    torch.manual_seed(0)
    assert decision_stride(SetrNaive(vit("book", num_classes=0), 2), x) == 4
    assert decision_stride(SetrPup(vit("book", num_classes=0), 2), x) == 2
    assert decision_stride(SetrMla(vit("book", num_classes=0), 2), x) == 4


def test_mla_convs_run_at_the_token_grid():
    model = SetrMla(vit("book", num_classes=0), 2, channels=16)
    sizes = map_sizes(model.decoder, [torch.rand(1, 64, 8, 8) for _ in range(4)])
    assert sizes and set(sizes.values()) == {(8, 8)}
    assert model.training  # measured in eval mode, restored afterwards


def test_map_sizes_and_decision_stride_errors():
    with pytest.raises(ValueError, match="nn.Module classes"):
        map_sizes(nn.Identity(), torch.zeros(1, 3, 4, 4), types=(int,))
    with pytest.raises(ValueError, match="no activation"):
        decision_stride(nn.Conv2d(3, 3, 1), torch.zeros(1, 3, 4, 4))


def test_lines_dataset():
    data = Lines(16, size=32, seed=3)
    again = Lines(16, size=32, seed=3)
    assert torch.equal(data.images, again.images) and torch.equal(data.masks, again.masks)
    assert data.images.shape == (16, 3, 32, 32) and data.masks.shape == (16, 32, 32)
    assert data.images.dtype == torch.float32 and 0 <= data.images.min() and data.images.max() <= 1
    assert set(data.masks.unique().tolist()) == {0, 1} and data.class_names == ("background", "line")
    thin, thick = Lines(16, seed=3).class_frequencies()[1], Lines(16, seed=3, width=3).class_frequencies()[1]
    assert 0 < thin < 0.1 and thick > 2 * thin


@pytest.mark.parametrize(
    "kwargs",
    [dict(n=0), dict(size=8), dict(width=0), dict(width=9), dict(max_lines=0), dict(noise=-1), dict(contrast=(0, 1))],
)
def test_lines_rejects_bad_knobs(kwargs):
    with pytest.raises(ValueError):
        Lines(**{"n": 2, **kwargs})
