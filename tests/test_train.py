"""segnotes.train on data a reader might bring: baselines, ignore_index, bad inputs, reproducibility."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import segnotes
from segnotes.data import TensorSegmentation
from segnotes.model import SegmentationModel
from segnotes.train import (
    IGNORE_INDEX,
    History,
    Metrics,
    _dice_loss,
    boundary_counts,
    check_labels,
    confusion_matrix,
    evaluate,
    fit,
    fit_seeds,
    otsu_baseline,
    predict,
    trivial_baseline,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: no OpenMP spin-waiting on a busy machine


class _Discs(TensorSegmentation):
    """Bright discs (grey 0.8) on a dark background (grey 0.2), a little noise: binary masks."""

    def __init__(self, n: int, size: int = 16, seed: int = 0, invert: bool = False):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        masks = []
        for _ in range(n):
            cy, cx = torch.randint(4, size - 4, (2,), generator=g).tolist()
            masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 <= 9).long())
        self.masks = torch.stack(masks)
        grey = 0.2 + 0.6 * self.masks.float() + 0.03 * torch.randn(self.masks.shape, generator=g)
        grey = 1 - grey if invert else grey
        self.images = grey[:, None].expand(-1, 3, -1, -1).contiguous()
        self.num_classes = 2


def test_otsu_baseline_separates_bright_discs_and_beats_the_trivial_one():
    train, val = _Discs(8, seed=0), _Discs(4, seed=1)
    m = otsu_baseline(train, val)
    assert isinstance(m, Metrics) and m.miou > 0.99 and m.pixel_accuracy > 0.99
    assert m.miou > trivial_baseline(train, val, 2).miou + 0.3
    assert m.confusion.sum() == val.masks.numel()


def test_otsu_baseline_picks_the_polarity_on_the_training_split():
    dark_train, dark_val = _Discs(8, seed=0, invert=True), _Discs(4, seed=1, invert=True)
    assert otsu_baseline(dark_train, dark_val).iou[1] > 0.99  # dark discs: foreground below the threshold
    # The polarity comes from the training split only: trained on bright discs, it misses dark ones.
    assert otsu_baseline(_Discs(8, seed=0), dark_val).iou[1] < 0.05


def test_otsu_baseline_is_for_binary_tasks_only():
    train, val = _Discs(2), _Discs(2, seed=1)
    with pytest.raises(ValueError, match="trivial_baseline"):
        otsu_baseline(train, val, num_classes=5)


# --- ignore_index: pixels labelled 255 count nowhere -------------------------------------------------------------


def test_confusion_and_boundary_counts_leave_ignored_pixels_out():
    g = torch.Generator().manual_seed(0)
    target, pred = torch.randint(0, 3, (2, 12, 12), generator=g), torch.randint(0, 3, (2, 12, 12), generator=g)
    ignored = target.clone()
    ignored[:, :, 6:] = IGNORE_INDEX
    c = confusion_matrix(pred, ignored, 3)
    assert torch.equal(c, confusion_matrix(pred[:, :, :6], target[:, :, :6], 3)) and c.sum() == 2 * 12 * 6
    inter, union = boundary_counts(pred, ignored, 3)
    assert (union <= 2 * 12 * 6).all() and (inter <= union).all()  # only labelled pixels in a boundary region
    assert boundary_counts(pred, torch.full_like(target, IGNORE_INDEX), 3)[1].sum() == 0
    with pytest.raises(ValueError, match="outside the classes"):
        confusion_matrix(pred, ignored, 3, ignore_index=None)
    with pytest.raises(ValueError, match="ignore_index=1 is one of"):
        confusion_matrix(pred, target, 3, ignore_index=1)


def test_losses_see_only_the_labelled_pixels():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 3, (2, 8, 8), generator=g)
    ignored = target.clone()
    ignored[..., 5:] = IGNORE_INDEX
    left = (logits[..., :5], target[..., :5])
    assert torch.allclose(_dice_loss(logits, ignored, IGNORE_INDEX), _dice_loss(*left))
    ce = F.cross_entropy(logits, ignored, ignore_index=IGNORE_INDEX)
    assert torch.allclose(ce, F.cross_entropy(*left))
    # Without a 255 the masking multiplies by exactly 1: bit-identical to the plain loss.
    assert torch.equal(_dice_loss(logits, target, IGNORE_INDEX), _dice_loss(logits, target))


def test_baselines_and_evaluate_ignore_255():
    train, val = _Discs(8, seed=0), _Discs(4, seed=1)
    for ds in (train, val):
        ds.masks[:, :2] = IGNORE_INDEX  # an unlabelled band at the top of every mask
    labelled = int((val.masks != IGNORE_INDEX).sum())
    for m in (trivial_baseline(train, val, 2), otsu_baseline(train, val)):
        assert m.confusion.sum() == labelled
    assert otsu_baseline(train, val).miou > 0.99
    m = evaluate(_Threshold(), val, 2, boundary=True)
    assert m.confusion.sum() == labelled and m.miou > 0.99


class _Threshold(nn.Module):
    """Two logits: grey - 0.5 for class 1, 0 for class 0 (predicts the bright discs)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        grey = x.mean(1, keepdim=True)
        return torch.cat([torch.zeros_like(grey), grey - 0.5 + self.bias], 1)


