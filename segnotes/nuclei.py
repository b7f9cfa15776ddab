"""Chapter 7: a real microscopy image with a real ground truth, offline.

The `stardist <https://github.com/stardist/stardist>`_ wheel on PyPI ships one 2D
fluorescence image of cell nuclei and its hand-annotated instance mask
(``stardist/data/images/img2d.tif`` and ``mask2d.tif``, 512 x 512). They come from
the stage-1 training set of the 2018 Data Science Bowl (Caicedo et al., "Nucleus
segmentation across imaging experiments: the 2018 Data Science Bowl", Nature
Methods 16, 2019, https://doi.org/10.1038/s41592-019-0612-7), published by the
Broad Bioimage Benchmark Collection as BBBC038v1 under CC0; the stardist package
itself is BSD-3-Clause.

The files are read directly with ``tifffile``: the loader finds them through the
installed distribution's metadata and never imports ``stardist`` (nor any deep
learning framework besides torch). The task is binary (nucleus / background). The
image is cut into square tiles; the bottom band of rows is the validation split and
the rows above it the training split, so no pixel is in both.
"""

from __future__ import annotations

import importlib.metadata
import numbers
from pathlib import Path

import numpy as np
import torch

from .data import TensorSegmentation
from .model import check_positive

__all__ = ["NUCLEI_CLASS_NAMES", "NUCLEI_PALETTE", "NUCLEI_SOURCE", "load_nuclei", "NucleiTiles", "nuclei_splits"]

NUCLEI_CLASS_NAMES: tuple[str, ...] = ("background", "nucleus")
NUCLEI_PALETTE = np.array([[20, 20, 20], [250, 200, 40]], dtype=np.uint8)
NUCLEI_SOURCE = (
    "2018 Data Science Bowl (BBBC038v1, CC0; Caicedo et al., Nature Methods 2019), "
    "the 512x512 example bundled with the stardist package (BSD-3-Clause)"
)
_FILES = ("img2d.tif", "mask2d.tif")  # image, instance mask (0 = background, k = nucleus k)


def _stardist_directory() -> Path:
    """Folder of the installed stardist distribution's sample images, without importing stardist."""
    try:
        dist = importlib.metadata.distribution("stardist")
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            "the nuclei image ships inside the 'stardist' package, which is not installed: "
            "run `pip install stardist` (or `pip install 'segnotes[book]'`)"
        ) from None
    return Path(dist.locate_file("stardist/data/images"))


