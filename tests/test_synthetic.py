"""The generated shapes dataset (paa_tf/data/synthetic.py, bin/paa_make_shapes).

Oracles: pycocotools (loading, box IoU), PIL (decoded files), analytic shape extents and
areas, and boxes recomputed here from the renderer's masks.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from paa_tf.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_train=8, num_val=4, image_size=256, seed=3)


def _read_pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return synthetic.make_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), **SMALL)


@pytest.fixture(scope="module")
def many_rendered():
    """150 uncompressed renders (about 700 objects) for the statistical checks."""
    return [synthetic.render_image(synthetic.image_rng(11, "train", i), 256)
            for i in range(150)]


def test_same_seed_gives_identical_files_and_other_seed_differs(small_dataset, tmp_path):
    again = synthetic.make_shapes_dataset(str(tmp_path / "again"), **SMALL)
    other = synthetic.make_shapes_dataset(str(tmp_path / "other"), **dict(SMALL, seed=4))
    for split in ("train", "val"):
        key = f"{split}_annotation_file"
        with open(small_dataset[key], "rb") as a, open(again[key], "rb") as b:
            assert a.read() == b.read()
        with open(small_dataset[key], "rb") as a, open(other[key], "rb") as c:
            assert a.read() != c.read()
        names = sorted(os.listdir(small_dataset[f"{split}_image_dir"]))
        assert names == sorted(os.listdir(again[f"{split}_image_dir"]))
        differing = 0
        for name in names:
            first = _read_pixels(os.path.join(small_dataset[f"{split}_image_dir"], name))
            np.testing.assert_array_equal(
                first, _read_pixels(os.path.join(again[f"{split}_image_dir"], name)))
            differing += not np.array_equal(
                first, _read_pixels(os.path.join(other[f"{split}_image_dir"], name)))
        assert differing == len(names)


def test_layout_and_json_load_in_pycocotools(small_dataset):
    root = small_dataset["output_dir"]
    assert os.path.isfile(os.path.join(root, "annotations", "instances_train.json"))
    assert os.path.isfile(os.path.join(root, "annotations", "instances_val.json"))
    for split, count in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        coco = COCO(small_dataset[f"{split}_annotation_file"])
        assert len(coco.getImgIds()) == count
        # Non-contiguous category ids, so the label map is exercised.
        assert sorted(coco.getCatIds()) == [1, 3, 5, 7, 9, 11]
        ann_ids = coco.getAnnIds()
        assert len(set(ann_ids)) == len(ann_ids) > 0
        for img in coco.loadImgs(coco.getImgIds()):
            path = os.path.join(root, split, img["file_name"])
            with Image.open(path) as im:
                assert im.format == "JPEG"
                assert im.size == (img["width"], img["height"])
        for ann in coco.loadAnns(ann_ids):
            assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
            assert ann["iscrowd"] == 0
            assert ann["category_id"] in coco.cats
            assert all(isinstance(v, float) for v in ann["bbox"])


def test_every_box_inside_image_and_not_degenerate(small_dataset):
    for split in ("train", "val"):
        coco = COCO(small_dataset[f"{split}_annotation_file"])
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 1 and h > 1
            assert x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert 0 < ann["area"] <= w * h


def test_boxes_are_tight_to_the_drawn_visible_pixels(small_dataset):
    coco = COCO(small_dataset["train_annotation_file"])
    for index in range(SMALL["num_train"]):
        rendered = synthetic.render_image(
            synthetic.image_rng(SMALL["seed"], "train", index), SMALL["image_size"])
        anns = coco.imgToAnns[index + 1]
        assert len(anns) == len(rendered.objects)
        union = np.zeros(rendered.image.shape[:2], bool)
        for obj, ann in zip(rendered.objects, anns):
            assert ann["category_id"] == synthetic.category_id(obj.class_index)
            assert not (obj.visible_mask & union).any()  # each pixel belongs to one object
            assert not (obj.visible_mask & ~obj.mask).any()
            union |= obj.visible_mask
            np.testing.assert_allclose(ann["bbox"], _tight_box(obj.visible_mask), atol=1.0)
            assert ann["area"] == obj.visible_mask.sum()
            # Never (nearly) hidden: most of the shape stays visible.
            assert obj.visible_mask.sum() >= 0.6 * obj.mask.sum()
            # The object really is drawn there and stands out from what lies beneath.
            diff = np.abs(rendered.image.astype(int) - rendered.background.astype(int))
            assert diff[obj.visible_mask].mean() > 20
        # Drawing touched nothing outside the masks.
        np.testing.assert_array_equal(rendered.image[~union], rendered.background[~union])
        # The written JPEG is this render: JPEG smooths the pixel noise (a few levels of
        # error) but another render is far off.
        jpeg = _read_pixels(os.path.join(small_dataset["train_image_dir"],
                                         coco.imgs[index + 1]["file_name"])).astype(int)
        other = synthetic.render_image(
            synthetic.image_rng(SMALL["seed"], "train", index + 1), SMALL["image_size"])
        own_error = np.abs(jpeg - rendered.image).mean()
        assert own_error < 12
        assert own_error < 0.5 * np.abs(jpeg - other.image).mean()


def test_shape_masks_match_analytic_extents_and_areas():
    rng = np.random.default_rng(0)
    frame = (30, 40, 130, 90)  # x0, y0, x1, y1: 100 x 50 px
    rect = synthetic.shape_mask("rectangle", frame, 200, rng)
    assert _tight_box(rect) == [30, 40, 100, 50]
    assert rect.sum() == 100 * 50
    for shape in ("ellipse", "ring", "cross"):
        mask = synthetic.shape_mask(shape, frame, 200, rng)
        np.testing.assert_allclose(_tight_box(mask), [30, 40, 100, 50], atol=1.0)
    ellipse = synthetic.shape_mask("ellipse", frame, 200, rng)
    assert abs(ellipse.sum() - math.pi * 50 * 25) < 0.04 * math.pi * 50 * 25
    triangle = synthetic.shape_mask("triangle", frame, 200, rng)
    assert abs(triangle.sum() - 100 * 50 / 2) < 0.08 * 100 * 50 / 2
    star = synthetic.shape_mask("star", (0, 0, 101, 101), 128, rng)
    assert star.sum() < 0.5 * math.pi * 50 * 50  # concave: well below its circumcircle


def test_unoccluded_axis_aligned_shapes_fill_their_frame(many_rendered):
    checked = 0
    for rendered in many_rendered[:40]:
        for obj in rendered.objects:
            name = synthetic.SHAPE_NAMES[obj.class_index]
            if name in ("ellipse", "rectangle", "ring", "cross") and \
                    np.array_equal(obj.visible_mask, obj.mask):
                x0, y0, x1, y1 = obj.frame
                np.testing.assert_allclose(obj.box_xywh(), [x0, y0, x1 - x0, y1 - y0], atol=1.0)
                checked += 1
    assert checked > 20


def test_class_counts_are_balanced(many_rendered):
    counts = np.bincount([o.class_index for r in many_rendered for o in r.objects],
                         minlength=len(synthetic.SHAPE_NAMES))
    expected = counts.sum() / len(counts)
    assert counts.sum() > 400
    assert counts.min() > 0.7 * expected and counts.max() < 1.3 * expected


def test_sizes_include_tiny_and_large_and_objects_per_image(many_rendered):
    sizes = np.array([math.sqrt(b[2] * b[3]) for r in many_rendered
                      for b in (o.box_xywh() for o in r.objects)])
    assert (sizes < 20).sum() >= 0.03 * len(sizes)
    assert (sizes > 120).sum() >= 5
    assert sizes.max() <= 256
    assert ((sizes >= 20) & (sizes <= 120)).mean() > 0.6
    per_image = np.array([len(r.objects) for r in many_rendered])
    assert per_image.min() >= 1 and per_image.max() <= synthetic.MAX_OBJECTS
    assert per_image.max() >= 6  # crowded images exist
    aspect = np.array([o.box_xywh()[2] / o.box_xywh()[3] for r in many_rendered
                       for o in r.objects])
    assert aspect.min() < 0.6 and aspect.max() > 1.7


def test_overlap_between_objects_is_limited(many_rendered):
    max_iou = 0.0
    overlapping = 0
    for rendered in many_rendered:
        boxes = [o.box_xywh() for o in rendered.objects]
        if len(boxes) < 2:
            continue
        iou = mask_utils.iou(boxes, boxes, [0] * len(boxes))
        np.fill_diagonal(iou, 0.0)
        max_iou = max(max_iou, float(iou.max()))
        overlapping += int((iou > 0).sum()) // 2
    assert overlapping > 20  # overlap does occur...
    assert max_iou <= synthetic.MAX_PAIR_IOU + 1e-9  # ...but is partial


def test_manifest_short_circuits_and_changed_parameters_regenerate(tmp_path):
    out = str(tmp_path / "cache")
    first = synthetic.make_shapes_dataset(out, num_train=5, num_val=2, seed=1)
    assert first["generated"]
    with open(first["manifest"]) as f:
        manifest = json.load(f)
    assert manifest["parameters"]["num_train"] == 5
    assert manifest["counts"]["train_images"] == 5
    stamp = os.path.getmtime(first["train_annotation_file"])
    image = os.path.join(first["train_image_dir"], "train_000001.jpg")
    image_stamp = os.path.getmtime(image)

    second = synthetic.make_shapes_dataset(out, num_train=5, num_val=2, seed=1)
    assert not second["generated"]
    assert second["counts"] == first["counts"]
    assert os.path.getmtime(first["train_annotation_file"]) == stamp
    assert os.path.getmtime(image) == image_stamp

    third = synthetic.make_shapes_dataset(out, num_train=3, num_val=2, seed=1)
    assert third["generated"]
    assert sorted(os.listdir(third["train_image_dir"])) == [
        "train_000001.jpg", "train_000002.jpg", "train_000003.jpg"]  # stale files removed
    assert len(COCO(third["train_annotation_file"]).imgs) == 3

    os.remove(os.path.join(third["val_image_dir"], "val_000002.jpg"))  # incomplete
    assert synthetic.make_shapes_dataset(out, num_train=3, num_val=2, seed=1)["generated"]
    assert not synthetic.make_shapes_dataset(out, num_train=3, num_val=2, seed=1)["generated"]
    assert synthetic.make_shapes_dataset(out, num_train=3, num_val=2, seed=1,
                                         overwrite=True)["generated"]


@pytest.mark.parametrize("kwargs, word", [
    (dict(num_classes=7), "num_classes"),
    (dict(num_classes=0), "num_classes"),
    (dict(num_train=0), "num_train"),
    (dict(image_size=32), "image_size"),
])
def test_bad_parameters_raise_value_error_naming_them(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        synthetic.make_shapes_dataset(str(tmp_path), **kwargs)


def test_fewer_classes_use_only_the_first_shapes(tmp_path):
    result = synthetic.make_shapes_dataset(str(tmp_path), num_train=6, num_val=1,
                                           num_classes=2, seed=5)
    coco = COCO(result["train_annotation_file"])
    assert sorted(coco.getCatIds()) == [1, 3]
    assert {a["category_id"] for a in coco.anns.values()} <= {1, 3}


def test_cli_help_lists_flags_and_run_writes_dataset(tmp_path):
    script = os.path.join(REPO, "bin", "paa_make_shapes")
    assert os.access(script, os.X_OK)
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    for flag in ("--output_dir", "--num_train", "--num_val", "--image_size", "--seed",
                 "--num_classes"):
        assert flag in shown.stdout
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, script, f"--output_dir={out}", "--num_train=3",
                           "--num_val=1", "--seed=2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Generated" in done.stdout
    reference = synthetic.make_shapes_dataset(str(tmp_path / "lib"), num_train=3, num_val=1,
                                              seed=2)
    with open(out / "annotations" / "instances_train.json", "rb") as a, \
            open(reference["train_annotation_file"], "rb") as b:
        assert a.read() == b.read()
