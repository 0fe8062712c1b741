"""Pictures of a run: drawn detections, PAA's assignment and their TensorBoard summaries."""