def load_nuclei(directory: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The nuclei image and its instance mask.

    Args:
        directory: folder holding ``img2d.tif`` and ``mask2d.tif``; by default the
            one inside the installed ``stardist`` distribution.

    Returns:
        ``image`` (H, W) float32 in [0, 1] (intensities rescaled between the 1st and
        99.8th percentile, then clipped) and ``instances`` (H, W) int64 (0 for
        background, one positive id per nucleus).

    Raises:
        ModuleNotFoundError: stardist is not installed and no ``directory`` was given.
        FileNotFoundError: a file is missing from ``directory``.

    Example:
        >>> image, instances = load_nuclei()
        >>> image.shape, int(instances.max())
        ((512, 512), 183)
    """
    import tifffile

    folder = _stardist_directory() if directory is None else Path(directory)
    paths = [folder / name for name in _FILES]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the folder must contain {' and '.join(_FILES)}")
    raw, instances = (tifffile.imread(p) for p in paths)
    raw = raw.astype(np.float32)
    lo, hi = np.percentile(raw, [1.0, 99.8])
    image = np.clip((raw - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    return image, instances.astype(np.int64)


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 rotations/reflections of the square, acting on the last two dims."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


class NucleiTiles(TensorSegmentation):
    """Square tiles of the nuclei image as a binary segmentation dataset.

    Args:
        image: (H, W) float image in [0, 1].
        mask: (H, W) labels; every positive value counts as nucleus.
        rows: ``(top, bottom)`` band of image rows to tile; tiles never leave it.
        tile: tile height and width; the band is cut into non-overlapping tiles,
            leftover rows/columns at the bottom/right are dropped.
        augment: add the 8 rotations/reflections of every tile (8x the samples).

    Returns (per item):
        ``image`` (3, tile, tile) float32 (the grey image repeated on 3 channels, so
        every RGB model of the book applies) and ``mask`` (tile, tile) int64 in {0, 1}.

    Example:
        >>> train, val = nuclei_splits(tile=64)
        >>> train[0][0].shape, val.num_classes
        (torch.Size([3, 64, 64]), 2)
    """

    class_names = NUCLEI_CLASS_NAMES
    palette = NUCLEI_PALETTE

    def __init__(
        self, image: np.ndarray, mask: np.ndarray, rows: tuple[int, int], tile: int = 64, augment: bool = False
    ):
        tile = check_positive("tile", tile)
        if not isinstance(image, np.ndarray) or not isinstance(mask, np.ndarray):
            raise ValueError(
                f"image and mask must be NumPy arrays, got {type(image).__name__} and {type(mask).__name__}"
            )
        if image.ndim != 2 or image.shape != mask.shape:
            raise ValueError(f"need (H, W) image and mask of the same shape, got {image.shape} and {mask.shape}")
        if len(rows) != 2 or not all(isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in rows):
            raise ValueError(f"rows must be two integers (top, bottom), got {rows!r}")
        top, bottom = (int(r) for r in rows)
        if not (0 <= top and bottom <= image.shape[0] and bottom - top >= tile >= 16 and image.shape[1] >= tile):
            raise ValueError(
                f"rows {rows} with tile {tile} do not fit a {image.shape} image: need 16 <= tile <= "
                f"bottom - top and 0 <= top < bottom <= {image.shape[0]}"
            )
        img = torch.from_numpy(np.ascontiguousarray(image[top:bottom], dtype=np.float32))
        lab = torch.from_numpy((mask[top:bottom] > 0).astype(np.int64))
        ny, nx = img.shape[0] // tile, img.shape[1] // tile
        # (ny*t, nx*t) -> (ny*nx, t, t): non-overlapping tiles in row-major order
        img = img[: ny * tile, : nx * tile].reshape(ny, tile, nx, tile).permute(0, 2, 1, 3).reshape(-1, tile, tile)
        lab = lab[: ny * tile, : nx * tile].reshape(ny, tile, nx, tile).permute(0, 2, 1, 3).reshape(-1, tile, tile)
        if augment:
            img = torch.cat([_dihedral(img, k) for k in range(8)])
            lab = torch.cat([_dihedral(lab, k) for k in range(8)])
        self.images = img[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 3, t, t)
        self.masks = lab.contiguous()  # (N, t, t)
        self.rows, self.tile, self.num_classes = (top, bottom), tile, len(NUCLEI_CLASS_NAMES)


def nuclei_splits(
    tile: int = 64, val_fraction: float = 0.25, augment: bool = True, directory: str | Path | None = None
) -> tuple[NucleiTiles, NucleiTiles]:
    """Train and validation tiles of the nuclei image, spatially disjoint.

    The validation split is the bottom band of ``round(val_fraction * H / tile)``
    tile rows; the training split tiles the rows above it. Only the training split
    is augmented.

    Args:
        tile: tile height and width, 16 .. H / 2.
        val_fraction: share of the image rows used for validation, in (0, 1).
        augment: add the 8 rotations/reflections of every training tile.
        directory: passed to :func:`load_nuclei`.

    Returns:
        ``(train, val)`` :class:`NucleiTiles`; with the defaults 384 and 16 tiles of 64 x 64.

    Example:
        >>> train, val = nuclei_splits()
        >>> len(train), len(val), train.rows, val.rows
        (384, 16, (0, 384), (384, 512))
    """
    if not isinstance(val_fraction, numbers.Real) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    tile = check_positive("tile", tile)
    image, instances = load_nuclei(directory)
    H = image.shape[0]
    if not 16 <= tile <= H // 2:
        raise ValueError(f"tile must be in 16..{H // 2} for a {H}-row image, got {tile}")
    val_tiles = min(max(round(val_fraction * H / tile), 1), H // tile - 1)
    split = H - val_tiles * tile
    train = NucleiTiles(image, instances, (0, split), tile, augment=augment)
    val = NucleiTiles(image, instances, (split, H), tile, augment=False)
    return train, val
