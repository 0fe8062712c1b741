"""Pictures: detections drawn on images, the anchor assignment of one object (paper Fig. 1 /
4a), curves of training summaries, and `paa_predict`'s detections for image files."""
