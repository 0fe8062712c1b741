"""Serving: the SavedModel writer (`export`), its request checks (`requests`), how a request
is batched through the network (`batching`), the TF Serving warm-up requests written beside it
(`warmup`), and reading an export back (`reader`)."""
