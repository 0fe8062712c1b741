"""ONNX export of the whole detector through tf2onnx, for onnxruntime.

The `.onnx` file is the SavedModel's `image_tensor` signature (`paa_tf.serving.export`) converted
op by op: the per-image loop (ONNX Loop), the evaluation pre-processing, the network,
class-aware NMS (tf2onnx maps TF's CombinedNonMaxSuppression to ONNX NonMaxSuppression),
score voting (paper Eq. 9-10), with the same names (the request checks, TF Assert ops,
have no ONNX counterpart: onnxruntime checks the dtype and rank of `inputs` itself):

  input   inputs             uint8 [batch, h, w, 3] RGB, one size per request
  outputs detection_boxes    float32 [batch, D, 4] [ymin, xmin, ymax, xmax] / original size
          detection_scores   float32 [batch, D], descending, 0 pads
          detection_classes  float32 [batch, D] dataset category ids, -1 pads
          num_detections     float32 [batch]

Two details of the export graph make the conversion load in onnxruntime (both fixed in the
graph, not by editing the ONNX file): the image is cast to float32 before the resize
(`paa_tf.data.inference_preprocess`: ONNX Resize keeps uint8 where TF's ResizeBilinear returns
float32, so the converted mean subtraction mixed uint8 and float32 inside the Loop), and the
class-id table of `paa_tf.serving.export.ExportedDetector` is a NumPy constant (a captured
tensor stayed a second, unnamed graph input).

The conversion takes minutes (2-4 on the quickstart model on a loaded 2-core CPU, mostly
tf2onnx's graph optimisation); the SavedModel's own `image_tensor` signature converts the same
way with `python -m tf2onnx.convert --saved-model <export_dir>/1 --signature_def image_tensor`.
"""

import tensorflow as tf

from paa_tf.serving.reader import INPUT_NAME

FILENAME = "model.onnx"
OPSET = 17  # NonMaxSuppression, Loop with sequence outputs: every onnxruntime >= 1.14


def convert(module, path, opset=OPSET):
    """Write `module` (`paa_tf.serving.export.ExportedDetector`) to `path` as ONNX; returns
    `path`."""
    # tf2onnx is needed only for this format (and imports slowly).
    import tf2onnx

    spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)]
    tf2onnx.convert.from_function(module.serve_images, input_signature=spec, opset=opset,
                                  output_path=str(path))
    return path
