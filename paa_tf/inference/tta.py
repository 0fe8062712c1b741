"""Test-time augmentation: several views of each image, merged before NMS.

Each view (`eval.tta_scales`: shorter sides; `eval.tta_flip`: mirrored too) is
pre-processed from the undecoded image by the inference pre-processing at that scale
(`paa_tf.data.inference_preprocess`, mirrored after resizing for a flipped view), run through
the network (`paa_tf.inference.detection.candidates`), and its pre-NMS candidates are mapped
to the original image; the candidates of all views are merged before class-aware NMS and
score voting (`paa_tf.inference.postprocess.merge_tta`).
"""

import math

import numpy as np
import tensorflow as tf

from paa_tf.data import buckets, transforms
from paa_tf.data.inference_preprocess import InferencePreprocess
from paa_tf.inference import detection, postprocess


def tta_views(config, scales=None, flip=None):
    """Test-time views [(shorter_side, flipped)] of `eval.tta_scales` and `eval.tta_flip`.

    `scales` lists every scale to run (the evaluation scale is not added); without scales
    but with `flip`, the evaluation scale (the largest `data.min_size`) is run plain and
    mirrored. Returns [] when there is no test-time augmentation.
    """
    scales = tuple(config.eval.tta_scales if scales is None else scales)
    flip = bool(config.eval.tta_flip if flip is None else flip)
    if not scales and not flip:
        return []
    if any(int(s) <= 0 for s in scales):
        raise ValueError(f"eval.tta_scales is {list(scales)}; give positive shorter sides")
    scales = scales or (config.data.eval_shorter_side,)
    return [(int(s), f) for s in scales for f in ((False, True) if flip else (False,))]


def view_geometry(config, shorter_side):
    """(max_size, padded bucket (H, W)) of a test-time view at `shorter_side`.

    Up to the evaluation scale: `data.max_size` and `data.image_size`, so the evaluation
    scale itself is exactly the evaluation input. Above it, the longer-side limit grows in
    proportion (1333 at 800 -> 1667 at 1000) and the bucket grows to hold it (a multiple of
    128); the network runs at any such size with that size's anchors (`anchors_for`).
    With `data.buckets: orientation` each view runs on its orientation's bucket inside this
    canvas (`buckets.orientation_shape`).
    """
    data = config.data
    eval_side = data.eval_shorter_side
    bucket = tuple(int(s) for s in data.image_size)
    if shorter_side <= eval_side:
        return int(data.max_size), bucket
    max_size = int(math.ceil(data.max_size * shorter_side / eval_side))
    side = -(-max_size // 128) * 128
    return max_size, (max(bucket[0], side), max(bucket[1], side))


def make_tta_predict_fn(config, model, views, params=None):
    """`predict_fn(batch) -> detections dict` (original pixels) with test-time augmentation.

    `batch["encoded"]` is tf.string [B] undecoded images
    (`paa_tf.evaluation.inputs.encoded_eval_dataset`).
    Each view (shorter side, flipped) pre-processes them as the evaluation pipeline does at
    that scale (`view_geometry`; a flipped view is mirrored after resizing, before padding;
    with orientation buckets a batch of one orientation is padded to its bucket, a mixed one
    to the canvas), runs the network to its pre-NMS candidates (`detection.candidates`); the
    candidates of all views are mapped to the original image and merged before NMS and score
    voting (`paa_tf.inference.postprocess.merge_tta`).
    """
    if not views:
        raise ValueError("make_tta_predict_fn: give at least one (shorter_side, flipped) view")
    params = postprocess.PostprocessParams.from_config(config) if params is None else params
    data = config.data
    bucketed = buckets.mode_of(data) == "orientation"

    def plan_for(portrait):
        """Per view: (side, flipped, max_size, padded shape); the view's orientation bucket
        when `portrait` is a bool, its square canvas when None."""
        plan = []
        for side, flipped in views:
            max_size, shape = view_geometry(config, int(side))
            if portrait is not None:
                shape = buckets.orientation_shape(int(side), max_size, shape, portrait)
            plan.append((int(side), bool(flipped), max_size, shape))
        return plan

    def view_inputs(encoded, side, flipped, max_size, bucket):
        view = InferencePreprocess.from_config(config, shorter_side=side, max_size=max_size)

        def one(item):
            return view(transforms.decode_image(item), flip=flipped, canvas=bucket)

        return tf.map_fn(one, encoded, fn_output_signature=(
            tf.TensorSpec([bucket[0], bucket[1], 3], tf.float32),
            tf.TensorSpec([4, 2], tf.float32)))

    def make_detect(plan):
        @tf.function(reduce_retracing=True)
        def detect(encoded):
            merged = []
            for side, flipped, max_size, bucket in plan:
                images, info = view_inputs(encoded, side, flipped, max_size, bucket)
                merged.append({"candidates": detection.candidates(model, images, info, params),
                               "image_info": info, "flipped": flipped})
            return postprocess.merge_tta(merged, params)
        return detect

    detectors = {}

    def predict_fn(batch):
        encoded = tf.convert_to_tensor(batch["encoded"], tf.string)
        key = None  # the square canvas: data.buckets square, or a batch of both orientations
        if bucketed:
            if "original_size" in batch:
                sizes = np.asarray(batch["original_size"]).reshape(-1, 2)
            else:
                sizes = tf.map_fn(transforms.decoded_size, encoded,
                                  fn_output_signature=tf.TensorSpec([2], tf.int32)).numpy()
            portrait = {bool(h > w) for h, w in sizes}
            key = portrait.pop() if len(portrait) == 1 else None
        if key not in detectors:
            detectors[key] = make_detect(plan_for(key))
        return detectors[key](encoded)

    return predict_fn