# --- bad labels ----------------------------------------------------------------------------------------------------


def test_labels_outside_the_classes_and_probabilities_are_refused():
    target = torch.tensor([[0, 1, 7]])
    with pytest.raises(
        ValueError, match=r"outside the classes 0..1 or ignore_index=255 \(values 7\); pass num_classes=8"
    ):
        confusion_matrix(torch.zeros_like(target), target, 2)
    with pytest.raises(ValueError, match=r"argmax\(1\)"):
        confusion_matrix(torch.rand(1, 3), target.clamp(max=1), 2)
    with pytest.raises(ValueError, match=r"mask.long\(\)"):
        trivial_baseline(_FloatMasks(), _FloatMasks(), 2)
    assert check_labels(torch.tensor([True, False]), 2) is None  # bool masks are class indices


class _FloatMasks(_Discs):
    def __init__(self):
        super().__init__(2)
        self.masks = self.masks.float()


# --- fit ------------------------------------------------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self, classes: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))

    def forward(self, x):
        return self.net(x)


def _fit(data, **kwargs):
    torch.manual_seed(0)
    model = _Tiny(kwargs.pop("classes", 2))
    kwargs = {"num_classes": 2, "epochs": 2, "batch_size": 4, "progress": False, **kwargs}
    return fit(model, data, **kwargs)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_ignore_index_numpy_integers_and_dataloaders_leave_valid_runs_bit_identical():
    data = _Discs(8)
    base = _fit(data, loss="ce+dice", augment=True)
    assert _same_weights(base.model, _fit(data, loss="ce+dice", augment=True, ignore_index=None).model)
    numpy_ints = _fit(data, loss="ce+dice", augment=True, epochs=np.int64(2), batch_size=np.int32(4), seed=np.int64(0))
    assert _same_weights(base.model, numpy_ints.model) and numpy_ints.train_loss == base.train_loss
    # A DataLoader that batches and shuffles as fit does (augmentation off: fit's generator also drives it).
    plain = _fit(data)
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True)
    assert _same_weights(plain.model, _fit(loader).model)


def test_fit_trains_in_channels_last_with_fused_adamw_and_returns_the_default_layout(monkeypatch):
    layouts, fused = [], []
    original_forward, original_adamw = _Tiny.forward, torch.optim.AdamW

    def forward(self, x):
        layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return original_forward(self, x)

    def adamw(*args, **kwargs):
        fused.append(kwargs.get("fused"))
        return original_adamw(*args, **kwargs)

    monkeypatch.setattr(_Tiny, "forward", forward)
    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    history = _fit(_Discs(8), augment=True)
    assert layouts and all(layouts)  # every training batch, augmented ones included
    assert fused == [True]  # torch >= 2.4 (the lock), or a GPU
    weight = history.model.net[0].weight
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)


