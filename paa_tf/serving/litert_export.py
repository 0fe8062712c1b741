"""LiteRT (TFLite) export of the whole detector: fp32, fp16 weights, int8 post-training.

The `.tflite` file holds the same detector as the SavedModel (`paa_tf.serving.export`): uint8
RGB in, the inference pre-processing (`paa_tf.data.inference_preprocess`), the network, the
candidates, class-aware NMS, score voting (paper Eq. 9-10) and the OD-API outputs:

  input   inputs             uint8 [1, h, w, 3] RGB, any h, w (one image per call:
                             `interpreter.resize_tensor_input` then `allocate_tensors`)
  outputs detection_boxes    float32 [1, D, 4] [ymin, xmin, ymax, xmax] / original size
          detection_scores   float32 [1, D], descending, 0 pads
          detection_classes  float32 [1, D] dataset category ids, -1 pads
          num_detections     float32 [1]

Builtin operators only, no select TF ops: `ai_edge_litert`'s interpreter has no Flex
delegate (checked with ai-edge-litert 2.3: a model with a select TF op raises `RuntimeError:
Select TensorFlow op(s) ... not supported by this interpreter`), so a file that needs one
would not run in the runtime it is made for. Two parts of the SavedModel graph have no
builtin and are replaced here:
- `tf.image.combined_non_max_suppression` (TF's CombinedNonMaxSuppression): `class_aware_nms`
  runs one single-class NMS (builtin NON_MAX_SUPPRESSION_V5) over (candidate, class) pairs
  whose boxes are shifted apart per class, which keeps exactly what per-class NMS keeps;
- the request checks (`tf.debugging.Assert`): the interpreter itself refuses a wrong dtype or
  rank when the input is set or resized.
One image per call, not a batch: the per-image loop of the SavedModel (`tf.map_fn`) is not
needed and the file has no WHILE.

Variants (`VARIANTS`): `fp32`; `fp16` (weights stored as float16, computed in float32);
`int8` (post-training quantization with a representative dataset of training images: the
network's ops in int8, the pre- and post-processing in float32 but for the per-level top-k
of candidate scores (`_quantize_network_only`); input and outputs stay uint8 / float32).
"""

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from paa_tf.inference import detection, postprocess
from paa_tf.serving import export
from paa_tf.serving.reader import INPUT_NAME

VARIANTS = ("fp32", "fp16", "int8")
FILENAME = "model.tflite"


def class_aware_nms(boxes, scores, params):
    """`postprocess.nms_and_vote` for one image, with builtin LiteRT operators only.

    Per-class NMS as one single-class NMS: each (candidate, class) pair's box is moved by
    class x (largest coordinate + 2) along both axes, so boxes of different classes never
    overlap (IoU 0) and greedy NMS keeps, per class, what it would keep alone; its first D
    kept pairs by score are the D best of the per-class results, as combined NMS returns.
    With the KK candidate rule each row has at most one non-zero class score, so the N best
    pairs hold every candidate; with MM's all N x C pairs go in.

    Pairs whose box has zero area (a candidate clipped to a line at the image border) stay
    out of the NMS and are merged back by score: LiteRT's NON_MAX_SUPPRESSION_V5 (its
    reference kernel, ai-edge-litert 2.3) puts every selected box back into its queue and
    relies on the box's IoU with itself to suppress it, but gives a zero-area box IoU 0 with
    everything, so it selected such a box again and again until all D outputs held it. TF's
    NMS also gives it IoU 0 (it suppresses nothing and nothing suppresses it) and keeps it
    once: the merge keeps what TF keeps.

    Args:
      boxes: float32 [1, N, 4] yxyx candidates; scores: float32 [1, N, C], 0 = absent.
      params: `postprocess.PostprocessParams`.
    Returns:
      the dict of `postprocess.nms_and_vote` (batch 1).
    """
    max_det = params.max_detections
    num_classes = scores.shape[-1]
    rows = tf.shape(boxes)[1]
    flat = tf.reshape(scores, [-1])
    count = rows if params.candidate_rule == "kk" else rows * num_classes
    pair_scores, pair = tf.math.top_k(flat, k=count)
    row, classes = pair // num_classes, pair % num_classes
    shift = tf.constant([0.0, 0.0, 1.0, 1.0] if params.plus_one else [0.0] * 4)
    pair_boxes = tf.gather(boxes[0], row)
    step = tf.reduce_max(tf.abs(pair_boxes)) + 2.0
    apart = pair_boxes + shift + tf.cast(classes, tf.float32)[:, None] * step
    # Zero area as the kernels compute it, |y2 - y1| * |x2 - x1| <= 0 (docstring).
    sides = tf.abs(apart[:, 2:] - apart[:, :2])
    zero_area = sides[:, 0] * sides[:, 1] <= 0.0
    keep, kept_scores, num = tf.raw_ops.NonMaxSuppressionV5(
        boxes=apart, scores=tf.where(zero_area, 0.0, pair_scores), max_output_size=max_det,
        iou_threshold=params.nms_iou, score_threshold=0.0, soft_nms_sigma=0.0,
        pad_to_max_output_size=True)
    # The D best by score of the NMS's kept pairs and the zero-area ones (a score of 0 is
    # no pair: NMS keeps only scores above 0).
    kept_scores = tf.where(tf.range(max_det) < num, kept_scores, 0.0)
    merged_scores = tf.concat([kept_scores, tf.where(zero_area, pair_scores, 0.0)], 0)
    kept_scores, order = tf.math.top_k(merged_scores, k=max_det)
    keep = tf.gather(tf.concat([keep, tf.range(count)], 0), order)
    num = tf.reduce_sum(tf.cast(kept_scores > 0.0, tf.int32))
    valid = tf.range(max_det) < num
    det_classes = tf.where(valid, tf.gather(classes, keep), -1)[None]
    det_boxes = tf.gather(pair_boxes, keep)[None]
    valid = valid[None]
    if params.score_voting:
        det_boxes = postprocess.score_voting(
            det_boxes, det_classes, boxes, scores, sigma=params.voting_sigma,
            iou_threshold=params.voting_iou, plus_one=params.plus_one)
    return {"detection_boxes": tf.where(valid[..., None], det_boxes, 0.0),
            "detection_scores": tf.where(valid, kept_scores[None], 0.0),
            "detection_classes": det_classes,
            "num_detections": num[None]}


