"""`bin/paa_export --formats`: every deployable file of one training run, side by side.

  saved_model   <export_dir>/<version>/   TensorFlow Serving (`paa_tf.serving.export`)
  onnx          <export_dir>/onnx/model.onnx           onnxruntime (`onnx_export`)
  litert        <export_dir>/litert/model.tflite       LiteRT fp32 (`litert_export`)
  litert_fp16   <export_dir>/litert_fp16/model.tflite  float16 weights
  litert_int8   <export_dir>/litert_int8/model.tflite  int8, calibrated on training images

Each non-SavedModel folder holds `label_map.json` beside the model (the SavedModel keeps it
under `assets/`). The SavedModel stays at TF Serving's numeric version folder: a server
pointed at `export_dir` ignores the named folders.
"""

import os
import shutil

import numpy as np
import tensorflow as tf

from paa_tf.data import pipeline, tfrecord, transforms
from paa_tf.run_folder import RunFolder
from paa_tf.serving import export, litert_export, onnx_export

FORMATS = ("saved_model", "onnx", "litert", "litert_fp16", "litert_int8")
LITERT = {"litert": "fp32", "litert_fp16": "fp16", "litert_int8": "int8"}


def check_formats(names):
    """`names` (list of str) as a tuple of `FORMATS`; an unknown one is a ValueError."""
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ValueError(f"--formats {','.join(names)}: unknown {', '.join(unknown) or '(none)'}"
                         f"; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def calibration_images(config, count):
    """`count` uint8 [h, w, 3] training images spread evenly over the run's train split
    (`data.train_*` of `config`: image files or TFRecord shards), decoded as the pipeline
    decodes them."""
    records, _, layout = pipeline.load_records(config.data, "train", is_training=False)
    picks = np.linspace(0, len(records) - 1, num=min(count, len(records))).astype(int)
    return [transforms.decode_image(tf.constant(tfrecord.read_encoded(records[i], layout)))
            .numpy() for i in picks]


def export_formats(model_dir, export_dir, formats, checkpoint=None, version=None,
                   overwrite=False, config_overrides=None, num_calibration=100):
    """Write each of `formats` for the run in `model_dir`; returns {format: path}."""
    formats = check_formats(list(formats))
    if formats == ("saved_model",):
        return {"saved_model": export.export_from_model_dir(
            model_dir, export_dir, checkpoint=checkpoint, version=version,
            overwrite=overwrite, config_overrides=config_overrides)}
    others = [name for name in formats if name != "saved_model"]
    run = RunFolder(model_dir)
    config = run.config(overrides=config_overrides)
    # Every existing output refused before the slow part; the model restored once for all.
    if "saved_model" in formats:
        version = export.free_version(config, export_dir, version, overwrite)
    for name in others:
        folder = os.path.join(os.fspath(export_dir), name)
        if os.path.exists(folder) and not overwrite:
            raise ValueError(f"{folder} exists; pass --overwrite to replace it")
    module, config = export.restore_detector(run, config, checkpoint)
    written = {}
    if "saved_model" in formats:
        written["saved_model"] = export.write_saved_model(run, module, config, export_dir,
                                                          version, overwrite)
    for name in others:
        folder = os.path.join(os.fspath(export_dir), name)
        os.makedirs(folder, exist_ok=True)
        if name == "onnx":
            path = onnx_export.convert(module, os.path.join(folder, onnx_export.FILENAME))
        else:
            images = (calibration_images(config, num_calibration)
                      if LITERT[name] == "int8" else ())
            path = os.path.join(folder, litert_export.FILENAME)
            with open(path, "wb") as out:
                out.write(litert_export.convert(module, LITERT[name], images))
        shutil.copy(run.label_map_path, folder)
        written[name] = path
    return written
