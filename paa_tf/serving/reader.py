"""Reading an exported SavedModel back: its version folder, assets and signatures.

`paa_tf.serving.export` writes `<export_dir>/<version>/` with the signatures `serving_default`
(encoded images) and `image_tensor` (uint8 images), both taking `inputs`, and the assets
`label_map.json` and `config.yaml`. `load_exported` wraps the signatures as a
`predict_fn(batch) -> detections` in the project's internal conventions (boxes in original
pixels, contiguous classes), for `paa_tf.evaluation.coco_scoring.evaluate_dataset`.
"""

import os
import re

import numpy as np
import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.data import label_map as label_map_lib
from paa_tf.data import transforms

INPUT_NAME = "inputs"  # the input of both signatures
CONFIG_ASSET = "config.yaml"  # the resolved experiment config, saved as an asset


def resolve_version_dir(path):
    """The SavedModel folder of `path`: itself, or its highest numeric version subfolder."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = [int(name) for name in (os.listdir(path) if os.path.isdir(path) else ())
                if re.fullmatch(r"\d+", name)
                and os.path.isfile(os.path.join(path, name, "saved_model.pb"))]
    if not versions:
        raise ValueError(f"{path} is neither a SavedModel nor a folder of numeric versions "
                         "holding one; pass the --export_dir of bin/paa_export or a version "
                         "folder inside it")
    return os.path.join(path, str(max(versions)))


def exported_label_map(path):
    """The `LabelMap` saved as an asset of the export at `path`."""
    return label_map_lib.load_label_map(
        os.path.join(resolve_version_dir(path), "assets", label_map_lib.LABEL_MAP_FILENAME))


def exported_config(path):
    """The resolved `ExperimentConfig` saved as an asset of the export at `path`."""
    return config_lib.load_config(
        os.path.join(resolve_version_dir(path), "assets", CONFIG_ASSET))


def _original_sizes(batch, key):
    """float32 [B, 2] original (height, width) of the images of `batch`."""
    if "original_size" in batch:
        return np.asarray(batch["original_size"], np.float32).reshape(-1, 2)
    if "image_info" in batch:
        return np.asarray(batch["image_info"], np.float32)[:, 0, :]
    if key == "image":
        shape = np.shape(batch["image"])
        return np.tile(np.array([shape[1:3]], np.float32), [shape[0], 1])
    sizes = tf.map_fn(transforms.decoded_size,
                      tf.convert_to_tensor(batch["encoded"], tf.string),
                      fn_output_signature=tf.TensorSpec([2], tf.int32))
    return sizes.numpy().astype(np.float32)


def load_exported(path):
    """`predict_fn(batch) -> detections` running an exported model's signatures.

    `batch` holds `encoded` (tf.string [B], run through `serving_default`) or `image`
    (uint8 [B, h, w, 3], run through `image_tensor`), and optionally `original_size` [B, 2]
    or `image_info` [B, 4, 2] (else the size is read from the images). The result follows
    `paa_tf.inference.postprocess.postprocess`: `detection_boxes` float32 [B, D, 4] yxyx original
    pixels, `detection_scores` [B, D], `detection_classes` int32 [B, D] contiguous (-1 pads),
    `num_detections` int32 [B], NumPy arrays. `predict_fn.label_map` is the export's map.
    """
    version_dir = resolve_version_dir(path)
    loaded = tf.saved_model.load(version_dir)
    label_map = exported_label_map(version_dir)
    index_of_id = {float(cid): index for index, cid in enumerate(label_map.ids)}
    to_index = np.vectorize(lambda cid: index_of_id.get(float(cid), -1), otypes=[np.int32])

    def predict_fn(batch):
        if "encoded" in batch:
            key, signature = "encoded", loaded.signatures["serving_default"]
            inputs = tf.convert_to_tensor(batch["encoded"], tf.string)
        elif "image" in batch and tf.as_dtype(np.asarray(batch["image"]).dtype) == tf.uint8:
            key, signature = "image", loaded.signatures["image_tensor"]
            inputs = tf.convert_to_tensor(batch["image"], tf.uint8)
        else:
            raise ValueError("an exported model takes the images themselves: give the batch an "
                             "'encoded' key (tf.string [B] JPEG/PNG bytes, see "
                             "paa_tf.evaluation.inputs.encoded_eval_dataset) or a uint8 'image' "
                             f"[B, h, w, 3]; got keys {sorted(batch)}")
        outputs = {k: v.numpy() for k, v in signature(**{INPUT_NAME: inputs}).items()}
        size = _original_sizes(batch, key)
        boxes = outputs["detection_boxes"] * np.tile(size, [1, 2])[:, None, :]
        classes = to_index(outputs["detection_classes"])
        return {"detection_boxes": np.where(classes[..., None] >= 0, boxes, 0.0)
                .astype(np.float32),
                "detection_scores": outputs["detection_scores"],
                "detection_classes": classes,
                "num_detections": outputs["num_detections"].astype(np.int32)}

    predict_fn.label_map = label_map
    predict_fn.loaded = loaded
    return predict_fn
