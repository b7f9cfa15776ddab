"""The real-data loader: the stardist files are read without importing stardist, splits are disjoint.

Needs ``stardist`` installed (it is in the ``book`` extra, which ``test`` includes)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest
import torch

from segnotes import nuclei
from segnotes.nuclei import NucleiTiles, load_nuclei, nuclei_splits


def test_load_nuclei_reads_the_bundled_image_and_mask():
    image, instances = load_nuclei()
    assert image.shape == instances.shape == (512, 512)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert instances.dtype == np.int64 and instances.min() == 0
    assert len(np.unique(instances)) - 1 > 100  # a hundred-odd annotated nuclei
    assert 0.1 < (instances > 0).mean() < 0.4
    # nuclei are brighter than background: the mask belongs to this image
    assert image[instances > 0].mean() > 2 * image[instances == 0].mean()


def test_loading_never_imports_stardist_or_another_framework():
    code = (
        "import sys; from segnotes.nuclei import nuclei_splits; nuclei_splits(); "
        "print(sorted(m for m in ('stardist', 'csbdeep', 'tensorflow', 'keras', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_splits_are_disjoint_and_cover_the_image():
    train, val = nuclei_splits(tile=64, val_fraction=0.25, augment=False)
    assert train.rows == (0, 384) and val.rows == (384, 512)
    assert len(train) == 6 * 8 and len(val) == 2 * 8
    image, instances = load_nuclei()
    # tile order is row-major: tile (r, c) of the validation band sits at rows 384 + 64 r
    r, c = 1, 3
    expected = torch.from_numpy(image[384 + 64 * r : 384 + 64 * (r + 1), 64 * c : 64 * (c + 1)])
    got_image, got_mask = val[8 * r + c]
    assert torch.equal(got_image[0], expected) and torch.equal(got_image[1], expected)
    assert torch.equal(
        got_mask, torch.from_numpy(instances[384 + 64 * r : 448 + 64 * r, 64 * c : 64 * (c + 1)] > 0).long()
    )
    # every pixel of the image is in exactly one split
    assert (len(train) + len(val)) * 64 * 64 == image.size


def test_augmentation_adds_the_eight_symmetries_of_every_training_tile():
    plain, val_plain = nuclei_splits(tile=64, augment=False)
    augmented, val_aug = nuclei_splits(tile=64, augment=True)
    assert len(augmented) == 8 * len(plain) and len(val_aug) == len(val_plain)  # validation is never augmented
    n = len(plain)
    assert torch.equal(augmented.masks[:n], plain.masks)
    assert torch.equal(augmented.masks[n : 2 * n], torch.rot90(plain.masks, 1, dims=(-2, -1)))
    assert torch.equal(augmented.masks[4 * n : 5 * n], plain.masks.flip(-1))
    torch.testing.assert_close(augmented.class_frequencies(), plain.class_frequencies())


def test_items_are_rgb_float_images_and_binary_masks():
    train, val = nuclei_splits(tile=32)
    image, mask = train[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64 and set(mask.unique().tolist()) <= {0, 1}
    assert val.num_classes == 2 and val.class_names == ("background", "nucleus")
    assert val.class_frequencies().sum().item() == pytest.approx(1.0)


def test_missing_package_gives_a_clear_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(nuclei.importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match="pip install stardist"):
        load_nuclei()


def test_directory_argument_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="img2d.tif and mask2d.tif"):
        load_nuclei(tmp_path)
    import tifffile

    tifffile.imwrite(tmp_path / "img2d.tif", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    tifffile.imwrite(tmp_path / "mask2d.tif", np.eye(64, dtype=np.uint16) * 3)
    train, val = nuclei_splits(tile=16, val_fraction=0.25, augment=False, directory=tmp_path)
    assert len(train) == 12 and len(val) == 4
    assert val.masks.sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": 0.0}, "val_fraction must be in"),
        ({"val_fraction": 1.5}, "val_fraction must be in"),
        ({"tile": 8}, "tile must be in 16..256"),
        ({"tile": 300}, "tile must be in 16..256"),
    ],
)
def test_bad_split_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nuclei_splits(**kwargs)


def test_bad_tiles_arguments():
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        NucleiTiles(image, np.zeros((32, 64)), (0, 64))
    with pytest.raises(ValueError, match="do not fit"):
        NucleiTiles(image, np.zeros((64, 64)), (32, 64), tile=48)
