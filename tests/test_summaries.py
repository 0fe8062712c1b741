"""TensorBoard pictures (issue 24): detections beside the ground truth at each periodic
evaluation and in `paa_eval --image_summaries`, PAA's assignment picture and the positives
per GT histogram of a fixed training image set, and TensorBoard serving them."""

import glob
import io
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from paa_tf import config as config_lib
from paa_tf.data import synthetic
from paa_tf.visualization import assignment, drawing, summaries

IMAGE_SIDE, INPUT_SIDE = 96, 128  # the network's view is the image scaled by 4/3
NUM_SUMMARY = 2
TOTAL_STEPS, EVAL_EVERY = 5, 2  # periodic evaluations at steps 2 and 4


def tiny_config(paths, extra=()):
    return config_lib.load_config(overrides=[
        f"data.train_images={paths['train_image_dir']}",
        f"data.train_annotations={paths['train_annotation_file']}",
        f"data.val_images={paths['val_image_dir']}",
        f"data.val_annotations={paths['val_annotation_file']}",
        f"data.image_size=[{INPUT_SIDE},{INPUT_SIDE}]", f"data.min_size=[{INPUT_SIDE}]",
        f"data.max_size={INPUT_SIDE}", "data.max_instances=16", "model.backbone=tiny",
        "model.freeze_at=0", "model.frozen_bn=false", "model.min_level=3",
        "model.max_level=5", "model.fpn_channels=16", "model.head_convs=1",
        "model.head_channels=32", "model.octave_base_scale=4.0",
        # A high prior so that the barely trained head scores above the thresholds.
        "model.prior_prob=0.2", "eval.batch_size=2", "eval.max_detections=20",
        f"eval.summary_images={NUM_SUMMARY}", "eval.summary_score_threshold=0.1",
        "train.batch_size=2", f"train.total_steps={TOTAL_STEPS}", "train.warmup_steps=1",
        "train.lr_steps=[100]", "train.base_lr=0.001", "train.checkpoint_every=2",
        "train.log_every=1", f"train.eval_every={EVAL_EVERY}", *extra])


