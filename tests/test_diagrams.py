"""segnotes.diagrams: every label comes from the model, and the book's diagrams are legible."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the renderer the PNGs are written with

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as MplPath
from matplotlib.text import Text

from segnotes import diagrams
from segnotes.dpt import ViTPyramid
from segnotes.encoders import Encoder
from segnotes.mit import MIT_PRESETS, mit
from segnotes.segformer import segformer
from segnotes.setr import SetrMla, SetrNaive, SetrPup
from segnotes.unet import MobileNetV2Backbone, unet
from segnotes.vit import vit


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


def _texts(fig) -> list[str]:
    """Every string drawn on the figure; the figure is closed."""
    texts = [t.get_text() for t in fig.findobj(Text)]
    plt.close(fig)
    return texts


def layout_problems(fig) -> list[str]:
    """Texts that overlap each other, cross a box's edge, are crossed by an arrow, or leave the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    texts = [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
    extents = [t.get_window_extent(renderer) for t in texts]
    boxes = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, FancyBboxPatch)]
    arrows = [  # each arrow as polylines in pixels (shaft, head): Path.intersects_bbox misreads compound paths
        MplPath(line)
        for p in ax.patches
        if isinstance(p, FancyArrowPatch)
        for line in p.get_path().transformed(ax.transData).to_polygons(closed_only=False)
    ]
    problems = []
    for i, (t, e) in enumerate(zip(texts, extents)):
        name = repr(t.get_text()[:30])
        if e.x0 < fig.bbox.x0 or e.y0 < fig.bbox.y0 or e.x1 > fig.bbox.x1 or e.y1 > fig.bbox.y1:
            problems.append(f"{name} leaves the figure")
        if t.get_fontsize() < 10:
            problems.append(f"{name} is smaller than 10 pt")
        for t2, e2 in zip(texts[i + 1 :], extents[i + 1 :]):
            if e.overlaps(e2):
                problems.append(f"{name} overlaps {t2.get_text()[:30]!r}")
        for b in boxes:
            inside = b.x0 + 2 <= e.x0 and e.x1 <= b.x1 - 2 and b.y0 + 2 <= e.y0 and e.y1 <= b.y1 - 2
            if b.overlaps(e) and not inside:
                problems.append(f"{name} crosses the edge of a box")
        shrunk = e.expanded(0.96, 0.8)
        if any(path.intersects_bbox(shrunk, filled=False) for path in arrows):
            problems.append(f"{name} is crossed by an arrow")
    return problems


@pytest.fixture(scope="module")
def book_figures():
    """Every diagram of the book's models, drawn once; closed afterwards."""
    figures = {name: draw() for name, draw in diagrams._book_diagrams().items()}
    yield figures
    for fig in figures.values():
        plt.close(fig)


def test_book_diagrams_are_legible_at_page_width(book_figures):
    for name, fig in book_figures.items():
        width, height = fig.get_size_inches() * fig.dpi
        assert 800 <= width <= 900 and height <= 700, f"{name}: {width:.0f} x {height:.0f} px"
        assert layout_problems(fig) == [], name


def test_the_books_figures_folder_holds_one_small_png_per_diagram():
    folder = Path(diagrams.__file__).parents[1] / "book" / "figures"
    pngs = {p.stem: p.stat().st_size for p in folder.glob("*.png")}
    assert set(pngs) == set(diagrams._book_diagrams()), "redraw them: python -m segnotes.diagrams book/figures"
    assert max(pngs.values()) < 80_000


def test_unet_labels_follow_the_encoder_and_the_decoder():
    fig = diagrams.draw_unet(unet("book", MobileNetV2Backbone(), num_classes=3, decoder_channels=(40, 30, 20, 12, 6)))
    text = "\n".join(_texts(fig))
    assert "[3, 16, 24, 32, 96, 1280]" in text and "[5] 1280 ch at 1/32" in text
    assert "block 0: ↑, 1280 + 96 → 40 ch" in text and "block 4: ↑, 12 + 0 → 6 ch" in text
    assert "6 → 3 logits" in text and "placeholder" not in text
    fig = diagrams.draw_unet(unet("book", mit("b0", embed_dims=(24, 48, 120, 200), num_heads=(1, 2, 4, 8))))
    text = "\n".join(_texts(fig))
    assert "[3, 0, 24, 48, 120, 200]" in text and "[1] 0 ch at 1/2: placeholder" in text
    assert "block 3: ↑, 16 + 0 → 16 ch" in text  # the placeholder reaches its block as a 0-channel skip


