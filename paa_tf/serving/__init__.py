"""Exports of the detector for other runtimes than TensorFlow Serving (ONNX, LiteRT)."""
