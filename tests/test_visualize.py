"""Pictures: sizes, colours where boxes and labels are drawn, radiological orientation, slice choice, `show overlay`
CLI."""

import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image

from shared import visualize
from shared.metrics.deeplesion import froc
from shared.phantoms.ct import nifti, reorient

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _has_colour(pixels: np.ndarray, colour, tolerance: int = 40) -> bool:
    return bool((np.abs(pixels.astype(int) - colour).max(axis=-1) <= tolerance).any())


def test_axial_view_is_radiological():
    volume = np.zeros((4, 3, 2))
    volume[3, 2, 1] = 1  # highest x (patient right) and y (anterior)
    view = visualize.axial_view(volume, 1)
    assert view.shape == (3, 4)  # rows y, columns x
    assert view[0, 0] == 1  # patient right on the left, anterior at the top


def test_slices_with_most_foreground():
    label = np.zeros((4, 4, 10), np.int16)
    label[:, :, 2] = 1
    label[:2, :, 7] = 2
    pred = np.zeros_like(label)
    pred[0, 0, 5] = 1
    assert visualize.slices_with_most_foreground(label, pred, 2) == [2, 7]
    assert visualize.slices_with_most_foreground(label, pred, 5) == [2, 5, 7]  # only slices with foreground
    assert visualize.slices_with_most_foreground(0 * label, pred * 0, 3) == [2, 4, 7]  # none: evenly spaced


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, z = np.mgrid[:40, :32, :8]
    image = np.where(((x - 20) / 18) ** 2 + ((y - 16) / 14) ** 2 <= 1, 40.0, -1000.0)
    label = np.zeros(image.shape, np.int16)
    label[8:20, 8:20, 2:6] = 1
    label[10:14, 10:14, 3:5] = 2
    return image, label, np.roll(label, 2, axis=0)


def test_overlay_png_size_and_class_colours(tmp_path):
    image, label, pred = _volumes()
    out = visualize.save_overlay_png(
        image, label, pred, tmp_path / "overlay.png", num_slices=3, class_names=("bg", "kidney", "tumour")
    )
    pixels = _pixels(out)
    assert pixels.shape == (3 * 320 + 90, 640, 3)
    kidney, tumour = (np.array(c) * 255 for c in visualize.CLASS_COLOURS[:2])
    assert _has_colour(pixels[:, :320], kidney) and _has_colour(pixels[:, :320], tumour)  # contours, left
    assert _has_colour(pixels[:, 320:], tumour)  # prediction, right
    with pytest.raises(ValueError, match="one shape"):
        visualize.save_overlay_png(image, label[:-1], pred, tmp_path / "bad.png")


def test_overlay_titles_do_not_overlap(tmp_path):
    """Square slices fill their panels: above the first row there are two separate lines of text, the figure's
    title and the panel titles, with blank rows between them and before the slices start."""
    image, label, pred = (np.repeat(np.repeat(v[:32], 2, axis=0), 2, axis=1)[:64, :64] for v in _volumes())
    pixels = _pixels(visualize.save_overlay_png(image, label, pred, tmp_path / "square.png", title="case title"))
    above = round((visualize.CAPTION_INCHES / 2 + visualize.TITLE_INCHES) * visualize.DPI)
    ink = (pixels[:above].min(axis=-1) < 200).any(axis=1)  # rows of the strip above the first row with text
    starts = np.flatnonzero(ink[1:] & ~ink[:-1]) + 1
    assert len(starts) == 2 and not ink[0] and not ink[-1], f"text rows {np.flatnonzero(ink)}"


