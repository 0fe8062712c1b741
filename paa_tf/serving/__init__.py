"""Serving: the SavedModel writer (`export`), its request checks (`requests`), how a request
is batched through the network (`batching`), the TF Serving warm-up requests written beside it
(`warmup`), reading an export back (`reader`), and the same detector for other runtimes
(`formats`: ONNX through `onnx_export`, LiteRT through `litert_export`; `runtimes` runs each)."""
