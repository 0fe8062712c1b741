"""The exported SavedModel's serving parts: how a request is batched through the network
(`batching`) and the TF Serving warm-up requests written beside it (`warmup`)."""