def test_detection_png_colours_where_the_boxes_are(tmp_path):
    image = np.zeros((128, 128))
    gt = [[20, 20, 50, 50]]
    preds = [[23, 23, 53, 53], [80, 10, 110, 40], [80, 60, 100, 80]]  # TP (IoU .68), FP, below the score threshold
    out = visualize.save_detection_png(image, gt, preds, [0.9, 0.8, 0.1], tmp_path / "det.png", score_threshold=0.5)
    pixels = _pixels(out)
    assert pixels.shape == (512, 512, 3)  # enlarged 4 times: pixel x covers output columns [4x, 4x + 4)

    def edge(x, y0, y1):  # the vertical edge at image x, between image rows y0 and y1
        return pixels[4 * y0 : 4 * y1, int(4 * (x + 0.5)) - 2 : int(4 * (x + 0.5)) + 3]

    assert _has_colour(edge(20, 30, 40), BLUE, 0)  # ground truth
    assert _has_colour(edge(53, 30, 40), GREEN, 0)  # true positive
    assert _has_colour(edge(80, 20, 30), RED, 0)  # false positive
    assert not _has_colour(edge(80, 65, 75), RED) and not _has_colour(edge(80, 65, 75), GREEN)  # not drawn
    assert not _has_colour(edge(35, 30, 40), BLUE)  # inside the ground truth box: no line


def test_froc_png(tmp_path):
    result = froc([np.array([[0, 0, 10, 10], [20, 20, 30, 30]])], [np.array([0.9, 0.5])], [np.array([[0, 0, 10, 10]])])
    pixels = _pixels(visualize.save_froc_png(result, tmp_path / "froc.png", "FROC test"))
    assert pixels.shape == (480, 640, 3)
    assert _has_colour(pixels, (214, 39, 40))  # the tab:red markers at the standard FP rates


def test_froc_png_marks_the_scored_sensitivities(tmp_path, monkeypatch):
    """Two images, one lesion each; pooled by score: hit (0.9), FP (0.8), hit (0.7), FP (0.6). The curve reaches 0.5
    FPs per image at sensitivity 0.5 and, one detection lower, 1.0 at the same rate: 3DCE (the tables) reports 0.5 at
    0.5 FPs, the last point at the rate would be 1.0. The picture marks what the tables say."""
    lesions = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]])]
    boxes = [np.array([[0, 0, 10, 10], [40, 40, 50, 50]]), np.array([[0, 0, 10, 10], [40, 40, 50, 50]])]
    result = froc(boxes, [np.array([0.9, 0.8]), np.array([0.7, 0.6])], lesions)
    assert result.sensitivities[0] == 0.5  # the 3DCE reading at 0.5 FPs per image
    marks = {}

    def capture(fig, out_path):
        marks.update({t.xy[0]: t.get_text() for t in fig.axes[0].texts})
        return out_path

    monkeypatch.setattr(visualize, "_save", capture)
    visualize.save_froc_png(result, tmp_path / "froc.png")
    assert marks[0.5] == "0.500" and marks[1] == "1.000" and marks[16] == "1.000"


def _attention_pixels(tmp_path, name, weights=None, spatial=None, key_slice=None, **kwargs) -> np.ndarray:
    key_slice = np.zeros((32, 32)) if key_slice is None else key_slice
    out = visualize.save_object_attention_png(weights, spatial, key_slice, tmp_path / name, "attention", **kwargs)
    return _pixels(out)


