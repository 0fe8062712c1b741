"""The paper's Fig. 1 / Fig. 4a view of PAA's assignment of one GT box, for a checkpoint.

`assignment_data` runs the network on one image and PAA's assignment on its GTs exactly as
the train step does; `assignment_figure` draws one GT's candidate anchors on the image
(positives green, negatives red, ignored grey; marker shape = pyramid level) beside the
histogram of the candidates' anchor costs (the score the GMM is fitted to, cost = -log S,
paper Eq. 3) with the two fitted Gaussians w_k N(x; mu_k, sigma_k^2) and a vertical line at
the separation point. `assignment_picture` does it for an image of a run's data
(`bin/paa_visualize`).

Figures are `matplotlib.figure.Figure` objects drawn with the Agg canvas, without pyplot's
global state, so nothing here needs a display.
"""

import dataclasses
import math
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from paa_tf.run_folder import RunFolder
from paa_tf.visualization.drawing import denormalize, save_figure

DECISION_COLOURS = {"positive": "#1a9641", "negative": "#d7191c", "ignored": "#8c8c8c"}


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
      image: float32 [H, W, 3] network input (normalised and padded, e.g. by
        `InferencePreprocess`); the anchors are those of its size.
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
    image = np.asarray(image, np.float32)
    anchors, level_ids = model.anchors_for(*image.shape[:2])
    outputs = model(tf.convert_to_tensor(image)[None], training=False)
    cls_logits = tf.cast(outputs["cls_logits"], tf.float32)
    pred_boxes = model.decode(outputs["box_deltas"], tf.constant(anchors, tf.float32))
    config = assign_config if assign_config is not None else model.config.assign
    _, diag = paa_candidates_and_gmm(config, anchors, level_ids, model.num_levels,
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
        anchors=np.asarray(anchors)[index], levels=np.asarray(level_ids)[index]
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


def assignment_picture(model_dir, output, checkpoint=None, image=None, data_index=None,
                       split="train", gt_index=None, dpi=110):
    """Write the assignment picture of one GT of a training run; returns the `AssignmentView`.

    Restores the checkpoint (default: the newest readable one in `model_dir`), pre-processes
    the image as evaluation, `paa_predict` and the export do (`InferencePreprocess`), runs the
    network
    in inference mode and then PAA's assignment on the image's GT boxes with the run's
    `assign` settings. `gt_index` picks the GT (default: the largest box).
    """
    # Running the model needs TensorFlow; drawing pictures does not.
    import tensorflow as tf

    from paa_tf.data import tfrecord, transforms
    from paa_tf.data.inference_preprocess import InferencePreprocess
    from paa_tf.modeling.restore import restore_run

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
    model, checkpoint = restore_run(run, config, image_size, checkpoint)
    pixels = transforms.decode_image(tf.constant(tfrecord.read_encoded(record, layout)))
    network_input, info = InferencePreprocess.from_config(config)(pixels)
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
