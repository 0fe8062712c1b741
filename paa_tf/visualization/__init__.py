"""Pictures: detections drawn on images, the anchor assignment of one object (paper Fig. 1 /
4a), curves of training summaries, `paa_predict`'s detections for image files, and the
TensorBoard image summaries of an evaluation (`summaries`)."""
