"""Generated detection data in the two real layouts the readers must handle, with their quirks.

The tests' data is written here, not shipped: a seeded generator makes JPEG files and their
annotations in the exact formats of COCO 2017 and of Pascal VOC (as the BCCD blood-cell set
lays it out), with the cases a real dataset brings:

`coco_mini/` (`train2017/`, `val2017/`, `annotations/instances_{train,val}2017.json`)
  * the 80 COCO categories with their official non-contiguous ids 1..90 and names;
  * landscape, portrait and near-square images of COCO's usual sizes (240x320 to 640x640);
  * crowd boxes (`iscrowd: 1`) in both splits, boxes over the image border by < 2 px (clipped),
    boxes of at most 1 px (filtered), a training image whose only box is a crowd box (no
    training target: skipped in training, kept in evaluation), and one image with 45 objects;
  * `bbox` as [x, y, w, h] floats, `area`, polygon `segmentation`, `licenses`, `info`.

`bccd/` (`JPEGImages/`, `Annotations/`, `ImageSets/Main/{train,val,trainval,test}.txt`)
  * 640x480 images named `BloodImage_NNNNN`, classes RBC, WBC and Platelets;
  * 1-based inclusive `bndbox` integers, `difficult`/`truncated` flags, many small
    overlapping boxes, and two zero-size boxes (BloodImage_00338 and BloodImage_00343, the
    two the real set has).

Every test derives its expected values from these files with its own oracle (pycocotools,
its own XML parsing), never from constants, so what the generator draws does not matter
beyond the cases listed above.
"""

import json
import pathlib

import numpy as np
from PIL import Image

from paa_tf.convert.coco_categories import CATEGORIES

COCO_SIZES = {  # image id -> (height, width)
    "train": [(24577, 593, 600), (84284, 375, 500), (159269, 640, 427), (204805, 346, 500),
              (256353, 640, 621), (401416, 480, 640), (458756, 480, 640), (501760, 333, 500)],
    "val": [(166918, 640, 480), (168974, 500, 375), (184324, 425, 640), (255165, 480, 640),
            (343937, 428, 640), (404484, 240, 320), (555009, 375, 500)],
}
MANY_OBJECTS_IMAGE = 166918  # 45 objects
CROWD_ONLY_IMAGE = 501760  # its only box is a crowd box
BCCD_SPLITS = {
    "train": ["BloodImage_00001", "BloodImage_00003", "BloodImage_00004", "BloodImage_00005",
              "BloodImage_00006", "BloodImage_00343"],
    "val": ["BloodImage_00000", "BloodImage_00014", "BloodImage_00338"],
    "test": ["BloodImage_00007", "BloodImage_00011"],
}
ZERO_SIZE_BOX_IMAGES = ("BloodImage_00338", "BloodImage_00343")


