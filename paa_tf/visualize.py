"""Pictures: detections drawn on images, one GT's probabilistic assignment, positives per GT.

* `draw_detections`: boxes, class names and scores on an image (`bin/paa_predict`).
* `assignment_data` / `assignment_figure`: the paper's Fig. 1 / Fig. 4a view of one GT box
  for a checkpoint: its candidate anchors on the image (positives green, negatives red,
  ignored grey) and, beside it, the histogram of the candidates' anchor costs (the score the
  GMM is fitted to, cost = -log S, paper Eq. 3) with the two fitted Gaussians
  w_k N(x; mu_k, sigma_k^2) and a vertical line at the separation point.
* `read_scalars` / `positives_per_gt_plot`: the `pos_per_gt` and `gt_without_pos` training
  scalars from TensorBoard event files (paper Fig. 4b).

Figures are `matplotlib.figure.Figure` objects drawn with the Agg canvas, without pyplot's
global state, so nothing here needs a display.
"""

import dataclasses
import glob
import math
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw, ImageFont

from paa_tf.run_folder import RunFolder

# Distinct, saturated colours for classes (index modulo the list length).
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
           (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128))
DECISION_COLOURS = {"positive": "#1a9641", "negative": "#d7191c", "ignored": "#8c8c8c"}
SCALAR_TAGS = ("pos_per_gt", "gt_without_pos")


def class_colour(index):
    """RGB tuple of contiguous class `index`."""
    return PALETTE[int(index) % len(PALETTE)]


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def label_font_size(short_side):
    """Label text height in pixels for a picture whose shorter side is `short_side` pixels.

    It grows with the square root of the size: a large photo is looked at scaled down, so
    its labels may take a smaller share of it, while a fixed fraction (1/22 of the shorter
    side: 62 px on a 1371-px photo) hides the neighbouring objects of a busy scene.
    256 px -> 10, 1371 px -> 19, 4000 px -> 32.
    """
    return max(10, round(0.5 * math.sqrt(max(int(short_side), 1))))


def draw_detections(image, boxes, scores, classes, class_names=None, score_threshold=0.0,
                    line_width=None, font_size=None):
    """Draw boxes with "name score" labels on a copy of `image`.

    Args:
      image: uint8 [h, w, 3] RGB (NumPy or PIL image).
      boxes: float [N, 4] yxyx pixels of `image`.
      scores: float [N], or None for boxes without a score (ground truth: the label is
        the name alone); classes: int [N] contiguous (-1 = padding, not drawn).
      class_names: names by contiguous index (default: the index).
      score_threshold: detections scoring below it are not drawn.
      line_width, font_size: pixels; default from the image size (`label_font_size`).
    Returns:
      uint8 [h, w, 3] RGB, the input's size. Lower scores are drawn first, so the best
      detection's label is on top.
    """
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    named_only = scores is None
    scores = np.asarray(np.ones(len(boxes)) if named_only else scores, np.float64).reshape(-1)
    classes = np.asarray(classes).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"draw_detections: boxes {boxes.shape}, scores {scores.shape} and "
                         f"classes {classes.shape} must have the same length")
    short = min(picture.size)
    line_width = line_width or max(1, round(short / 160))
    font = _font(font_size or label_font_size(short))
    draw = ImageDraw.Draw(picture)
    keep = np.flatnonzero((classes >= 0) & (scores >= score_threshold))
    for i in keep[np.argsort(scores[keep], kind="stable")]:
        # Whole pixels, kept on the picture so that a box at the border stays visible.
        ymin, ymax = np.clip(np.round(boxes[i, [0, 2]]), 0, picture.size[1] - 1).astype(int)
        xmin, xmax = np.clip(np.round(boxes[i, [1, 3]]), 0, picture.size[0] - 1).astype(int)
        colour = class_colour(classes[i])
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=line_width)
        name = (class_names[classes[i]] if class_names is not None
                and classes[i] < len(class_names) else str(classes[i]))
        text = name if named_only else f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left + 4, bottom - top + 4
        # Above the box when there is room, else just inside its top edge.
        y0 = ymin - height if ymin - height >= 0 else ymin
        x0 = min(max(xmin, 0), max(picture.size[0] - width, 0))
        draw.rectangle([x0, y0, x0 + width, y0 + height], fill=colour)
        text_colour = (0, 0, 0) if sum(colour) > 400 else (255, 255, 255)
        draw.text((x0 + 2 - left, y0 + 2 - top), text, fill=text_colour, font=font)
    return np.asarray(picture)