def test_contextual_bars_are_as_tall_as_their_weights(tmp_path):
    """Bars K-1, K, K+1 of weights 0.2, 1, 0.6 on a 0-1 axis: three runs of bar-coloured columns, left to right, whose
    heights in pixels keep the weights' ratios."""
    pixels = _attention_pixels(tmp_path, "bars.png", [0.2, 1.0, 0.6], np.zeros((4, 4)), stride=8)
    left = pixels[:, : pixels.shape[1] // 2]  # the bar chart; the spatial map is on the right
    bar = (np.abs(left.astype(int) - np.array(matplotlib.colors.to_rgb("tab:blue")) * 255).max(axis=-1) <= 3).sum(0)
    columns = np.flatnonzero(bar)
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    heights = [int(bar[run].max()) for run in runs]
    assert len(runs) == 3 and heights[1] > heights[2] > heights[0] > 0, heights
    assert heights[0] / heights[1] == pytest.approx(0.2, abs=0.02)
    assert heights[2] / heights[1] == pytest.approx(0.6, abs=0.02)


def test_spatial_map_is_drawn_over_the_key_slice(tmp_path):
    """A flat map over a slice half black, half white: the picture shows both halves through the map's colour."""
    key_slice = np.zeros((32, 32))
    key_slice[:, 16:] = 1.0  # right half white
    spatial = np.full((4, 4), 0.5)
    pixels = _attention_pixels(tmp_path, "half.png", spatial=spatial, key_slice=key_slice, stride=8)
    bare = _attention_pixels(tmp_path, "black.png", spatial=spatial, stride=8)
    assert pixels.shape == bare.shape
    changed = np.abs(pixels.astype(int) - bare.astype(int)).max(axis=-1) > 60
    columns = np.flatnonzero(changed.any(axis=0))
    assert changed.sum() > 1000, "the slice does not show through the attention map"
    assert columns.min() > pixels.shape[1] * 0.3  # the white half, not the left one


def test_spatial_map_cells_sit_on_their_pixels(tmp_path):
    """Cell (r, c) of a stride-8 map covers image pixels [8r, 8r + 8) x [8c, 8c + 8): one hot cell over a black
    slice fills exactly the box drawn around those pixels, and a hot cell one row down and one column left moves
    by its own size."""
    top = (np.array(matplotlib.colormaps["jet"](1.0)[:3]) * 255 * 0.45).astype(int)  # over black, alpha 0.45

    def hot(row, col):
        spatial = np.zeros((4, 4))
        spatial[row, col] = 1.0
        box = (8 * col - 0.5, 8 * row - 0.5, 8 * col + 7.5, 8 * row + 7.5)  # the edges of the cell's pixels
        pixels = _attention_pixels(tmp_path, f"hot{row}{col}.png", spatial=spatial, stride=8, box=box)
        white = (pixels.min(axis=-1) > 200) & (np.arange(pixels.shape[1]) < pixels.shape[1] * 0.7)  # not the bar
        return (np.abs(pixels.astype(int) - top).max(axis=-1) <= 3), white

    (first, first_box), (second, second_box) = hot(1, 2), hot(2, 1)
    cell_a, cell_b = first & ~second, second & ~first  # the colour bar's top is the same in both: left out
    (ya, xa), (yb, xb), (yw, xw) = (np.nonzero(m) for m in (cell_a, cell_b, first_box & ~second_box))
    side = xw.max() - xw.min()  # the box's outline, one cell wide
    assert side > 40 and abs((yw.max() - yw.min()) - side) <= 2  # square
    assert abs(xw.min() - xa.min()) <= 2 and abs(xw.max() - xa.max()) <= 2  # the hot cell fills the box
    assert abs(yw.min() - ya.min()) <= 2 and abs(yw.max() - ya.max()) <= 2
    assert abs((xa.mean() - xb.mean()) - side) <= 2 and abs((yb.mean() - ya.mean()) - side) <= 2  # one cell apart


def test_object_attention_png_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="must be 2D"):
        visualize.save_object_attention_png(None, np.zeros((4, 4)), np.zeros((3, 32, 32)), tmp_path / "a.png")
    with pytest.raises(ValueError, match="one per image of M"):
        visualize.save_object_attention_png([0.5, 0.5], None, np.zeros((32, 32)), tmp_path / "a.png")


def test_show_cli_reorients_nifti_and_names_bad_files(tmp_path, repo_root):
    image, label, pred = _volumes()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    paths = {}
    for name, data, axcodes in (("image", image, "LPS"), ("label", label, "IPL"), ("pred", pred, "RAS")):
        on_disk, aff = reorient(data, affine, axcodes)
        paths[name] = tmp_path / f"{name}.nii.gz"
        nifti(on_disk, aff).to_filename(paths[name])
    out = tmp_path / "show.png"
    command = [sys.executable, "-m", "shared", "show", "overlay", paths["image"], paths["label"], paths["pred"], out]
    done = subprocess.run([*map(str, command), "--num_slices", "2"], cwd=repo_root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _pixels(out).shape == (2 * 320 + 90, 640, 3)
    on_disk, aff = reorient(pred[:, :, :-1], affine, "RAS")
    nifti(on_disk, aff).to_filename(paths["pred"])
    done = subprocess.run(list(map(str, command)), cwd=repo_root, capture_output=True, text=True)
    assert done.returncode == 1 and "pred.nii.gz: shape (40, 32, 7)" in done.stderr
