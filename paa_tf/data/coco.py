"""Reader for COCO instances JSON + an image folder (the official `instances_*.json` layout).

Handles non-contiguous category ids (mapped to contiguous indices through a `LabelMap`),
`iscrowd` (kept as a crowd flag: out of the training targets, left to pycocotools for
evaluation) and images without annotations (kept as records with no boxes). COCO `bbox` is
`[x, y, w, h]` in pixels; records hold `[ymin, xmin, ymax, xmax]`.
"""

import json
import os
from numbers import Real

import numpy as np

from paa_tf.data import label_map as label_map_lib
from paa_tf.data import records as records_lib


def load_coco_json(path, what="annotation file"):
    """Parse a COCO JSON file; ValueError naming the file (and line/column) when it fails."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"COCO {what} not found: {path}; check data.train_annotations / "
                         "data.val_annotations")
    try:
        with open(path, "rb") as f:
            content = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"COCO {what} {path} is not valid JSON (line {error.lineno}, column "
                         f"{error.colno}: {error.msg}); the file is probably truncated or "
                         "hand-edited: re-download or re-export it") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"COCO {what} {path} cannot be read: {error}") from error
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise ValueError(f"COCO {what} {path} has no 'images' list: it is not a COCO instances "
                         "file (expected keys images, annotations, categories)")
    if not isinstance(content.get("annotations", []), list):
        raise ValueError(f"COCO {what} {path}: 'annotations' must be a list")
    return content


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _image_entry_problem(entry):
    if not isinstance(entry, dict):
        return f"images entry {entry!r} is not an object"
    for key in ("id", "height", "width"):
        if not _is_int(entry.get(key)):
            return f"images entry needs an integer '{key}', got {entry.get(key)!r}"
    if entry["height"] <= 0 or entry["width"] <= 0:
        return f"image size {entry['width']}x{entry['height']} is not positive"
    if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        return "images entry needs a 'file_name' string"
    return None


def _annotation_problem(ann, label_map):
    if not _is_int(ann.get("image_id")):
        return f"annotation {ann.get('id')!r} needs an integer 'image_id'"
    bbox = ann.get("bbox")
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox)):
        return f"annotation {ann.get('id')!r}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}"
    if label_map.index_of_id(ann.get("category_id")) is None:
        return (f"annotation {ann.get('id')!r}: unknown category_id {ann.get('category_id')!r} "
                f"(the label map has ids {list(label_map.ids)[:10]}...)")
    if ann.get("iscrowd", 0) not in (0, 1, True, False):
        return f"annotation {ann.get('id')!r}: 'iscrowd' must be 0 or 1"
    return None


def read_coco(annotation_file, image_dir, report, *, skip_bad_records=False, label_map=None):
    """Records of a COCO instances file; returns (records, label_map).

    `label_map` defaults to the file's `categories` (indices by increasing id). Structural
    problems (an image entry without size, an annotation with a malformed bbox, an unknown
    category id, an annotation of an unknown image) are collected and raised together as a
    `BadRecordError` naming the file and ids, or skipped and reported (whole image) with
    `skip_bad_records`. Records come in the order of the file's `images` list.
    """
    annotation_file = os.fspath(annotation_file)
    if not os.path.isdir(image_dir):
        raise ValueError(f"COCO image folder not found: {image_dir}; check data.train_images / "
                         "data.val_images")
    content = load_coco_json(annotation_file)
    if label_map is None:
        label_map = label_map_lib.from_coco_categories(content.get("categories"),
                                                       source=annotation_file)
    problems, images, order = [], {}, []
    for position, entry in enumerate(content["images"]):
        reason = _image_entry_problem(entry)
        image_id = entry.get("id") if isinstance(entry, dict) else None
        name = entry.get("file_name", f"images[{position}]") if isinstance(entry, dict) else ""
        if reason is None and image_id in images:
            reason = f"image id {image_id} appears twice in 'images'"
        if reason:
            problems.append((image_id, name, f"{reason} in {annotation_file}"))
            continue
        images[image_id] = {"entry": entry, "anns": []}
        order.append(image_id)
    bad_images = {p[0] for p in problems}
    for ann in content.get("annotations", []):
        if not isinstance(ann, dict):
            problems.append((None, "", f"annotation {ann!r} is not an object in "
                                       f"{annotation_file}"))
            continue
        reason = _annotation_problem(ann, label_map)
        image_id = ann.get("image_id")
        if reason is None and image_id not in images and image_id not in bad_images:
            reason = (f"annotation {ann.get('id')!r} refers to image id {image_id}, which is "
                      "not in 'images'")
        if reason:
            name = (images[image_id]["entry"]["file_name"] if image_id in images
                    else f"annotation {ann.get('id')!r}")
            problems.append((image_id, name, f"{reason} in {annotation_file}"))
            continue
        if image_id in images:
            images[image_id]["anns"].append(ann)
    records_lib.raise_or_skip(problems, report, skip_bad_records,
                              f"Fix {annotation_file} (or pass a data.label_map that lists "
                              "every category id used).")
    bad_images = {p[0] for p in problems}
    records = []
    for image_id in order:
        if image_id in bad_images:
            continue
        entry, anns = images[image_id]["entry"], images[image_id]["anns"]
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes = np.stack([xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3],
                          xywh[:, 0] + xywh[:, 2]], axis=-1).astype(np.float32)
        records.append(records_lib.ImageRecord(
            image_id=image_id, name=entry["file_name"], height=entry["height"],
            width=entry["width"], boxes=boxes,
            classes=np.array([label_map.index_of_id(a["category_id"]) for a in anns], np.int32),
            is_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
            annotation_ids=[a.get("id") for a in anns], source=annotation_file,
            path=os.path.join(image_dir, entry["file_name"])))
    return records, label_map
