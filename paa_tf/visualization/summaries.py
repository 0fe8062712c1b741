"""TensorBoard pictures of a run: detections beside the ground truth, and PAA's assignment.

Written at every periodic evaluation of `bin/paa_train` (`train.eval_every`) and by
`bin/paa_eval --image_summaries`; the tags (README, "Training"):

* `detections_vs_gt/image_<id>` (image, in the evaluation's folder, e.g. `eval/val/`): one
  per image of the first `eval.summary_images` images the evaluation scores, in its order
  (the same images at every step). Left: the detections of that image exactly as they went
  to COCOeval (the records of `results.json`), those scoring at least
  `eval.summary_score_threshold`; right: the image's ground truth (crowd boxes left out).
  Both halves are the network's view of the image (evaluation scale, unpadded), drawn by
  `paa_tf.visualization.drawing.draw_detections`, the drawing of `bin/paa_predict`, with a white
  `SEPARATOR`-pixel column between them: width 2 w + SEPARATOR for a w-pixel-wide view.
* `assignment/train_image` (image, in `train/`): the paper's Fig. 1 / 4a view of
  `bin/paa_visualize` (`assignment.assignment_figure`) for the largest ground-truth box of
  the first training image that has one, with the current weights; `assign.method: paa`
  only (the baselines have no GMM to show).
* `assignment/positives_per_gt` (histogram, in `train/`): positive anchors per ground-truth
  box over the first `eval.summary_images` training images, from the assignment the train
  step runs (`PAADetector.forward_and_losses`, in inference mode).

The training images are read once, in record order, pre-processed as the evaluation does
(no flip, `data.eval_shorter_side`).
"""

import dataclasses

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg

from paa_tf.data import pipeline, transforms
from paa_tf.data.inference_preprocess import InferencePreprocess
from paa_tf.visualization import assignment, drawing

DETECTIONS_TAG = "detections_vs_gt/image_{image_id}"
ASSIGNMENT_TAG = "assignment/train_image"
POSITIVES_TAG = "assignment/positives_per_gt"
SEPARATOR = 4  # white pixel columns between the detections and the ground truth
WHITE = 255


def coco_boxes(bboxes, one=0.0):
    """COCO `[x, y, w, h]` float [N, 4] -> yxyx float64 [N, 4]; `one` = 1 for boxes written
    with the "+1" width of `model.plus_one` (`coco_scoring.detections_to_coco`)."""
    x, y, w, h = np.asarray(bboxes, np.float64).reshape(-1, 4).T
    return np.stack([y, x, y + h - one, x + w - one], axis=-1)


def network_view(batch, index, data_config):
    """(uint8 [h, w, 3] the evaluated image as the network saw it, unpadded; image_info
    float32 [4, 2]) of element `index` of an evaluation batch: its `image` (normalised, with
    `image_info`) or, for a batch of undecoded files (`encoded`: test-time augmentation, an
    exported model), the file pre-processed at the evaluation scale."""
    if "image" in batch:
        image = np.asarray(batch["image"][index])
        info = np.asarray(batch["image_info"][index], np.float32)
    else:
        image, info = InferencePreprocess.from_data_config(data_config).resized(
            transforms.decode_image(batch["encoded"][index]))
        image, info = image.numpy(), info.numpy()
    height, width = (int(v) for v in info[1])
    view = drawing.denormalize(image[:height, :width], data_config.pixel_mean,
                                 data_config.pixel_std)
    return view, info


def to_view(boxes, info):
    """Original-image yxyx boxes [N, 4] -> pixels of `network_view`: box * scale + offset."""
    return np.asarray(boxes, np.float64) * np.tile(info[2], 2) + np.tile(info[3], 2)


