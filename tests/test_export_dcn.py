"""Exports of a detector with modulated deformable convolutions (DCNv2, `model.head_dcn`).

The model is tests/test_export.py's tiny random-weight detector (128 px canvas, class prior
0.2 so that it detects) with the last conv of both head towers a `ModulatedDeformConv2D`.
A new DCN layer's offset conv is zero, so it samples the plain grid and a test of it would
prove nothing about the deformable sampling: here every offset conv gets random weights and
biases that move the samples by a few pixels (`test_offsets_are_a_few_pixels_and_matter`
checks both, and that with the offsets zeroed the detections fail the comparisons below).
The run folder is written as `bin/paa_train` leaves it and exported once with
`bin/paa_export --formats saved_model,onnx,litert`.

Oracles: for the SavedModel, the eager Python path (eval pre-processing, the Keras model,
`postprocess`) of tests/test_export.py on JPEG images in COCO's layout
(tests/helpers/sample_data.py); for ONNX and LiteRT fp32, the SavedModel, compared as
tests/test_export_formats.py compares them (its reliable detections and tolerances).

Two LiteRT problems this model showed, each with its own test here:
- the layer's offsets were sliced off a 6-D tensor, which LiteRT's builtin STRIDED_SLICE
  cannot do (at most 5-D: the converter asked for the select TF op StridedSlice);
  `test_deform_conv_layer_converts_to_litert` converts the layer alone, also in the forms
  of `model.backbone_dcn_stages` the head does not use (stride 2, conv groups, deformable
  groups), and compares it with TF;
- LiteRT's NMS kernel repeats a zero-area box (this random head clips some boxes at the
  image border) until its output is full: `test_litert_nms_keeps_a_zero_area_box_once`.
A detector with a DCN backbone is not exported here: a ResNet-50 one (torchvision style,
DCN in res5) takes about 25 s for its SavedModel alone and 2 min with ONNX and LiteRT.
"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from paa_tf import config as config_lib
from paa_tf.data import label_map as label_map_lib
from paa_tf.data import transforms
from paa_tf.inference import postprocess
from paa_tf.modeling.deform_conv import ModulatedDeformConv2D
from paa_tf.modeling.detector import build_detector
from paa_tf.serving import litert_export, runtimes
from tests import test_export, test_export_formats

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = test_export.OVERRIDES + ["model.head_dcn=true"]
FORMATS = ("saved_model", "onnx", "litert")
OFFSET_BIAS_PIXELS = 2.0  # standard deviation of the offsets' biases, in feature pixels
# COCO val images of the generated set: 240x320, 500x375 (portrait), 640x480 (45 objects),
# 428x640.
IMAGE_IDS = (404484, 168974, 166918, 343937)


def deform_layers(model):
    """The model's `ModulatedDeformConv2D` layers, by name."""
    return sorted((layer for layer in model.submodules
                   if isinstance(layer, ModulatedDeformConv2D)), key=lambda layer: layer.name)


def randomize_offsets(model, seed):
    """Give every DCN layer's offset conv random weights: offsets of a few pixels that vary
    with the input, and modulations spread around sigmoid(0) = 0.5."""
    for index, layer in enumerate(deform_layers(model)):
        kernel = layer.offset_kernel
        fan_in = int(np.prod(kernel.shape[:3]))
        kernel.assign(tf.random.stateless_normal(kernel.shape, [seed, index],
                                                 stddev=1.0 / np.sqrt(fan_in)))
        offsets = 2 * layer.deformable_groups * layer.kernel_size ** 2
        scale = np.where(np.arange(layer.offset_bias.shape[0]) < offsets, OFFSET_BIAS_PIXELS,
                         1.0).astype(np.float32)
        layer.offset_bias.assign(scale * tf.random.stateless_normal(
            layer.offset_bias.shape, [seed, 100 + index]))


@pytest.fixture(scope="module")
def dcn_run(tmp_path_factory):
    """The run folder of a random-weight head-DCN detector with non-zero offset convs, and
    the in-process model and config."""
    config = config_lib.load_config(REPO / "configs" / "quickstart.yaml", overrides=OVERRIDES)
    tf_keras.utils.set_random_seed(3)
    model = build_detector(config)
    assert [layer.name for layer in deform_layers(model)] == ["box_tower_conv1",
                                                              "cls_tower_conv1"]
    # Class logits spread (scores far apart, as in test_export) and the offsets made to matter.
    kernel = model.head.cls_logits.kernel
    kernel.assign(tf.random.stateless_normal(kernel.shape, [1, 2], stddev=0.05))
    randomize_offsets(model, seed=17)
    model_dir = tmp_path_factory.mktemp("dcn_run")
    config_lib.save_config(config, model_dir / "config.yaml")
    label_map_lib.write_label_map(test_export.LABEL_MAP, model_dir)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(7, dtype=tf.int64),
                                                   model=model),
                               str(model_dir), max_to_keep=1).save(checkpoint_number=7)
    return {"config": config, "model": model, "model_dir": model_dir}


