"""ONNX and LiteRT exports (`bin/paa_export --formats`; paa_tf/serving/): the same detections
as the SavedModel, in their own runtimes, and the runtimes' errors for bad inputs.

The oracle is the SavedModel of the same run (itself checked against the eager Python path in
tests/test_export.py). The model is test_export's tiny random-weight detector (128 px canvas,
class prior 0.2 so that it detects); its int8 calibration reads a small generated shapes
dataset. Detections are compared one to one by IoU within a class, only those whose score is
well above the cut of the 50 kept detections (`_reliable`): near the cut a 1e-6 change of a
score can swap which detection is kept.
"""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from paa_tf import config as config_lib
from paa_tf.data import label_map as label_map_lib
from paa_tf.data import synthetic
from paa_tf.evaluation import coco_scoring
from paa_tf.inference import postprocess
from paa_tf.modeling.detector import build_detector
from paa_tf.ops import boxes as box_ops
from paa_tf.serving import formats, litert_export, runtimes
from tests import test_export

REPO = pathlib.Path(__file__).resolve().parents[1]
ALL = "saved_model,onnx,litert,litert_fp16,litert_int8"
# Stated tolerances (pixels of the original image, score units) and the smallest share of the
# SavedModel's reliable detections each format must reproduce within them.
TOLERANCE = {"onnx": (1.0, 1e-3, 1.0), "litert": (1.0, 1e-3, 1.0),
             "litert_fp16": (2.0, 1e-2, 0.95), "litert_int8": (8.0, 0.06, 0.7)}
