"""Pictures for people: segmentation overlays, FROC curves, detections on a slice, attention over CT slices, training
curves (TensorBoard event files), ablation bars (mean +- sd per arm) and per-case Dice bars (PNG).

matplotlib with the Agg backend (no display needed); every PNG is written atomically. Volumes are 3D arrays in
RAS (x, y, z) with z axial; axial slices are drawn in the radiological convention (patient's right on the
left of the picture, anterior at the top).
"""

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from shared.data.atomic import atomic_path  # noqa: E402
from shared.metrics.deeplesion import FP_RATES, FROCResult, box_overlaps  # noqa: E402

DPI = 100
PANEL_INCHES = 3.2
CAPTION_INCHES = 0.9  # half above the panels (figure title), half below (legend)
TITLE_INCHES = 0.3  # above each panel, for its title
GAP_INCHES = 0.04
# Label value -> RGB: 1 red, 2 green (as the VA paper's figures: liver red, lesions green), then blue, yellow, ...
CLASS_COLOURS = ((1.0, 0.15, 0.15), (0.1, 0.9, 0.1), (0.2, 0.45, 1.0), (1.0, 0.85, 0.1), (0.9, 0.3, 0.9))
GT_COLOUR, TP_COLOUR, FP_COLOUR = (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)  # CS-Att Fig. 4


def _save(fig: Figure, out_path: str | os.PathLike) -> Path:
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return Path(out_path)


