"""COCO evaluation: results conversion, pycocotools parity, `bin/paa_eval`, the dataset loop."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from paa_tf.evaluation import coco_scoring, evaluate
from paa_tf.inference import detection, tta
from tests.helpers.oracles import canvas_preprocess

VAL_ANN = "coco_mini/annotations/instances_val2017.json"


def _direct_cocoeval(ann_path, results_path):
    """pycocotools used directly, as its own examples do: the oracle for every number."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        dt = gt.loadRes(str(results_path))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _run_cli(repo_root, *args):
    return subprocess.run([sys.executable, str(repo_root / "bin" / "paa_eval"), *args],
                          capture_output=True, text=True, timeout=300)


def test_detections_to_coco_converts_boxes_ids_and_skips_padding():
    detections = {
        "detection_boxes": np.array([[[10, 20, 50, 80], [1, 2, 3, 4], [0, 0, 0, 0]],
                                     [[5, 5, 15, 25], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32),
        "detection_scores": np.array([[0.9, 0.5, 0.0], [0.7, 0.0, 0.0]], np.float32),
        "detection_classes": np.array([[0, 2, -1], [1, -1, -1]], np.int32),
        "num_detections": np.array([2, 1], np.int32),
    }
    label_map = {0: 1, 1: 3, 2: 90}
    records = coco_scoring.detections_to_coco(detections, [b"42", np.int64(7)], label_map)
    assert records == [
        {"image_id": 42, "category_id": 1, "bbox": [20.0, 10.0, 60.0, 40.0], "score": 0.9},
        {"image_id": 42, "category_id": 90, "bbox": [2.0, 1.0, 2.0, 2.0], "score": 0.5},
        {"image_id": 7, "category_id": 3, "bbox": [5.0, 5.0, 20.0, 10.0], "score": 0.7},
    ]
    plus_one = coco_scoring.detections_to_coco(detections, [42, 7], label_map, plus_one=True)
    assert plus_one[0]["bbox"] == [20.0, 10.0, 61.0, 41.0]
    with pytest.raises(ValueError, match="label map"):
        coco_scoring.detections_to_coco(detections, [42, 7], {0: 1})


def test_gt_as_detections_gives_ap_one_and_matches_pycocotools(sample_data, repo_root, tmp_path):
    """`bin/paa_eval --gt_as_detections`: AP = 1, and every printed number equals pycocotools'."""
    ann = sample_data / VAL_ANN
    proc = _run_cli(repo_root, "--gt_as_detections", f"--annotations={ann}",
                    f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    results = json.loads((tmp_path / "results.json").read_text())
    annotations = json.loads(ann.read_text())["annotations"]
    assert len(results) == sum(1 for a in annotations if not a["iscrowd"])
    direct = _direct_cocoeval(ann, tmp_path / "results.json")
    assert [metrics[n] for n in coco_scoring.METRIC_NAMES] == [float(v) for v in direct.stats]
    for name, value in zip(coco_scoring.METRIC_NAMES, direct.stats):
        assert f"{name:>6}: {value:.4f}" in proc.stdout
    assert all(ap is None or ap == pytest.approx(1.0)
               for ap in metrics["per_category_AP"].values())


def test_results_file_metrics_equal_direct_pycocotools(sample_data, repo_root, tmp_path):
    """Imperfect detections (jittered GT, random scores, false positives): same 12 numbers and
    per-category AP as pycocotools called directly on the same file."""
    ann = sample_data / VAL_ANN
    data = json.loads(ann.read_text())
    rng = np.random.default_rng(0)
    results = []
    for a in data["annotations"]:
        if a["iscrowd"] or rng.uniform() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0),
                                 max(h + jitter[3], 1.0)], "score": float(rng.uniform())})
    for image in data["images"][:60]:
        results.append({"image_id": image["id"], "category_id": 1,
                        "bbox": [5.0, 5.0, 40.0, 40.0], "score": float(rng.uniform())})
    results_path = tmp_path / "mine.json"
    results_path.write_text(json.dumps(results))
    out_dir = tmp_path / "out"
    proc = _run_cli(repo_root, f"--results_file={results_path}", f"--annotations={ann}",
                    f"--output_dir={out_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    direct = _direct_cocoeval(ann, results_path)
    assert [metrics[n] for n in coco_scoring.METRIC_NAMES] == [float(v) for v in direct.stats]
    assert 0.2 < metrics["AP"] < 0.95
    person = direct.params.catIds.index(1)
    precision = direct.eval["precision"][:, :, person, 0, -1]
    assert metrics["per_category_AP"]["person"] == pytest.approx(
        float(np.mean(precision[precision > -1])))


def test_evaluation_loop_over_tf_data(sample_data, tmp_path):
    """`evaluate_dataset` on a tf.data dataset with a predict_fn returning the GT of the batch:
    AP = 1 on exactly the images seen, label map from the annotations."""
    import tensorflow as tf

    ann = sample_data / VAL_ANN
    coco = coco_scoring.load_coco(ann)
    label_map = coco_scoring.coco_label_map(coco)
    index_of = {cat: index for index, cat in label_map.items()}
    image_ids = sorted(coco.getImgIds())[:6]
    max_det = 100
    boxes = np.zeros((len(image_ids), max_det, 4), np.float32)
    classes = np.full((len(image_ids), max_det), -1, np.int32)
    counts = np.zeros(len(image_ids), np.int32)
    for i, image_id in enumerate(image_ids):
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        for j, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            boxes[i, j] = [y, x, y + h, x + w]
            classes[i, j] = index_of[a["category_id"]]
        counts[i] = len(anns)
    dataset = tf.data.Dataset.from_tensor_slices({
        "source_id": tf.constant([str(i) for i in image_ids]),
        "boxes": boxes, "classes": classes, "count": counts}).batch(4)

    def predict_fn(batch):
        return {"detection_boxes": batch["boxes"], "detection_classes": batch["classes"],
                "detection_scores": tf.cast(batch["classes"] >= 0, tf.float32),
                "num_detections": batch["count"]}

    metrics = coco_scoring.evaluate_dataset(dataset, predict_fn, ann, output_dir=str(tmp_path),
                                        verbose=False)
    assert metrics["num_images"] == len(image_ids)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["num_detections"] == int(counts.sum())
    assert (tmp_path / "results.json").is_file() and (tmp_path / "metrics.json").is_file()


def test_empty_results_score_zero(sample_data, tmp_path):
    metrics = coco_scoring.coco_evaluate(sample_data / VAL_ANN, [], output_dir=str(tmp_path),
                                     verbose=False)
    assert all(metrics[n] == 0.0 for n in coco_scoring.METRIC_NAMES)
    assert json.loads((tmp_path / "results.json").read_text()) == []


def test_unknown_image_id_is_a_clear_error(sample_data):
    bad = [{"image_id": -5, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}]
    with pytest.raises(ValueError, match="image ids absent"):
        coco_scoring.coco_evaluate(sample_data / VAL_ANN, bad, verbose=False)


def test_cli_help_and_usage_errors(repo_root, tmp_path):
    help_out = _run_cli(repo_root, "--help")
    for flag in ("results_file", "gt_as_detections", "model_dir", "checkpoint", "saved_model",
                 "override", "split", "image_dir", "config", "annotations"):
        assert f"--{flag}:" in help_out.stdout or f"--[no]{flag}:" in help_out.stdout, flag
    nothing = _run_cli(repo_root, f"--output_dir={tmp_path}")
    assert nothing.returncode != 0 and "nothing to evaluate" in nothing.stderr
    model = _run_cli(repo_root, "--model_dir=/nonexistent", "--image_dir=x", "--annotations=y")
    assert model.returncode != 0
    assert "config.yaml not found" in model.stderr


def _tiny_run(sample_data, model_dir):
    """A randomly initialised tiny detector saved as a training run (config + checkpoint)."""
    import tensorflow as tf

    from paa_tf import config as config_lib
    from paa_tf.data import coco as coco_lib
    from paa_tf.data import label_map as label_map_lib
    from paa_tf.modeling.detector import build_detector

    ann = sample_data / VAL_ANN
    config = config_lib.load_config(overrides=[
        f"data.val_images={sample_data / 'coco_mini/val2017'}", f"data.val_annotations={ann}",
        f"data.train_annotations={ann}", "data.image_size=[128,128]", "data.min_size=[128]",
        "data.max_size=128", "model.backbone=tiny", "model.freeze_at=0", "model.frozen_bn=false",
        "model.min_level=3", "model.max_level=5", "model.fpn_channels=16", "model.head_convs=1",
        "model.head_channels=32", "model.octave_base_scale=4.0", "eval.batch_size=2",
        # A high prior so that the untrained head scores above the 0.05 threshold.
        "model.prior_prob=0.2"])
    label_map = label_map_lib.from_coco_categories(
        coco_lib.load_coco_json(str(ann))["categories"])
    config.model.num_classes = label_map.num_classes
    model = build_detector(config)
    config_lib.save_config(config, model_dir / "config.yaml")
    label_map_lib.write_label_map(label_map, str(model_dir / "label_map.json"))
    tf.train.Checkpoint(model=model).save(str(model_dir / "ckpt"))
    return config, model


@pytest.mark.slow
def test_checkpoint_evaluation_matches_in_process(sample_data, repo_root, tmp_path):
    """`bin/paa_eval --model_dir` restores the checkpoint and writes exactly the detections
    `evaluate_model` computes in process with the same weights; the records are valid COCO."""
    config, model = _tiny_run(sample_data, tmp_path)
    metrics = evaluate.evaluate_model(config, model, output_dir=str(tmp_path / "inproc"),
                                      max_batches=2, verbose=False)
    assert metrics["num_images"] == 4 and metrics["num_detections"] > 0
    proc = _run_cli(repo_root, f"--model_dir={tmp_path}", "--max_batches=2",
                    f"--output_dir={tmp_path / 'cli'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli_results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert cli_results == json.loads((tmp_path / "inproc" / "results.json").read_text())
    coco = coco_scoring.load_coco(sample_data / VAL_ANN)
    for record in cli_results:
        image = coco.imgs[record["image_id"]]
        x, y, w, h = record["bbox"]
        assert record["category_id"] in coco.cats
        assert 0 <= x and 0 <= y and x + w <= image["width"] + 1e-3
        assert y + h <= image["height"] + 1e-3 and 0.0 < record["score"] <= 1.0
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert cli_metrics["AP"] == pytest.approx(metrics["AP"])


@pytest.mark.slow
def test_saved_model_evaluation_matches_checkpoint(sample_data, repo_root, tmp_path):
    """`--saved_model` (the exported graph, its own JPEG decoding and resizing) scores the
    same images as the checkpoint path, with the same metrics."""
    from paa_tf.serving import export

    _tiny_run(sample_data, tmp_path)
    export_dir = export.export_from_model_dir(str(tmp_path), str(tmp_path / "export"))
    by_checkpoint = _run_cli(repo_root, f"--model_dir={tmp_path}", "--max_batches=2",
                             f"--output_dir={tmp_path / 'ckpt_eval'}")
    by_export = _run_cli(repo_root, f"--saved_model={export_dir}", "--max_batches=2",
                         f"--output_dir={tmp_path / 'export_eval'}")
    assert by_checkpoint.returncode == 0, by_checkpoint.stderr[-2000:]
    assert by_export.returncode == 0, by_export.stderr[-2000:]
    want = json.loads((tmp_path / "ckpt_eval" / "metrics.json").read_text())
    got = json.loads((tmp_path / "export_eval" / "metrics.json").read_text())
    assert got["num_images"] == want["num_images"]
    assert got["num_detections"] == want["num_detections"]
    for name in coco_scoring.METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-3), name


def test_tta_views_and_geometry():
    from paa_tf import config as config_lib

    config = config_lib.load_config(overrides=["data.min_size=[640,800]", "data.max_size=1333",
                                               "data.image_size=[1408,1408]"])
    assert tta.tta_views(config) == []
    assert tta.tta_views(config, flip=True) == [(800, False), (800, True)]
    assert tta.tta_views(config, scales=[640, 1000], flip=True) == [
        (640, False), (640, True), (1000, False), (1000, True)]
    assert tta.view_geometry(config, 800) == (1333, (1408, 1408))
    assert tta.view_geometry(config, 640) == (1333, (1408, 1408))
    # Above the evaluation scale the longer side grows in proportion: 1333 * 1000 / 800.
    assert tta.view_geometry(config, 1000) == (1667, (1792, 1792))
    with pytest.raises(ValueError, match="positive"):
        tta.tta_views(config, scales=[0])


@pytest.mark.slow
def test_tta_at_the_evaluation_scale_equals_plain_evaluation(repo_root, tmp_path):
    """`bin/paa_eval --override eval.tta_scales=[<eval scale>]` (one view, no flip: the
    undecoded images pre-processed per view, candidates merged by `merge_tta`) writes exactly
    the detections of the plain in-process evaluation. The images are scaled by exactly 2, so
    NMS and voting in original pixels see the same IoUs as in input pixels."""
    from tests.test_predict import tiny_run

    config, model, model_dir, _ = tiny_run(tmp_path, num_val=4)
    plain = evaluate.evaluate_model(config, model, output_dir=str(tmp_path / "plain"),
                                    verbose=False)
    assert plain["num_images"] == 4 and plain["num_detections"] > 0
    proc = _run_cli(repo_root, f"--model_dir={model_dir}", "--override=eval.tta_scales=[128]",
                    f"--output_dir={tmp_path / 'tta'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = json.loads((tmp_path / "plain" / "results.json").read_text())
    got = json.loads((tmp_path / "tta" / "results.json").read_text())
    assert got == want
    bad = _run_cli(repo_root, f"--model_dir={model_dir}", "--override=eval.tta_scales=[128,0]")
    assert bad.returncode == 2 and "eval.tta_scales" in bad.stderr


def _encoded_png(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_flip_tta_on_a_symmetric_image_gives_mirrored_boxes(tmp_path):
    """On a left-right symmetric image the mirrored view sees the same pixels, so its
    detections mapped back are the plain detections mirrored (x -> W - x), same scores and
    classes; merging both views keeps mirror-twin detections mirrored."""
    import tensorflow as tf

    from tests.test_predict import tiny_run

    config, model, _, _ = tiny_run(tmp_path, num_val=1)
    rng = np.random.default_rng(1)
    half = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)
    half[10:40, 5:25] = (250, 30, 30)  # an object-like block on each side
    image = np.concatenate([half, half[:, ::-1]], axis=1)
    batch = {"encoded": tf.constant([_encoded_png(image)])}
    data = config.data
    pre, info = canvas_preprocess(tf.constant(image), shorter_side=128, max_size=128,
                                      image_size=(128, 128), pixel_mean=data.pixel_mean,
                                      pixel_std=data.pixel_std)
    plain = {k: np.asarray(v) for k, v in detection.make_predict_fn(config, model)(
        {"image": pre[None], "image_info": info[None]}).items()}
    flipped = {k: np.asarray(v) for k, v in tta.make_tta_predict_fn(
        config, model, [(128, True)])(batch).items()}
    count = int(plain["num_detections"][0])
    assert count > 0 and int(flipped["num_detections"][0]) == count
    np.testing.assert_allclose(flipped["detection_scores"], plain["detection_scores"], atol=1e-6)
    np.testing.assert_array_equal(flipped["detection_classes"], plain["detection_classes"])
    ymin, xmin, ymax, xmax = np.moveaxis(plain["detection_boxes"][0, :count], -1, 0)
    mirrored = np.stack([ymin, 64.0 - xmax, ymax, 64.0 - xmin], axis=-1)
    np.testing.assert_allclose(flipped["detection_boxes"][0, :count], mirrored, atol=1e-3)

    both = {k: np.asarray(v)[0] for k, v in tta.make_tta_predict_fn(
        config, model, [(128, False), (128, True)])(batch).items()}
    count = int(both["num_detections"])
    boxes, scores, classes = (both["detection_boxes"][:count], both["detection_scores"][:count],
                              both["detection_classes"][:count])
    twins = 0
    for i in range(count):
        if scores[i] <= scores.min():
            continue  # its twin may be the 101st detection
        same = [j for j in range(count) if j != i and classes[j] == classes[i]
                and abs(scores[j] - scores[i]) < 1e-6]
        if same:
            twins += 1
            mirrored = np.array([boxes[i, 0], 64.0 - boxes[i, 3], boxes[i, 2], 64.0 - boxes[i, 1]])
            # Unrelated detections can tie in score too: the twin is the closest tied box (or i
            # itself when its box is its own mirror image and NMS merged the twins).
            gap = min(float(np.abs(boxes[j] - mirrored).max()) for j in [i, *same])
            assert gap < 1e-3, (i, boxes[i], [boxes[j] for j in same])
    assert twins >= 2
