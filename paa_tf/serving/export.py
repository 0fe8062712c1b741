"""SavedModel export for TensorFlow Serving: the whole detector in one graph.

`export_from_model_dir` restores a training run (`config.yaml`, `label_map.json`, the latest
or a given checkpoint) and writes `<export_dir>/<version>/`, TensorFlow Serving's numeric
version layout, with two signatures, both with the input named `inputs`:

  serving_default  inputs: tf.string [batch] encoded JPEG or PNG images, any sizes
  image_tensor     inputs: uint8 [batch, height, width, 3] RGB images of one size

Both run, for each image of the request on its own, the inference pre-processing
(`paa_tf.data.inference_preprocess`, as evaluation and `paa_predict` do: with
`data.buckets: orientation` zero-padded to the image's own multiples of 32, with `square` to
the canvas `data.image_size`), the network and the post-processing
(`paa_tf.inference.postprocess`: candidates, class-aware NMS, score voting unless turned off
at export) with the config's thresholds, and return, as clients of the TF Object
Detection API expect:

  detection_boxes    float32 [batch, D, 4] [ymin, xmin, ymax, xmax] normalised to the
                     original image (pixel / original height or width)
  detection_scores   float32 [batch, D], descending, 0 for padding
  detection_classes  float32 [batch, D] the dataset's category ids (e.g. COCO 1..90), -1 pads
  num_detections     float32 [batch]
with D = `eval.max_detections`. Classes and counts are float32 because OD API clients read
them as floats and cast (`.astype(int)`); float32 holds every integer below 2**24 exactly.
The label map (`label_map.json`) and the resolved config (`config.yaml`) are saved as assets,
TF Serving's warm-up requests as `assets.extra/tf_serving_warmup_requests`
(`paa_tf.serving.warmup`).
Running each image on its own is `export.batching: per_image` (the default); with `bucket`
the images of a request are padded into one bucket and run as one batch
(`paa_tf.serving.batching`).

`paa_tf.serving.reader` reads an export back (`load_exported`: a `predict_fn(batch) ->
detections` in the project's internal conventions, for evaluation).
"""

import dataclasses
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.data import transforms
from paa_tf.inference import detection, postprocess
from paa_tf.modeling.restore import restore_run
from paa_tf.run_folder import RunFolder
from paa_tf.serving import batching as serving_batching
from paa_tf.serving import requests, warmup
from paa_tf.serving.reader import CONFIG_ASSET, INPUT_NAME

SIGNATURES = ("serving_default", "image_tensor")
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


class _Holder:
    """Keeps the Keras model out of the SavedModel's object graph (only its variables are
    saved, through `ExportedDetector.model_variables`); saving a tf_keras model as an
    attribute would also serialise Keras metadata and retrace every layer."""

    def __init__(self, model):
        self.model = model