def test_ground_truth_labels_carry_the_name_alone():
    """`draw_detections(scores=None)` (the ground-truth half): every box drawn, each label
    the class name without a score, so narrower than "name 1.00"."""
    image = np.full((100, 160, 3), 90, np.uint8)
    boxes = [[40, 20, 90, 70], [50, 90, 95, 150]]
    colour = drawing.class_colour(1)

    def label_width(drawn):  # filled label above the first box, in the class colour
        return int(np.sum(np.all(drawn[39, :] == colour, axis=-1)))

    named = drawing.draw_detections(image, boxes, None, [1, 2], ["a", "b", "c"],
                                      line_width=1, score_threshold=0.5)
    scored = drawing.draw_detections(image, boxes, [1.0, 1.0], [1, 2], ["a", "b", "c"],
                                       line_width=1)
    assert np.all(named[50:96, 150] == drawing.class_colour(2))  # both drawn
    assert 0 < label_width(named) < label_width(scored)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained 5 steps with evaluations at steps 2 and 4 on generated shapes (over
    30 s on 2 cores: the tests that use it are marked slow)."""
    from paa_tf.training import train as train_lib

    root = tmp_path_factory.mktemp("summaries")
    paths = synthetic.make_shapes_dataset(root / "shapes", num_train=6, num_val=3,
                                          image_size=IMAGE_SIDE, seed=5)
    config = tiny_config(paths)
    trainer = train_lib.Trainer(config, root / "run", tf.distribute.OneDeviceStrategy("/cpu:0"))
    trainer.restore_or_initialise()
    trainer.train()
    return trainer, paths, root / "run"


def read_summaries(log_dir):
    """{tag: {step: (plugin name, value proto)}} of every event file of `log_dir`."""
    found = {}
    for path in sorted(glob.glob(os.path.join(str(log_dir), "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                found.setdefault(value.tag, {})[int(event.step)] = value
    return found


def image_of(value):
    """(width, height, uint8 [h, w, 3]) of a TF2 image summary value (one image)."""
    strings = tf.make_ndarray(value.tensor)
    assert value.metadata.plugin_data.plugin_name == "images" and len(strings) == 3
    pixels = np.asarray(Image.open(io.BytesIO(strings[2])).convert("RGB"))
    return int(strings[0]), int(strings[1]), pixels


@pytest.mark.slow
def test_eval_images_show_the_scored_detections_beside_the_ground_truth(trained):
    """At both periodic evaluations, eval/val/ holds one picture per summary image under
    `detections_vs_gt/image_<id>`: the first images evaluated, the network's 128-px view
    twice with the separator. The step-4 pictures (the last results.json) show at the
    outline of each drawn box the records of results.json scoring >= the threshold."""
    trainer, paths, run = trained
    events = read_summaries(run / "eval" / "val")
    gt = json.load(open(paths["val_annotation_file"]))
    first_ids = [image["id"] for image in gt["images"]][:NUM_SUMMARY]
    tags = [summaries.DETECTIONS_TAG.format(image_id=i) for i in first_ids]
    assert sorted(t for t in events if t.startswith("detections_vs_gt/")) == sorted(tags)
    for tag in tags:
        assert sorted(events[tag]) == [2, 4]
        width, height, pixels = image_of(events[tag][4])
        assert (height, width) == (INPUT_SIDE, 2 * INPUT_SIDE + summaries.SEPARATOR)
        assert pixels.shape == (height, width, 3)
        assert np.all(pixels[:, INPUT_SIDE:INPUT_SIDE + summaries.SEPARATOR] == 255)
    assert sorted(events["coco/AP"]) == [2, 4]  # the scalars of the same evaluations

    results = json.load(open(run / "eval" / "val" / "results.json"))
    scale = INPUT_SIDE / IMAGE_SIDE
    drawn_total = 0
    for image_id, tag in zip(first_ids, tags):
        scored = [r for r in results if r["image_id"] == image_id
                  and r["score"] >= trainer.config.eval.summary_score_threshold]
        assert trainer.eval_images.drawn[image_id] == scored
        drawn_total += len(scored)
        _, _, pixels = image_of(events[tag][4])
        left, right = pixels[:, :INPUT_SIDE], pixels[:, INPUT_SIDE + summaries.SEPARATOR:]
        if scored:  # the best box is drawn last: its bottom edge and right side are intact
            check_outline(left, max(scored, key=lambda r: r["score"]), gt["categories"],
                          scale, INPUT_SIDE)
        # The ground truth, all of equal rank, is drawn in annotation order: the last box.
        check_outline(right, [a for a in gt["annotations"] if a["image_id"] == image_id][-1],
                      gt["categories"], scale, INPUT_SIDE)
    assert drawn_total > 0  # something was drawn, so the comparison above was exercised


@pytest.mark.slow
def test_assignment_picture_and_positives_histogram_of_fixed_training_images(trained):
    """train/ holds at both evaluations the assignment picture (the 1200x540 figure of
    `assignment.assignment_figure`) and the histogram of positives per GT over the first
    training images: as many GTs as the annotation file gives those images, and the bucket
    counts of the positives `assignment_data` finds per GT with the step-4 checkpoint."""
    from paa_tf.data import pipeline
    from paa_tf.modeling.restore import restore_run
    from paa_tf.run_folder import RunFolder

    trainer, paths, run = trained
    events = read_summaries(run / "train")
    for tag in (summaries.ASSIGNMENT_TAG, summaries.POSITIVES_TAG):
        assert sorted(events[tag]) == [2, 4]
    width, height, pixels = image_of(events[summaries.ASSIGNMENT_TAG][4])
    assert (width, height) == (1200, 540) and pixels.std() > 10
    value = events[summaries.POSITIVES_TAG][4]
    assert value.metadata.plugin_data.plugin_name == "histograms"
    buckets = tf.make_ndarray(value.tensor)  # [30, 3]: left edge, right edge, count

    annotations = json.load(open(paths["train_annotation_file"]))
    first = [image["id"] for image in annotations["images"]][:NUM_SUMMARY]
    assert buckets[:, 2].sum() == sum(a["image_id"] in first
                                      for a in annotations["annotations"])

    config = trainer.config
    model, _ = restore_run(RunFolder(run), config, tuple(config.data.image_size),
                           str(run / "ckpt-4"))
    dataset, _ = pipeline.build_dataset(config.data, "train", is_training=False,
                                        batch_size=NUM_SUMMARY, repeat=False)
    batch = next(iter(dataset))
    assert batch["source_id"].numpy().tolist() == first
    positives = [int(assignment.assignment_data(model, image, boxes, classes, g).positive.sum())
                 for image, boxes, classes in zip(batch["image"].numpy(),
                                                  batch["gt_boxes"].numpy(),
                                                  batch["gt_classes"].numpy())
                 for g in np.flatnonzero(classes >= 0)]
    low, high = min(positives), max(positives)
    assert buckets[0, 0] == low and buckets[-1, 1] == high and high > low
    index = np.minimum(np.floor((np.array(positives, np.float64) - low)
                                / ((high - low) / len(buckets))), len(buckets) - 1)
    np.testing.assert_array_equal(buckets[:, 2], np.bincount(index.astype(int),
                                                             minlength=len(buckets)))


def check_outline(pixels, record, categories, scale, side):
    """The bottom edge and right side of `record`'s box (COCO bbox of the original image,
    times `scale`) are its class colour in `pixels` (one half of a picture)."""
    index_of = {c["id"]: i for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    x, y, w, h = (v * scale for v in record["bbox"])
    colour = drawing.class_colour(index_of[record["category_id"]])
    x0, x1 = (int(np.clip(round(v), 0, side - 1)) for v in (x, x + w))
    y0, y1 = (int(np.clip(round(v), 0, side - 1)) for v in (y, y + h))
    assert np.all(pixels[y1, x0:x1 + 1] == colour)
    assert np.all(pixels[y0:y1 + 1, x1] == colour)


@pytest.mark.slow
def test_paa_eval_image_summaries(trained, repo_root, tmp_path):
    """`paa_eval --image_summaries` writes the pictures of eval.summary_images images into
    its output folder at the checkpoint's step, drawn from its own results.json."""
    _, paths, run = trained
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, str(repo_root / "bin" / "paa_eval"), f"--model_dir={run}",
         f"--output_dir={out}", "--image_summaries", "--override=eval.summary_images=1"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_summaries(out)
    gt = json.load(open(paths["val_annotation_file"]))
    first = gt["images"][0]["id"]
    assert sorted(t for t in events if t.startswith("detections_vs_gt/")) == [
        summaries.DETECTIONS_TAG.format(image_id=first)]
    value = events[summaries.DETECTIONS_TAG.format(image_id=first)]
    assert sorted(value) == [TOTAL_STEPS]  # ckpt-5
    width, height, pixels = image_of(value[TOTAL_STEPS])
    assert (height, width) == (INPUT_SIDE, 2 * INPUT_SIDE + summaries.SEPARATOR)
    results = [r for r in json.load(open(out / "results.json"))
               if r["image_id"] == first and r["score"] >= 0.1]
    assert results  # the best of them is drawn last, intact
    check_outline(pixels[:, :INPUT_SIDE], max(results, key=lambda r: r["score"]),
                  gt["categories"], INPUT_SIDE / IMAGE_SIDE, INPUT_SIDE)
    proc = subprocess.run(
        [sys.executable, str(repo_root / "bin" / "paa_eval"), f"--model_dir={run}",
         f"--output_dir={tmp_path / 'none'}", "--image_summaries",
         "--override=eval.summary_images=0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "eval.summary_images" in proc.stderr


@pytest.mark.slow
def test_pictures_of_a_test_time_augmented_evaluation(trained, tmp_path):
    """With test-time augmentation the batches hold the undecoded files: the pictures show
    them at the evaluation scale, with the records of that evaluation's results.json."""
    from paa_tf.evaluation import evaluate

    trainer, paths, _ = trained
    config = tiny_config(paths, ["eval.tta_flip=true", f"eval.tta_scales=[{INPUT_SIDE}]"])
    pictures = summaries.EvalImages(config)
    evaluate.evaluate_model(config, trainer.model, output_dir=tmp_path, observer=pictures,
                            verbose=False)
    results = json.load(open(tmp_path / "results.json"))
    gt = json.load(open(paths["val_annotation_file"]))
    assert [image_id for image_id, _ in pictures.pictures] == [
        image["id"] for image in gt["images"]][:NUM_SUMMARY]
    for image_id, picture in pictures.pictures:
        assert picture.shape == (INPUT_SIDE, 2 * INPUT_SIDE + summaries.SEPARATOR, 3)
        scored = [r for r in results if r["image_id"] == image_id and r["score"] >= 0.1]
        assert pictures.drawn[image_id] == scored and scored
        check_outline(picture[:, :INPUT_SIDE], max(scored, key=lambda r: r["score"]),
                      gt["categories"], INPUT_SIDE / IMAGE_SIDE, INPUT_SIDE)


@pytest.mark.slow
def test_tensorboard_serves_the_written_images(trained):
    """TensorBoard 2.20 (pinned with TensorFlow) on the run folder lists exactly the image
    tags written per run, and serves each picture with the pixels of the event file."""
    from tests.helpers import tensorboard_server as tensorboard

    _, _, run = trained
    written = {}
    for name in ("train", "eval/val"):
        events = read_summaries(run / name)
        written[name] = {tag: steps for tag, steps in events.items()
                         if next(iter(steps.values())).metadata.plugin_data.plugin_name
                         == "images"}
    expected = {name: sorted(tags) for name, tags in written.items()}

    def ready(tags):
        return {name: sorted(t) for name, t in tags.items()} == expected

    with tensorboard.serve(run, ready=ready) as base:
        for name, tags in written.items():
            for tag, steps in tags.items():
                query = urllib.parse.urlencode({"run": name, "tag": tag, "sample": 0})
                listing = json.loads(tensorboard.get(f"{base}/data/plugin/images/images?{query}"))
                assert sorted(entry["step"] for entry in listing) == sorted(steps)
                for entry in listing:
                    served = tensorboard.get(
                        f"{base}/data/plugin/images/individualImage?{entry['query']}")
                    served = np.asarray(Image.open(io.BytesIO(served)).convert("RGB"))
                    np.testing.assert_array_equal(served, image_of(steps[entry["step"]])[2])
        histograms = json.loads(tensorboard.get(f"{base}/data/plugin/histograms/tags"))
        assert summaries.POSITIVES_TAG in histograms["train"]
