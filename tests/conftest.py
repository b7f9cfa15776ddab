"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting on a busy machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def count_params():
    """``count_params(model)``: the number of parameters of a module (works on the meta device)."""
    return lambda model: sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="session")
def hf_segformer_config():
    """``hf_segformer_config(mit_config, **kwargs)``: transformers' ``SegformerConfig`` for a segnotes ``MiTConfig``.

    ``kwargs`` go to ``SegformerConfig`` unchanged, e.g. ``decoder_hidden_size=256, num_labels=5``.
    """
    from transformers import SegformerConfig

    def make(encoder, **kwargs):
        return SegformerConfig(
            num_channels=encoder.in_channels,
            hidden_sizes=list(encoder.embed_dims),
            depths=list(encoder.depths),
            num_attention_heads=list(encoder.num_heads),
            sr_ratios=list(encoder.sr_ratios),
            mlp_ratios=list(encoder.mlp_ratios),
            patch_sizes=list(encoder.patch_sizes),
            strides=list(encoder.strides),
            **kwargs,
        )

    return make
