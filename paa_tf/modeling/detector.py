"""PAADetector: backbone -> FPN -> shared head, with the PAA training step.

``train_step`` follows Procedure 1 of the paper: forward pass, decode the predictions, assign
anchors probabilistically from the detached predictions (IoU pre-assignment, anchor scores,
per-level top-K, 2-component GMM, separation; ``paa_tf.assign``), build targets, compute the
losses of Eq. 8 (``paa_tf.modeling.losses``), and take one SGD step with explicit weight decay.

Works under ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``: Keras sums the replicas'
gradients, so each replica differentiates its loss divided by the number of replicas (the
losses are normalised as in ``paa_tf.modeling.losses``).
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf
import tf_keras

from paa_tf.assign import assign
from paa_tf.modeling import losses as paa_losses
from paa_tf.modeling.backbone import build_backbone
from paa_tf.modeling.fpn import FPN
from paa_tf.modeling.head import PAAHead
from paa_tf.modeling.weights import load_backbone_weights
from paa_tf.ops.anchors import generate_anchors
from paa_tf.ops.boxes import decode_boxes

LOGGER = logging.getLogger(__name__)
# Variables treated as biases: 2x LR, no decay (KK names conv and GroupNorm offsets 'bias';
# its key test, "bias" in the name, also covers the deformable convs' offset-conv biases).
BIAS_NAMES = ("bias", "beta", "offset_bias")


def is_bias(variable) -> bool:
    """True for conv biases (offset convs' included) and normalisation offsets ('beta')."""
    return variable.name.split("/")[-1].split(":")[0] in BIAS_NAMES


class _MetricHolder:
    """A plain object, so Keras does not track what it holds (metrics, an anchor cache)."""

    def __init__(self, trackers):
        self.trackers = trackers


class PAADetector(tf_keras.Model):
    """The PAA detector.

    Input: image float32 [B, H, W, 3] (normalised by the data pipeline; H, W a static padded
    size, multiples of 2**max_level: the build size or any orientation bucket; see
    ``anchors_for``). ``call`` returns the head outputs, flattened over levels
    (P3 first, row-major): ``cls_logits`` [B, A, C], ``box_deltas`` [B, A, 4] (dy, dx, dh, dw)
    and, unless ``model.aux_head == 'none'``, ``iou_logits`` [B, A], in the compute dtype.

    Training data: dicts with ``image``, ``gt_boxes`` float32 [B, M, 4] yxyx pixels (-1 pads)
    and ``gt_classes`` int32 [B, M] (-1 pads).
    """

    def __init__(self, config, backbone, fpn, head, anchors, level_ids, assign_fn=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.anchors = tf.constant(anchors, tf.float32)  # [A, 4] yxyx, of the build size
        # The assignment needs the level of each anchor as static NumPy (it slices per level).
        self.level_ids = np.asarray(level_ids, np.int32)  # [A]
        self._anchor_cache = _MetricHolder({})  # {(H, W): (anchors, level_ids)}, untracked
        self._assign_fn = assign_fn or assign
        model_cfg = config.model
        self.num_levels = model_cfg.max_level - model_cfg.min_level + 1
        self.aux_head = model_cfg.aux_head
        self.plus_one = model_cfg.plus_one
        self.box_weights = tuple(model_cfg.box_weights)
        self.delta_clamp = model_cfg.delta_clamp
        aux_name = "loss_iou" if self.aux_head != "centerness" else "loss_centerness"
        self._loss_names = {"loss": "loss", "loss_cls": "loss_cls", "loss_reg": "loss_reg",
                            "loss_aux": aux_name}
        # Held in a plain object so the metric states are not model weights (they would
        # otherwise appear in count_params, checkpoints and the exported SavedModel).
        self._metric_holder = _MetricHolder(
            {name: tf_keras.metrics.Mean(name=name)
             for name in (*self._loss_names.values(), "pos_per_gt", "gt_without_pos", "lr")})
        self.backbone_load_report = None

    @property
    def trackers(self):
        return self._metric_holder.trackers

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, images, training=False):
        features = self.backbone(images, training=training)
        pyramid = self.fpn(features, training=training)
        return self.head(pyramid, training=training)

    def anchors_for(self, height, width):
        """(anchors float32 NumPy [A, 4] yxyx, level_ids int32 NumPy [A]) of an input size.

        An anchor's position depends only on its level and cell, so the anchors of a smaller
        bucket are exactly the anchors of the larger canvas that lie in its top-left corner
        (per level); the canvas's extra anchors cover padding only.
        """
        if height is None or width is None:
            raise ValueError("PAADetector needs a static input height and width to make its "
                             "anchors; batch images of one bucket (paa_tf.data.buckets) and "
                             "call the step on each batch, not on an iterator of mixed shapes")
        key = (int(height), int(width))
        cache = self._anchor_cache.trackers
        if key not in cache:
            cfg = self.config.model
            cache[key] = generate_anchors(
                key[0], key[1], cfg.min_level, cfg.max_level,
                octave_base_scale=cfg.octave_base_scale,
                center_offset=cfg.anchor_center_offset, plus_one=cfg.plus_one)
        return cache[key]

    def decode(self, box_deltas, anchors=None):
        """Decoded boxes float32 [B, A, 4] yxyx pixels from deltas [B, A, 4]."""
        return decode_boxes(tf.cast(box_deltas, tf.float32),
                            self.anchors if anchors is None else anchors,
                            weights=self.box_weights, clamp=self.delta_clamp,
                            plus_one=self.plus_one)

    def forward_and_losses(self, data, training):
        """Forward pass, probabilistic anchor assignment and Eq. 8 losses of one batch.

        Args:
          data: dict with ``image``, ``gt_boxes``, ``gt_classes`` (see the class docstring).
        Returns:
          (dict of losses from ``paa_tf.modeling.losses.paa_losses``, ``AssignResult``).
        """
        outputs = self(data["image"], training=training)
        anchors, level_ids = self.anchors_for(*data["image"].shape[1:3])
        anchors = tf.constant(anchors, tf.float32)
        # Losses and assignment in float32, whatever the compute dtype of the network.
        cls_logits = tf.cast(outputs["cls_logits"], tf.float32)
        aux_logits = outputs.get("iou_logits")
        if aux_logits is not None:
            aux_logits = tf.cast(aux_logits, tf.float32)
        pred_boxes = self.decode(outputs["box_deltas"], anchors)
        # Procedure 1, lines 1-17: the assignment sees detached predictions only.
        assignment = self._assign_fn(
            self.config.assign, anchors, level_ids, self.num_levels,
            data["gt_boxes"], data["gt_classes"], tf.stop_gradient(cls_logits),
            tf.stop_gradient(pred_boxes), plus_one=self.plus_one, loss_config=self.config.loss)
        losses = paa_losses.paa_losses(
            cls_logits, pred_boxes, aux_logits, assignment.labels, assignment.matched_boxes,
            assignment.positive_mask, anchors, self.config.loss, aux_head=self.aux_head,
            plus_one=self.plus_one)
        return losses, assignment

    def _decay_and_scale(self, gradients, variables):
        """Explicit L2 decay, then the bias LR factor, on the local gradients.

        Keras sums gradients over replicas, so the decay term is divided by the number of
        replicas to be counted once. The 2x bias LR is applied as 2x bias gradient: SGD with
        momentum is linear in the gradient, and the LR only ever multiplies the gradient
        (Keras: v <- m v - lr g, w <- w + v; PyTorch: v <- m v + g, w <- w - lr v), so scaling a
        parameter's gradient (decay term included) by f is the same as scaling its LR by f, at
        every step of any LR schedule, as long as the LR is the only difference between the
        parameter groups (KK: bias LR x2 and bias decay 0, both handled here).
        """
        train_cfg = self.config.train
        weight_decay = train_cfg.weight_decay
        bias_decay = train_cfg.bias_weight_decay
        bias_factor = train_cfg.bias_lr_factor
        replicas = float(paa_losses.num_replicas())
        results = []
        for gradient, variable in zip(gradients, variables):
            if gradient is None:
                results.append(None)
                continue
            bias = is_bias(variable)
            decay = bias_decay if bias else weight_decay
            if decay:
                gradient = gradient + (decay / replicas) * tf.cast(variable, gradient.dtype)
            if bias and bias_factor != 1.0:
                gradient = gradient * bias_factor
            results.append(gradient)
        return results

    def _update_metrics(self, losses, assignment, gt_classes):
        for key, name in self._loss_names.items():
            self.trackers[name].update_state(losses[key])
        valid = tf.cast(gt_classes >= 0, tf.float32)
        per_gt = tf.cast(assignment.num_positives_per_gt, tf.float32)
        # Fig. 4b of the paper: positives per GT; also how many GTs got none (docs/PAA.md, Step E).
        self.trackers["pos_per_gt"].update_state(per_gt, sample_weight=valid)
        self.trackers["gt_without_pos"].update_state(
            tf.cast(per_gt == 0, tf.float32), sample_weight=valid)

    @staticmethod
    def _unpack(data):
        # fit() passes the dataset element as is; train_on_batch(x) wraps it in a tuple.
        return tf_keras.utils.unpack_x_y_sample_weight(data)[0]

    def train_step(self, data):
        data = self._unpack(data)
        variables = self.trainable_variables
        optimizer = self.optimizer
        with tf.GradientTape() as tape:
            losses, assignment = self.forward_and_losses(data, training=True)
            # Keras sums the replicas' gradients (see paa_tf.modeling.losses on the normalisers).
            step_loss = losses["loss"] / tf.cast(paa_losses.num_replicas(), tf.float32)
            scale_loss = hasattr(optimizer, "get_scaled_loss")
            if scale_loss:
                step_loss = optimizer.get_scaled_loss(step_loss)
        gradients = tape.gradient(step_loss, variables)
        if scale_loss:
            gradients = optimizer.get_unscaled_gradients(gradients)
        gradients = self._decay_and_scale(gradients, variables)
        optimizer.apply_gradients(
            (g, v) for g, v in zip(gradients, variables) if g is not None)
        self._update_metrics(losses, assignment, data["gt_classes"])
        self.trackers["lr"].update_state(tf.cast(optimizer.learning_rate, tf.float32))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def test_step(self, data):
        data = self._unpack(data)
        losses, assignment = self.forward_and_losses(data, training=False)
        self._update_metrics(losses, assignment, data["gt_classes"])
        return {name: self.trackers[name].result()
                for name in (*self._loss_names.values(), "pos_per_gt", "gt_without_pos")}


def build_detector(config, image_size=None, assign_fn=None) -> PAADetector:
    """Builds the detector for a static padded input size and loads the backbone weights.

    Args:
      config: ``ExperimentConfig`` (uses ``model``, ``assign``, ``loss``, ``train``).
      image_size: (H, W) of the padded input; defaults to ``config.data.image_size``.
      assign_fn: replaces ``paa_tf.assign.assign`` (same signature), e.g. for baselines.
    Returns:
      A built ``PAADetector``; ``backbone_load_report`` holds the ``LoadReport`` when
      ``model.backbone_checkpoint`` is set.
    """
    model_cfg = config.model
    if model_cfg.num_classes is None:
        raise ValueError("model.num_classes is not set: paa_train takes it from the label map "
                         "and saves it in the run's config.yaml; set it to build a model from "
                         "a config outside a run folder")
    if image_size is None:
        image_size = tuple(config.data.image_size)
    height, width = (int(s) for s in image_size)
    # Any spatial size: the same weights run on the square canvas and on every bucket.
    backbone = build_backbone(model_cfg, (None, None, 3))
    fpn = FPN(channels=model_cfg.fpn_channels, min_level=model_cfg.min_level,
              max_level=model_cfg.max_level, p7_from_relu=model_cfg.p7_from_relu,
              kernel_init=model_cfg.fpn_init, name="fpn")
    head = PAAHead(num_classes=model_cfg.num_classes, channels=model_cfg.head_channels,
                   num_convs=model_cfg.head_convs, min_level=model_cfg.min_level,
                   max_level=model_cfg.max_level, prior_prob=model_cfg.prior_prob,
                   aux_head=model_cfg.aux_head, norm=model_cfg.head_norm,
                   dcn=model_cfg.head_dcn, deformable_groups=model_cfg.deformable_groups,
                   name="paa_head")
    anchors, level_ids = generate_anchors(
        height, width, model_cfg.min_level, model_cfg.max_level,
        octave_base_scale=model_cfg.octave_base_scale,
        center_offset=model_cfg.anchor_center_offset, plus_one=model_cfg.plus_one)
    model = PAADetector(config, backbone, fpn, head, anchors, level_ids, assign_fn=assign_fn,
                        name="paa_detector")
    outputs = model(tf_keras.Input(shape=(height, width, 3), batch_size=None))
    num_outputs = outputs["cls_logits"].shape[1]
    if num_outputs != len(anchors):
        raise ValueError(
            f"the head produces {num_outputs} locations for a {height}x{width} input but the "
            f"anchor generator made {len(anchors)}; use an input size that is a multiple of "
            f"{2 ** model_cfg.max_level}")
    checkpoint = model_cfg.backbone_checkpoint
    if checkpoint:
        model.backbone_load_report = load_backbone_weights(
            backbone, checkpoint,
            allow_partial=model_cfg.backbone_checkpoint_partial)
        LOGGER.info("%s", model.backbone_load_report.summary())
    return model