def side_by_side(left, right):
    """uint8 [h, w1 + SEPARATOR + w2, 3]: `left`, a white gap, `right`."""
    gap = np.full((left.shape[0], SEPARATOR, 3), WHITE, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def render(figure):
    """uint8 [h, w, 3] RGB pixels of a matplotlib `figure` (Agg canvas, no display)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class EvalImages:
    """Detections beside the ground truth for the first `count` images of an evaluation.

    An observer of `coco_scoring.evaluate_dataset` (`evaluate.evaluate_model(...,
    observer=...)`): it draws each image from the batch being evaluated and the COCO
    results records made of it, the ones COCOeval then scores, so the pictures show the
    scored detections, not those of another pass. `pictures` holds (image id, uint8
    [h, 2 w + SEPARATOR, 3]) and `drawn` {image id: the records drawn on the left}.
    """

    def __init__(self, config, count=None):
        self.config = config
        self.count = int(config.eval.summary_images if count is None else count)
        self.threshold = float(config.eval.summary_score_threshold)
        self.one = 1.0 if config.model.plus_one else 0.0
        self.pictures = []
        self.drawn = {}
        self.coco_gt = None

    def begin(self, coco_gt, label_map):
        """`coco_gt`: the scored ground truth; `label_map`: {contiguous index -> dataset id}."""
        self.coco_gt = coco_gt
        self.index_of = {int(cat): int(index) for index, cat in label_map.items()}
        self.names = [coco_gt.cats.get(label_map[i], {}).get("name", str(i))
                      for i in range(len(label_map))]

    def batch(self, batch, image_ids, records):
        """Draws the batch's images while fewer than `count` are drawn."""
        for index, image_id in enumerate(image_ids):
            if len(self.pictures) >= self.count:
                return
            view, info = network_view(batch, index, self.config.data)
            shown = [r for r in records
                     if r["image_id"] == image_id and r["score"] >= self.threshold]
            detections = drawing.draw_detections(
                view, to_view(coco_boxes([r["bbox"] for r in shown], self.one), info),
                [r["score"] for r in shown], [self.index_of[r["category_id"]] for r in shown],
                class_names=self.names)
            truth = [a for a in self.coco_gt.imgToAnns.get(image_id, [])
                     if not a.get("iscrowd", 0)]
            ground_truth = drawing.draw_detections(
                view, to_view(coco_boxes([a["bbox"] for a in truth]), info), None,
                [self.index_of.get(a["category_id"], -1) for a in truth], class_names=self.names)
            self.pictures.append((image_id, side_by_side(detections, ground_truth)))
            self.drawn[image_id] = shown

    def write(self, step, log_dir=None):
        """The pictures as image summaries at `step`, into the default writer or `log_dir`."""
        if log_dir is not None:
            writer = tf.summary.create_file_writer(str(log_dir))
            with writer.as_default():
                self.write(step)
            writer.flush()
            return
        for image_id, picture in self.pictures:
            name = self.coco_gt.imgs.get(image_id, {}).get("file_name", "")
            tf.summary.image(
                DETECTIONS_TAG.format(image_id=image_id), picture[None], step=step,
                description=f"image {image_id} {name}: left the detections COCOeval scored "
                            f"(score >= {self.threshold}), right the ground truth")


class TrainingAssignment:
    """The assignment summaries of a fixed set of training images (module docstring).

    The first `count` images of the train split (default `eval.summary_images`) are read
    on the first `write` and kept.
    """

    def __init__(self, config, count=None):
        self.config = config
        self.count = int(config.eval.summary_images if count is None else count)
        self._batch = None
        self._names = None

    def inputs(self):
        """The kept batch: NumPy `image` [B, H, W, 3], `gt_boxes`, `gt_classes`, ..."""
        if self._batch is None:
            # The training pipeline has checked these images at start-up already.
            data = dataclasses.replace(self.config.data, verify_images="none")
            dataset, report = pipeline.build_dataset(
                data, "train", is_training=False, batch_size=self.count, repeat=False,
                plus_one=self.config.model.plus_one)
            self._batch = {k: v.numpy() for k, v in next(iter(dataset)).items()}
            self._names = report.id_to_name
            self.class_names = list(pipeline.run_label_map(self.config.data).names)
        return self._batch

    def write(self, model, step):
        """Histogram (and, for PAA, picture) into the default writer at `step`.

        Returns (positives per valid GT int [G], the picture's `AssignmentView` or None).
        """
        if not self.count:
            return np.zeros(0, np.int64), None
        batch = self.inputs()
        _, assignment = model.forward_and_losses(
            {k: tf.constant(batch[k]) for k in ("image", "gt_boxes", "gt_classes")},
            training=False)
        valid = batch["gt_classes"] >= 0
        counts = assignment.num_positives_per_gt.numpy()[valid].astype(np.int64)
        tf.summary.histogram(POSITIVES_TAG, counts, step=step,
                             description=f"positive anchors per ground-truth box over the "
                                         f"first {len(batch['image'])} training images")
        view = None
        with_box = np.flatnonzero(valid.any(axis=1))
        if self.config.assign.method == "paa" and len(with_box):
            view, picture = self._picture(model, int(with_box[0]), step)
            tf.summary.image(ASSIGNMENT_TAG, picture[None], step=step,
                             description="PAA's assignment of the largest ground-truth box of "
                                         "a fixed training image (paper Fig. 1 / 4a)")
        return counts, view

    def _picture(self, model, index, step):
        batch = self.inputs()
        data = self.config.data
        image, info = batch["image"][index], batch["image_info"][index]
        boxes, classes = batch["gt_boxes"][index], batch["gt_classes"][index]
        areas = np.where(classes >= 0, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
                         -np.inf)
        gt_index = int(np.argmax(areas))
        height, width = (int(v) for v in info[1])
        display = drawing.denormalize(image[:height, :width], data.pixel_mean, data.pixel_std)
        name = self._names.get(int(batch["source_id"][index]), str(batch["source_id"][index]))
        figure, view = assignment.assignment_figure(
            model, image, boxes, classes, gt_index, display_image=display,
            class_names=self.class_names,
            title=f"PAA assignment of GT {gt_index} in {name} at step {step}")
        return view, render(figure)
