"""Model costs on models small enough to count by hand: parameters, FLOPs, activation memory, latency."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from segnotes import cost
from segnotes.cost import (
    Latency,
    ModelCard,
    cards_table,
    compare_latency,
    count_gflops,
    count_parameters,
    memory_tracking_available,
    model_card,
    peak_activation_memory,
)

MIB = 2**20


def conv_stack(depth: int, channels: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
    for _ in range(depth - 1):
        layers += [nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)]
    return nn.Sequential(*layers)


class SDPA(nn.Module):
    """Self-attention over the pixels of a (B, heads * d, H, W) map, through F.scaled_dot_product_attention."""

    def __init__(self, heads: int, **kwargs):
        super().__init__()
        self.heads, self.kwargs = heads, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = rearrange(x, "b (n d) h w -> b n (h w) d", n=self.heads)  # (B, heads, N, d)
        return F.scaled_dot_product_attention(q, q, q, **self.kwargs)


# ----------------------------------------------------------------------------- parameters and FLOPs


def test_parameters_count_shared_weights_once():
    conv = nn.Conv2d(3, 8, 3)
    assert count_parameters(conv) == 8 * 3 * 9 + 8
    assert count_parameters(nn.Sequential(conv, nn.ReLU(), conv)) == count_parameters(conv)


def test_gflops_are_two_flops_per_multiply_accumulate():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    macs = 8 * 3 * 9 * 64 * 64
    assert count_gflops(conv, (3, 64, 64)) == pytest.approx(2 * macs / 1e9)
    assert count_gflops(conv, (4, 3, 64, 64)) == pytest.approx(4 * 2 * macs / 1e9)  # linear in the batch
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    assert count_gflops(linear, (3, 8, 8)) == pytest.approx(2 * 192 * 10 / 1e9)


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"scale": 0.5}])
def test_gflops_count_attention_on_the_cpu(kwargs):
    # Q K^T and A V: N x N x d multiply-accumulates each, per head. FlopCounterMode alone counts 0 here.
    B, heads, N, d = 1, 2, 16 * 16, 32
    assert count_gflops(SDPA(heads, **kwargs), (heads * d, 16, 16)) * 1e9 == 2 * 2 * B * heads * N * N * d


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"scale": 0.5}])
@pytest.mark.parametrize("chunk", [2**22, 25])  # one chunk, or 25 // (10 keys * 2 * 4) = 1 row per chunk
def test_the_attention_counted_is_the_attention_computed(kwargs, chunk, monkeypatch):
    monkeypatch.setattr(cost, "_CHUNK_ELEMENTS", chunk)
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    torch.testing.assert_close(
        cost._math_attention(q, k, v, **kwargs), F.scaled_dot_product_attention(q, k, v, **kwargs)
    )
    mask = torch.rand(10, 10) > 0.3
    mask.fill_diagonal_(True)
    for m in (mask, torch.randn(10, 10)):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        torch.testing.assert_close(cost._math_attention(q, k, v, attn_mask=m), expected)


def test_gflops_of_a_timm_vit_include_its_attention():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64)
    N, d, depth = (64 // 16) ** 2 + 1, 192, 12
    attention = depth * 2 * 2 * N * N * d  # Q K^T and A V, all heads together
    linears = depth * 2 * N * (d * 3 * d + d * d + 2 * d * 4 * d)  # qkv, proj, the MLP's two layers
    patch_embed = 2 * (N - 1) * d * 3 * 16 * 16
    assert count_gflops(vit, (3, 64, 64)) * 1e9 == attention + linears + patch_embed


def test_gflops_grow_with_the_image():
    model = conv_stack(3)
    assert count_gflops(model, (3, 64, 64)) == pytest.approx(4 * count_gflops(model, (3, 32, 32)), rel=1e-9)


# ----------------------------------------------------------------------------- memory


def test_peak_memory_counts_activations_alive_at_once():
    # conv1 -> relu: both 64x64x64 float32 maps (1 MiB each) alive, then conv1's is freed.
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))
    assert peak_activation_memory(model, (3, 64, 64)) == 2 * MIB
    # in-place ReLU writes into conv1's map: no second map for it, but conv2's output still needs one
    inplace = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, 64, 3, padding=1))
    assert peak_activation_memory(inplace, (3, 64, 64)) == 2 * MIB
    assert peak_activation_memory(model, (2, 3, 64, 64)) == 4 * MIB  # linear in the batch


def test_peak_memory_ignores_weights_and_views():
    big = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 1000))  # 12 MB of weights
    assert peak_activation_memory(big, (3, 32, 32)) == 1000 * 4
    viewing = nn.Sequential(nn.Conv2d(3, 16, 1), nn.Flatten(), nn.Unflatten(1, (16, 32, 32)))
    assert peak_activation_memory(viewing, (3, 32, 32)) == 16 * 32 * 32 * 4


def test_peak_memory_frees_a_map_only_when_its_last_view_dies():
    class KeepView(nn.Module):
        def forward(self, x):
            a = F.conv2d(x, torch.ones(64, 3, 1, 1))  # 1 MiB
            view = a[:, :1]  # keeps a's storage alive after a is gone
            del a
            b = F.conv2d(x, torch.ones(64, 3, 1, 1))  # 1 MiB more while the view is alive
            return b + view  # and a third map

    assert peak_activation_memory(KeepView(), (3, 64, 64)) == 3 * MIB


def test_peak_memory_keeps_an_encoders_feature_list_alive():
    encoder = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3))
    features = encoder(torch.rand(1, 3, 64, 64))
    kept = sum(f.numel() * f.element_size() for f in features)
    assert peak_activation_memory(encoder, (3, 64, 64)) > kept


def test_without_a_dispatch_mode_memory_is_not_available_and_cards_say_so(monkeypatch):
    monkeypatch.setattr(cost, "_dispatch_mode_class", lambda: None)
    assert not memory_tracking_available()
    with pytest.raises(RuntimeError, match="needs torch.utils._python_dispatch.TorchDispatchMode"):
        peak_activation_memory(nn.Conv2d(3, 8, 1), (3, 8, 8))
    card = model_card(nn.Conv2d(3, 8, 1), (3, 8, 8), rounds=0)
    assert math.isnan(card.peak_mib) and card.params == 32
    assert cards_table([card]).splitlines()[2] == "| Conv2d | 0.00 | 0.000 | n/a |"


def test_nothing_private_is_looked_up_at_import():
    source = open(cost.__file__).read().split('"""', 2)[2]  # the code after the module docstring
    head = source.split("\ndef ")[0]  # imports and module-level statements before the first function
    assert "_python_dispatch" not in head and "torch.ops" not in source and "_cdata" not in source