class ExportedDetector(tf.Module):
    """The servable: pre-processing -> PAADetector -> post-processing -> client outputs.

    Each image of a request runs through the network on its own (`tf.map_fn`, one image at a
    time), padded as `preprocess.pad_multiple` says: to the smallest multiple of 32 holding it
    (`data.buckets: orientation`; a dynamic shape, the anchors made from it at run time) or
    to the canvas `preprocess.image_size` (`data.buckets: square`). So an image's detections
    do not depend on the other images of its request, and the graph holds one copy of the
    network.

    Args:
      model: a built `PAADetector` (any input size runs on its weights).
      preprocess: `InferencePreprocess` (`requests.export_preprocess`).
      params: `postprocess.PostprocessParams`.
      label_map: `LabelMap` (contiguous index -> dataset category id).
      max_pixels: the largest height x width of a request image (`export.max_pixels`).
      batching: `export.batching`; 'bucket' runs a request as one batch instead
        (`paa_tf.serving.batching`).
    """

    def __init__(self, model, preprocess, params, label_map,
                 max_pixels=requests.DEFAULT_MAX_PIXELS, batching="per_image"):
        super().__init__(name="paa_exported_detector")
        num_classes = model.config.model.num_classes
        if label_map.num_classes != num_classes:
            raise ValueError(f"the label map has {label_map.num_classes} classes but the model "
                             f"predicts {num_classes} (model.num_classes); export the label "
                             "map the model was trained with")
        self._holder = _Holder(model)
        self._preprocess = preprocess
        self._max_pixels = int(max_pixels)
        self._params = params
        if batching not in serving_batching.MODES:
            raise ValueError(f"export.batching is {batching!r}; choose one of "
                             f"{serving_batching.MODES}")
        self._batching = batching
        self.model_variables = list(model.variables)
        # NumPy, so the graph holds it as a constant: a captured tensor would stay a graph
        # input in tf2onnx's conversion of the per-image loop.
        self.class_ids = np.asarray(label_map.ids, np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve_encoded(self, inputs):
        """tf.string [B] JPEG/PNG bytes -> the four client outputs (module docstring)."""
        encoded = requests.checked_encoded(inputs, self._max_pixels)
        return self._request(encoded, transforms.decode_image)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                name=INPUT_NAME)])
    def serve_images(self, inputs):
        """uint8 [B, h, w, 3] RGB -> the four client outputs (module docstring)."""
        images = requests.check_images(inputs, self._max_pixels)
        return self._request(images, lambda image: image)

    def _request(self, items, load):
        """Client outputs of a request, batched as `export.batching` says."""
        if self._batching == "bucket":
            return serving_batching.detect_bucketed(items, load, self._preprocess, self.detect,
                                                    self._params.max_detections)
        return self._each_image(items, load)

    def _each_image(self, items, load):
        """Client outputs [B, ...] of `items` [B, ...], each image `load(item)` (uint8
        [h, w, 3]) pre-processed and detected alone. One image at a time
        (`parallel_iterations=1`): a request's peak memory is that of its largest image, and
        on a CPU the convolutions use every core anyway. An empty request runs nothing."""
        max_det = self._params.max_detections

        def one(item):
            image, image_info = self._preprocess(load(item))
            outputs = self.detect(image[None], image_info[None])
            return {key: value[0] for key, value in outputs.items()}

        return tf.map_fn(one, items, fn_output_signature=serving_batching.output_specs(max_det),
                         parallel_iterations=1)

    def detect(self, images, image_info):
        """Pre-processed float32 [B, H, W, 3] and image_info [B, 4, 2] -> client outputs.

        H and W may be dynamic: the anchors and their per-level counts are then computed from
        the runtime shape (`generate_anchors_tf`), else taken from the model's static cache.
        """
        return to_client_outputs(detection.detect(self._holder.model, images, image_info,
                                                  self._params), image_info, self.class_ids)


def to_client_outputs(detections, image_info, class_ids):
    """`postprocess` detections (original pixels, contiguous classes) -> client outputs.

    Args:
      detections: dict of `paa_tf.inference.postprocess.postprocess`.
      image_info: float32 [B, 4, 2]; row 0 is the original (height, width).
      class_ids: float32 [C] dataset category id of each contiguous class.
    Returns:
      dict of the four float32 outputs named in `OUTPUT_NAMES`.
    """
    classes = detections["detection_classes"]
    valid = classes >= 0
    size = tf.tile(image_info[:, 0, :], [1, 2])[:, None, :]  # [B, 1, 4] (h, w, h, w)
    boxes = tf.math.divide_no_nan(detections["detection_boxes"], size)
    ids = tf.gather(class_ids, tf.maximum(classes, 0))
    return {
        "detection_boxes": tf.where(valid[..., None], boxes, 0.0),
        "detection_scores": tf.cast(detections["detection_scores"], tf.float32),
        "detection_classes": tf.where(valid, ids, -1.0),
        "num_detections": tf.cast(detections["num_detections"], tf.float32),
    }


