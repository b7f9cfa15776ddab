"""The model contract and the package's structure: one way to build a model, no import cycle."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

import segnotes
from segnotes.model import (
    SegmentationHead,
    SegmentationModel,
    check_choice,
    check_divisible,
    check_images,
    check_positive,
    pad_to_multiple,
    resize,
)

PACKAGE = Path(segnotes.__file__).parent
# every chapter may import these
SHARED = ("model", "init", "weights", "encoders", "data", "nuclei", "train", "viz", "inspect")


class _Pyramid(nn.Module):
    def forward(self, x):
        return [x, x[..., ::2, ::2]]


class _Last(nn.Module):
    def forward(self, features):
        return features[-1]


def test_forward_is_head_of_decoder_of_encoder():
    head = SegmentationHead(3, 4, upsampling=2)
    model = SegmentationModel(_Pyramid(), _Last(), head, in_channels=3)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), head(x[..., ::2, ::2]))
    assert model(x).shape == (2, 4, 8, 8)
    assert torch.equal(model.forward_head(model.forward_features(x)), model(x))


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(3, 8, 8), r"add a batch dimension with x\[None\]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), r"x.float\(\) / 255"),
        (torch.zeros(1, 1, 8, 8), "in_channels=1"),
        (torch.zeros(1, 3, 8, 8).numpy(), "torch.as_tensor"),
    ],
)
def test_bad_images_get_errors_that_say_what_to_pass(x, message):
    model = SegmentationModel(_Pyramid(), _Last(), nn.Identity(), in_channels=3)
    with pytest.raises(ValueError, match=message):
        model(x)


def test_option_checks():
    assert check_choice("mode", "a", Literal["a", "b"]) == "a" and check_choice("k", 3, (1, 3)) == 3
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        check_choice("mode", "c", Literal["a", "b"])
    assert check_positive("n", 2) == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            check_positive("n", bad)
    for bad in (dict(num_classes=0), dict(in_channels=0), dict(kernel_size=2)):
        with pytest.raises(ValueError):
            SegmentationHead(**{"in_channels": 8, "num_classes": 2, **bad})
    with pytest.raises(ValueError, match="in_channels"):
        SegmentationModel(_Pyramid(), _Last(), nn.Identity(), in_channels=0)
    check_images(torch.zeros(1, 2, 4, 4), 2)


def test_padding_rule_and_resize():
    x = torch.randn(1, 3, 30, 33)
    padded, (h, w) = pad_to_multiple(x, 32)
    assert padded.shape == (1, 3, 32, 64) and (h, w) == (30, 33) and torch.equal(padded[..., :h, :w], x)
    check_divisible(padded, 32, "the stride")
    with pytest.raises(ValueError, match=r"pad it to 32x64, e.g. with segnotes.model.pad_to_multiple\(x, 32\)"):
        check_divisible(x, 32, "the stride")
    assert resize(x, (30, 33)) is x
    assert resize(x, (60, 66)).shape == (1, 3, 60, 66)


def _imports(module: str) -> set[str]:
    """segnotes modules that ``segnotes.<module>`` imports (relative or absolute), and "<importlib>" if it loads
    modules by name."""
    source = (PACKAGE / f"{module}.py").read_text()
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("segnotes."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("segnotes."):
                    found.add(alias.name.split(".")[1])
    if "import_module(" in source or "find_spec(" in source or "__import__(" in source:
        found.add("<importlib>")  # a module loaded by name hides an import from every import graph
    return found


def test_no_import_cycle_and_shared_modules_import_no_chapter():
    modules = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]))
    graph = {m: _imports(m) & set(modules) for m in modules}
    for m in SHARED:
        assert graph[m] <= set(SHARED), f"shared module {m} imports chapter modules {graph[m] - set(SHARED)}"
        assert "<importlib>" not in _imports(m), f"shared module {m} imports modules through importlib"
    seen, done = set(), set()

    def visit(m, path):
        assert m not in seen or m in done, f"import cycle: {' -> '.join([*path, m])}"
        if m in done:
            return
        seen.add(m)
        for n in graph[m]:
            visit(n, [*path, m])
        done.add(m)

    for m in modules:
        visit(m, [])


def test_every_model_goes_through_the_one_contract():
    models = []
    for info in pkgutil.iter_modules([str(PACKAGE)]):
        module = importlib.import_module(f"segnotes.{info.name}")
        models += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, SegmentationModel) and obj is not SegmentationModel
        ]
    assert models, "no SegmentationModel subclasses found"
    for cls in models:
        for method in ("forward", "forward_features", "forward_head"):
            assert getattr(cls, method) is getattr(SegmentationModel, method), f"{cls.__name__} overrides {method}"