def test_unet_plus_plus_draws_the_nodes_the_model_builds():
    model = unet("book", mit("b0"), nested=True, num_classes=2, decoder_channels=(48, 32, 16, 16, 8))
    texts = _texts(diagrams.draw_unet_plus_plus(model))
    main_path = ["$X^{4,1}$ 48", "$X^{3,2}$ 32", "$X^{2,3}$ 16", "$X^{1,4}$ 16", "$X^{0,5}$ 8"]
    off_path = ["$X^{3,1}$ 64", "$X^{2,1}$ 32", "$X^{2,2}$ 32"]  # the channels of their row's encoder map
    encoder = ["$X^{5,0}$ 256", "$X^{2,0}$ 32", "$X^{1,0}$ 0"]
    assert set(main_path + off_path + encoder) <= set(texts)
    assert {"$X^{1,1}$", "$X^{1,3}$", "$X^{0,1}$"} <= set(texts)  # not built: the placeholder's and the image's rows
    with pytest.raises(ValueError, match="draw_unet_plus_plus"):
        diagrams.draw_unet(model)


def test_mit_diagrams_read_the_config():
    config = MIT_PRESETS["b1"]
    fig = diagrams.draw_mit_pyramid(config, size=256)
    text = "\n".join(_texts(fig))
    assert "[64, 128, 320, 512]" in text and "N = 64×64 = 4096" in text and "sr 8: R = 64" in text
    fig = diagrams.draw_mit_block(mit("b0", sr_ratios=(4, 2, 2, 1)), stage=0, size=128)
    text = "\n".join(_texts(fig))
    assert "conv 4×4,\nstride 4; LN" in text and "M = 8×8 = 64" in text and "N = 32×32 = 1024" in text
    with pytest.raises(ValueError, match="stage must be in 0..3"):
        diagrams.draw_mit_block(config, stage=4)


def test_all_mlp_decoder_shows_both_paths_with_the_models_widths():
    fig = diagrams.draw_all_mlp_decoder(segformer("b0", num_classes=7, decoder_dim=64), size=256)
    text = "\n".join(_texts(fig))
    assert "Linear 160 → 64" in text and "4 × 64\n= 256 ch" in text and "256 → 64" in text
    assert "64 → 7" in text and "fold=True" in text and "fold=False" in text and "64×64" in text


def test_setr_and_dpt_resolutions_are_measured():
    make = lambda: vit("book", num_classes=0, patch_size=8)  # noqa: E731
    fig = diagrams.draw_setr(SetrNaive(make(), 3), SetrPup(make(), 3), SetrMla(make(), 3, channels=16), size=64)
    text = "\n".join(_texts(fig))
    assert "8×8 patches → 8×8 tokens" in text and "bilinear ×8\n3 × 64×64" in text
    assert "32 × 32×32 → 64×64" in text and "×4\n8 × 32×32" in text  # MLA: ×4 per stream, then ×2 in the head
    assert "1×1 conv: 3 × 32×32, ×2: 64×64" in text
    pyramid = ViTPyramid(vit("book", num_classes=0, patch_size=8), channels=(8, 16, 24, 40))
    fig = diagrams.draw_dpt(Encoder(pyramid), size=64)
    text = "\n".join(_texts(fig))
    assert "[3, 0, 8, 16, 24, 40]" in text and "transposed conv" in text and "8 × 16×16" in text
    with pytest.raises(ValueError, match="ViTPyramid"):
        diagrams.draw_dpt(mit("b0"))


def test_draw_all_writes_small_pngs_and_closes_its_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(diagrams, "_book_diagrams", lambda: {"mit_pyramid": lambda: diagrams.draw_mit_pyramid(mit())})
    open_before = len(plt.get_fignums())
    (path,) = diagrams.draw_all(tmp_path)
    assert path.name == "mit_pyramid.png" and path.stat().st_size < 80_000
    assert len(plt.get_fignums()) == open_before
