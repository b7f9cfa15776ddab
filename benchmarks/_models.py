"""Benchmark-only model wrappers shared by the scripts in this folder."""

from __future__ import annotations

import torch
from torch import nn


class Logits(nn.Module):
    """transformers' SegFormer as a module returning its 1/4-resolution ``logits`` tensor, timed like the others."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def transformers_segformer_b0(num_classes: int, **config) -> Logits:
    """transformers' ``SegformerForSemanticSegmentation`` with the B0 configuration (its default), wrapped in Logits."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    return Logits(SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_classes, **config)))
