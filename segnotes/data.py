"""Data for every chapter, all offline.

* :class:`Shapes`: a deterministic synthetic segmentation dataset. Discs, rings,
  squares and triangles of random size, rotation, colour and texture are painted on
  textured, noisy backgrounds and may occlude each other. Colour says nothing about
  the class (shapes and background draw colours from the same distribution), so a
  model has to use shape and context: a ring differs from a disc only by the hole in
  the middle, a square from a triangle only by its corners. That is what makes the
  choice of encoder and decoder matter. Its difficulty knobs (``binary``, ``textured``,
  ``noise``, ``max_shapes``, ``radius``) let a chapter pick the setting its point
  needs: the default 5-class task is hard for a one-minute CPU budget (the four shape
  classes are the last thing any model learns), the binary one is learned quickly.
* :func:`load_photo`: real photos bundled with scikit-image, for visual demos.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "CLASS_NAMES",
    "BINARY_CLASS_NAMES",
    "PALETTE",
    "TensorSegmentation",
    "Shapes",
    "shapes_splits",
    "render_shapes",
    "PHOTOS",
    "load_photo",
    "photo_tensor",
    "Lines",
]

CLASS_NAMES: tuple[str, ...] = ("background", "disc", "ring", "square", "triangle")
BINARY_CLASS_NAMES: tuple[str, ...] = ("background", "shape")
# One RGB colour per class (uint8), used by every mask plot in the book.
PALETTE = np.array([[20, 20, 20], [230, 25, 75], [60, 180, 75], [255, 200, 25], [0, 130, 200]], dtype=np.uint8)


def _is_int(value: object) -> bool:
    """True for Python and NumPy integers (not bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, textured: bool = True) -> np.ndarray:
    """A random colour modulated by stripes and a smooth blotch (or flat), (H, W, 3) in [0, 1]."""
    base = rng.uniform(0.15, 0.85, size=3)
    if not textured:
        return np.broadcast_to(base, (*yy.shape, 3)).copy()
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
    stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
    cy, cx, s = rng.uniform(0, yy.shape[0]), rng.uniform(0, xx.shape[1]), rng.uniform(0.3, 1.0) * yy.shape[0]
    blotch = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    amp = rng.uniform(0.05, 0.2)
    tex = base + amp * stripes[..., None] + 0.2 * (blotch[..., None] - 0.5) * rng.uniform(-1, 1, size=3)
    return np.clip(tex, 0, 1)


def _shape_mask(
    kind: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int, radius: tuple[float, float]
) -> np.ndarray:
    """Boolean (H, W) mask of one shape of class ``kind`` (1 disc, 2 ring, 3 square, 4 triangle)."""
    r = rng.uniform(*radius) * size
    cy, cx = rng.uniform(0.1, 0.9, size=2) * size
    dy, dx = yy - cy, xx - cx
    theta = rng.uniform(0, 2 * np.pi)
    if kind == 1:
        return dy**2 + dx**2 <= r**2
    if kind == 2:
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (rng.uniform(0.45, 0.65) * r) ** 2)
    if kind == 3:
        u = np.cos(theta) * dx + np.sin(theta) * dy
        v = -np.sin(theta) * dx + np.cos(theta) * dy
        half = r / np.sqrt(2)  # same circumradius as the other shapes
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # Regular triangle with circumradius r: inside all three edges at distance r/2 from the centre.
    inside = np.ones_like(yy, dtype=bool)
    for k in range(3):
        a = theta + 2 * np.pi * k / 3
        inside &= np.cos(a) * dx + np.sin(a) * dy <= r / 2
    return inside