# ----------------------------------------------------------------------------- latency and cards


def test_compare_latency_times_every_model_in_every_round_and_restores_modes():
    a, b = conv_stack(1), conv_stack(3).train()
    lat = compare_latency({"a": a, "b": b}, (3, 32, 32), rounds=4, min_seconds=0.0)
    assert list(lat) == ["a", "b"]
    assert all(len(v.times_ms) == 4 and min(v.times_ms) > 0 for v in lat.values())
    assert lat["a"].threads == torch.get_num_threads()
    assert lat["a"].median_ms > 0 and lat["a"].iqr_ms >= 0
    assert a.training and b.training


def test_latency_statistics():
    lat = Latency((1.0, 5.0, 2.0, 3.0, 4.0), threads=2)
    assert lat.median_ms == 3.0 and lat.iqr_ms == pytest.approx(3.0)
    assert Latency((2.0,), threads=1).iqr_ms == 0.0


def test_model_card_collects_the_four_costs():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    card = model_card(conv, (3, 64, 64), rounds=2)
    assert isinstance(card, ModelCard) and card.name == "Conv2d" and card.input_size == (1, 3, 64, 64)
    assert card.params == 224 and card.gflops == pytest.approx(0.001769472)
    assert card.peak_mib == pytest.approx(8 * 64 * 64 * 4 / MIB)
    assert card.latency is not None and len(card.latency.times_ms) == 2
    skipped = model_card(conv, (3, 64, 64), name="conv", rounds=0)
    assert skipped.latency is None and math.isnan(skipped.latency_ms)
    given = model_card(conv, (3, 64, 64), latency=Latency((1.0, 3.0, 2.0), 2))
    assert given.latency_ms == 2.0


def test_cards_table_is_markdown_with_extra_columns():
    cards = [model_card(conv_stack(d), (3, 16, 16), name=f"depth {d}", rounds=0) for d in (1, 2)]
    table = cards_table(cards, extra={"mIoU": ["0.50", "0.60"]})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| model |") and lines[0].endswith("| mIoU |")
    assert lines[1] == "| --- |" + " ---: |" * 4  # no latency column: no card was timed
    assert lines[3].startswith("| depth 2 |") and lines[3].endswith("| 0.60 |")
    timed = [cards[0], model_card(conv_stack(1), (3, 16, 16), latency=Latency((1.0, 3.0), 1), rounds=0)]
    assert cards_table(timed).splitlines()[0].endswith("| latency (ms) |")
    assert cards_table(timed).splitlines()[2].endswith("| n/a |") and cards_table(timed).endswith("| 2.0 |")
    with pytest.raises(ValueError, match="extra column 'mIoU' has 1 values for 2 cards"):
        cards_table(cards, extra={"mIoU": ["0.5"]})


@pytest.mark.parametrize("size", [(3, 64), (1, 1, 3, 64, 64), (3, 0, 64)])
def test_bad_input_size(size):
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\) or \(B, C, H, W\)"):
        model_card(nn.Conv2d(3, 8, 1), size, rounds=0)


def test_bad_latency_arguments():
    with pytest.raises(ValueError, match="models is empty"):
        compare_latency({}, (3, 8, 8))
    with pytest.raises(ValueError, match="rounds and warmup must be >= 1"):
        compare_latency({"a": nn.Conv2d(3, 8, 1)}, (3, 8, 8), rounds=0)


def test_segformer_folded_and_published_decoders_differ_by_exactly_the_fuse():
    from segnotes.segformer import segformer

    torch.manual_seed(0)
    model = segformer("b0", num_classes=2, drop_path_rate=0.0).eval()
    side, dim = 64, model.config.decoder_dim
    folded = count_gflops(model, (3, side, side))
    model.decoder.fold = False  # the decoder as published: concatenate, then a 1x1 fuse at 1/4
    published = count_gflops(model, (3, side, side))
    fuse = 2 * (side // 4) ** 2 * (4 * dim) * dim / 1e9  # 1x1 conv 4 * dim -> dim at H/4 x W/4
    assert published - folded == pytest.approx(fuse, rel=1e-9)