def denormalize(image, pixel_mean, pixel_std):
    """Network input float32 [H, W, 3] ((x - mean) / std) -> uint8 [H, W, 3] RGB."""
    image = np.asarray(image, np.float32) * np.asarray(pixel_std, np.float32)
    return np.clip(np.round(image + np.asarray(pixel_mean, np.float32)), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class AssignmentView:
    """PAA's decision for one GT, as `paa_tf.assign.paa_candidates_and_gmm` made it.

    Candidates are sorted by ascending cost (the assignment's order). Boxes are yxyx pixels
    of the network input. `separation` is the largest cost among the positives (the
    candidates at or below it are positive under the default 'kk_c' scheme), NaN without a
    positive; `negative_start` the smallest cost among the negatives (NaN without one).
    GMM fields are NaN when fewer than two candidates were fitted.
    """
    gt_box: np.ndarray  # float32 [4]
    gt_class: int
    anchor_indices: np.ndarray  # int64 [N]
    anchors: np.ndarray  # float32 [N, 4]
    levels: np.ndarray  # int64 [N] pyramid level index (0 = min_level)
    costs: np.ndarray  # float64 [N]
    components: np.ndarray  # int64 [N], 0 = positive mode
    decisions: np.ndarray  # int64 [N], paa_tf.assign.labels CANDIDATE_*
    weights: np.ndarray  # float64 [2]
    means: np.ndarray  # float64 [2]
    variances: np.ndarray  # float64 [2]
    separation: float
    negative_start: float
    min_level: int = 3  # pyramid level of `levels == 0`

    @property
    def positive(self):
        from paa_tf.assign.labels import CANDIDATE_POSITIVE  # TensorFlow, not at import
        return self.decisions == CANDIDATE_POSITIVE

    @property
    def negative(self):
        from paa_tf.assign.labels import CANDIDATE_NEGATIVE  # TensorFlow, not at import
        return self.decisions == CANDIDATE_NEGATIVE

    @property
    def ignored(self):
        from paa_tf.assign.labels import CANDIDATE_IGNORE  # TensorFlow, not at import
        return self.decisions == CANDIDATE_IGNORE

    def density(self, x, component):
        """w_k N(x; mu_k, sigma_k^2) of GMM `component` at costs `x` (float64)."""
        x = np.asarray(x, np.float64)
        var = self.variances[component]
        return (self.weights[component] / math.sqrt(2.0 * math.pi * var)
                * np.exp(-(x - self.means[component]) ** 2 / (2.0 * var)))


def assignment_data(model, image, gt_boxes, gt_classes, gt_index, assign_config=None):
    """Run the model on one image and PAA's assignment on its GTs; the view of one GT.

    The forward pass is in inference mode (`training=False`: moving BatchNorm statistics),
    then the assignment runs exactly as in the train step (`paa_candidates_and_gmm` on the
    detached class logits and decoded boxes).

    Args:
      model: a built `PAADetector`.
      image: float32 [H, W, 3] network input (normalised, padded to the model's size).
      gt_boxes: float [M, 4] yxyx input pixels; gt_classes: int [M] contiguous (-1 pads).
      gt_index: which GT row to show.
      assign_config: `AssignConfig`; default `model.config.assign`.
    Returns:
      `AssignmentView`.
    """
    # Drawing pictures needs no TensorFlow; running the model here does.
    import tensorflow as tf

    from paa_tf.assign import paa_candidates_and_gmm

    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes, np.int32).reshape(-1)
    valid = np.flatnonzero(gt_classes >= 0)
    if not 0 <= gt_index < len(gt_classes) or gt_classes[gt_index] < 0:
        raise ValueError(f"gt_index {gt_index} is not a GT of this image; it has "
                         f"{len(valid)} boxes (indices {valid.tolist()})")
    outputs = model(tf.convert_to_tensor(image, tf.float32)[None], training=False)
    cls_logits = tf.cast(outputs["cls_logits"], tf.float32)
    pred_boxes = model.decode(outputs["box_deltas"])
    config = assign_config if assign_config is not None else model.config.assign
    _, diag = paa_candidates_and_gmm(config, model.anchors, model.level_ids, model.num_levels,
                                     gt_boxes[None], gt_classes[None], cls_logits, pred_boxes,
                                     plus_one=model.plus_one, loss_config=model.config.loss)
    mask = diag.candidate_mask.numpy()[0, gt_index]
    index = diag.candidate_anchors.numpy()[0, gt_index][mask].astype(np.int64)
    costs = diag.candidate_costs.numpy()[0, gt_index][mask].astype(np.float64)
    decisions = diag.decisions.numpy()[0, gt_index][mask].astype(np.int64)
    fitted = len(index) >= 2

    def gmm(field):
        values = getattr(diag, field).numpy()[0, gt_index].astype(np.float64)
        return values if fitted else np.full(2, np.nan)

    view = AssignmentView(
        gt_box=gt_boxes[gt_index], gt_class=int(gt_classes[gt_index]), anchor_indices=index,
        anchors=np.asarray(model.anchors)[index], levels=np.asarray(model.level_ids)[index]
        .astype(np.int64), costs=costs,
        components=diag.components.numpy()[0, gt_index][mask].astype(np.int64),
        decisions=decisions, weights=gmm("gmm_weights"), means=gmm("gmm_means"),
        variances=gmm("gmm_variances"), separation=math.nan, negative_start=math.nan,
        min_level=int(model.config.model.min_level))
    if view.positive.any():
        view.separation = float(costs[view.positive].max())
    if view.negative.any():
        view.negative_start = float(costs[view.negative].min())
    return view