def axial_view(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z of a RAS volume as displayed: rows anterior -> posterior, columns patient right -> left."""
    return volume[::-1, ::-1, z].T


def _class_name(value: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if isinstance(class_names, Mapping):
        return class_names.get(value, f"class {value}")
    if class_names is not None and value < len(class_names):
        return class_names[value]
    return f"class {value}"


def _colour(value: int) -> tuple[float, float, float]:
    return CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)]


def slices_with_most_foreground(label: np.ndarray, pred: np.ndarray, num_slices: int) -> list[int]:
    """The ``num_slices`` axial slices with most foreground (reference or prediction), in z order; evenly spaced
    slices when there is no foreground."""
    counts = np.count_nonzero((label > 0) | (pred > 0), axis=(0, 1))
    if not counts.any():
        depth = label.shape[2]
        return sorted({int(z) for z in np.linspace(0, depth - 1, num_slices + 2)[1:-1].round()})
    best = np.argsort(-counts, kind="stable")[:num_slices]
    return sorted(int(z) for z in best if counts[z] > 0)


def save_overlay_png(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    out_path: str | os.PathLike,
    num_slices: int = 4,
    window: tuple[float, float] = (-200, 500),
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    title: str | None = None,
) -> Path:
    """Axial slices with most foreground, one row each: CT with ground-truth contours (left) beside CT with the
    prediction filled and outlined (right), colours by label value, a legend and a title.

    ``image`` is in HU, shown through ``window`` (low, high); ``label`` and ``pred`` are label maps of the same
    shape; ``class_names`` maps label values to names (a sequence is indexed by value: ``("background",
    "kidney", "tumour")``). The PNG is 640 pixels wide and ``n * 320 + 90`` high for the n slices shown
    (``num_slices``, or fewer if fewer slices hold foreground).
    """
    image, label, pred = np.asarray(image), np.asarray(label), np.asarray(pred)
    if image.ndim != 3 or image.shape != label.shape or image.shape != pred.shape:
        raise ValueError(f"image, label and pred must be 3D of one shape: {image.shape}, {label.shape}, {pred.shape}")
    slices = slices_with_most_foreground(label, pred, num_slices)
    values = sorted(int(v) for v in np.union1d(np.unique(label), np.unique(pred)) if v > 0)
    fig = plt.figure(figsize=(2 * PANEL_INCHES, len(slices) * PANEL_INCHES + CAPTION_INCHES))
    for row, z in enumerate(slices):
        ct = axial_view(image, z)
        for col, (labels, name) in enumerate(((label, "ground truth"), (pred, "prediction"))):
            ax = _panel_axes(fig, row, col)
            ax.imshow(ct, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            shown = axial_view(labels, z)
            for value in values:
                mask = (shown == value).astype(float)
                if not mask.any():
                    continue
                if col == 1:
                    ax.imshow(np.ma.masked_where(mask == 0, mask), cmap=_solid_cmap(_colour(value)), alpha=0.45)
                ax.contour(mask, levels=[0.5], colors=[_colour(value)], linewidths=1.5 if col == 0 else 0.8)
            ax.set_title(f"{name}, z = {z}", fontsize=9)
            ax.set_axis_off()
    caption_y = 1 - CAPTION_INCHES / 4 / fig.get_figheight()
    default_title = "ground truth contours (left) vs prediction (right), axial slices"
    fig.suptitle(title or default_title, y=caption_y, va="center", fontsize=11)
    handles = [Patch(color=_colour(v), label=_class_name(v, class_names)) for v in values]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    return _save(fig, out_path)


def _panel_axes(fig: Figure, row: int, col: int) -> matplotlib.axes.Axes:
    """Axes of the PANEL_INCHES square cell (ROW, COL) below the figure title's strip (CAPTION_INCHES / 2 high).

    The image fills the cell below a TITLE_INCHES strip for its own title, so no title overlaps another.
    """
    width, height = fig.get_size_inches()
    top = CAPTION_INCHES / 2 + row * PANEL_INCHES + TITLE_INCHES  # inches from the figure's top
    box_w, box_h = PANEL_INCHES - 2 * GAP_INCHES, PANEL_INCHES - TITLE_INCHES - GAP_INCHES
    left = col * PANEL_INCHES + GAP_INCHES
    return fig.add_axes((left / width, 1 - (top + box_h) / height, box_w / width, box_h / height))


def _solid_cmap(colour: tuple[float, float, float]) -> matplotlib.colors.ListedColormap:
    return matplotlib.colors.ListedColormap([colour])


def save_froc_png(result: FROCResult, out_path: str | os.PathLike, title: str = "FROC") -> Path:
    """FROC curve (FPs per image on a log2 axis, sensitivity) of a scored ``shared.metrics.deeplesion.froc`` result,
    with its reported sensitivities marked at its FP rates (0.5 ... 16): the figures of its tables, read off the curve
    as its convention reads them. Under the 3DCE convention the operating points are joined by straight lines (3DCE
    interpolates between them), under ``reachable`` by steps. The PNG is 640 x 480 pixels.
    """
    fps, sens = (np.asarray(c, dtype=float) for c in result.curve)
    style = "steps-post" if result.convention == "reachable" else "default"
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.plot(np.maximum(fps, FP_RATES[0] / 4), sens, drawstyle=style, color="tab:blue", label="FROC")
    for rate, value in zip(result.fp_rates, result.sensitivities, strict=True):
        ax.plot([rate], [value], "o", color="tab:red")
        ax.annotate(f"{value:.3f}", (rate, value), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(FP_RATES, [f"{r:g}" for r in FP_RATES])
    ax.set_xlim(FP_RATES[0] / 2, FP_RATES[-1] * 2)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    return _save(fig, out_path)


def save_detection_png(
    image2d: np.ndarray,
    gt_boxes: np.ndarray,
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    out_path: str | os.PathLike,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
    window: tuple[float, float] = (-175, 275),
) -> Path:
    """A slice with boxes as CS-Att Fig. 4: ground truth blue, true positives green, false positives red.

    ``image2d`` (H, W) in HU in the PNG's pixel grid (rows y, columns x), shown through ``window``; boxes are
    0-based pixel [x1, y1, x2, y2]. Detections scoring below ``score_threshold`` are not drawn; one overlapping
    a ground-truth box with IoU >= ``iou_threshold`` is a true positive. The picture is the image enlarged by
    an integer factor ``ceil(512 / max(H, W))`` (at least 1), so pixel (x, y) covers output pixels
    ``[x * f, (x + 1) * f)``.
    """
    image2d = np.asarray(image2d, dtype=float)
    if image2d.ndim != 2:
        raise ValueError(f"image2d must be 2D (H, W), got shape {image2d.shape}")
    height, width = image2d.shape
    scale = max(1, math.ceil(512 / max(height, width)))
    gts = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)
    preds = np.asarray(pred_boxes, dtype=float).reshape(-1, 4)
    scores = np.asarray(pred_scores, dtype=float).reshape(-1)
    keep = scores >= score_threshold
    preds, scores = preds[keep], scores[keep]
    is_tp = (box_overlaps(preds, gts) >= iou_threshold).any(axis=1)
    fig = plt.figure(figsize=(width * scale / DPI, height * scale / DPI))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image2d, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    boxes = [(box, GT_COLOUR, None) for box in gts]
    boxes += [(box, TP_COLOUR if tp else FP_COLOUR, score) for box, tp, score in zip(preds, is_tp, scores)]
    for (x1, y1, x2, y2), colour, score in boxes:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, lw=2, antialiased=False))
        if score is not None:
            ax.text(x1, y1 - 1, f"{score:.2f}", color=colour, fontsize=8, va="bottom")
    legend = [Patch(color=c, label=n) for c, n in ((GT_COLOUR, "ground truth"), (TP_COLOUR, "TP"), (FP_COLOUR, "FP"))]
    ax.legend(handles=legend, loc="lower right", fontsize=7, framealpha=0.6)
    return _save(fig, out_path)


def save_object_attention_png(
    weights: Sequence[float] | None,
    spatial: np.ndarray | None,
    key_slice: np.ndarray,
    out_path: str | os.PathLike,
    title: str = "attention",
    stride: int = 1,
    box: Sequence[float] | None = None,
) -> Path:
    """CS-Att Fig. 3 for one object: its contextual weight in each of the M images (bars) beside the spatial map
    over the key slice, with the object's box outlined in white.

    ``weights`` (M values in [0, 1], M odd; ``None``: no bar chart) are drawn as bars named K - M//2 ... K + M//2
    around the key image K. ``spatial`` (h, w; ``None``: the slice alone) is drawn half transparent over
    ``key_slice`` (H, W; any intensity scale, shown from its minimum to its maximum), cell (r, c) over the image
    pixels ``[r * stride, (r + 1) * stride)`` by ``[c * stride, (c + 1) * stride)``, with a colour bar from the map's
    minimum to its maximum. ``box``: x1, y1, x2, y2 in image pixels.
    """
    key_slice = np.asarray(key_slice, dtype=float)
    if key_slice.ndim != 2 or (spatial is not None and np.ndim(spatial) != 2):
        raise ValueError(f"key_slice (H, W) and spatial (h, w) must be 2D: {key_slice.shape}, {np.shape(spatial)}")
    if weights is not None and len(weights) % 2 == 0:
        raise ValueError(f"weights: one per image of M (odd) around the key image, got {len(weights)}")
    columns = 1 if weights is None else 2
    fig, axes = plt.subplots(1, columns, figsize=(3.4 * columns, 3.4), squeeze=False, layout="constrained")
    if weights is not None:
        bars, half = axes[0, 0], len(weights) // 2
        names = [f"K{i - half:+d}" if i != half else "K" for i in range(len(weights))]
        bars.bar_label(bars.bar(names, weights, color="tab:blue"), fmt="%.3f", fontsize=8)
        bars.set_ylim(0, 1.1)
        bars.set_xlabel("image")
        bars.set_title("contextual weight C'' in the box", fontsize=9)
    ax = axes[0, -1]
    ax.imshow(key_slice, cmap="gray", vmin=key_slice.min(), vmax=key_slice.max(), interpolation="nearest")
    if spatial is not None:
        spatial = np.asarray(spatial, dtype=float)
        rows_m, cols_m = spatial.shape
        extent = (-0.5, cols_m * stride - 0.5, rows_m * stride - 0.5, -0.5)  # map cells on the image's pixel grid
        shown = ax.imshow(spatial, cmap="jet", alpha=0.45, extent=extent, interpolation="nearest")
        fig.colorbar(shown, ax=ax, shrink=0.8)
    if box is not None:
        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", lw=1))
    ax.set_xlim(-0.5, key_slice.shape[1] - 0.5)
    ax.set_ylim(key_slice.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title("spatial attention S'', key slice" if spatial is not None else "key slice", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)


def save_overlay_png_from_files(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    pred_path: str | os.PathLike,
    out_path: str | os.PathLike,
    **kwargs,
) -> Path:
    """``save_overlay_png`` of NIfTI files, each reoriented to RAS by its affine and checked to share one grid."""
    from shared.metrics.label_volumes import check_same_grid, label_array, load_ras, voxels

    image_img, label_img, pred_img = load_ras(image_path), load_ras(label_path), load_ras(pred_path)
    check_same_grid(image_img, image_path, label_img, label_path)
    check_same_grid(pred_img, pred_path, label_img, label_path)
    image = voxels(image_img, image_path).astype(np.float32)
    label = label_array(label_img, label_path, num_labels=None)
    pred = label_array(pred_img, pred_path, num_labels=None)
    return save_overlay_png(image, label, pred, out_path, **{"title": Path(image_path).name, **kwargs})


# --- Training runs, ablations and evaluations as charts -------------------------------------------------------------

EVENT_FILES = "events.out.tfevents.*"
# What the bundles' train.json TensorBoardStatsHandlers write: the trainer logs its loss every iteration, as
# `train_loss` (msan_kits, cs_att_deeplesion: a scalar output) or as one tag per entry of the detector's loss dict
# (va_maskrcnn_lits: `loss`, `loss_classifier`, `loss_box_reg`, `loss_mask`, ...); the validator logs its key metric
# (`val_kits19_dice`, `val_lesion_dice`, `val_sensitivity_at_4fp`) once per validation with the trainer's epoch as step.
METRIC_PREFIX = "val_"
MAIN_LOSS_TAGS = ("train_loss", "loss")


def read_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float, float]]]:
    """``{tag: [(step, value, wall_time), ...]}`` of every scalar in the TensorBoard event files of ``run_dir``, read
    with tensorboard's own ``EventAccumulator`` (all files of the folder; a restarted run's re-logged steps replace the
    old ones). FileNotFoundError for a missing folder, InputError for a folder without event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from shared.errors import InputError

    folder = Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder (give the run's TensorBoard folder, train.json's output_dir)"
        )
    if not any(folder.glob(EVENT_FILES)):
        raise InputError(
            f"{folder}: no TensorBoard event files ({EVENT_FILES}); give the folder a training run wrote them to "
            "(train.json's output_dir, e.g. OUT_DIR/runs of a job)"
        )
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(int(e.step), float(e.value), float(e.wall_time)) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def training_curves(
    run_dir: str | os.PathLike, metric_prefix: str = METRIC_PREFIX
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """The training losses and the validation metrics of a run's event files against the training iteration.

    Returns ``(losses, metrics)``, each ``{tag: [(iteration, value), ...]}``: ``metrics`` the tags starting with
    ``metric_prefix``, ``losses`` every other tag (logged by the trainer every iteration). The validators log their
    metric with the trainer's epoch as step; each value is placed at the last training iteration logged before it (by
    the events' wall times: a validation runs after the last iteration of its epoch), so both share one axis. Without
    any loss in the run the metrics keep their own steps.
    """
    scalars = read_scalars(run_dir)
    metric_events = {tag: events for tag, events in scalars.items() if tag.startswith(metric_prefix)}
    losses = {
        tag: [(step, value) for step, value, _ in sorted(events)]
        for tag, events in scalars.items()
        if tag not in metric_events
    }
    iterations = sorted({(wall, step) for tag in losses for step, _, wall in scalars[tag]})
    times = np.array([wall for wall, _ in iterations])
    metrics = {}
    for tag, events in metric_events.items():
        if not iterations:
            metrics[tag] = [(step, value) for step, value, _ in events]
            continue
        placed = np.searchsorted(times, [wall for _, _, wall in events], side="right") - 1
        metrics[tag] = [(iterations[max(int(i), 0)][1], value) for i, (_, value, _) in zip(placed, events)]
    return losses, metrics


def main_loss_tag(losses: Mapping[str, object]) -> str | None:
    """The total training loss among ``losses``' tags: ``train_loss`` or ``loss`` (the detector's total), else the
    first tag; None when there is none."""
    return next((tag for tag in MAIN_LOSS_TAGS if tag in losses), next(iter(sorted(losses)), None))


def save_training_curves_png(
    run_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    metric_prefix: str = METRIC_PREFIX,
    title: str | None = None,
) -> Path:
    """Training loss against the iteration (the total each iteration, faint, with its running mean; a detector's loss
    terms as running means) beside the validation metric(s), from the run's TensorBoard event files
    (:func:`training_curves`). The PNG is 1100 x 420 pixels."""
    losses, metrics = training_curves(run_dir, metric_prefix)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    main = main_loss_tag(losses)
    term_colours = iter(plt.get_cmap("tab10").colors[1:] * 3)  # tab:blue is the total's
    for tag in sorted(losses, key=lambda t: t != main):
        steps, values = np.array(losses[tag], dtype=float).reshape(-1, 2).T
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        if tag == main:
            left.plot(steps, values, color="tab:blue", alpha=0.3, lw=0.8, label=f"{tag} (each iteration)")
            left.plot(steps[window - 1 :], smooth, color="tab:blue", lw=1.8, label=f"{tag}, running mean of {window}")
        else:
            colour = next(term_colours)
            left.plot(steps[window - 1 :], smooth, lw=0.9, color=colour, label=f"{tag}, running mean of {window}")
    if losses:
        left.legend(fontsize=7)
    else:
        left.text(0.5, 0.5, "no training loss in the event files", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("iteration")
    left.set_ylabel("training loss")
    left.grid(True, alpha=0.3)
    for tag, points in sorted(metrics.items()):
        steps, values = np.array(points, dtype=float).reshape(-1, 2).T
        right.plot(steps, values, "o-", ms=4, label=tag)
        if len(values) and not np.isnan(values).all():
            best = int(np.nanargmax(values))
            right.annotate(
                f"{values[best]:.3f}",
                (steps[best], values[best]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
    if metrics:
        right.legend(fontsize=8)
    else:
        message = f"no validation metric ({metric_prefix}*) in the event files"
        right.text(0.5, 0.5, message, ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("iteration" if losses else "step")
    right.set_ylabel("validation metric")
    right.grid(True, alpha=0.3)
    folder = Path(run_dir).resolve()
    fig.suptitle(title or f"training run {folder.parent.name}/{folder.name}", fontsize=11)
    return _save(fig, out_path)


def _mean_sd_items(row: Mapping, fp_rates: Sequence[float] | None) -> dict[str, tuple[float, float]]:
    """``{metric: (mean, sd)}`` of one ablation table row: ``<metric>_mean`` / ``<metric>_sd`` numbers, lists of them
    (one metric per entry: ``<metric>@<fp rate>`` when the settings give the rates, else ``<metric>[i]``) and
    ``"mean +- sd"`` texts (msan_ablation's kidney / tumour columns). A metric the run did not measure (mean None,
    e.g. look-alikes on phantoms without them) is left out."""
    items = {}
    for key, value in row.items():
        if key.endswith("_mean") and f"{key[:-5]}_sd" in row and value is not None:
            name, sd = key[:-5], row[f"{key[:-5]}_sd"]
            if isinstance(value, list):
                labels = [f"@{r:g}" for r in fp_rates] if fp_rates and len(fp_rates) == len(value) else None
                for i, (m, s) in enumerate(zip(value, sd)):
                    items[f"{name}{labels[i] if labels else f'[{i}]'}"] = (float(m), float(s))
            else:
                items[name] = (float(value), float(sd))
        elif isinstance(value, str) and "+-" in value:
            mean, _, sd = value.partition("+-")
            try:
                items[key] = (float(mean), float(sd))
            except ValueError:
                pass
    return items


def read_ablation(
    path: str | os.PathLike, metrics: Sequence[str] | None = None
) -> tuple[list[str], dict[str, tuple[list[float], list[float]]]]:
    """The arms and ``{metric: (means, sds)}`` (one entry per arm) of an ablation report (``ablation.json`` of
    ``benchmarks/*_ablation.py``, or a transcription in its shape): its ``"table"`` rows, named by ``model`` (or
    ``arm``). ``metrics`` picks and orders them (default: every metric of the first row, see
    :func:`_mean_sd_items`). InputError naming the file when it is not such a report or lacks a metric."""
    import json

    from shared.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (give an ablation.json of benchmarks/*_ablation.py)")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not JSON ({err})") from err
    rows = report.get("table") if isinstance(report, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise InputError(f'{path}: no "table" of rows (the ablation.json that benchmarks/*_ablation.py writes)')
    fp_rates = (report.get("settings") or {}).get("fp_rates")
    per_row = [_mean_sd_items(row, fp_rates) for row in rows]
    names = list(metrics) if metrics else list(per_row[0])
    if not names:
        raise InputError(f"{path}: its table rows have no <metric>_mean / <metric>_sd pair")
    for i, items in enumerate(per_row):
        missing = [m for m in names if m not in items]
        if missing:
            raise InputError(f"{path}: table row {i} has no {', '.join(missing)}; its metrics: {', '.join(items)}")
    arms = [str(row.get("model", row.get("arm", f"arm {i}"))) for i, row in enumerate(rows)]
    return arms, {m: ([items[m][0] for items in per_row], [items[m][1] for items in per_row]) for m in names}


def save_ablation_png(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Bars of mean +- sd per arm (error bars: one sd, value written above), one group per metric, from an ablation
    report (:func:`read_ablation`). The PNG is 900 pixels wide and 450 high."""
    import textwrap

    arms, values = read_ablation(path, metrics)
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    width = 0.8 / len(arms)
    centres = np.arange(len(values))
    colours = plt.get_cmap("tab10").colors
    for i, arm in enumerate(arms):
        x = centres - 0.4 + width * (i + 0.5)
        means = np.array([values[m][0][i] for m in values])
        sds = np.array([values[m][1][i] for m in values])
        ax.bar(x, means, width, yerr=sds, capsize=3, color=colours[i % len(colours)], label=arm)
        for xi, top, mean in zip(x, means + sds, means):
            ax.text(xi, top, f"{mean:.3f}", ha="center", va="bottom", fontsize=7, rotation=90 if len(arms) > 4 else 0)
    names = [textwrap.fill(m.replace("_", " "), 16) for m in values]
    ax.set_xticks(centres, names, fontsize=9)
    ax.set_ylabel("mean +- sd over seeds")
    ax.margins(y=0.12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(textwrap.fill(title or Path(path).name, 100), fontsize=10)
    return _save(fig, out_path)


def read_case_dice(path: str | os.PathLike) -> tuple[list[str], dict[str, list[float]]]:
    """The cases and ``{column: values}`` of the per-case Dice columns (``*_dice`` but the KiTS19 ``mean_dice``) of an
    evaluation's metrics CSV (``kits19_metrics.csv``, ``lits_metrics.csv``: ``shared.metrics.table.MetricTable``
    rows; an empty cell, an undefined Dice, is NaN). InputError naming the file without a ``case`` or Dice column."""
    import csv

    from shared.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (give an evaluation's kits19_metrics.csv or lits_metrics.csv)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    dice = [c for c in columns if c.endswith("_dice") and c != "mean_dice"]
    if "case" not in columns or not dice:
        raise InputError(f"{path}: no per-case rows with a 'case' and '*_dice' columns (columns: {columns})")
    try:
        values = {c: [float(r[c]) if r[c] not in ("", None) else math.nan for r in rows] for c in dice}
    except ValueError as err:
        raise InputError(f"{path}: {err}") from err
    return [r["case"] for r in rows], values


def save_case_dice_png(path: str | os.PathLike, out_path: str | os.PathLike, title: str | None = None) -> Path:
    """Per-case Dice bars (one colour per region, the mean over cases dashed) from an evaluation's metrics CSV
    (:func:`read_case_dice`). The PNG is 900 x 420 pixels."""
    cases, values = read_case_dice(path)
    fig, ax = plt.subplots(figsize=(9, 4.2), layout="constrained")
    width = 0.8 / len(values)
    x = np.arange(len(cases))
    for i, (column, dice) in enumerate(values.items()):
        colour = plt.get_cmap("tab10").colors[i]
        mean = float(np.nanmean(dice)) if not np.isnan(dice).all() else math.nan
        name = column.removesuffix("_dice")
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(dice), width, color=colour, label=f"{name} (mean {mean:.3f})")
        ax.axhline(mean, color=colour, ls="--", lw=1)
    ax.set_xticks(x, cases, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"Dice per case: {Path(path).name}", fontsize=11)
    return _save(fig, out_path)
