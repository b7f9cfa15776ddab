"""A table-driven fuzz of the public API of segnotes.train, .model, .data and .nuclei on bad and edge inputs.

Every case is either refused with a ``ValueError`` whose message says what to pass
(the regex in the table), or returns a result that the table checks. A raw torch or
NumPy error, a ``ValueError`` that does not say what to do, or a silent result fails.
Categories: bad dtypes, values out of range, shapes, empty sets, NumPy integers, NaN.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import segnotes
from segnotes import data as D
from segnotes import model as M
from segnotes import nuclei as N
from segnotes import train as T

pytestmark = pytest.mark.usefixtures("one_thread")


class _Data(D.TensorSegmentation):
    """n random (3, size, size) images with masks of class indices < classes; ``fill`` overrides some pixels."""

    def __init__(self, n=4, size=16, classes=2, dtype=torch.float32, mask_dtype=torch.long, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g).to(dtype)
        self.masks = torch.randint(0, classes, (n, size, size), generator=g).to(mask_dtype)
        self.num_classes = classes


def _set(ds, what, index, value):
    getattr(ds, what)[index] = value
    return ds


class _Tiny(nn.Module):
    def __init__(self, classes=2, half=False):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, stride=2 if half else 1), nn.ReLU(), nn.Conv2d(4, classes, 1)
        )

    def forward(self, x):
        return self.net(x)


class _Nan(_Tiny):
    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.net[2].bias.fill_(float("nan"))


def _bn_model():
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.BatchNorm2d(4))
    return M.SegmentationModel(encoder, nn.Identity(), nn.Conv2d(4, 2, 1))


def _fit(data=None, model=None, **kw):
    torch.manual_seed(0)
    kw = {"num_classes": 2, "epochs": 1, "batch_size": 2, "progress": False, **kw}
    return T.fit(model if model is not None else _Tiny(), data if data is not None else _Data(), **kw)


def _cm(pred, target, k=2, **kw):
    return T.confusion_matrix(pred, target, k, **kw)


_P = torch.tensor([[0, 1, 1, 0]])
_T = torch.tensor([[0, 1, 0, 0]])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a, b)


def _is_int(value, expected) -> bool:
    return type(value) is int and value == expected


def _finite_history(h) -> bool:
    return all(math.isfinite(v) for v in h.train_loss) and (not h.val_miou or math.isfinite(h.final))


def _labelled_cm(c, n) -> bool:
    return int(c.sum()) == n


# (id, call, expected): expected is a regex a ValueError's message must match, or a check of the result.
CASES: list[tuple[str, Callable[[], object], str | Callable[[object], bool]]] = [
    # --- confusion_matrix / boundary_counts / metrics: dtypes, ranges, shapes, ignore_index
    ("cm-target-out-of-range", lambda: _cm(_P, _T + 5), r"outside the classes 0\.\.1.*pass num_classes=7"),
    ("cm-target-negative", lambda: _cm(_P, _T - 1), r"outside the classes"),
    ("cm-pred-out-of-range", lambda: _cm(_P + 2, _T), r"pred has .* outside the classes"),
    ("cm-pred-probabilities", lambda: _cm(torch.rand(1, 4), _T), r"argmax\(1\)"),
    ("cm-target-float", lambda: _cm(_P, _T.float()), r"mask\.long\(\)"),
    ("cm-pred-logits-4d", lambda: _cm(torch.randn(1, 2, 4), _T), r"shapes differ"),
    ("cm-ignore-255", lambda: _cm(_P, torch.tensor([[0, 255, 0, 0]])), lambda c: _labelled_cm(c, 3)),
    ("cm-ignore-none-255", lambda: _cm(_P, torch.tensor([[0, 255, 0, 0]]), ignore_index=None), r"outside the classes"),
    ("cm-ignore-is-a-class", lambda: _cm(_P, _T, ignore_index=1), r"ignore_index=1 is one of"),
    ("cm-ignore-float", lambda: _cm(_P, _T, ignore_index=2.5), r"ignore_index must be an integer"),
    (
        "cm-ignore-minus-100",
        lambda: _cm(_P, torch.tensor([[0, -100, 0, 0]]), ignore_index=-100),
        lambda c: _labelled_cm(c, 3),
    ),
    ("cm-numpy-k", lambda: _cm(_P, _T, np.int64(2)), lambda c: _same(c, _cm(_P, _T, 2))),
    ("cm-k-zero", lambda: _cm(_P, _T, 0), r"num_classes must be a positive integer"),
    ("cm-k-float", lambda: _cm(_P, _T, 2.0), r"num_classes must be a positive integer"),
    ("cm-numpy-arrays", lambda: _cm(_P.numpy(), _T.numpy()), r"torch\.Tensor"),
    ("cm-bool", lambda: _cm(_P.bool(), _T.bool()), lambda c: _same(c, _cm(_P, _T))),
    ("cm-uint8", lambda: _cm(_P.to(torch.uint8), _T.to(torch.uint8)), lambda c: _same(c, _cm(_P, _T))),
    (
        "cm-empty",
        lambda: _cm(torch.zeros(0, 4, 4, dtype=torch.long), torch.zeros(0, 4, 4, dtype=torch.long)),
        lambda c: int(c.sum()) == 0 and c.shape == (2, 2),
    ),
    ("cm-256-classes-default-ignore", lambda: _cm(_P, _T, 300), r"ignore_index=255 is one of"),
    ("bc-width-zero", lambda: T.boundary_counts(_P[None], _T[None], 2, width=0), r"width must be a positive"),
    ("bc-2d", lambda: T.boundary_counts(_P, _T, 2), r"\(N, H, W\)"),
    ("bc-out-of-range", lambda: T.boundary_counts(_P[None], _T[None] + 3, 2), r"outside the classes"),
    (
        "bc-ignore-all",
        lambda: T.boundary_counts(_P[None], torch.full((1, 1, 4), 255), 2),
        lambda r: int(r[1].sum()) == 0,
    ),
    ("bc-float", lambda: T.boundary_counts(_P[None].float(), _T[None], 2), r"argmax\(1\)"),
    ("mfc-not-square", lambda: T.metrics_from_confusion(torch.zeros(2, 3)), r"\(K, K\)"),
    ("mfc-list", lambda: T.metrics_from_confusion([[1, 0], [0, 1]]), r"\(K, K\)"),
    # --- evaluate / predict
    ("eval-empty", lambda: T.evaluate(_Tiny(), Subset(_Data(), []), 2), r"data is empty"),
    ("eval-channels", lambda: T.evaluate(_Tiny(5), _Data(), 2), r"returns 5 channels of logits but num_classes=2"),
    (
        "eval-masks-4d",
        lambda: T.evaluate(_Tiny(), DataLoader(list(zip(_Data().images, _Data().masks[:, None])), batch_size=2), 2),
        r"mask\[:, 0\]",
    ),
    ("eval-masks-float", lambda: T.evaluate(_Tiny(), _Data(mask_dtype=torch.float32), 2), r"mask\.long\(\)"),
    ("eval-masks-out-of-range", lambda: T.evaluate(_Tiny(), _Data(classes=3), 2), r"pass num_classes=3"),
    (
        "eval-masks-smaller",
        lambda: T.evaluate(_Tiny(), list(zip(_Data().images, _Data().masks[:, ::2, ::2])), 2),
        r"labelling every pixel",
    ),
    (
        "eval-ignore-255",
        lambda: T.evaluate(_Tiny(), _set(_Data(), "masks", (slice(None), 0), 255), 2),
        lambda m: _labelled_cm(m.confusion, 4 * 15 * 16),
    ),
    ("eval-nan-model", lambda: T.evaluate(_Nan(), _Data(), 2), r"NaN"),
    ("eval-nan-images", lambda: T.evaluate(_Tiny(), _set(_Data(), "images", (0, 0, 0, 0), float("nan")), 2), r"NaN"),
    ("eval-float64-images", lambda: T.evaluate(_Tiny(), _Data(dtype=torch.float64), 2), r"x\.float\(\)"),
    ("eval-float16-images", lambda: T.evaluate(_Tiny(), _Data(dtype=torch.float16), 2), r"x\.float\(\)"),
    ("eval-uint8-images", lambda: T.evaluate(_Tiny(), _Data(dtype=torch.uint8), 2), r"x\.float\(\) / 255"),
    ("eval-numpy-k", lambda: T.evaluate(_Tiny(), _Data(), np.int64(2)), lambda m: m.confusion.shape == (2, 2)),
    (
        "eval-loader",
        lambda: T.evaluate(_Tiny(), DataLoader(_Data(), batch_size=3), 2),
        lambda m: _labelled_cm(m.confusion, 4 * 16 * 16),
    ),
    ("eval-bad-device", lambda: T.evaluate(_Tiny(), _Data(), 2, device="gpu"), r"device must be"),
    ("eval-k-zero", lambda: T.evaluate(_Tiny(), _Data(), 0), r"num_classes must be a positive"),
    ("eval-batch-zero", lambda: T.evaluate(_Tiny(), _Data(), 2, batch_size=0), r"batch_size must be a positive"),
    (
        "eval-restores-train-mode",
        lambda: (lambda m: (T.evaluate(m, _Data(), 2), m.training)[1])(_Tiny().train()),
        lambda training: training is True,
    ),
    ("predict-3d", lambda: T.predict(_Tiny(), torch.rand(3, 8, 8)), r"x\[None\]"),
    ("predict-uint8", lambda: T.predict(_Tiny(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), r"x\.float\(\) / 255"),
    ("predict-float16", lambda: T.predict(_Tiny(), torch.zeros(1, 3, 8, 8, dtype=torch.float16)), r"x\.float\(\)"),
    ("predict-numpy", lambda: T.predict(_Tiny(), np.zeros((1, 3, 8, 8), np.float32)), r"torch\.as_tensor"),
    ("predict-nan", lambda: T.predict(_Tiny(), torch.full((1, 3, 8, 8), float("nan"))), r"NaN"),
    (
        "predict-half-resolution",
        lambda: T.predict(_Tiny(half=True), torch.rand(2, 3, 8, 8)),
        lambda p: p.shape == (2, 8, 8) and p.dtype == torch.long,
    ),
    (
        "predict-restores-train-mode",
        lambda: (lambda m: (T.predict(m, torch.rand(1, 3, 8, 8)), m.training)[1])(_Tiny()),
        lambda training: training is True,
    ),
    # --- fit / fit_seeds
    (
        "fit-nan-image",
        lambda: _fit(_set(_Data(), "images", (1, 0, 0, 0), float("nan"))),
        r"NaN or infinite at epoch 1 of 1, step \d of 2",
    ),
    ("fit-inf-image", lambda: _fit(_set(_Data(), "images", (1, 0, 0, 0), float("inf"))), r"NaN or infinite at epoch 1"),
    ("fit-empty-train", lambda: _fit(Subset(_Data(), [])), r"train_data is empty"),
    ("fit-empty-val", lambda: _fit(val_data=Subset(_Data(), [])), r"val_data is empty.*val_data=None"),
    ("fit-empty-loader", lambda: _fit(DataLoader(_Data(n=1), batch_size=2, drop_last=True)), r"train_data is empty"),
    ("fit-logit-channels", lambda: _fit(model=_Tiny(3)), r"returns 3 channels of logits but num_classes=2"),
    ("fit-masks-out-of-range", lambda: _fit(_Data(classes=4)), r"masks has .* pass num_classes=4"),
    ("fit-masks-float", lambda: _fit(_Data(mask_dtype=torch.float32)), r"mask\.long\(\)"),
    ("fit-masks-4d", lambda: _fit(list(zip(_Data().images, _Data().masks[:, None]))), r"mask\[:, 0\]"),
    ("fit-masks-uint8", lambda: _fit(_Data(mask_dtype=torch.uint8)), _finite_history),
    ("fit-masks-all-ignored", lambda: _fit(_set(_Data(), "masks", slice(None), 255)), r"every pixel of step 1"),
    (
        "fit-masks-255",
        lambda: _fit(_set(_Data(), "masks", (slice(None), 0), 255), loss="ce+dice", val_data=_Data()),
        _finite_history,
    ),
    ("fit-float64-images", lambda: _fit(_Data(dtype=torch.float64)), r"x\.float\(\)"),
    (
        "fit-loader",
        lambda: _fit(DataLoader(_Data(), batch_size=2), val_data=DataLoader(_Data(), batch_size=2)),
        lambda h: h.steps == 2 and _finite_history(h),
    ),
    (
        "fit-numpy-ints",
        lambda: _fit(num_classes=np.int64(2), epochs=np.int32(1), batch_size=np.int64(2), seed=np.int64(0)),
        lambda h: h.steps == 2 and h.train_loss == _fit().train_loss,
    ),
    ("fit-epochs-zero", lambda: _fit(epochs=0), r"epochs must be a positive integer"),
    ("fit-epochs-float", lambda: _fit(epochs=1.5), r"epochs must be a positive integer"),
    ("fit-batch-bool", lambda: _fit(batch_size=True), r"batch_size must be a positive integer"),
    ("fit-k-one", lambda: _fit(num_classes=1), r"at least 2"),
    ("fit-k-float", lambda: _fit(num_classes=2.0), r"num_classes must be a positive integer"),
    ("fit-lr-nan", lambda: _fit(lr=float("nan")), r"lr must be a finite number > 0"),
    ("fit-lr-negative", lambda: _fit(lr=-1e-3), r"lr must be a finite number > 0"),
    ("fit-weight-decay-negative", lambda: _fit(weight_decay=-1.0), r"weight_decay must be"),
    ("fit-seed-float", lambda: _fit(seed=0.5), r"seed must be an integer"),
    ("fit-loss-unknown", lambda: _fit(loss="focal"), r"loss must be one of"),
    ("fit-bad-device", lambda: _fit(device="gpu"), r"device must be"),
    ("fit-ignore-is-a-class", lambda: _fit(ignore_index=1), r"ignore_index=1 is one of"),
    ("fit-bn-batch-one", lambda: _fit(_Data(n=1, size=4), model=_bn_model(), batch_size=1), r"batches of 2 or more"),
    (
        "seeds-duplicate",
        lambda: T.fit_seeds(_Tiny, _Data(), seeds=(1, 1), num_classes=2, progress=False, epochs=1),
        r"seeds must differ",
    ),
    (
        "seeds-shared-model",
        lambda: (lambda m: T.fit_seeds(lambda: m, _Data(), seeds=(0, 1), num_classes=2, progress=False, epochs=1))(
            _Tiny()
        ),
        r"shares weights",
    ),
    ("seeds-model-not-factory", lambda: T.fit_seeds(_Tiny(), _Data(), num_classes=2), r"a function that returns"),
    ("seeds-empty", lambda: T.fit_seeds(_Tiny, _Data(), seeds=(), num_classes=2), r"at least one seed"),
    ("seeds-float", lambda: T.fit_seeds(_Tiny, _Data(), seeds=(0.5,), num_classes=2), r"must be an integer"),
    ("seeds-seed-kwarg", lambda: T.fit_seeds(_Tiny, _Data(), seed=1, num_classes=2), r"pass seeds, not seed"),
    (
        "seeds-numpy",
        lambda: T.fit_seeds(_Tiny, _Data(), seeds=np.arange(2), num_classes=2, progress=False, epochs=1),
        lambda runs: len(runs) == 2 and runs[0].train_loss != runs[1].train_loss,
    ),
    # --- baselines
    ("trivial-out-of-range", lambda: T.trivial_baseline(_Data(classes=4), _Data(), 2), r"pass num_classes=4"),
    ("trivial-empty", lambda: T.trivial_baseline(Subset(_Data(), []), _Data(), 2), r"train_data is empty"),
    (
        "trivial-255",
        lambda: T.trivial_baseline(_set(_Data(), "masks", slice(None, 3), 255), _set(_Data(), "masks", 0, 255), 2),
        lambda m: _labelled_cm(m.confusion, 3 * 16 * 16),
    ),
    (
        "trivial-numpy-k",
        lambda: T.trivial_baseline(_Data(), _Data(), np.int64(2)),
        lambda m: m.confusion.shape == (2, 2),
    ),
    ("otsu-multiclass", lambda: T.otsu_baseline(_Data(classes=5), _Data(classes=5), 5), r"trivial_baseline"),
    ("otsu-empty-val", lambda: T.otsu_baseline(_Data(), Subset(_Data(), [])), r"val_data is empty"),
    (
        "otsu-255",
        lambda: T.otsu_baseline(_Data(), _set(_Data(), "masks", 0, 255)),
        lambda m: _labelled_cm(m.confusion, 3 * 16 * 16),
    ),
    ("otsu-out-of-range", lambda: T.otsu_baseline(_Data(classes=3), _Data()), r"pass num_classes=3"),
    ("otsu-nan", lambda: T.otsu_baseline(_set(_Data(), "images", (0, 0, 0, 0), float("nan")), _Data()), r"NaN"),
    (
        "otsu-constant",
        lambda: T.otsu_baseline(_set(_Data(), "images", slice(None), 0.5), _Data()),
        lambda m: _labelled_cm(m.confusion, 4 * 16 * 16),
    ),
    ("otsu-numpy-k", lambda: T.otsu_baseline(_Data(), _Data(), np.int64(2)), lambda m: m.confusion.shape == (2, 2)),
    # --- summarize / disjoint / budget
    ("summarize-nan", lambda: T.summarize([0.5, float("nan")]), r"NaN"),
    (
        "summarize-numpy",
        lambda: T.summarize(np.array([0.91, 0.914, 0.912])),
        lambda s: s == "0.912 ± 0.002 (min 0.910, max 0.914)",
    ),
    ("summarize-strings", lambda: T.summarize(["a"]), r"must be numbers"),
    ("summarize-empty", lambda: T.summarize([]), r"at least one value"),
    ("summarize-digits", lambda: T.summarize([0.5], digits=-1), r"digits must be"),
    ("disjoint-nan", lambda: T.disjoint([0.9, float("nan")], [0.5]), r"NaN"),
    ("disjoint-margin-nan", lambda: T.disjoint([0.9], [0.5], margin=float("nan")), r"margin must be"),
    ("disjoint-tensor", lambda: T.disjoint(torch.tensor([0.9, 0.95]), [0.5]), lambda r: r is True),
    ("budget-numpy", lambda: T.budget("cpu", cpu=np.int64(3), cuda=9), lambda r: _is_int(r, 3)),
    ("budget-device", lambda: T.budget("gpu", cpu=3, cuda=9), r"device must be"),
    ("budget-zero", lambda: T.budget("cpu", cpu=0, cuda=9), r"cpu must be a positive integer"),
    # --- model contract and helpers
    ("model-float64", lambda: _bn_model().eval()(torch.zeros(2, 3, 8, 8, dtype=torch.float64)), r"x\.float\(\)"),
    ("model-float16", lambda: _bn_model().eval()(torch.zeros(2, 3, 8, 8, dtype=torch.float16)), r"x\.float\(\)"),
    ("model-channels-last", lambda: _bn_model()(torch.zeros(2, 8, 8, 3)), r"x\.permute\(0, 3, 1, 2\)"),
    ("model-bn-batch-one", lambda: _bn_model().train()(torch.zeros(1, 3, 4, 4)), r"batches of 2 or more"),
    ("model-int-images", lambda: _bn_model()(torch.zeros(2, 3, 8, 8, dtype=torch.long)), r"x\.float\(\)"),
    (
        "head-numpy-classes",
        lambda: M.SegmentationHead(4, np.int64(3))(torch.zeros(1, 4, 2, 2)),
        lambda y: y.shape == (1, 3, 2, 2),
    ),
    ("check-positive-numpy", lambda: M.check_positive("n", np.int64(3)), lambda r: _is_int(r, 3)),
    ("check-positive-numpy-bool", lambda: M.check_positive("n", np.bool_(True)), r"n must be a positive integer"),
    ("pad-multiple-zero", lambda: M.pad_to_multiple(torch.zeros(1, 3, 5, 5), 0), r"multiple must be a positive"),
    ("divisible-multiple-zero", lambda: M.check_divisible(torch.zeros(1, 3, 5, 5), 0, "x"), r"multiple must be"),
    ("resize-zero", lambda: M.resize(torch.zeros(1, 3, 5, 5), (0, 4)), r"size must be two positive"),
    # --- setup
    (
        "setup-negative-seed",
        lambda: segnotes.setup(seed=-1, threads=1),
        r"seed must be an integer in 0 \.\. 2\*\*32 - 1",
    ),
    ("setup-big-seed", lambda: segnotes.setup(seed=2**32, threads=1), r"seed must be"),
    ("setup-float-seed", lambda: segnotes.setup(seed=0.5, threads=1), r"seed must be"),
    ("setup-threads-zero", lambda: segnotes.setup(threads=0), r"threads must be a positive integer or None"),
    ("setup-threads-float", lambda: segnotes.setup(threads=1.5), r"threads must be"),
    ("setup-numpy", lambda: segnotes.setup(seed=np.int64(1), threads=np.int64(1)), lambda d: d.type in ("cpu", "cuda")),
    ("setup-dpi-zero", lambda: segnotes.setup(threads=1, figure_dpi=0), r"figure_dpi must be a positive number"),
    ("setup-deterministic-str", lambda: segnotes.setup(threads=1, deterministic="yes"), r"True or False"),
    # --- data
    ("shapes-n-zero", lambda: D.Shapes(0, size=16), r"n >= 1"),
    (
        "shapes-numpy",
        lambda: D.Shapes(np.int64(2), size=np.int64(16), max_shapes=np.int64(2)),
        lambda ds: len(ds) == 2 and ds.images.shape == (2, 3, 16, 16),
    ),
    ("shapes-radius-nan", lambda: D.Shapes(2, size=16, radius=(0.1, float("nan"))), r"radius must be"),
    ("shapes-size-small", lambda: D.Shapes(2, size=8), r"size >= 16"),
    ("splits-empty-val", lambda: D.shapes_splits(2, 0, size=16), r"n >= 1"),
    ("photo-unknown", lambda: D.load_photo("lena"), r"choose one of"),
    (
        "class-frequencies-255",
        lambda: _set(_Data(classes=2), "masks", 0, 255).class_frequencies(),
        lambda f: f.shape == (2,) and abs(float(f.sum()) - 1) < 1e-6,
    ),
    # --- nuclei
    ("nuclei-tile-float", lambda: N.nuclei_splits(tile=64.0), r"tile must be a positive integer"),
    (
        "nuclei-tile-numpy",
        lambda: N.nuclei_splits(tile=np.int64(128), augment=False),
        lambda s: s[0].images.shape[-1] == 128 and len(s[1]) == 4,
    ),
    ("nuclei-tile-small", lambda: N.nuclei_splits(tile=8), r"tile must be in 16"),
    (
        "nuclei-val-fraction-nan",
        lambda: N.nuclei_splits(val_fraction=float("nan")),
        r"val_fraction must be in \(0, 1\)",
    ),
    ("nuclei-tiles-3d", lambda: N.NucleiTiles(np.zeros((4, 64, 64)), np.zeros((4, 64, 64)), (0, 64)), r"\(H, W\)"),
    ("nuclei-tiles-rows", lambda: N.NucleiTiles(np.zeros((64, 64)), np.zeros((64, 64)), (0, 64.0)), r"rows must be"),
    ("nuclei-tiles-tensor", lambda: N.NucleiTiles(torch.zeros(64, 64), torch.zeros(64, 64), (0, 64)), r"NumPy arrays"),
    # --- datasets: NaN knobs, non-integer counts, empty photos
    ("shapes-noise-nan", lambda: D.Shapes(2, size=16, noise=float("nan")), r"noise"),
    ("shapes-n-float", lambda: D.Shapes(2.5, size=16), r"need integers n >= 1"),
    ("photo-size-zero", lambda: D.load_photo("astronaut", size=0), r"size"),
]

# Known to fail, for the lead: segnotes/data.py is not this test's to change (see the report).


def outcome(call: Callable[[], object], expected) -> tuple[str, str]:
    """("clear" | "correct" | "raw" | "silent" | "unhelpful" | "refused", detail) of one case."""
    try:
        result = call()
    except ValueError as error:
        if callable(expected):
            return "refused", f"ValueError: {error}"
        ok = re.search(expected, str(error)) is not None
        return ("clear" if ok else "unhelpful"), f"ValueError: {error}"
    except Exception as error:  # noqa: BLE001 - the point is to catch what leaks out
        return "raw", f"{type(error).__name__}: {error}"
    if callable(expected):
        return ("correct" if expected(result) else "silent"), repr(result)[:200]
    return "silent", f"returned {repr(result)[:200]}"


@pytest.mark.parametrize(("call", "expected"), [pytest.param(c, e, id=i) for i, c, e in CASES])
def test_bad_input_gets_a_clear_error_or_a_correct_result(call, expected):
    kind, detail = outcome(call, expected)
    assert kind in ("clear", "correct"), f"{kind}: {detail}"