def litert_function(module):
    """The `tf.function` converted to LiteRT: uint8 [1, h, w, 3] -> the four outputs.

    Args:
      module: `paa_tf.serving.export.ExportedDetector` (its model, pre-processing and parameters).
    """
    model = module._holder.model
    preprocess, params = module._preprocess, module._params

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8,
                                                name=INPUT_NAME)])
    def detect_one(inputs):
        # The export's pre-processing (float32 before the resize, data.inference_preprocess).
        image, image_info = preprocess(inputs[0])
        image_info = image_info[None]
        # The converter loses the channel count through the resize's tf.cond (TFLite's IF),
        # and a convolution needs it: the reshape states it again.
        height, width = image.shape[:2]
        image = tf.reshape(image, [1, height or tf.shape(image)[0],
                                   width or tf.shape(image)[1], 3])
        found = detection.candidates(model, image, image_info, params)
        detections = class_aware_nms(found["boxes"], found["scores"], params)
        detections["detection_boxes"] = postprocess.map_to_original(
            detections["detection_boxes"], image_info, plus_one=params.plus_one)
        return export.to_client_outputs(detections, image_info, module.class_ids)

    return detect_one


def convert(module, variant, calibration_images=()):
    """The `.tflite` bytes of `module` (`export.ExportedDetector`) as `variant`.

    Args:
      variant: one of `VARIANTS`.
      calibration_images: for int8, uint8 [h, w, 3] RGB images (any sizes) the
        activation ranges are measured on; ignored otherwise.
    """
    if variant not in VARIANTS:
        raise ValueError(f"LiteRT variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    function = litert_function(module)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        images = [np.asarray(image, np.uint8) for image in calibration_images]
        if not images:
            raise ValueError("int8 LiteRT needs calibration images (--calibration_images N "
                             "> 0 training images)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        return _quantize_network_only(converter, module._holder.model.name)
    return converter.convert()


def _quantize_network_only(converter, scope):
    """int8 `.tflite` bytes in which the ops of the network (names under `scope`) are
    quantized and the pre- and post-processing stay float32, but for the exceptions below.

    Quantized post-processing would put box coordinates on an 8-bit grid, and breaks
    outright: a quantized DIV (`divide_no_nan`) fails on a zero divisor. The calibrated
    float model is quantized with every other node denylisted by name (a tensor name joins
    the names of the TF ops fused into it with ';': the whole names and their parts are
    given), the two steps TensorFlow's `tf.lite.experimental.QuantizationDebugger` runs
    (`_experimental_calibrate_only`, then `mlir_quantize`), without its instrumented model.

    Exceptions, measured: the quantizer still makes a few ops that keep their input's scale
    int8 despite the denylist: the per-level TOPK_V2 of candidate scores (so the int8 file's
    scores lie on an 8-bit grid of their calibrated range: ties of about 1/256 appear), the
    UNPACK of box deltas (already int8 out of the network: no extra loss) and three
    STRIDED_SLICEs. A `denylisted_ops` list stops TOPK_V2 and UNPACK, but the quantizer
    ignores it when nodes are denylisted, and alone it cannot keep the float MUL/SUB/ADD of
    box decoding apart from the network's.
    """
    # The quantizer's entry point is not exported by tf.lite; only int8 needs it.
    from tensorflow.lite.python import convert as lite_convert

    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    names = [detail["name"] for detail in Interpreter(model_content=calibrated)
             .get_tensor_details()]
    outside = {name for name in names
               if not any(part.startswith(scope + "/") for part in name.split(";"))}
    outside |= {part for name in outside for part in name.split(";")}
    return lite_convert.mlir_quantize(calibrated, disable_per_channel=False,
                                      fully_quantize=False, denylisted_nodes=sorted(outside))
