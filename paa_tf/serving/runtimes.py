"""Running each exported file in its own runtime, one call convention for all.

`load_runner(fmt, path)` returns `run(images) -> outputs`: `images` uint8 NumPy
[B, h, w, 3] RGB (one size per call), `outputs` the four OD-API outputs as NumPy
(`detection_boxes` [B, D, 4] normalised yxyx, `detection_scores` [B, D],
`detection_classes` [B, D] dataset ids, `num_detections` [B]). The runtimes:

  saved_model   TensorFlow, signature `image_tensor`
  onnx          onnxruntime, CPU provider
  litert*       ai_edge_litert's Interpreter (XNNPACK), one image per invoke: the input is
                resized to each image's shape
"""

import numpy as np

from paa_tf.serving.reader import INPUT_NAME, resolve_version_dir


def load_runner(fmt, path, num_threads=None):
    """`run(images) -> outputs` of the file (or SavedModel folder) `path` of format `fmt`."""
    if fmt == "saved_model":
        import tensorflow as tf  # each runtime only for its own format

        signature = tf.saved_model.load(resolve_version_dir(path)).signatures["image_tensor"]
        return lambda images: {k: v.numpy() for k, v in
                               signature(inputs=tf.constant(images)).items()}
    if fmt == "onnx":
        import onnxruntime  # each runtime only for its own format

        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return lambda images: dict(zip(names, session.run(None, {INPUT_NAME: images})))
    if fmt.startswith("litert"):
        from ai_edge_litert.interpreter import Interpreter  # only for its own format

        runner = Interpreter(model_path=str(path),
                             num_threads=num_threads).get_signature_runner()

        def run(images):
            # The runner resizes its input to each image (a no-op for an unchanged shape).
            per_image = [runner(**{INPUT_NAME: np.ascontiguousarray(image[None])})
                         for image in images]
            return {name: np.concatenate([p[name] for p in per_image])
                    for name in per_image[0]}
        return run
    raise ValueError(f"unknown format {fmt!r}")