def assignment_figure(model, image, gt_boxes, gt_classes, gt_index, display_image=None,
                      class_names=None, assign_config=None, title=None):
    """The Fig. 1 / Fig. 4a picture of PAA's assignment for GT `gt_index` of one image.

    Left: the image with the GT box and the candidate anchors (positives green, negatives
    red, ignored grey; marker shape = pyramid level). Right: the histogram of the candidate
    costs with w_k N(mu_k, sigma_k^2) of both GMM components and a vertical line at the
    separation point.

    Args: as `assignment_data`; `display_image` uint8 [h, w, 3] shown on the left (default:
      `image` de-normalised with the model's `data.pixel_mean/pixel_std`), in the same pixel
      frame as `image` (it may be the unpadded top-left part).
    Returns:
      (matplotlib Figure, AssignmentView).
    """
    view = assignment_data(model, image, gt_boxes, gt_classes, gt_index, assign_config)
    if display_image is None:
        data_cfg = model.config.data
        display_image = denormalize(image, data_cfg.pixel_mean, data_cfg.pixel_std)
    figure = Figure(figsize=(12.0, 5.4), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=(1.0, 1.15))
    name = (class_names[view.gt_class] if class_names is not None
            and view.gt_class < len(class_names) else f"class {view.gt_class}")
    _draw_candidates(left, display_image, view, name)
    _draw_histogram(right, view)
    if title:
        figure.suptitle(title)
    return figure, view


_LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _draw_candidates(axes, display_image, view, gt_name):
    axes.imshow(display_image, interpolation="nearest")
    ymin, xmin, ymax, xmax = view.gt_box
    axes.add_patch(Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False,
                             edgecolor="yellow", linewidth=2.5, linestyle="-", zorder=3))
    groups = (("positive", view.positive), ("negative", view.negative),
              ("ignored", view.ignored))
    for label, members in reversed(groups):  # positives drawn last, on top
        colour = DECISION_COLOURS[label]
        for box in view.anchors[members]:
            axes.add_patch(Rectangle((box[1], box[0]), box[3] - box[1], box[2] - box[0],
                                     fill=False, edgecolor=colour, linewidth=0.9, alpha=0.55,
                                     zorder=2))
        for level in np.unique(view.levels[members]):
            chosen = view.anchors[members & (view.levels == level)]
            cy, cx = (chosen[:, 0] + chosen[:, 2]) / 2, (chosen[:, 1] + chosen[:, 3]) / 2
            axes.scatter(cx, cy, s=46, c=colour, marker=_LEVEL_MARKERS[level % 7],
                         edgecolors="white", linewidths=0.8, zorder=4,
                         label=f"{label}, P{level + view.min_level}")
    axes.set_title(f"GT '{gt_name}': {int(view.positive.sum())} positive, "
                   f"{int(view.negative.sum())} negative, {int(view.ignored.sum())} ignored "
                   f"of {len(view.costs)} candidates", fontsize=10)
    height, width = np.asarray(display_image).shape[:2]
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    if len(view.costs):
        axes.legend(loc="upper right", fontsize=7, framealpha=0.8, markerscale=0.8)