def _picture(rng, height, width):
    """uint8 [height, width, 3]: a smooth colour gradient with a few filled rectangles."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    image = np.stack([base[c] + 40 * np.sin(xx / rng.uniform(20, 90) + c)
                      + 30 * np.cos(yy / rng.uniform(20, 90)) for c in range(3)], axis=-1)
    for _ in range(6):
        y0, x0 = rng.integers(0, height - 8), rng.integers(0, width - 8)
        image[y0:y0 + rng.integers(8, height // 3), x0:x0 + rng.integers(8, width // 3)] = \
            rng.uniform(0, 255, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_jpeg(path, rng, height, width):
    Image.fromarray(_picture(rng, height, width)).save(path, quality=90)


def _coco_box(rng, height, width):
    """[x, y, w, h] floats, at least 4 px, inside the image."""
    w = float(rng.uniform(4, width * 0.6))
    h = float(rng.uniform(4, height * 0.6))
    x = float(rng.uniform(0, width - w))
    y = float(rng.uniform(0, height - h))
    return [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]


def _annotation(ann_id, image_id, category_id, bbox, crowd=False):
    x, y, w, h = bbox
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": round(w * h, 2), "iscrowd": int(crowd), "segmentation": [polygon]}


def write_coco(root, seed=2017):
    """COCO-layout data under `root/coco_mini` (see the module docstring); returns that path."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root) / "coco_mini"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name, "supercategory": "object"}
                  for cid, name in CATEGORIES]
    ids = [cid for cid, _ in CATEGORIES]
    ann_id = 1
    for split, sizes in COCO_SIZES.items():
        folder = root / f"{split}2017"
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for index, (image_id, height, width) in enumerate(sizes):
            name = f"{image_id:012d}.jpg"
            _write_jpeg(folder / name, rng, height, width)
            images.append({"id": image_id, "file_name": name, "height": height,
                           "width": width, "license": 1 + index % 2})
            boxes = []
            if image_id == CROWD_ONLY_IMAGE:
                boxes.append((1, _coco_box(rng, height, width), True))
            else:
                count = 45 if image_id == MANY_OBJECTS_IMAGE else int(rng.integers(2, 12))
                for k in range(count):
                    category = 1 if k == 0 else int(rng.choice(ids))  # a person in each
                    boxes.append((category, _coco_box(rng, height, width), False))
                if index % 3 == 0:  # a crowd box, kept out of the targets
                    boxes.append((1, _coco_box(rng, height, width), True))
                if index % 3 == 1:  # over the right and bottom border by < 2 px: clipped
                    boxes.append((int(rng.choice(ids)),
                                  [width - 30.5, height - 20.25, 32.0, 21.5], False))
                if index % 4 == 2:  # at most 1 px high: filtered out
                    boxes.append((int(rng.choice(ids)), [10.0, 12.0, 40.0, 0.8], False))
            for category, bbox, crowd in boxes:
                annotations.append(_annotation(ann_id, image_id, category, bbox, crowd))
                ann_id += 1
        content = {"info": {"description": "generated test data in COCO 2017's format"},
                   "licenses": [{"id": 1, "name": "generated", "url": ""},
                                {"id": 2, "name": "generated", "url": ""}],
                   "images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(content))
    return root


def _voc_xml(stem, objects):
    rows = [f"<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>{stem}.jpg</filename>",
            "\t<size>\n\t\t<width>640</width>\n\t\t<height>480</height>\n\t\t<depth>3</depth>"
            "\n\t</size>\n\t<segmented>0</segmented>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        rows.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
                    f"\t\t<truncated>0</truncated>\n\t\t<difficult>{difficult}</difficult>\n"
                    f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
                    f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n"
                    "\t</object>")
    rows.append("</annotation>\n")
    return "\n".join(rows)


def write_voc(root, seed=364):
    """VOC-layout data under `root/bccd` (see the module docstring); returns that path."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root) / "bccd"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for stems in BCCD_SPLITS.values():
        for stem in stems:
            _write_jpeg(root / "JPEGImages" / f"{stem}.jpg", rng, 480, 640)
            objects = [("WBC", _voc_box(rng, 80, 160), 0)]
            objects += [("RBC", _voc_box(rng, 60, 110), 0) for _ in range(rng.integers(6, 16))]
            objects += [("Platelets", _voc_box(rng, 15, 35), 0)
                        for _ in range(rng.integers(1, 3))]
            if stem in ZERO_SIZE_BOX_IMAGES:
                objects.append(("RBC", (300, 200, 300, 262), 0))  # xmin == xmax
            (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, objects))
    main = root / "ImageSets" / "Main"
    for split, stems in BCCD_SPLITS.items():
        (main / f"{split}.txt").write_text("\n".join(stems) + "\n")
    (main / "trainval.txt").write_text(
        "\n".join(sorted(BCCD_SPLITS["train"] + BCCD_SPLITS["val"])) + "\n")
    return root


def _voc_box(rng, smallest, largest):
    """(xmin, ymin, xmax, ymax), 1-based inclusive integers inside a 640x480 image."""
    w, h = (int(rng.integers(smallest, largest)) for _ in range(2))
    x1, y1 = int(rng.integers(1, 641 - w)), int(rng.integers(1, 481 - h))
    return x1, y1, x1 + w - 1, y1 + h - 1


def write_all(root):
    """Both sets under `root`; returns `root` (a pathlib.Path)."""
    write_coco(root)
    write_voc(root)
    return pathlib.Path(root)