@pytest.fixture(scope="module")
def images(sample_data):
    """JPEG bytes of four generated COCO val images, and their decoded uint8 pixels."""
    folder = sample_data / "coco_mini" / "val2017"
    encoded = [(folder / f"{image_id:012d}.jpg").read_bytes() for image_id in IMAGE_IDS]
    return {"encoded": encoded,
            "decoded": [transforms.decode_image(e).numpy() for e in encoded]}


@pytest.fixture(scope="module")
def exported(dcn_run, tmp_path_factory):
    """{format: path} of `bin/paa_export --formats saved_model,onnx,litert` of the run."""
    export_dir = tmp_path_factory.mktemp("dcn_export")
    assert test_export._cli(["--model_dir", str(dcn_run["model_dir"]), "--export_dir",
                             str(export_dir), "--formats", ",".join(FORMATS)]) == 0
    return {"saved_model": export_dir / "1", "onnx": export_dir / "onnx" / "model.onnx",
            "litert": export_dir / "litert" / litert_export.FILENAME}


def _largest_differences(actual, expected, sizes):
    """(largest box corner difference in pixels of the original image (height, width
    `sizes`), largest score difference) between the paired detections
    (`test_export.pair_detections`)."""
    pixels, scores = 0.0, 0.0
    for image, count in enumerate(np.asarray(expected["num_detections"]).astype(int)):
        want = {k: np.asarray(v)[image][:count] for k, v in expected.items()
                if k != "num_detections"}
        got = {k: np.asarray(actual[k])[image][:count] for k in want}
        partner = test_export.pair_detections(want, got)
        size = np.tile(np.asarray(sizes[image], np.float32), 2)
        pixels = max(pixels, float(np.abs((got["detection_boxes"][partner]
                                           - want["detection_boxes"]) * size).max()))
        scores = max(scores, float(np.abs(got["detection_scores"][partner]
                                          - want["detection_scores"]).max()))
    return pixels, scores


def _format_pairs(want, got, size):
    """For each detection of `want` ((boxes [n, 4], scores [n], classes [n]) of one image,
    `test_export_formats._reliable`): (largest corner difference in pixels of the original
    image of height, width `size`, score difference) to its partner in `got`, or None without
    a same-class one. One to one, minimising the summed `test_export.pairing_cost` (the rule
    of `test_export.pair_detections`, here for unequal counts) rather than by IoU as
    test_export_formats pairs: this random model clips some boxes to zero area at the image
    border, where IoU is 0."""
    from scipy.optimize import linear_sum_assignment

    keys = ("detection_boxes", "detection_scores", "detection_classes")
    cost = test_export.pairing_cost(dict(zip(keys, want)), dict(zip(keys, got)))
    boxes, scores, _ = want
    got_boxes, got_scores, _ = got
    pixels = np.tile(np.asarray(size, np.float32), 2)
    pairs = [None] * len(boxes)
    for row, col in zip(*linear_sum_assignment(cost)):
        if cost[row, col] < test_export.OTHER_CLASS:
            pairs[row] = (float(np.abs((boxes[row] - got_boxes[col]) * pixels).max()),
                          float(abs(scores[row] - got_scores[col])))
    return pairs


def _format_mismatches(want, got, index, size, fmt):
    """(pairs, mismatches) of image `index` of the outputs `want` and `got` (dicts of
    [B, ...] client outputs): each reliable detection of `want` (`test_export_formats.
    _reliable`, margin 0.01) paired (`_format_pairs`) with those of `got`; a mismatch has no
    partner or one beyond `test_export_formats.TOLERANCE[fmt]` (pixels, score)."""
    pixel_tol, score_tol, _ = test_export_formats.TOLERANCE[fmt]
    reliable = test_export_formats._reliable(want, index, margin=0.01)
    assert len(reliable[0]) >= 5, "the oracle found too few detections: a vacuous test"
    pairs = _format_pairs(reliable, test_export_formats._reliable(got, index, margin=0.0),
                          size)
    return pairs, [(i, p) for i, p in enumerate(pairs)
                   if p is None or p[0] > pixel_tol or p[1] > score_tol]


