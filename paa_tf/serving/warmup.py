"""TensorFlow Serving warm-up requests, written into every export.

TF Serving reads `<version>/assets.extra/tf_serving_warmup_requests` (a TFRecord file of
`tensorflow.serving.PredictionLog` records) when it loads a version, and runs each request
before the version is marked available, so the first client request does not pay for
initialising the graph: the one-time setup of the kernels of the network's shapes, the
decoders, the NMS. The file holds one `PredictRequest` per signature, on small drawn pictures
(`paa_tf.data.synthetic`; no dataset is needed at export time), resized by the graph to the
evaluation scale like any photo, so the network runs at the sizes of real requests:

  serving_default  inputs: tf.string [2]: a 48x64 JPEG (landscape) and a 64x48 PNG (portrait)
  image_tensor     inputs: uint8 [1, 48, 64, 3]

The 3:4 aspect is the usual photo's (a 480x640 photo pads to the same shape). A version
that fails its warm-up is not served, which also catches a broken export before clients do.
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from paa_tf.data import synthetic
from paa_tf.serving.reader import INPUT_NAME

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def warmup_images():
    """(landscape uint8 [48, 64, 3], portrait uint8 [64, 48, 3]): one drawn shapes picture."""
    picture = synthetic.render_image(np.random.default_rng(0), image_size=64).image
    return picture[:48], picture[:, :48]


def warmup_logs(model_name=""):
    """[PredictionLog] of one request per signature (module docstring).

    `model_name`: written into each request's `model_spec.name`; TF Serving runs warm-up
    requests on the version it is loading, whatever name they carry.
    """
    landscape, portrait = warmup_images()
    encoded = [tf.io.encode_jpeg(landscape, quality=90).numpy(),
               tf.io.encode_png(portrait).numpy()]
    inputs = {"serving_default": tf.make_tensor_proto(encoded, dtype=tf.string),
              "image_tensor": tf.make_tensor_proto(landscape[None])}
    logs = []
    for signature, tensor in inputs.items():
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        request.inputs[INPUT_NAME].CopyFrom(tensor)
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(version_dir, model_name=""):
    """Write `warmup_logs` to `<version_dir>/assets.extra/tf_serving_warmup_requests`;
    returns its path."""
    path = os.path.join(os.fspath(version_dir), WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_logs(model_name):
            writer.write(log.SerializeToString())
    return path