def render_shapes(
    rng: np.random.Generator,
    size: int = 64,
    max_shapes: int = 4,
    noise: float = 0.08,
    textured: bool = True,
    radius: tuple[float, float] = (0.12, 0.3),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic sample.

    Args:
        rng: the generator that decides everything about the sample.
        size: image height and width in pixels (any size >= 16).
        max_shapes: at most this many shapes (at least one), later ones occlude earlier ones.
        noise: standard deviation of the Gaussian pixel noise.
        textured: stripes and blotches on shapes and background; ``False`` paints flat colours.
        radius: range of a shape's circumradius, as fractions of ``size``.

    Returns:
        ``image`` (H, W, 3) float32 in [0, 1] and ``mask`` (H, W) int64 of class indices
        (0 background, 1 disc, 2 ring, 3 square, 4 triangle).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _texture(rng, yy, xx, textured)
    mask = np.zeros((size, size), dtype=np.int64)
    for _ in range(rng.integers(1, max_shapes + 1)):
        kind = int(rng.integers(1, len(CLASS_NAMES)))
        m = _shape_mask(kind, rng, yy, xx, size, radius)
        image[m] = _texture(rng, yy, xx, textured)[m]
        mask[m] = kind
    image = image + rng.normal(0, noise, size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32), mask


class TensorSegmentation(Dataset):
    """A segmentation dataset held in two tensors: ``images`` (N, 3, H, W) and ``masks`` (N, H, W).

    Subclasses fill ``images``, ``masks`` and ``num_classes`` in ``__init__``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.masks[i]

    def class_frequencies(self) -> torch.Tensor:
        """Fraction of the labelled pixels of each class, shape (num_classes,).

        Pixels labelled 255 (``segnotes.train.IGNORE_INDEX``) belong to no class and are not counted.
        """
        labels = self.masks.flatten()
        labels = labels[labels != 255]
        return torch.bincount(labels, minlength=self.num_classes).float() / max(labels.numel(), 1)


class Shapes(TensorSegmentation):
    """The book's synthetic segmentation dataset, any image size, with difficulty knobs.

    Samples are generated once, in ``__init__``, from ``(seed, index)``: the same
    arguments give the same tensors on every machine.

    Args:
        n: number of samples.
        size: image height and width (>= 16).
        seed: dataset seed; use different seeds for different splits.
        binary: label every shape 1 ("shape") and the rest 0: 2 classes instead of 5.
        max_shapes: at most this many shapes per image (>= 1).
        noise: Gaussian noise standard deviation (>= 0).
        textured: stripes and blotches (``True``) or flat colours.
        radius: (min, max) circumradius of a shape as fractions of ``size``, within (0, 1].

    Attributes:
        num_classes: 5, or 2 with ``binary=True``.
        class_names: :data:`CLASS_NAMES` or :data:`BINARY_CLASS_NAMES`.

    Returns (per item):
        ``image`` (3, size, size) float32 in [0, 1] and ``mask`` (size, size) int64.

    Example:
        >>> image, mask = Shapes(8, size=64, binary=True)[0]
    """

    palette = PALETTE

    def __init__(
        self,
        n: int,
        size: int = 64,
        seed: int = 0,
        *,
        binary: bool = False,
        max_shapes: int = 4,
        noise: float = 0.08,
        textured: bool = True,
        radius: tuple[float, float] = (0.12, 0.3),
    ):
        if not (_is_int(n) and _is_int(size)) or n < 1 or size < 16:
            raise ValueError(f"need integers n >= 1 and size >= 16, got n={n!r}, size={size!r}")
        if max_shapes < 1 or not noise >= 0:  # `not >=` also refuses NaN
            raise ValueError(f"need max_shapes >= 1 and noise >= 0, got max_shapes={max_shapes}, noise={noise}")
        if not 0 < radius[0] <= radius[1] <= 1:
            raise ValueError(f"radius must be (min, max) with 0 < min <= max <= 1 (fractions of size), got {radius}")
        samples = [
            render_shapes(np.random.default_rng([seed, i]), size, max_shapes, noise, textured, tuple(radius))
            for i in range(n)
        ]
        images, masks = zip(*samples)
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
        masks = torch.from_numpy(np.stack(masks))  # (N, H, W)
        self.masks = (masks > 0).long() if binary else masks
        self.class_names = BINARY_CLASS_NAMES if binary else CLASS_NAMES
        self.num_classes = len(self.class_names)


def shapes_splits(
    n_train: int = 512, n_val: int = 128, size: int = 64, seed: int = 0, **knobs
) -> tuple[Shapes, Shapes]:
    """Train and validation :class:`Shapes` with disjoint seeds (no sample is in both).

    ``knobs`` are :class:`Shapes`' keyword arguments (``binary``, ``textured``, ...), used for both splits.
    """
    return Shapes(n_train, size, seed=2 * seed, **knobs), Shapes(n_val, size, seed=2 * seed + 1, **knobs)


# Photos that scikit-image ships inside its wheel (no download needed).
PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket")


def load_photo(name: str = "astronaut", size: int | None = None) -> np.ndarray:
    """A real RGB photo bundled with scikit-image.

    Args:
        name: one of :data:`PHOTOS`.
        size: if given, center-crop to a square and resize to ``size`` x ``size``.

    Returns:
        (H, W, 3) float32 array in [0, 1].
    """
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {PHOTOS}")
    if size is not None and not (_is_int(size) and size >= 1):
        raise ValueError(f"size must be a positive integer or None (the full photo), got {size!r}")
    import skimage.data
    from skimage.transform import resize

    image = getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0
    if size is not None:
        h, w = image.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = resize(image[top : top + s, left : left + s], (size, size), anti_aliasing=True).astype(np.float32)
    return image


def photo_tensor(name: str = "astronaut", size: int = 224) -> torch.Tensor:
    """:func:`load_photo` as a (1, 3, size, size) tensor in [0, 1]."""
    return torch.from_numpy(load_photo(name, size)).permute(2, 0, 1)[None].contiguous()


class Lines(TensorSegmentation):
    """Thin straight lines on textured, noisy backgrounds: a binary task where output resolution decides.

    Each image holds 1 to ``max_lines`` segments, each between two random points at
    least ``size / 2`` apart. A pixel is labelled 1 ("line") when its centre lies within
    ``width / 2`` of a segment, so ``width=1`` draws lines one pixel wide. On the image a
    line brightens *or* darkens the background (a random sign per line) by ``contrast``:
    the line is visible locally, but no single grey threshold separates lines from a
    textured background, and a predictor that decides once per ``s x s`` block cannot
    draw it (see :func:`segnotes.resolution.block_ceiling`). Chapter 6 trains on it.

    Samples are generated once, in ``__init__``, from ``(seed, index)``: the same
    arguments give the same tensors on every machine.

    Args:
        n: number of samples (>= 1).
        size: image height and width (>= 16).
        seed: dataset seed; use different seeds for different splits.
        width: line width in pixels, in (0, size / 4].
        max_lines: at most this many lines per image (>= 1).
        contrast: (min, max) change of the pixel values along a line, within (0, 1].
        noise: Gaussian noise standard deviation (>= 0).
        textured: stripes and blotches on the background (``True``) or a flat colour.

    Attributes:
        num_classes: 2.
        class_names: ``("background", "line")``.

    Returns (per item):
        ``image`` (3, size, size) float32 in [0, 1] and ``mask`` (size, size) int64.

    Example:
        >>> image, mask = Lines(8, size=32)[0]
    """

    palette = PALETTE[[0, 3]]  # dark background, yellow lines

    def __init__(
        self,
        n: int,
        size: int = 32,
        seed: int = 0,
        *,
        width: float = 1.0,
        max_lines: int = 3,
        contrast: tuple[float, float] = (0.25, 0.45),
        noise: float = 0.05,
        textured: bool = True,
    ):
        if n < 1 or size < 16:
            raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
        if not 0 < width <= size / 4:
            raise ValueError(f"width must be in (0, size / 4] pixels, got {width} for size {size}")
        if max_lines < 1 or noise < 0:
            raise ValueError(f"need max_lines >= 1 and noise >= 0, got max_lines={max_lines}, noise={noise}")
        if not 0 < contrast[0] <= contrast[1] <= 1:
            raise ValueError(f"contrast must be (min, max) with 0 < min <= max <= 1, got {contrast}")
        samples = [
            _render_lines(np.random.default_rng([seed, i]), size, width, max_lines, tuple(contrast), noise, textured)
            for i in range(n)
        ]
        images, masks = zip(*samples)
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
        self.masks = torch.from_numpy(np.stack(masks))  # (N, H, W)
        self.class_names = ("background", "line")
        self.num_classes = 2


def _render_lines(
    rng: np.random.Generator,
    size: int,
    width: float,
    max_lines: int,
    contrast: tuple[float, float],
    noise: float,
    textured: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """One :class:`Lines` sample: image (H, W, 3) float32 in [0, 1], mask (H, W) int64."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _texture(rng, yy, xx, textured)
    mask = np.zeros((size, size), dtype=np.int64)
    for _ in range(rng.integers(1, max_lines + 1)):
        start, end = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        while np.hypot(*(end - start)) < size / 2:  # long enough to cross several patches
            end = rng.uniform(0, size, 2)
        d = end - start
        t = np.clip(((yy - start[0]) * d[0] + (xx - start[1]) * d[1]) / float(d @ d), 0, 1)
        distance = np.hypot(yy - start[0] - t * d[0], xx - start[1] - t * d[1])  # to the segment
        line = distance <= width / 2
        sign = rng.choice([-1.0, 1.0])  # brighter or darker than the background
        image[line] = np.clip(image[line] + sign * rng.uniform(*contrast), 0, 1)
        mask[line] = 1
    image = image + rng.normal(0, noise, size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32), mask