def test_offsets_are_a_few_pixels_and_matter(dcn_run, images, monkeypatch):
    """The oracle's premise: on these images the DCN layers' offsets are a few pixels (not
    zero, not all far outside the feature map), and with the offset convs' offset channels
    zeroed (modulations kept) the detections fail the comparisons the SavedModel and the
    ONNX / LiteRT tests make: a DCN exported as a plain (modulated) conv would not pass
    them."""
    model, config = dcn_run["model"], dcn_run["config"]
    recorded = {}
    for layer in deform_layers(model):
        def recording(x, layer=layer, original=layer.offsets_and_mask):
            offset, mask = original(x)
            recorded.setdefault(layer.name, []).append(offset.numpy())
            return offset, mask

        monkeypatch.setattr(layer, "offsets_and_mask", recording)
    expected = test_export._python_path(config, model, images["decoded"])
    for name, offsets in recorded.items():
        magnitude = np.abs(np.concatenate([o.reshape(-1) for o in offsets]))
        assert 0.5 < np.median(magnitude) < 5.0, (name, np.median(magnitude))
        assert np.mean(magnitude > 1.0) > 0.3, name
    levels = config.model.max_level - config.model.min_level + 1
    assert len(recorded) == 2 and all(len(v) == levels for v in recorded.values())

    saved = {layer.name: (layer.offset_kernel.numpy(), layer.offset_bias.numpy())
             for layer in deform_layers(model)}
    try:
        for layer in deform_layers(model):
            kernel, bias = saved[layer.name]
            offsets = 2 * layer.deformable_groups * layer.kernel_size ** 2
            keep = (np.arange(bias.shape[0]) >= offsets).astype(np.float32)
            layer.offset_kernel.assign(kernel * keep)
            layer.offset_bias.assign(bias * keep)
        zeroed = test_export._python_path(config, model, images["decoded"])
    finally:
        for layer in deform_layers(model):
            layer.offset_kernel.assign(saved[layer.name][0])
            layer.offset_bias.assign(saved[layer.name][1])
    with pytest.raises(AssertionError):
        test_export._assert_same_detections(zeroed, expected)
    # ... nor the coarser one of the ONNX and LiteRT test (1 px, 1e-3), on every image.
    for index, image in enumerate(images["decoded"]):
        assert _format_mismatches(expected, zeroed, index, image.shape[:2], "onnx")[1], index
    # Restored: the model gives its detections again (the other tests use it).
    test_export._assert_same_detections(
        test_export._python_path(config, model, images["decoded"]), expected)


@pytest.mark.slow
def test_saved_model_equals_the_python_model_path(dcn_run, exported, images):
    """The SavedModel reloaded with tf.saved_model.load gives the eager model's detections:
    both signatures (encoded JPEGs in one request; each decoded image alone), same counts,
    classes, scores within 1e-5 and box corners within 1e-3 px of the original image."""
    loaded = tf.saved_model.load(str(exported["saved_model"]))
    expected = test_export._python_path(dcn_run["config"], dcn_run["model"], images["decoded"])
    assert np.all(expected["num_detections"] >= 20), expected["num_detections"]
    sizes = [image.shape[:2] for image in images["decoded"]]
    results = {"serving_default": test_export._call(loaded, "serving_default",
                                                    images["encoded"])}
    singles = [test_export._call(loaded, "image_tensor", image[None])
               for image in images["decoded"]]
    results["image_tensor"] = {k: np.concatenate([s[k] for s in singles]) for k in singles[0]}
    for signature, actual in results.items():
        test_export._assert_same_detections(actual, expected)
        pixels, scores = _largest_differences(actual, expected, sizes)
        print(f"{signature}: largest box difference {pixels:.2e} px, score {scores:.2e}")
        assert pixels <= 1e-3 and scores <= 1e-5, (signature, pixels, scores)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_onnx_and_litert_equal_the_saved_model(exported, images, fmt):
    """ONNX (onnxruntime) and LiteRT fp32 files of the DCN detector load in their runtimes
    and reproduce every reliable SavedModel detection (test_export_formats' `_reliable` and
    `TOLERANCE`: same class, within 1 px and 1e-3 in score) on each image run alone."""
    oracle = runtimes.load_runner("saved_model", exported["saved_model"], num_threads=1)
    run = runtimes.load_runner(fmt, exported[fmt], num_threads=1)
    compared, worst = 0, (0.0, 0.0)
    for index, image in enumerate(images["decoded"]):
        pairs, bad = _format_mismatches(oracle(image[None]), run(image[None]), 0,
                                        image.shape[:2], fmt)
        assert not bad, (fmt, index, bad)
        worst = tuple(max(w, max(p[i] for p in pairs)) for i, w in enumerate(worst))
        compared += len(pairs)
    print(f"{fmt}: {compared} detections, largest box difference {worst[0]:.2e} px, "
          f"score {worst[1]:.2e}")
    assert compared >= 40