def test_fit_stops_on_a_nan_loss_naming_epoch_and_step():
    data = _Discs(8)
    data.images[5, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite at epoch 1 of 2, step \d of 2"):
        _fit(data)


def test_fit_refuses_bad_data_and_arguments_before_training():
    data = _Discs(4)
    for kwargs, message in [
        (dict(val_data=torch.utils.data.Subset(data, [])), "val_data is empty"),
        (dict(classes=3), "returns 3 channels of logits but num_classes=2"),
        (dict(num_classes=1), "at least 2"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(device="gpu"), "device must be"),
        (dict(ignore_index=0), "ignore_index=0 is one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            _fit(data, **kwargs)
    with pytest.raises(ValueError, match="train_data is empty"):
        _fit(torch.utils.data.Subset(data, []))
    data.masks[0, 0, 0] = 3
    with pytest.raises(ValueError, match="masks has 1 label outside"):
        _fit(data)
    data.masks[:] = IGNORE_INDEX
    with pytest.raises(ValueError, match="every pixel of step 1 of epoch 1 is ignore_index"):
        _fit(data)


def test_fit_seeds_refuses_repeated_seeds_and_shared_models():
    data = _Discs(4)
    kwargs = dict(num_classes=2, epochs=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="seeds must differ"):
        fit_seeds(_Tiny, data, seeds=(0, 0), **kwargs)
    shared = _Tiny()
    with pytest.raises(ValueError, match="shares weights with an earlier seed"):
        fit_seeds(lambda: shared, data, seeds=(0, 1), **kwargs)
    with pytest.raises(ValueError, match="a function that returns a new model"):
        fit_seeds(shared, data, **kwargs)
    assert len(fit_seeds(_Tiny, data, seeds=np.arange(2), **kwargs)) == 2


# --- evaluate / predict ----------------------------------------------------------------------------------------------


def test_evaluate_and_predict_restore_the_mode_and_move_the_model(monkeypatch):
    model, data = _Tiny(), _Discs(4)
    moved = []
    monkeypatch.setattr(model, "to", lambda *args, **kw: moved.append(args) or model)
    model.train()
    evaluate(model, data, 2, device="cpu")
    predict(model, data.images, device="cpu")
    assert model.training and moved == [(torch.device("cpu"),)] * 2
    model.eval()
    evaluate(model, data, 2)
    assert not model.training
    with pytest.raises(ValueError, match="data is empty"):
        evaluate(model, torch.utils.data.Subset(data, []), 2)
    with pytest.raises(ValueError, match=r"x.float\(\)"):
        predict(model, data.images.double())


# --- inputs and setup ----------------------------------------------------------------------------------------------


def test_segmentation_model_names_dtype_and_batchnorm_problems():
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.BatchNorm2d(4))
    model = SegmentationModel(encoder, nn.Identity(), nn.Conv2d(4, 2, 1))
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(
            ValueError, match=rf"is {dtype} but the model's weights are torch.float32; pass x.float\(\)"
        ):
            model(torch.zeros(2, 3, 8, 8, dtype=dtype))
    with pytest.raises(ValueError, match=r"x.permute\(0, 3, 1, 2\)"):
        model(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match="batches of 2 or more images"):
        model.train()(torch.zeros(1, 3, 4, 4))
    assert model.eval()(torch.zeros(1, 3, 4, 4)).shape == (1, 2, 1, 1)


def test_setup_checks_everything_before_changing_anything():
    segnotes.setup(seed=5, threads=1)
    expected = torch.rand(3)
    segnotes.setup(seed=5, threads=1)
    for bad in (dict(seed=-1, threads=2), dict(seed=2**32), dict(threads=0), dict(threads=1.5), dict(deterministic=1)):
        with pytest.raises(ValueError):
            segnotes.setup(**bad)
        assert torch.get_num_threads() == 1
    assert torch.equal(torch.rand(3), expected)  # the failed calls reseeded nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        device = segnotes.setup(seed=np.int64(0), threads=1)
    if device.type == "cpu":
        assert not torch.are_deterministic_algorithms_enabled()  # the CPU path changes no global switch


def test_history_of_no_epoch_prints():
    assert str(History()) == "no epoch trained yet"


def test_fit_refuses_logits_at_another_stride_than_the_model_declares():
    """A model that predicts at H/2 while declaring output_stride=1 fails at once, not after training."""

    class HalfResolution(torch.nn.Module):
        output_stride = 1

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(x)

    data = torch.utils.data.TensorDataset(torch.rand(4, 3, 16, 16), torch.randint(0, 2, (4, 16, 16)))
    with pytest.raises(ValueError, match="declares output_stride=1, so 16x16 images should give 16x16 logits"):
        fit(HalfResolution(), data, num_classes=2, epochs=1, batch_size=2, progress=False)


def test_portable_margin_is_three_stds_with_a_floor():
    from segnotes.train import portable_margin

    assert portable_margin([0.5, 0.5, 0.5]) == 0.05  # no spread: the floor
    assert abs(portable_margin([0.4, 0.5, 0.6], [0.1, 0.1]) - 0.3) < 1e-12  # the largest std, times 3
    for bad in [(), ([0.5],), ([0.5, float("nan")],)]:
        with pytest.raises(ValueError):
            portable_margin(*bad)
