"""The PAA network: backbone, feature pyramid, shared head, and the detector model."""

from paa_tf.modeling.backbone import build_backbone
from paa_tf.modeling.detector import PAADetector, build_detector
from paa_tf.modeling.fpn import FPN
from paa_tf.modeling.head import PAAHead
from paa_tf.modeling.weights import IncompleteBackboneCheckpoint, LoadReport, load_backbone_weights

__all__ = ["FPN", "IncompleteBackboneCheckpoint", "LoadReport", "PAADetector", "PAAHead",
           "build_backbone", "build_detector", "load_backbone_weights"]