# (groups, deformable groups, stride): the backbone's forms (stride 2 in a downsampling
# block's 3x3 conv, ResNeXt's conv groups, deformable_groups > 1).
LAYER_CASES = [(1, 1, 2), (4, 2, 2), (4, 1, 1), (1, 2, 1)]


@pytest.mark.parametrize("groups, deformable_groups, stride", LAYER_CASES)
def test_deform_conv_layer_converts_to_litert(groups, deformable_groups, stride):
    """A lone `ModulatedDeformConv2D` with offsets of a few pixels converts to a LiteRT file
    of builtin operators only (as litert_export converts, no select TF ops) whose output
    equals the TF layer's within 1e-5 of its largest magnitude."""
    from ai_edge_litert.interpreter import Interpreter

    layer = ModulatedDeformConv2D(8, 3, strides=stride, groups=groups,
                                  deformable_groups=deformable_groups, use_bias=False)
    x = tf.random.stateless_normal([1, 13, 12, 8], [groups, stride])
    layer(x)
    layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, [5, 6]))
    kernel = layer.offset_kernel
    kernel.assign(tf.random.stateless_normal(kernel.shape, [7, 8], stddev=0.3))
    layer.offset_bias.assign(OFFSET_BIAS_PIXELS * tf.random.stateless_normal(
        layer.offset_bias.shape, [9, 10]))
    function = tf.function(layer.call, input_signature=[tf.TensorSpec(x.shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], layer)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = Interpreter(model_content=converter.convert()).get_signature_runner()
    (got,) = runner(x=x.numpy()).values()
    want = layer(x).numpy()
    offset, _ = layer.offsets_and_mask(x)
    assert np.median(np.abs(offset.numpy())) > 0.5  # the sampling is deformed
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


class _Nms(tf.Module):
    """`litert_export.class_aware_nms` of one image as a tf.function to convert."""

    def __init__(self, params, num, classes):
        super().__init__()
        self.params = params
        self.run = tf.function(self._run, input_signature=[
            tf.TensorSpec([1, num, 4], tf.float32), tf.TensorSpec([1, num, classes])])

    def _run(self, boxes, scores):
        return litert_export.class_aware_nms(boxes, scores, self.params)


@pytest.mark.parametrize("rule", ["kk", "mm"])
def test_litert_nms_keeps_a_zero_area_box_once(rule):
    """The class-aware NMS of the LiteRT files, run by LiteRT's interpreter, keeps what TF's
    CombinedNonMaxSuppression keeps (`postprocess.nms_and_vote`, with voting) on candidates
    of which a fifth are clipped to zero area (the random DCN detector above makes such
    boxes at the image border). LiteRT's own NMS kernel repeats a zero-area box until its
    output is full (litert_export.class_aware_nms); test_export_formats checks the same
    function run by TensorFlow, whose kernel does not."""
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(23)
    num, classes = 200, 4
    centre = rng.uniform(20, 100, (num, 2))
    size = rng.uniform(5, 40, (num, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1)
    flat = rng.random(num) < 0.2
    boxes[flat, 0] = boxes[flat, 2] = 128.0  # clipped at the bottom border: zero height
    boxes = boxes.astype(np.float32)
    scores = np.zeros((num, classes), np.float32)
    if rule == "kk":
        scores[np.arange(num), rng.integers(0, classes, num)] = rng.permutation(num) / num + 0.01
    else:
        scores = np.where(rng.uniform(size=scores.shape) < 0.5,
                          rng.permutation(scores.size).reshape(scores.shape) / scores.size
                          + 1e-3, 0.0).astype(np.float32)
    params = postprocess.PostprocessParams(max_detections=40, candidate_rule=rule)
    want = {k: v.numpy() for k, v in postprocess.nms_and_vote(
        boxes[None], scores[None], params).items()}
    kept_flat = np.isin(want["detection_boxes"][0, :, 0], [128.0]).sum()
    assert int(want["num_detections"][0]) == 40 and kept_flat >= 3, kept_flat
    module = _Nms(params, num, classes)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.run.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = Interpreter(model_content=converter.convert()).get_signature_runner()
    got = runner(boxes=boxes[None], scores=scores[None])
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=f"{rule} {key}")