def _draw_histogram(axes, view):
    costs = view.costs
    axes.set_xlabel("anchor cost = -log(anchor score)  (focal + GIoU loss, paper Eq. 3)")
    axes.set_ylabel("density")
    if not len(costs):
        axes.text(0.5, 0.5, "no candidate anchors for this GT", ha="center",
                  transform=axes.transAxes)
        return
    low, high = float(costs.min()), float(costs.max())
    spread = max(high - low, 1e-3)
    bins = np.linspace(low - 0.02 * spread, high + 0.02 * spread,
                       int(np.clip(len(costs) // 2, 6, 30)) + 1)
    groups = [(label, costs[members]) for label, members in
              (("positive", view.positive), ("negative", view.negative),
               ("ignored", view.ignored)) if members.any()]
    axes.hist([g[1] for g in groups], bins=bins, stacked=True, density=True, alpha=0.55,
              color=[DECISION_COLOURS[g[0]] for g in groups],
              label=[f"{g[0]} ({len(g[1])})" for g in groups])
    if np.all(np.isfinite(view.variances)):
        sigma = np.sqrt(view.variances)
        x = np.linspace(min(low, *(view.means - 3 * sigma)), max(high, *(view.means + 3 * sigma)),
                        600)
        for k, (colour, label) in enumerate((("#006d2c", "positive mode"),
                                             ("#a50f15", "negative mode"))):
            axes.plot(x, view.density(x, k), color=colour, linewidth=2,
                      label=f"{label}: w={view.weights[k]:.2f}, mu={view.means[k]:.2f}, "
                            f"sigma={sigma[k]:.2f}")
        axes.plot(x, view.density(x, 0) + view.density(x, 1), color="black", linewidth=1,
                  linestyle=":", label="mixture")
        top = max(axes.get_ylim()[1], 1e-9)
        # A near-degenerate component is a spike; keep the histogram readable.
        axes.set_ylim(0, min(top, 4.0 * max(p.get_height() for p in axes.patches)))
    if math.isfinite(view.separation):
        axes.axvline(view.separation, color="#2b83ba", linewidth=2, linestyle="--",
                     label=f"separation = {view.separation:.3f}")
    if view.ignored.any() and math.isfinite(view.negative_start):
        axes.axvline(view.negative_start, color="#fdae61", linewidth=2, linestyle="--",
                     label=f"negatives from {view.negative_start:.3f}")
    axes.set_title("candidate anchor costs and the fitted 2-component GMM", fontsize=10)
    axes.legend(fontsize=8, loc="upper right")


def read_scalars(log_dir, tags: Sequence[str] = SCALAR_TAGS) -> Dict[str, Tuple]:
    """TensorBoard scalars of `log_dir`'s event files: {tag: (steps int64 [n], values
    float64 [n])} sorted by step; a step written twice (a resumed run) keeps the later value.

    Reads both `tf.summary.scalar` (TF2, tensor values) and TF1 `simple_value` summaries.
    Raises ValueError when there is no event file or none of `tags` was written.
    """
    import tensorflow as tf  # reading event files only: drawing pictures needs no TensorFlow

    files = sorted(glob.glob(os.path.join(os.fspath(log_dir), "events.out.tfevents.*")),
                   key=os.path.getmtime)
    if not files:
        raise ValueError(f"no TensorBoard event files in {log_dir}; give the training folder "
                         "(--model_dir of bin/paa_train; the scalars are in its train/ folder)")
    found: Dict[str, Dict[int, float]] = {tag: {} for tag in tags}
    for path in files:
        # Each record of an event file is one serialized Event (summary_iterator, the
        # deprecated reader, does the same and prints a deprecation warning).
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag not in found:
                    continue
                if value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    number = float(tf.make_ndarray(value.tensor))
                found[value.tag][int(event.step)] = number
    if not any(found.values()):
        raise ValueError(f"{log_dir}: the event files hold none of the scalars {list(tags)}; "
                         "they are written every train.log_every steps by bin/paa_train")
    return {tag: (np.array(sorted(values), np.int64),
                  np.array([values[s] for s in sorted(values)], np.float64))
            for tag, values in found.items() if values}


def positives_per_gt_plot(model_dir, title=None):
    """Positives per GT box over training (paper Fig. 4b) from a training folder's logs.

    Reads `pos_per_gt` (mean positives per GT over each logging window) and, on a second
    axis, `gt_without_pos` (fraction of GTs without any positive) from `model_dir/train`
    (or `model_dir` itself when it holds the event files).
    Returns (matplotlib Figure, {tag: (steps, values)}).
    """
    log_dir = os.path.join(os.fspath(model_dir), "train")
    if not os.path.isdir(log_dir):
        log_dir = os.fspath(model_dir)
    scalars = read_scalars(log_dir)
    figure = Figure(figsize=(8.0, 4.2), dpi=100, layout="constrained")
    axes = figure.subplots()
    lines = []
    if "pos_per_gt" in scalars:
        steps, values = scalars["pos_per_gt"]
        lines += axes.plot(steps, values, color="#1a9641", marker="o", markersize=3,
                           linewidth=1.8, label="positives per GT (mean over log window)")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("training step")
    axes.set_ylabel("positive anchors per GT box")
    axes.grid(alpha=0.3)
    if "gt_without_pos" in scalars:
        twin = axes.twinx()
        steps, values = scalars["gt_without_pos"]
        lines += twin.plot(steps, values, color="#d7191c", linewidth=1.2, linestyle="--",
                           label="fraction of GTs without a positive")
        twin.set_ylabel("fraction of GTs without a positive")
        twin.set_ylim(0, max(0.05, float(values.max()) * 1.2))
    axes.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)
    axes.set_title(title or f"PAA positives per GT during training ({model_dir})", fontsize=10)
    return figure, scalars


def save_figure(figure, path, dpi=None):
    """Write a matplotlib `figure` to `path` (PNG/JPEG/PDF/SVG from the extension)."""
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))) or ".", exist_ok=True)
    figure.savefig(os.fspath(path), dpi=dpi)
    return os.fspath(path)


def upscale(image, min_side: Optional[int]):
    """`image` uint8 [h, w, 3] enlarged (bicubic) so its shorter side is >= `min_side`.

    Returns (image, factors) with factors float64 [4] = (sy, sx, sy, sx), to multiply yxyx
    boxes by. No change when `min_side` is falsy or already met.
    """
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    if not min_side or min(height, width) >= min_side:
        return image, np.ones(4)
    factor = float(min_side) / min(height, width)
    size = (round(width * factor), round(height * factor))
    enlarged = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
    return enlarged, np.array([size[1] / height, size[0] / width] * 2)


