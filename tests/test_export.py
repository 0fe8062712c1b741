"""SavedModel export for TensorFlow Serving (README.md, "Export and serve with TensorFlow Serving").

One tiny random-weight detector is trained-for-zero-steps, checkpointed the way
`bin/paa_train` does (config.yaml, label_map.json, CheckpointManager) and exported once per
module. The oracle for every detection is the Python model path: the data transforms, the
Keras model and `paa_tf.inference.postprocess` run eagerly, outside the SavedModel.
"""

import base64
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorflow.core.protobuf import config_pb2

from paa_tf import config as config_lib
from paa_tf.data import buckets, pipeline, synthetic, transforms
from paa_tf.data import label_map as label_map_lib
from paa_tf.evaluation import coco_scoring
from paa_tf.evaluation import inputs as eval_inputs
from paa_tf.inference import postprocess
from paa_tf.modeling.detector import build_detector
from paa_tf.serving import export
from paa_tf.serving import reader as export_reader
from tests.helpers.oracles import canvas_preprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
# 128 px bucket, and a class prior of 0.2 so that a random-weight head gives detections
# above the 0.05 threshold (the default 0.01 prior gives none).
OVERRIDES = ["data.image_size=[128,128]", "data.min_size=[128]", "data.max_size=128",
             "model.prior_prob=0.2", "eval.max_detections=50", "model.num_classes=6"]
LABEL_MAP = label_map_lib.LabelMap(ids=(1, 3, 5, 7, 9, 11),
                                   names=("a", "b", "c", "d", "e", "f"))