# AP (0-100) of each format scored against the SavedModel's detections (score >= 0.3) as
# ground truth; the SavedModel scores 100 by construction, so this is the AP difference.
MIN_AGREEMENT_AP = {"onnx": 99.0, "litert": 99.0, "litert_fp16": 95.0, "litert_int8": 60.0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny run (as tests/test_export.py makes it) exported in every format."""
    data = synthetic.make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=6,
                                         num_val=1, image_size=128, seed=5)
    overrides = test_export.OVERRIDES + [
        f"data.train_images={data['train_image_dir']}",
        f"data.train_annotations={data['train_annotation_file']}"]
    config = config_lib.load_config(REPO / "configs" / "quickstart.yaml", overrides=overrides)
    model_dir = tmp_path_factory.mktemp("run")
    tf_keras.utils.set_random_seed(3)
    model = build_detector(config)
    kernel = model.head.cls_logits.kernel
    kernel.assign(tf.random.stateless_normal(kernel.shape, [1, 2], stddev=0.05))
    config_lib.save_config(config, model_dir / "config.yaml")
    label_map_lib.write_label_map(test_export.LABEL_MAP, model_dir)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(7, dtype=tf.int64),
                                                   model=model),
                               str(model_dir), max_to_keep=1).save(checkpoint_number=7)
    export_dir = tmp_path_factory.mktemp("export")
    assert test_export._cli(["--model_dir", str(model_dir), "--export_dir", str(export_dir),
                             "--formats", ALL, "--calibration_images", "6"]) == 0
    paths = {"saved_model": export_dir / "1"}
    paths.update({name: export_dir / name / (
        "model.onnx" if name == "onnx" else litert_export.FILENAME)
        for name in formats.FORMATS if name != "saved_model"})
    return {"export_dir": export_dir, "paths": paths}


@pytest.fixture(scope="module")
def images():
    """uint8 RGB test images of three sizes (landscape, portrait, square)."""
    return [test_export._random_image(seed, h, w)
            for seed, (h, w) in enumerate([(100, 150), (61, 40), (128, 128), (90, 90)])]


def _reliable(out, index, margin):
    """(boxes [n, 4], scores [n], classes [n]) of image `index` whose score is `margin` above
    the lowest kept one (or the 0.05 threshold when fewer than D were kept)."""
    count = int(out["num_detections"][index])
    scores = out["detection_scores"][index][:count]
    full = count == out["detection_scores"].shape[1]
    cut = (scores.min() if full else 0.05) + margin
    keep = scores > cut
    return (out["detection_boxes"][index][:count][keep], scores[keep],
            out["detection_classes"][index][:count][keep])


def _matched(want, got, size):
    """For each wanted detection: (IoU-matched partner's largest corner difference in pixels,
    score difference), or None without a same-class partner of IoU >= 0.5. One to one:
    greedy by descending wanted score, each partner used once."""
    boxes, scores, classes = want
    got_boxes, got_scores, got_classes = got
    if not len(got_boxes):
        return [None] * len(boxes)
    iou = box_ops.pairwise_iou(boxes, got_boxes).numpy()
    iou = np.where(classes[:, None] == got_classes[None], iou, -1.0)
    pixels = np.tile(np.asarray(size, np.float32), 2)
    used, pairs = set(), []
    for row in np.argsort(-scores):
        options = [j for j in np.argsort(-iou[row]) if j not in used and iou[row, j] >= 0.5]
        if not options:
            pairs.append(None)
            continue
        j = options[0]
        used.add(j)
        pairs.append((np.abs((boxes[row] - got_boxes[j]) * pixels).max(),
                      abs(scores[row] - got_scores[j])))
    return pairs


@pytest.fixture(scope="module")
def outputs(exported, images):
    """{format: [outputs of each image, run alone]} in this process."""
    runs = {name: runtimes.load_runner(name, path, num_threads=2)
            for name, path in exported["paths"].items()}
    return {name: [run(image[None]) for image in images] for name, run in runs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(TOLERANCE))
def test_detections_equal_saved_model(outputs, images, fmt):
    pixel_tol, score_tol, share = TOLERANCE[fmt]
    compared = 0
    for index, image in enumerate(images):
        want = _reliable(outputs["saved_model"][index], 0, margin=0.01)
        assert len(want[0]) >= 5, "the oracle found too few detections: a vacuous test"
        pairs = _matched(want, _reliable(outputs[fmt][index], 0, margin=0.0), image.shape[:2])
        close = [p is not None and p[0] <= pixel_tol and p[1] <= score_tol for p in pairs]
        assert np.mean(close) >= share, (fmt, index, pairs)
        compared += len(pairs)
    assert compared >= 40


def _agreement_ap(outputs, images, fmt):
    """COCO AP (0-100) of `fmt`'s detections with the SavedModel's (score >= 0.3) as GT."""
    gt = {"images": [], "annotations": [], "categories": [
        {"id": int(i), "name": str(i)} for i in test_export.LABEL_MAP.ids]}
    results = []
    for index, image in enumerate(images):
        height, width = image.shape[:2]
        gt["images"].append({"id": index + 1, "height": height, "width": width})
        for source, target in ((outputs["saved_model"][index], "gt"), (outputs[fmt][index], "dt")):
            for k in range(int(source["num_detections"][0])):
                y0, x0, y1, x1 = source["detection_boxes"][0, k] * np.array([height, width] * 2)
                score = float(source["detection_scores"][0, k])
                record = {"image_id": index + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "category_id": int(source["detection_classes"][0, k])}
                if target == "gt" and score >= 0.3:
                    gt["annotations"].append(dict(record, id=len(gt["annotations"]) + 1,
                                                  area=(x1 - x0) * (y1 - y0), iscrowd=0))
                elif target == "dt":
                    results.append(dict(record, score=score))
    assert len(gt["annotations"]) >= 20
    coco = coco_scoring.coco_from_dict(gt)
    return 100 * coco_scoring.coco_evaluate(coco, results, verbose=False)["AP"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(MIN_AGREEMENT_AP))
def test_ap_difference_to_saved_model(outputs, images, fmt):
    assert _agreement_ap(outputs, images, "saved_model") == pytest.approx(100.0)
    assert _agreement_ap(outputs, images, fmt) >= MIN_AGREEMENT_AP[fmt]


@pytest.mark.slow
def test_onnx_batch_equals_single_images(outputs, exported, images):
    """A batch of two same-size images through the ONNX Loop: each as when run alone."""
    run = runtimes.load_runner("onnx", exported["paths"]["onnx"], num_threads=2)
    batch = run(np.stack([images[2], np.ascontiguousarray(images[2][::-1])]))
    alone = [outputs["onnx"][2], run(np.ascontiguousarray(images[2][::-1])[None])]
    for index, single in enumerate(alone):
        for key, value in single.items():
            np.testing.assert_allclose(batch[key][index], value[0], atol=1e-5)


FRESH = r"""
import sys, numpy as np
from paa_tf.serving import runtimes
fmt, path = sys.argv[1], sys.argv[2]
run = runtimes.load_runner(fmt, path)
image = np.load(sys.argv[3])
out = run(image[None])
print("num", int(out["num_detections"][0]), float(out["detection_scores"][0, 0]))
for name, bad in (("dtype", image.astype(np.float32)[None]), ("rank", image)):
    try:
        run(bad)
        print(name, "accepted")
    except Exception as error:  # the runtime's own error type
        print(name, "refused", type(error).__name__, str(error).splitlines()[0][:200])
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "litert", "litert_fp16", "litert_int8"])
def test_fresh_process_runs_file_and_refuses_bad_input(exported, outputs, images, fmt,
                                                        tmp_path):
    np.save(tmp_path / "image.npy", images[0])
    done = subprocess.run([sys.executable, "-c", FRESH, fmt, str(exported["paths"][fmt]),
                           str(tmp_path / "image.npy")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.split(" ", 1)[0] in ("num", "dtype", "rank"))
    count, top = lines["num"].split()
    mine = outputs[fmt][0]
    assert int(count) == int(mine["num_detections"][0]) > 0
    assert float(top) == pytest.approx(float(mine["detection_scores"][0, 0]), abs=1e-6)
    assert lines["dtype"].startswith("refused"), lines
    assert lines["rank"].startswith("refused"), lines
    if fmt == "onnx":
        assert "tensor(float)" in lines["dtype"] and "tensor(uint8)" in lines["dtype"]
    else:
        assert "UINT8" in lines["dtype"] or "uint8" in lines["dtype"], lines


@pytest.mark.slow
def test_every_folder_holds_its_label_map(exported):
    for name, path in exported["paths"].items():
        folder = path if name == "saved_model" else path.parent
        label_map = folder / ("assets/label_map.json" if name == "saved_model"
                              else "label_map.json")
        assert label_map_lib.load_label_map(label_map) == test_export.LABEL_MAP


def test_litert_nms_equals_combined_nms():
    """`class_aware_nms` (builtin LiteRT ops) keeps what `postprocess.nms_and_vote`
    (TF's CombinedNonMaxSuppression) keeps, with voting, on random overlapping candidates."""
    rng = np.random.default_rng(11)
    num, classes = 300, 4
    centre = rng.uniform(20, 100, (num, 2))
    size = rng.uniform(5, 40, (num, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32)
    scores = np.zeros((num, classes), np.float32)
    # KK layout: one class per row, distinct scores (no ties for the order to decide).
    scores[np.arange(num), rng.integers(0, classes, num)] = rng.permutation(num) / num + 0.01
    for rule in ("kk", "mm"):
        if rule == "mm":
            scores = np.where(rng.uniform(size=scores.shape) < 0.5,
                              rng.permutation(scores.size).reshape(scores.shape) / scores.size
                              + 1e-3, 0.0).astype(np.float32)
        params = postprocess.PostprocessParams(max_detections=40, candidate_rule=rule)
        want = postprocess.nms_and_vote(boxes[None], scores[None], params)
        got = litert_export.class_aware_nms(tf.constant(boxes[None]),
                                            tf.constant(scores[None]), params)
        assert int(want["num_detections"][0]) == 40
        for key in want:
            np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5,
                                       err_msg=f"{rule} {key}")


def test_unknown_format_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown tflite; choose from saved_model, onnx, "
                                         "litert, litert_fp16, litert_int8"):
        formats.check_formats(["saved_model", "tflite"])
    assert formats.check_formats(["onnx", "litert", "onnx"]) == ("onnx", "litert")


def test_cli_refuses_an_unknown_format(tmp_path, capsys):
    code = test_export._cli(["--model_dir", str(tmp_path), "--export_dir", str(tmp_path / "e"),
                             "--formats", "saved_model,tflite"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "paa_export: error: --formats saved_model,tflite: unknown tflite; choose from " \
           "saved_model, onnx, litert, litert_fp16, litert_int8" in err
    assert not (tmp_path / "e").exists()