def save_exported(module, export_dir, version, assets=(), overwrite=False):
    """Write `module` to `<export_dir>/<version>/` atomically; returns that path.

    The SavedModel is written into a hidden sibling folder (which TensorFlow Serving ignores:
    it only loads numeric folders) and renamed, so a server watching `export_dir` never sees a
    half-written version. `assets`: files copied under `assets/`; TF Serving's warm-up
    requests go to `assets.extra/` (`paa_tf.serving.warmup`).
    """
    version = int(version)
    if version < 0:
        raise ValueError(f"export version is {version}; TF Serving versions are integers >= 0")
    target = os.path.join(os.fspath(export_dir), str(version))
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"{target} exists; pass --overwrite to replace it or --version with a "
                         "new number (TF Serving serves the highest version)")
    os.makedirs(export_dir, exist_ok=True)
    module.assets = [tf.saved_model.Asset(os.fspath(path)) for path in assets]
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        signatures = {"serving_default": module.serve_encoded.get_concrete_function(),
                      "image_tensor": module.serve_images.get_concrete_function()}
        tf.saved_model.save(module, staging, signatures=signatures)
        warmup.write_warmup_requests(staging, model_name=os.path.basename(
            os.path.normpath(export_dir)))  # the base path's name, what MODEL_NAME usually is
        # mkdtemp makes the folder private (0700); a server running as another user (the
        # tensorflow/serving container) must be able to read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target


def restore_detector(run, config, checkpoint=None, score_voting=None):
    """(`ExportedDetector` of `run`'s checkpoint, the config it records) for `config` (the
    run's, overrides applied); `score_voting` None keeps `eval.score_voting`."""
    voting = config.eval.score_voting if score_voting is None else bool(score_voting)
    # The exported config records what the graph does.
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval,
                                                                  score_voting=voting))
    preprocess, max_pixels = requests.export_preprocess(config)
    model, checkpoint = restore_run(run, config, preprocess.image_size, checkpoint)
    params = postprocess.PostprocessParams.from_config(config, score_voting=voting)
    return ExportedDetector(model, preprocess, params, run.label_map(), max_pixels,
                            batching=config.export.batching), config


def export_from_model_dir(model_dir, export_dir, checkpoint=None, version=None,
                          score_voting=None, overwrite=False, config_overrides=None):
    """Export a training run (see the module docstring); returns `<export_dir>/<version>`.

    Args:
      model_dir: training folder with `config.yaml`, `label_map.json` and checkpoints.
      export_dir: TF Serving model base path; the version folder is created under it.
      checkpoint: checkpoint prefix; default the latest in `model_dir`.
      version: integer version; default `export.version` of the config.
      score_voting: bool; default `eval.score_voting` of the config.
      overwrite: replace an existing version folder.
      config_overrides: dotted overrides applied to the run's config (e.g.
        'eval.max_detections=300').
    """
    run = RunFolder(model_dir)
    config = run.config(overrides=config_overrides)  # num_classes checked against the map
    run.label_map()  # a missing or bad label map fails before the slow part
    if not checkpoint and not run.checkpoints():  # before the slow part
        raise ValueError(f"no checkpoint in {model_dir}; train first or pass --checkpoint")
    version = free_version(config, export_dir, version, overwrite)  # before the slow part
    module, config = restore_detector(run, config, checkpoint, score_voting)
    return write_saved_model(run, module, config, export_dir, version, overwrite)


def free_version(config, export_dir, version=None, overwrite=False):
    """The version number to write (`version`, default `export.version`); a ValueError when
    its folder exists and `overwrite` is not set."""
    version = config.export.version if version is None else int(version)
    target = os.path.join(os.fspath(export_dir), str(version))
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"{target} exists; pass --overwrite to replace it or --version with a "
                         "new number (TF Serving serves the highest version)")
    return version


def write_saved_model(run, module, config, export_dir, version, overwrite=False):
    """Save `module` (of `restore_detector`) with the run's label map and `config` as assets;
    returns `<export_dir>/<version>`."""
    with tempfile.TemporaryDirectory() as scratch:
        config_copy = config_lib.save_config(config, os.path.join(scratch, CONFIG_ASSET))
        return save_exported(module, export_dir, version,
                             assets=(run.label_map_path, config_copy), overwrite=overwrite)