def _random_image(seed, height, width, channels=3):
    rng = np.random.default_rng(seed)
    # Smooth blobs rather than noise, so JPEG keeps the content and the detector's outputs vary.
    base = rng.uniform(0, 255, size=(height // 8 + 2, width // 8 + 2, channels))
    image = tf.image.resize(base[None], [height, width], method="bicubic")[0]
    return np.clip(image.numpy(), 0, 255).astype(np.uint8)


def _jpeg(image):
    return tf.io.encode_jpeg(image, quality=95).numpy()


def _png(image):
    return tf.io.encode_png(image).numpy()


def _cli(args):
    """Run bin/paa_export's main in this process (no second TensorFlow import); exit code.

    The flags it defines on absl's global FLAGS are removed afterwards, so that other
    commands' flags can be defined later in the same test process.
    """
    from absl import flags

    from paa_tf.cli import export as export_cli

    before = set(flags.FLAGS)
    try:
        with pytest.raises(SystemExit) as done:
            export_cli.main(["paa_export"] + args)
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
    return done.value.code


def write_random_run(model_dir, overrides, seed, kernel_seed, step=1):
    """A training folder as bin/paa_train leaves it, for a random-weight quickstart model with
    `overrides`: config.yaml, LABEL_MAP and `ckpt-<step>`. Returns (config, model)."""
    config = config_lib.load_config(REPO / "configs" / "quickstart.yaml", overrides=overrides)
    # Every weight from this seed (Keras initializers also draw on Python's and NumPy's
    # generators), so the model does not depend on which tests ran before in the process.
    tf_keras.utils.set_random_seed(seed)
    model = build_detector(config)
    # Spread the class logits so that scores are far apart (no ties decided by round-off).
    kernel = model.head.cls_logits.kernel
    kernel.assign(tf.random.stateless_normal(kernel.shape, kernel_seed, stddev=0.05))
    config_lib.save_config(config, model_dir / "config.yaml")
    label_map_lib.write_label_map(LABEL_MAP, model_dir)
    step = tf.Variable(step, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step, model=model),
                               str(model_dir), max_to_keep=1).save(checkpoint_number=step)
    return config, model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training folder as bin/paa_train leaves it, and its export (version 1)."""
    model_dir = tmp_path_factory.mktemp("run")
    config, model = write_random_run(model_dir, OVERRIDES, seed=3, kernel_seed=[1, 2], step=7)
    export_dir = tmp_path_factory.mktemp("export")
    _cli(["--model_dir", str(model_dir), "--export_dir", str(export_dir)])
    version_dir = str(export_dir / "1")
    return {"config": config, "model": model, "model_dir": model_dir, "export_dir": export_dir,
            "version_dir": version_dir, "loaded": tf.saved_model.load(version_dir)}


@pytest.fixture(scope="module")
def images():
    """Encoded test images of different sizes and kinds, and their decoded pixels."""
    rgb_a, rgb_b = _random_image(1, 100, 150), _random_image(2, 61, 40)
    grey = _random_image(3, 90, 90, channels=1)
    rgba = np.concatenate([_random_image(4, 70, 200), np.full((70, 200, 1), 255, np.uint8)], -1)
    encoded = [_jpeg(rgb_a), _png(rgb_b), _png(grey), _png(rgba)]
    return {"encoded": encoded,
            "decoded": [transforms.decode_image(e).numpy() for e in encoded]}


def _python_path(config, model, decoded, score_voting=True):
    """The oracle: eval pre-processing, the Keras model and postprocess, run eagerly.

    Returns client-convention detections (boxes / original size, dataset ids) as NumPy.
    """
    data = config.data
    inputs, infos = zip(*[canvas_preprocess(
        tf.constant(image), shorter_side=max(data.min_size), max_size=data.max_size,
        image_size=buckets.image_size_of(data), pixel_mean=data.pixel_mean,
        pixel_std=data.pixel_std) for image in decoded])
    info = tf.stack(infos)
    outputs = model(tf.stack(inputs), training=False)
    params = postprocess.PostprocessParams.from_config(config, score_voting=score_voting)
    det = {k: v.numpy() for k, v in postprocess.postprocess(
        outputs["cls_logits"], outputs["box_deltas"], outputs["iou_logits"], model.anchors,
        info, level_ids=model.level_ids, params=params).items()}
    sizes = np.array([image.shape[:2] for image in decoded], np.float32)
    ids = np.array(LABEL_MAP.ids, np.float32)
    classes = det["detection_classes"]
    return {"detection_boxes": det["detection_boxes"] / np.tile(sizes, [1, 2])[:, None, :],
            "detection_scores": det["detection_scores"],
            "detection_classes": np.where(classes >= 0, ids[np.maximum(classes, 0)], -1.0),
            "num_detections": det["num_detections"].astype(np.float32)}


OTHER_CLASS = 1e9  # pairing cost of two detections of different classes


def pairing_cost(want, got):
    """float [N, M]: the largest score-or-corner difference between each detection of `want`
    and of `got` (dicts of one image's `detection_boxes` [N, 4], `detection_scores` [N],
    `detection_classes` [N]; M for `got`), `OTHER_CLASS` across classes."""
    cost = np.maximum(
        np.abs(want["detection_scores"][:, None] - got["detection_scores"][None]),
        np.abs(want["detection_boxes"][:, None] - got["detection_boxes"][None]).max(-1))
    return np.where(want["detection_classes"][:, None] == got["detection_classes"][None],
                    cost, OTHER_CLASS)


def pair_detections(want, got):
    """Index into `got` of the partner of each detection of `want` (`pairing_cost`'s dicts,
    N equal): the one-to-one pairing within classes that minimises the summed
    `pairing_cost` (`linear_sum_assignment`). Not by rank, which round-off may swap between two
    near-tied scores; not by IoU, undefined for the zero-area boxes a random model can clip."""
    from scipy.optimize import linear_sum_assignment

    rows, partner = linear_sum_assignment(pairing_cost(want, got))
    assert np.array_equal(rows, np.arange(len(rows)))
    return partner


def _assert_same_detections(actual, expected):
    """Same detections per image: the counts, and each expected detection's class, score and
    box on its partner (`pair_detections`)."""
    actual = {k: np.asarray(v) for k, v in actual.items()}
    assert expected["num_detections"].min() > 0, "the oracle found nothing: a vacuous test"
    np.testing.assert_array_equal(actual["num_detections"], expected["num_detections"])
    for image, count in enumerate(np.asarray(expected["num_detections"]).astype(int)):
        want = {k: np.asarray(v)[image][:count] for k, v in expected.items()
                if k != "num_detections"}
        got = {k: actual[k][image][:count] for k in want}
        partner = pair_detections(want, got)
        np.testing.assert_array_equal(got["detection_classes"][partner],
                                      want["detection_classes"])
        np.testing.assert_allclose(got["detection_scores"][partner], want["detection_scores"],
                                   rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["detection_boxes"][partner], want["detection_boxes"],
                                   rtol=1e-3, atol=1e-5)


def _call(loaded, signature, value):
    outputs = loaded.signatures[signature](inputs=tf.convert_to_tensor(value))
    return {k: v.numpy() for k, v in outputs.items()}


@pytest.mark.slow
def test_saved_model_cli_lists_both_signatures(run):
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    text = subprocess.run([str(cli), "show", "--dir", str(run["version_dir"]), "--all"],
                          check=True, capture_output=True, text=True).stdout
    blocks = {name: text.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
              for name in ("serving_default", "image_tensor")}
    expected_inputs = {"serving_default": ("DT_STRING", "(-1)"),
                       "image_tensor": ("DT_UINT8", "(-1, -1, -1, 3)")}
    outputs = {"detection_boxes": "(-1, 50, 4)", "detection_scores": "(-1, 50)",
               "detection_classes": "(-1, 50)", "num_detections": "(-1)"}
    for name, block in blocks.items():
        dtype, shape = expected_inputs[name]
        assert f"inputs['inputs'] tensor_info:\n        dtype: {dtype}\n        shape: {shape}" \
            in block, block
        assert block.count("inputs['") == 1
        for output, out_shape in outputs.items():
            assert f"outputs['{output}'] tensor_info:\n        dtype: DT_FLOAT\n        " \
                   f"shape: {out_shape}" in block, (output, block)
        assert block.count("outputs['") == 4
        assert "Method name is: tensorflow/serving/predict" in block
    assets = run["version_dir"] + "/assets"
    assert json.loads(pathlib.Path(assets, "label_map.json").read_text()) == \
        LABEL_MAP.to_entries()
    assert export_reader.exported_label_map(run["export_dir"]) == LABEL_MAP


@pytest.mark.slow
def test_both_signatures_match_the_python_model_path(run, images):
    expected = _python_path(run["config"], run["model"], images["decoded"])
    # Four images of four sizes (JPEG, PNG, grey PNG, RGBA PNG) in one request.
    _assert_same_detections(_call(run["loaded"], "serving_default", images["encoded"]),
                            expected)
    for index, image in enumerate(images["decoded"]):
        actual = _call(run["loaded"], "image_tensor", image[None])
        _assert_same_detections(actual, {k: v[index:index + 1] for k, v in expected.items()})
    # A batch of two same-size images through image_tensor.
    pair = np.stack([images["decoded"][0], images["decoded"][0][::-1]])
    _assert_same_detections(_call(run["loaded"], "image_tensor", pair),
                            _python_path(run["config"], run["model"], list(pair)))


def test_outputs_follow_the_client_conventions(run, images):
    out = _call(run["loaded"], "serving_default", images["encoded"])
    assert {k: v.dtype for k, v in out.items()} == {k: np.float32 for k in export.OUTPUT_NAMES}
    for b, count in enumerate(out["num_detections"].astype(int)):
        assert set(out["detection_classes"][b, :count]) <= set(map(float, LABEL_MAP.ids))
        assert np.all(out["detection_classes"][b, count:] == -1.0)
        assert np.all(out["detection_scores"][b, count:] == 0.0)
        assert np.all(np.diff(out["detection_scores"][b, :count]) <= 0)
        boxes = out["detection_boxes"][b, :count]
        assert np.all((boxes >= 0.0) & (boxes <= 1.0))
        assert np.all(boxes[:, 2:] >= boxes[:, :2])


def test_empty_request_gives_empty_outputs(run):
    out = _call(run["loaded"], "serving_default", tf.zeros([0], tf.string))
    assert out["detection_boxes"].shape == (0, 50, 4)
    assert out["num_detections"].shape == (0,)


def _rest_instances(body, signature_inputs):
    """TF Serving's REST 'row' and 'columnar' request formats -> {input name: value}.

    TF Serving's documented rules for the predict API: a JSON object {"b64": text} is the
    base64-encoded bytes of one string; in the row format, `instances` items are objects keyed
    by input name, or (for a signature with one input) the values themselves; in the columnar
    format, `inputs` is an object keyed by input name, or the value of the only input.
    """
    request = json.loads(body)

    def is_b64(value):
        return isinstance(value, dict) and set(value) == {"b64"}

    def decode(value):
        if is_b64(value):
            return base64.b64decode(value["b64"])
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    if "instances" in request:
        rows = request["instances"]
        if all(isinstance(row, dict) and not is_b64(row) for row in rows):
            return {name: [decode(row[name]) for row in rows] for name in signature_inputs}
        assert len(signature_inputs) == 1
        return {signature_inputs[0]: decode(rows)}
    inputs = request["inputs"]
    if isinstance(inputs, dict) and not is_b64(inputs):
        return {name: decode(value) for name, value in inputs.items()}
    return {signature_inputs[0]: decode(inputs)}


def test_rest_json_body_with_base64_images(run, images):
    signature = run["loaded"].signatures["serving_default"]
    names = list(signature.structured_input_signature[1])
    assert names == ["inputs"]
    encoded = images["encoded"][:2]
    b64 = [base64.b64encode(e).decode("ascii") for e in encoded]
    expected = _call(run["loaded"], "serving_default", encoded)
    for body in (json.dumps({"signature_name": "serving_default",
                             "instances": [{"b64": s} for s in b64]}),
                 json.dumps({"instances": [{"inputs": {"b64": s}} for s in b64]}),
                 json.dumps({"inputs": [{"b64": s} for s in b64]})):
        feed = _rest_instances(body, names)
        assert feed["inputs"] == encoded
        answer = {k: v.numpy() for k, v in signature(
            **{k: tf.constant(v, tf.string) for k, v in feed.items()}).items()}
        for key in export.OUTPUT_NAMES:
            np.testing.assert_array_equal(answer[key], expected[key])
        # The REST reply: one JSON object per instance.
        reply = json.loads(json.dumps({"predictions": [
            {k: v[i].tolist() for k, v in answer.items()} for i in range(len(encoded))]}))
        assert len(reply["predictions"]) == 2
        assert reply["predictions"][1]["num_detections"] == expected["num_detections"][1]


def test_predict_request_round_trips_through_the_signature_inputs(run, images):
    from tensorflow_serving.apis import predict_pb2

    for signature, value in (("serving_default", np.array(images["encoded"], object)),
                             ("image_tensor", images["decoded"][0][None])):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "paa"
        request.model_spec.signature_name = signature
        request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(value))
        received = predict_pb2.PredictRequest.FromString(request.SerializeToString())
        function = run["loaded"].signatures[received.model_spec.signature_name]
        feed = {name: tf.constant(tf.make_ndarray(proto))
                for name, proto in received.inputs.items()}
        outputs = function(**feed)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(received.model_spec)
        for name, tensor in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(tensor.numpy()))
        answer = predict_pb2.PredictResponse.FromString(response.SerializeToString())
        assert sorted(answer.outputs) == sorted(export.OUTPUT_NAMES)
        expected = _call(run["loaded"], signature, value)
        for name in export.OUTPUT_NAMES:
            np.testing.assert_array_equal(tf.make_ndarray(answer.outputs[name]), expected[name])


class _SessionServer:
    """Runs signatures the way TensorFlow Serving's C++ server does: a TF1 session over the
    SavedModel, the request tensor fed as is (no Python-side shape or dtype check)."""

    def __init__(self, path):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)

        self.callables = {}

    def run(self, signature, value):
        if signature not in self.callables:
            sig = self.meta.signature_def[signature]
            options = config_pb2.CallableOptions(feed=[sig.inputs["inputs"].name],
                                                 fetch=[sig.outputs["num_detections"].name])
            self.callables[signature] = self.session._make_callable_from_options(options)
        return self.callables[signature](value)[0]


@pytest.fixture(scope="module")
def server(run):
    server = _SessionServer(run["version_dir"])
    yield server
    server.session.close()


def _png_claiming(height, width):
    """A PNG whose IHDR claims height x width (a few rows of data follow): the header is all
    the pixel limit may read; decoding it would allocate height x width x 3 bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = zlib.compress(b"\0" * (3 * width + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _jpeg_claiming(encoded, height, width):
    """`encoded` (a baseline JPEG) with its SOF0 segment claiming height x width."""
    data = bytearray(encoded)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


_NOT_AN_IMAGE = "not a JPEG or PNG image (JPEG or PNG expected) at index"
_TOO_MANY_PIXELS = ("more than export.max_pixels=40000000 pixels (height x width, read from "
                    "the file header)")
BAD_REQUESTS = [
    ("text at index 1", "serving_default", lambda e: [e[0], b"hello", e[1]],
     _NOT_AN_IMAGE + "] [1]"),
    ("empty strings", "serving_default", lambda e: [b"", e[0], b""], _NOT_AN_IMAGE + "] [0 2]"),
    ("GIF bytes", "serving_default", lambda e: [b"GIF89a" + e[0][6:]], _NOT_AN_IMAGE + "] [0]"),
    ("truncated JPEG", "serving_default", lambda e: [e[0][:200]], None),
    ("PNG of 48 Mpx by its header", "serving_default",
     lambda e: [e[1], _png_claiming(6000, 8000)], _TOO_MANY_PIXELS),
    ("JPEG of 49 Mpx by its header", "serving_default",
     lambda e: [_jpeg_claiming(e[0], 7000, 7000), e[1]], _TOO_MANY_PIXELS),
    ("rank-2 strings", "serving_default", lambda e: [[e[0]], [e[1]]],
     "must be a 1-D batch of encoded images (tf.string [batch]); got a tensor of shape] [2 1]"),
    ("one image without batch axis", "image_tensor", lambda e: np.zeros([8, 8, 3], np.uint8),
     "must be uint8 images [batch, height, width, 3]"),
    ("four channels", "image_tensor", lambda e: np.zeros([1, 8, 8, 4], np.uint8),
     "got a tensor of shape] [1 8 8 4]"),
    ("zero height", "image_tensor", lambda e: np.zeros([1, 0, 8, 3], np.uint8),
     "height and width >= 1"),
]


@pytest.mark.parametrize("what,signature,make,message", BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
@pytest.mark.slow
def test_bad_request_is_a_clear_invalid_argument(run, server, images, what, signature, make,
                                                 message):
    value = make(images["encoded"])
    if signature == "serving_default":
        value = np.array(value, object)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        server.run(signature, value)
    if message:
        assert message in str(error.value), str(error.value)[:600]
    # Through the Python signature (tf.saved_model.load), when its own spec accepts the shape.
    if not (signature == "image_tensor" and np.ndim(value) == 4 and value.shape[-1] != 3):
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            _call(run["loaded"], signature, value)
        if message:
            assert message in str(error.value), str(error.value)[:600]
    # The server goes on serving.
    assert server.run("serving_default", np.array(images["encoded"][:1], object))[0] > 0


@pytest.mark.parametrize("signature,value", [("serving_default", np.ones([2], np.float32)),
                                             ("image_tensor", np.ones([1, 8, 8, 3], np.float32))])
def test_wrong_dtype_is_an_invalid_argument(run, server, signature, value):
    expected = "string" if signature == "serving_default" else "uint8"
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"float.*{expected}"):
        server.run(signature, value)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{expected}.*float"):
        _call(run["loaded"], signature, value)


@pytest.mark.slow
def test_pixel_limit_is_frozen_into_the_export(run, images, tmp_path):
    """`export.max_pixels` bounds each request image, by its header before decoding (encoded)
    or by the tensor's shape (uint8); the limit is the config's, saved with the export."""
    _cli(["--model_dir", str(run["model_dir"]), "--export_dir", str(tmp_path),
          "--override", "export.max_pixels=10000"])
    assert export_reader.exported_config(tmp_path).export.max_pixels == 10000
    loaded = tf.saved_model.load(str(tmp_path / "1"))
    big, small = images["encoded"][0], images["encoded"][1]  # 150x100 JPEG, 40x61 PNG
    message = r"more than export.max_pixels=10000 pixels.*Index\] \[1\] \[height, width\] " \
        r"\[\[100 150\]\]"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _call(loaded, "serving_default", [small, big])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"more than export.max_pixels=10000"
                                                             r".*\[1 100 150 3\]"):
        _call(loaded, "image_tensor", images["decoded"][0][None])
    assert _call(loaded, "serving_default", [small])["num_detections"].shape == (1,)
    assert _call(loaded, "image_tensor", images["decoded"][1][None])["num_detections"].shape == (1,)


def test_header_size_reads_large_png_and_jpeg_headers(images):
    from paa_tf.data import image_files

    for data, size in ((_png_claiming(6000, 8000), (6000, 8000)),
                       (_png_claiming(40000, 70000), (40000, 70000)),  # int32 would overflow
                       (_jpeg_claiming(images["encoded"][0], 7000, 65000), (7000, 65000))):
        assert tuple(image_files.header_size(tf.constant(data)).numpy()) == size


def test_serving_turns_exif_oriented_photos_like_pil(run):
    """All 8 EXIF orientations: the JPEG through `serving_default` gives the detections of
    PIL's `exif_transpose` of its pixels through `image_tensor`, boxes normalised to the
    turned image."""
    from tests.test_exif import jpeg_with_orientation, pil_oracle

    stored = _random_image(5, 64, 112)
    for orientation in range(1, 9):
        encoded = jpeg_with_orientation(stored, orientation, big_endian=orientation % 2 == 0)
        turned = pil_oracle(encoded)
        by_bytes = _call(run["loaded"], "serving_default", [encoded])
        by_pixels = _call(run["loaded"], "image_tensor", turned[None])
        assert by_bytes["num_detections"][0] > 0
        for name in export.OUTPUT_NAMES:
            np.testing.assert_allclose(by_bytes[name], by_pixels[name], atol=1e-5,
                                       err_msg=f"{name}, orientation {orientation}")


def assert_warmup_requests_run(version_dir, loaded):
    """The export's TF Serving warm-up file holds one PredictionLog per signature, each
    request runs on the loaded SavedModel's signature and gives the four outputs."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = pathlib.Path(version_dir) / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(path))]
    requests = {log.predict_log.request.model_spec.signature_name: log.predict_log.request
                for log in logs}
    assert len(logs) == 2 and set(requests) == set(export.SIGNATURES)
    assert requests["image_tensor"].inputs["inputs"].dtype == tf.uint8.as_datatype_enum
    assert requests["serving_default"].inputs["inputs"].dtype == tf.string.as_datatype_enum
    for signature, request in requests.items():
        value = tf.make_ndarray(request.inputs["inputs"])
        outputs = _call(loaded, signature, value)
        assert set(outputs) == set(export.OUTPUT_NAMES)
        assert outputs["num_detections"].shape == (len(value),)


def test_warmup_requests_run_against_their_signatures(run):
    assert_warmup_requests_run(run["version_dir"], run["loaded"])


def test_launcher_help_lists_the_flags():
    done = subprocess.run([sys.executable, str(REPO / "bin" / "paa_export"), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # absl's --help exits with 1
    for flag in ("--model_dir", "--checkpoint", "--export_dir", "--version", "--override"):
        assert flag in done.stdout


@pytest.mark.slow
def test_cli_export_without_voting_as_a_new_version(run, images, capsys):
    args = ["--model_dir", str(run["model_dir"]), "--export_dir", str(run["export_dir"])]
    assert _cli(args) not in (0, None)  # version 1 exists: refused, nothing rebuilt
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert _cli(args + ["--version=2", "--override=eval.score_voting=false"]) in (0, None)
    assert sorted(os.listdir(run["export_dir"])) == ["1", "2"]  # no staging folder left
    assert export_reader.exported_config(run["export_dir"]).eval.score_voting is False
    predict_fn = export_reader.load_exported(run["export_dir"])  # the highest version: 2
    out = predict_fn({"encoded": images["encoded"]})
    expected = _python_path(run["config"], run["model"], images["decoded"], score_voting=False)
    sizes = np.array([image.shape[:2] for image in images["decoded"]], np.float32)
    expected["detection_boxes"] *= np.tile(sizes, [1, 2])[:, None, :]
    expected["detection_classes"] = np.vectorize(
        lambda c: LABEL_MAP.index_of_id(int(c)) if c >= 0 else -1)(
        expected["detection_classes"])
    _assert_same_detections(out, expected)
    voted = _python_path(run["config"], run["model"], images["decoded"])
    assert not np.allclose(voted["detection_boxes"] * np.tile(sizes, [1, 2])[:, None, :],
                           expected["detection_boxes"], atol=1e-3), "voting changed nothing"


@pytest.mark.slow
def test_eval_of_the_export_equals_eval_of_the_checkpoint(run, tmp_path):
    shapes = synthetic.make_shapes_dataset(tmp_path / "shapes", num_train=1, num_val=6,
                                           image_size=128, seed=5)
    data = config_lib.load_config(REPO / "configs" / "quickstart.yaml", overrides=OVERRIDES + [
        f"data.val_images={shapes['val_image_dir']}",
        f"data.val_annotations={shapes['val_annotation_file']}",
        f"data.label_map={run['model_dir'] / 'label_map.json'}"]).data
    coco = coco_scoring.load_coco(shapes["val_annotation_file"])
    label_map = coco_scoring.coco_label_map(coco)
    assert label_map == dict(enumerate(LABEL_MAP.ids))
    model, params = run["model"], postprocess.PostprocessParams.from_config(run["config"])

    def checkpoint_predict(batch):
        outputs = model(batch["image"], training=False)
        return postprocess.postprocess(outputs["cls_logits"], outputs["box_deltas"],
                                       outputs["iou_logits"], model.anchors,
                                       batch["image_info"], level_ids=model.level_ids,
                                       params=params)

    dataset, _ = pipeline.build_dataset(data, "val", is_training=False, batch_size=4)
    by_checkpoint = coco_scoring.evaluate_dataset(dataset, checkpoint_predict, coco,
                                                  verbose=False, output_dir=str(tmp_path / "ckpt"))
    encoded, _ = eval_inputs.encoded_eval_dataset(data, batch_size=4)
    by_export = coco_scoring.evaluate_dataset(
        encoded, export_reader.load_exported(run["version_dir"]), coco, verbose=False,
        output_dir=str(tmp_path / "sm"))
    assert by_export["num_images"] == by_checkpoint["num_images"] == 6
    assert by_export["num_detections"] == by_checkpoint["num_detections"] > 0
    for name in coco_scoring.METRIC_NAMES:
        assert by_export[name] == pytest.approx(by_checkpoint[name], abs=1e-4), name
    ckpt = coco_scoring.load_results(tmp_path / "ckpt" / "results.json")
    exported = coco_scoring.load_results(tmp_path / "sm" / "results.json")
    assert len(ckpt) == len(exported)
    # Pair each detection with its nearest twin (same image and class, closest score and box),
    # not by rank: detections whose scores tie, or differ by float noise between the two
    # paths, have no stable rank (sorting by score paired them at random: a flaky failure).
    unused = list(exported)
    for a in ckpt:
        twins = [b for b in unused
                 if (b["image_id"], b["category_id"]) == (a["image_id"], a["category_id"])]
        assert twins, a
        b = min(twins, key=lambda r: abs(r["score"] - a["score"])
                + float(np.abs(np.subtract(r["bbox"], a["bbox"])).sum()))
        unused.remove(b)
        assert a["score"] == pytest.approx(b["score"], abs=2e-5)
        np.testing.assert_allclose(a["bbox"], b["bbox"], rtol=1e-3, atol=2e-3)


def test_original_size_is_read_from_the_file_headers(images):
    """`decoded_size` (used when a batch carries no sizes) reads JPEG SOF and PNG IHDR."""
    from paa_tf.data import transforms

    for encoded, decoded in zip(images["encoded"], images["decoded"]):
        size = transforms.decoded_size(tf.constant(encoded)).numpy()
        assert tuple(size) == decoded.shape[:2]


def test_checkpoint_of_another_architecture_is_a_clear_error(run, tmp_path):
    with pytest.raises(ValueError, match="does not match the model built from the config"):
        export.export_from_model_dir(run["model_dir"], tmp_path,
                                     config_overrides="model.head_channels=32")
    with pytest.raises(ValueError, match=r"model.num_classes is 3 but .*label_map.json has 6 "
                                         "classes"):
        export.export_from_model_dir(run["model_dir"], tmp_path,
                                     config_overrides="model.num_classes=3")
    assert not os.listdir(tmp_path)  # nothing half-written
