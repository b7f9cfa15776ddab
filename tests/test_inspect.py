"""segnotes.inspect: tracing strides and channels, and showing the package's own source."""

from __future__ import annotations

import pytest
import torch
import torchvision
from einops import rearrange
from torch import nn

from segnotes.encoders import Encoder
from segnotes.inspect import Stage, Trace, show_source, source, trace


class Tokens(nn.Module):
    """Patch embedding to tokens, a token norm, a block returning a tuple, and tokens back to a map."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.LayerNorm(8)
        self.split = Split()
        self.down = nn.Conv2d(8, 16, 2, stride=2)

    def forward(self, x):
        B, _, H, W = x.shape
        x = self.embed(x)  # (B, 8, H/4, W/4)
        tokens = self.norm(rearrange(x, "b c h w -> b (h w) c"))  # (B, N, C)
        tokens, cls, _ = self.split(tokens)
        x = rearrange(tokens, "b (h w) c -> b c h w", h=H // 4)
        return self.down(x) + cls[..., None, None].mean()


class Split(nn.Module):
    """Returns (tokens, their mean, a non-tensor): trace records one row per tensor."""

    def forward(self, tokens):
        return tokens, tokens.mean(1), "not a tensor"


def test_trace_records_every_row_tokens_and_tuples():
    model = Tokens().train()
    t = trace(model, torch.randn(2, 3, 16, 16), depth=None)
    assert t.stages == [
        Stage("embed", (2, 8, 4, 4), 4, 8),  # a map: stride from H, channels from dim 1
        Stage("norm", (2, 16, 8), None, 8),  # tokens (B, N, C): no stride, channels from the last dim
        Stage("split[0]", (2, 16, 8), None, 8),  # a tuple: one row per tensor, named name[i]
        Stage("split[1]", (2, 8), None, 8),  # (B, C)
        Stage("down", (2, 16, 2, 2), 8, 16),  # the non-tensor split[2] has no row
    ]
    assert model.training, "trace restores the model's mode"
    assert [s.name for s in t.downsampling_points()] == ["embed", "down"]


def test_trace_depth_and_leaves_select_modules():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()), nn.Conv2d(4, 6, 1))
    x = torch.randn(1, 3, 8, 8)
    assert [s.name for s in trace(model, x)] == ["0", "1"]
    assert [s.name for s in trace(model, x, depth=2)] == ["0.0", "0.1", "0", "1"]
    assert [s.name for s in trace(model, x, leaves=True)] == ["0.0", "0.1", "1"]
    assert [s.stride for s in trace(model, x, leaves=True)] == [2, 2, 2]


def test_trace_finds_mobilenet_downsampling_points():
    model = torchvision.models.mobilenet_v2().features
    t = trace(model, torch.randn(1, 3, 64, 64))
    assert [s.name for s in t.downsampling_points()] == ["1", "3", "6", "13", "18"]
    assert [s.stride for s in t.downsampling_points()] == [2, 4, 8, 16, 32]
    assert len(t) == 19
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        trace(model, torch.randn(3, 64, 64))


def test_trace_prints_an_aligned_table():
    table = str(Trace([Stage("stem", (1, 8, 4, 4), 4, 8), Stage("tokens", (1, 16, 8), None, 8)]))
    assert table.splitlines() == [
        "name      shape  stride  channels",
        "stem    1x8x4x4       4         8",
        "tokens   1x16x8       -         8",
    ]


def test_source_and_show_source():
    assert source(trace).splitlines()[0].startswith("def trace(model: nn.Module")
    forward = source(Encoder, "forward")
    assert forward.startswith("def forward(self") and "new_empty(B, 0, H // 2, W // 2)" in forward
    markdown = show_source(Encoder, "forward")
    assert markdown.data.startswith("```python\ndef forward(self") and markdown.data.endswith("\n```")
    with pytest.raises(ValueError, match=r"'Encoder' defines no 'backward'; its methods are \[.*'forward'"):
        source(Encoder, "backward")
    with pytest.raises(ValueError, match="no Python source"):
        source(len)