def _find_record(config, split, image=None, index=None):
    """(record, tfrecord layout or None) of the image chosen by `image` or `index`."""
    from paa_tf.data import pipeline  # TensorFlow: drawing pictures needs none

    if index is not None:
        records, _, layout = pipeline.load_records(config.data, split, is_training=False)
        if index >= len(records):
            raise ValueError(f"--data_index={index} but the {split} split has {len(records)} "
                             f"usable images (0..{len(records) - 1})")
        return records[index], layout
    wanted = os.path.realpath(image)
    for name in (split, "val" if split == "train" else "train"):
        try:
            records, _, layout = pipeline.load_records(config.data, name, is_training=False)
        except ValueError:
            continue  # e.g. no val split configured
        by_path = [r for r in records if r.path and os.path.realpath(r.path) == wanted]
        by_name = [r for r in records if r.path
                   and os.path.basename(r.path) == os.path.basename(image)]
        if by_path or by_name:
            return (by_path or by_name)[0], layout
    raise ValueError(f"{image} is not an image of the run's data (data.train_* / data.val_* "
                     "of its config.yaml), so its GT boxes are unknown; pick a training image "
                     "or use --data_index")


def _encoded_bytes(record, layout):
    """The image file bytes of `record` (from its file, or its TFRecord shard)."""
    import tensorflow as tf  # reading a TFRecord shard: drawing pictures needs none

    if record.path:
        with open(record.path, "rb") as f:
            return f.read()
    files, counts = layout
    offset = record.tfrecord_index
    for path, count in zip(files, counts):
        if offset < count:
            serialized = next(iter(tf.data.TFRecordDataset(path).skip(offset).take(1)))
            spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
            return tf.io.parse_single_example(serialized, spec)["image/encoded"].numpy()
        offset -= count
    raise ValueError(f"{record.describe()}: record {record.tfrecord_index} not in the shards")


def assignment_picture(model_dir, output, checkpoint=None, image=None, data_index=None,
                       split="train", gt_index=None, dpi=110):
    """Write the assignment picture of one GT of a training run; returns the `AssignmentView`.

    Restores the checkpoint (default: the newest readable one in `model_dir`), pre-processes
    the image as the evaluation does (no flip, `data.eval_shorter_side`), runs the network
    in inference mode and then PAA's assignment on the image's GT boxes with the run's
    `assign` settings. `gt_index` picks the GT (default: the largest box).
    """
    # Running the model needs TensorFlow; drawing pictures does not.
    import tensorflow as tf

    from paa_tf.data import transforms

    if (image is None) == (data_index is None):
        raise ValueError("give exactly one of --image and --data_index")
    run = RunFolder(model_dir)
    config = run.config()
    label_map = run.label_map()
    record, layout = _find_record(config, split, image, data_index)
    if not len(record.boxes):
        raise ValueError(f"{record.describe()} has no GT box to show; pick another image")
    data = config.data
    image_size = tuple(int(s) for s in data.image_size)
    model, checkpoint = run.restore(config, image_size, checkpoint)
    pixels = transforms.decode_image(tf.constant(_encoded_bytes(record, layout)))
    network_input, info = transforms.preprocess(
        pixels, shorter_side=data.eval_shorter_side, max_size=data.max_size,
        image_size=image_size, pixel_mean=data.pixel_mean, pixel_std=data.pixel_std)
    gt_boxes = transforms.scale_boxes(tf.constant(record.boxes, tf.float32), info,
                                      config.model.plus_one).numpy()
    if gt_index is None:
        areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        gt_index = int(np.argmax(areas))
    scaled_h, scaled_w = (int(v) for v in info.numpy()[1])
    display = denormalize(network_input.numpy()[:scaled_h, :scaled_w],
                                    data.pixel_mean, data.pixel_std)
    figure, view = assignment_figure(
        model, network_input.numpy(), gt_boxes, record.classes, gt_index,
        display_image=display, class_names=label_map.names,
        title=f"PAA assignment of GT {gt_index} in {record.name} "
              f"({os.path.basename(checkpoint)}, separation '{config.assign.separation}')")
    save_figure(figure, output, dpi=dpi)
    return view
