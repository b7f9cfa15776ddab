"""Model cards and effective receptive fields, on models small enough to count by hand."""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange
from torch import nn

from segnotes.compare import (
    Latency,
    ModelCard,
    cards_table,
    compare_latency,
    count_gflops,
    count_parameters,
    effective_receptive_field,
    model_card,
    peak_activation_memory,
    show_receptive_fields,
)
from segnotes.encoders import get_encoder
from segnotes.unet import UnetDecoder

MIB = 2**20


class TinyUnet(nn.Module):
    """ResNet-18 encoder + the book's UNet decoder + a 1x1 head, (B, 3, H, W) -> (B, classes, H, W)."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.encoder = get_encoder("resnet18", depth=3)
        self.decoder = UnetDecoder(self.encoder.out_channels, decoder_channels=(32, 16, 8))
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


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


def test_gflops_count_attention_on_the_cpu():
    B, heads, N, d = 1, 2, 16 * 16, 32

    class SDPA(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = rearrange(x, "b (n d) h w -> b n (h w) d", n=heads)  # (B, heads, N, d)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    # Q K^T and A V: N x N x d multiply-accumulates each, per head
    assert count_gflops(SDPA(), (heads * d, 16, 16)) * 1e9 == 2 * 2 * B * heads * N * N * d


def test_gflops_grow_with_the_image_and_the_decoder():
    model = TinyUnet()
    small, large = count_gflops(model, (3, 32, 32)), count_gflops(model, (3, 64, 64))
    assert large == pytest.approx(4 * small, rel=1e-6)  # all convolutions: FLOPs scale with pixels
    assert count_gflops(model.encoder, (3, 64, 64)) < large


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


def test_peak_memory_keeps_an_encoders_feature_list_alive():
    encoder = get_encoder("resnet18", depth=3)
    features = encoder(torch.rand(1, 3, 64, 64))
    kept = sum(f.numel() * f.element_size() for f in features[1:])
    assert peak_activation_memory(encoder, (3, 64, 64)) >= kept


# ----------------------------------------------------------------------------- latency and cards


def test_compare_latency_times_every_model_in_every_round_and_restores_modes():
    a, b = conv_stack(1), conv_stack(3).train()
    lat = compare_latency({"a": a, "b": b}, (3, 32, 32), rounds=4, min_seconds=0.0)
    assert list(lat) == ["a", "b"]
    assert all(len(v.times_ms) == 4 and min(v.times_ms) > 0 for v in lat.values())
    assert lat["a"].threads == torch.get_num_threads()
    assert lat["a"].median_ms > 0 and lat["a"].iqr_ms >= 0
    assert a.training and b.training


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
    assert lines[3].startswith("| depth 2 |") and lines[3].endswith("| 0.60 |")
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


# ----------------------------------------------------------------------------- effective receptive field


def test_erf_of_one_conv_is_its_kernel_support():
    erf = effective_receptive_field(nn.Conv2d(3, 2, 5, padding=2), (3, 32, 32), n=3)
    assert erf.map.shape == (32, 32) and erf.centre == (16.0, 16.0) and erf.output_size == (32, 32)
    assert erf.map.sum().item() == pytest.approx(1.0)
    support = erf.map > 0
    assert support[14:19, 14:19].all() and support.sum() == 25
    assert erf.radius90 <= 2 * math.sqrt(2) and erf.radius(1.0) == pytest.approx(2 * math.sqrt(2))


def test_erf_centre_of_a_strided_output():
    # a 2x2 stride-2 conv: output pixel (8, 8) of 16x16 reads input rows and columns 16 and 17
    erf = effective_receptive_field(nn.Conv2d(3, 1, 2, stride=2), (3, 32, 32), n=2)
    assert erf.output_size == (16, 16) and erf.centre == (16.5, 16.5)
    assert (erf.map > 0).nonzero().tolist() == [[16, 16], [16, 17], [17, 16], [17, 17]]
    assert erf.radius90 == pytest.approx(math.sqrt(0.5))


def test_erf_grows_with_depth_and_attention_sees_everything():
    torch.manual_seed(0)
    shallow = effective_receptive_field(conv_stack(2), (3, 48, 48), n=4)
    deep = effective_receptive_field(conv_stack(8), (3, 48, 48), n=4)
    attention = effective_receptive_field(PixelAttention(), (3, 24, 24), n=4)
    assert shallow.radius90 <= 2 * math.sqrt(2) < deep.radius90 <= 8 * math.sqrt(2)
    assert (attention.map > 0).all() and attention.radius90 > 24 / 4


def test_erf_uses_eval_mode_so_batching_does_not_matter():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).train()
    one = effective_receptive_field(model, (3, 16, 16), n=4, batch_size=1)
    four = effective_receptive_field(model, (3, 16, 16), n=4, batch_size=4)
    torch.testing.assert_close(one.map, four.map)
    assert model.training


def test_erf_of_a_unet_and_an_encoder_feature_list():
    model = TinyUnet()
    erf = effective_receptive_field(model, (3, 64, 64), n=2)
    assert erf.output_size == (64, 64) and 0 < erf.radius90 < 64
    deepest = effective_receptive_field(model.encoder, (3, 64, 64), n=2, select=lambda features: features[-1])
    assert deepest.output_size == (8, 8) and deepest.centre == (35.5, 35.5)


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
    with pytest.raises(ValueError, match="pass select= to pick one"):
        effective_receptive_field(get_encoder("resnet18", depth=2), (3, 16, 16), n=1)
    with pytest.raises(ValueError, match="does not depend on the input"):
        effective_receptive_field(Blind(), (3, 16, 16), n=1)


def test_show_receptive_fields_draws_one_panel_per_field():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = {f"k{k}": effective_receptive_field(nn.Conv2d(3, 1, k, padding=k // 2), (3, 16, 16), n=1) for k in (1, 3, 5)}
    fig = show_receptive_fields(fields, columns=2)
    assert len(fig.axes) == 4 and fig.axes[0].get_title().startswith("k1")
    plt.close(fig)
    with pytest.raises(ValueError, match="fields is empty"):
        show_receptive_fields({})
