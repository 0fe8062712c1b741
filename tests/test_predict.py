"""`bin/paa_predict`: detections JSON and pictures for image files (paa-tf issue 7, item 3)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from paa_tf.visualization import predict
from tests.helpers.oracles import canvas_preprocess


def tiny_run(root, num_val=3, image_side=64, input_side=128):
    """A randomly initialised tiny detector saved as a training run of a generated shapes
    dataset: `image_side` px square images, network input `input_side` (an exact 2x scale).

    Returns (config, model, model_dir, dataset paths).
    """
    import tensorflow as tf

    from paa_tf import config as config_lib
    from paa_tf.data import label_map as label_map_lib
    from paa_tf.data import pipeline, synthetic
    from paa_tf.modeling.detector import build_detector

    paths = synthetic.make_shapes_dataset(root / "shapes", num_train=2, num_val=num_val,
                                          image_size=image_side)
    config = config_lib.load_config(overrides=[
        f"data.train_images={paths['train_image_dir']}",
        f"data.train_annotations={paths['train_annotation_file']}",
        f"data.val_images={paths['val_image_dir']}",
        f"data.val_annotations={paths['val_annotation_file']}",
        f"data.image_size=[{input_side},{input_side}]", f"data.min_size=[{input_side}]",
        f"data.max_size={input_side}", "data.max_instances=16", "model.backbone=tiny",
        "model.freeze_at=0", "model.frozen_bn=false", "model.num_classes=6",
        "model.min_level=3", "model.max_level=5", "model.fpn_channels=16",
        "model.head_convs=1", "model.head_channels=32", "model.octave_base_scale=4.0",
        "eval.batch_size=2",
        # A high prior so that the untrained head scores above the 0.05 threshold.
        "model.prior_prob=0.2"])
    model = build_detector(config)
    model_dir = root / "run"
    model_dir.mkdir()
    config_lib.save_config(config, model_dir / "config.yaml")
    label_map_lib.write_label_map(pipeline.dataset_label_map(config.data),
                                  str(model_dir / "label_map.json"))
    tf.train.Checkpoint(model=model).save(str(model_dir / "ckpt"))
    return config, model, model_dir, paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("predict"))


def _reference(config, model, path, label_map):
    """In-process detections of one file: the pipeline's pre-processing, the network and
    `postprocess.postprocess` mapped to the original image (the oracle of the CLI)."""
    import tensorflow as tf

    from paa_tf.data import transforms
    from paa_tf.inference import postprocess

    data = config.data
    pixels = transforms.decode_image(tf.io.read_file(str(path)))
    image, info = canvas_preprocess(pixels, shorter_side=max(data.min_size),
                                        max_size=data.max_size, image_size=data.image_size,
                                        pixel_mean=data.pixel_mean, pixel_std=data.pixel_std)
    out = model(image[None], training=False)
    det = postprocess.postprocess(out["cls_logits"], out["box_deltas"], out["iou_logits"],
                                  model.anchors, info[None], level_ids=model.level_ids,
                                  params=postprocess.PostprocessParams.from_config(config))
    count = int(det["num_detections"][0])
    return (det["detection_boxes"][0, :count].numpy(), det["detection_scores"][0, :count].numpy(),
            det["detection_classes"][0, :count].numpy(), pixels.numpy())


def _pair(got_boxes, got_scores, got_classes, boxes, scores, classes):
    """Reference index of each record: same class, score within 1e-5, nearest box; each once."""
    free = set(range(len(boxes)))
    order = []
    for box, score, cls in zip(got_boxes, got_scores, got_classes):
        fits = [j for j in free if classes[j] == cls and abs(scores[j] - score) <= 1e-5]
        assert fits, f"no reference detection for {cls} {score} {box}"
        j = min(fits, key=lambda k: np.abs(boxes[k] - box).max())
        free.remove(j)
        order.append(j)
    return np.array(order)


def test_cli_writes_json_equal_to_in_process_postprocess(run, repo_root, tmp_path):
    """Folder + extra positional file, batched: every image's JSON boxes lie inside the image,
    equal the in-process `postprocess` output in original pixels (both box layouts), with the
    dataset's category ids and names; pictures have the image's size and show the boxes."""
    config, model, model_dir, paths = run
    from paa_tf.data import label_map as label_map_lib

    label_map = label_map_lib.load_label_map(str(model_dir / "label_map.json"))
    val_dir = paths["val_image_dir"]
    extra = tmp_path / "extra.png"
    Image.open(f"{paths['train_image_dir']}/train_000001.jpg").save(extra)
    out_dir = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(repo_root / "bin" / "paa_predict"), f"--model_dir={model_dir}",
         "--images", val_dir, str(extra), f"--output_dir={out_dir}", "--score_threshold=0.0",
         "--override=eval.batch_size=2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out_dir / "detections.json").read_text())
    files = [e["file"] for e in result["images"]]
    assert files == sorted(f"{val_dir}/{n}" for n in ("val_000001.jpg", "val_000002.jpg",
                                                      "val_000003.jpg")) + [str(extra)]
    assert result["skipped"] == []
    total = 0
    for entry in result["images"]:
        boxes, scores, classes, pixels = _reference(config, model, entry["file"], label_map)
        records = entry["detections"]
        assert (entry["height"], entry["width"]) == pixels.shape[:2]
        assert len(records) == len(boxes) > 0
        total += len(records)
        got_box = np.array([r["box"] for r in records])
        got_scores = np.array([r["score"] for r in records])
        assert np.all(np.diff(got_scores) <= 0)  # best first
        # Pair records with reference detections by score, class and box rather than by rank:
        # near-equal scores may come out in either order from a batch of 2 and a batch of 1.
        order = _pair(got_box, got_scores, [r["class_index"] for r in records], boxes, scores,
                      classes)
        np.testing.assert_allclose(got_box, boxes[order], atol=2e-3)
        np.testing.assert_allclose([r["score"] for r in records], scores[order], atol=1e-5)
        assert [r["class_index"] for r in records] == classes[order].tolist()
        assert [r["category_id"] for r in records] == [label_map.ids[c] for c in classes[order]]
        assert [r["class_name"] for r in records] == [label_map.names[c]
                                                      for c in classes[order]]
        xywh = np.array([r["bbox"] for r in records])
        np.testing.assert_allclose(xywh[:, :2], got_box[:, [1, 0]], atol=1e-6)
        np.testing.assert_allclose(xywh[:, 2:], got_box[:, [3, 2]] - got_box[:, [1, 0]],
                                   atol=2e-3)
        height, width = pixels.shape[:2]
        assert np.all(got_box >= 0) and np.all(got_box[:, [0, 2]] <= height + 1e-3)
        assert np.all(got_box[:, [1, 3]] <= width + 1e-3)
        picture = np.asarray(Image.open(entry["picture"]).convert("RGB"))
        assert entry["picture"].endswith(".png") and picture.shape == pixels.shape
        assert np.any(picture != pixels)
    assert total > 0 and "skipped" in proc.stdout


def test_pictures_show_the_boxes_and_nothing_else(run, tmp_path):
    """The picture equals the input except on drawn boxes/labels: the best box's outline
    has its class colour; with a threshold above every score the picture is the image."""
    from paa_tf.visualization import drawing

    config, model, model_dir, paths = run
    image = f"{paths['val_image_dir']}/val_000001.jpg"
    result = predict.run_prediction(model_dir, [image], tmp_path / "a", score_threshold=0.0,
                                    log=lambda *a: None)
    entry = result["images"][0]
    pixels = predict.read_image(image)
    picture = np.asarray(Image.open(entry["picture"]).convert("RGB"))
    best = entry["detections"][0]
    height, width = pixels.shape[:2]
    ymin, xmin, ymax, xmax = (min(max(round(v), 0), side - 1)
                              for v, side in zip(best["box"], (height, width) * 2))
    colour = drawing.class_colour(best["class_index"])
    # The best box is drawn last, so its outline has its class colour, except where its own
    # label's text (on a background of the same colour) crosses it.
    outline = np.concatenate([picture[ymin:ymax + 1, xmin], picture[ymin:ymax + 1, xmax],
                              picture[ymin, xmin:xmax + 1], picture[ymax, xmin:xmax + 1]])
    assert np.mean(np.all(outline == colour, axis=-1)) > 0.7
    top = max(r["score"] for r in entry["detections"])
    empty = predict.run_prediction(model_dir, [image], tmp_path / "b",
                                   score_threshold=top + 0.01, log=lambda *a: None)
    assert empty["images"][0]["detections"] == []
    assert np.array_equal(np.asarray(Image.open(empty["images"][0]["picture"])), pixels)
    cut = predict.run_prediction(model_dir, [image], tmp_path / "c", score_threshold=0.3,
                                 picture_format="jpg", log=lambda *a: None)
    kept = cut["images"][0]["detections"]
    assert [r for r in entry["detections"] if r["score"] >= 0.3] == kept
    assert cut["images"][0]["picture"].endswith(".jpg")
    assert Image.open(cut["images"][0]["picture"]).format == "JPEG"


def test_bad_image_is_named_or_skipped(run, repo_root, tmp_path):
    config, model, model_dir, paths = run
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not an image")
    good = f"{paths['val_image_dir']}/val_000002.jpg"
    with pytest.raises(ValueError, match="broken.jpg"):
        predict.run_prediction(model_dir, [good, str(bad)], tmp_path / "x", log=lambda *a: None)
    result = predict.run_prediction(model_dir, [str(bad), good], tmp_path / "y",
                                    skip_bad_images=True, log=lambda *a: None)
    assert [e["file"] for e in result["images"]] == [good]
    assert [s["file"] for s in result["skipped"]] == [str(bad)]
    assert "cannot read image" in result["skipped"][0]["reason"]
    proc = subprocess.run(
        [sys.executable, str(repo_root / "bin" / "paa_predict"), f"--model_dir={model_dir}",
         f"--images={bad}", f"--output_dir={tmp_path / 'z'}"], capture_output=True, text=True,
        timeout=300)
    assert proc.returncode != 0 and "broken.jpg" in proc.stderr


def test_collect_images_and_picture_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "img.png")
    (tmp_path / "a" / "notes.txt").write_text("x")
    files = predict.collect_images([tmp_path / "a", tmp_path / "b" / "img.png",
                                    tmp_path / "a" / "img.png"])
    assert files == [str(tmp_path / "a" / "img.png"), str(tmp_path / "b" / "img.png")]
    names = predict.picture_names(files, str(tmp_path / "a"), "png")
    # Never overwrite an input: a/img.png is an input, so both get new names.
    assert names == [str(tmp_path / "a" / "img_2.png"), str(tmp_path / "a" / "img_3.png")]
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        predict.collect_images([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        predict.collect_images([tmp_path / "empty"])
