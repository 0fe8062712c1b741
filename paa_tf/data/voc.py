"""Reader for Pascal VOC XML: the VOC layout (`Annotations/*.xml`, `JPEGImages/`,
`ImageSets/Main/<split>.txt`) or any folders (`data.voc_annotations`, `data.voc_images`, and
a list file of the images of a split, or every XML of the folder: `read_voc_folders`).

Coordinates: VOC `bndbox` values are 1-based inclusive pixel indices (`xmin=1, xmax=W` is the
whole width), so the continuous box is `[ymin - 1, xmin - 1, ymax, xmax]`.
`difficult` objects are flagged like COCO crowd boxes (kept out of the training targets and
ignored, not counted as misses, by a COCO-style evaluation) unless `keep_difficult`.
Image ids: VOC has none, so each image gets `records.stable_id(file stem)` (a 48-bit hash of
the stem, stable across splits and machines); the report's `id_to_name` keeps the mapping.
"""

import glob
import os
import xml.etree.ElementTree as ET

import numpy as np

from paa_tf.data import label_map as label_map_lib
from paa_tf.data import records as records_lib


def _check_root(root, split):
    for sub in ("Annotations", "JPEGImages"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise ValueError(f"VOC root {root} has no {sub}/ folder; data.voc_root must hold "
                             "Annotations/, JPEGImages/ and ImageSets/Main/")
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        found = sorted(os.path.basename(p)[:-4] for p in
                       glob.glob(os.path.join(root, "ImageSets", "Main", "*.txt")))
        raise ValueError(f"VOC split file not found: {split_file}; splits present: {found} "
                         "(set data.voc_train_split / data.voc_val_split)")
    return split_file


def read_split(root, split):
    """File stems listed in `ImageSets/Main/<split>.txt`, in file order, without duplicates."""
    split_file = _check_root(root, split)
    stems, seen = [], set()
    with open(split_file) as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] not in seen:
                seen.add(parts[0])
                stems.append(parts[0])
    return stems


def read_list(path):
    """File stems named in a split list file: the first field of each line (split at
    whitespace or a comma, so a CSV's first column works), a file extension dropped, blank
    lines, '#' comments and a 'filename' header skipped; file order, no duplicates."""
    if not os.path.isfile(path):
        raise ValueError(f"VOC list file not found: {path} (data.voc_train_list / "
                         "data.voc_val_list; empty = every XML file of data.voc_annotations)")
    stems, seen = [], set()
    with open(path) as f:
        for line in f:
            fields = line.replace(",", " ").split()
            if not fields or fields[0].startswith("#") or fields[0].lower() in (
                    "filename", "file_name", "image", "name"):
                continue
            stem = os.path.splitext(os.path.basename(fields[0]))[0]
            if stem not in seen:
                seen.add(stem)
                stems.append(stem)
    return stems


def default_label_map(root, annotations=None):
    """Label map of the class names in all `Annotations/*.xml` of `root` (or in the XML
    files of the folder `annotations`); the same for every split.

    The 20 VOC classes in their usual order when every name is one of them; otherwise the
    names sorted alphabetically. Unreadable files are skipped here (the reader reports them).
    """
    folder = annotations or os.path.join(root, "Annotations")
    names = set()
    for path in glob.glob(os.path.join(folder, "*.xml")):
        try:
            tree = ET.parse(path)
        except (ET.ParseError, OSError):
            continue
        names.update((obj.findtext("name") or "").strip() for obj in tree.iter("object"))
    names.discard("")
    if not names:
        raise ValueError(f"no object names found in {folder}/*.xml; pass data.label_map")
    if names <= set(label_map_lib.VOC_CLASSES):
        return label_map_lib.from_names(label_map_lib.VOC_CLASSES)
    return label_map_lib.from_names(sorted(names))


def _number(node, key, xml_path, position):
    text = node.findtext(key) if node is not None else None
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"object {position}: <bndbox><{key}> is {text!r}, not a number "
                         f"({xml_path})") from None


def parse_xml(xml_path, label_map, keep_difficult=False):
    """One VOC XML file -> (file name, height, width, boxes, classes, difficult); ValueError.

    Height/width are 0 when the XML has no usable <size> (then read from the image header).
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        line, column = error.position
        raise ValueError(f"malformed XML (line {line}, column {column}): {error}") from None
    except OSError as error:
        raise ValueError(f"cannot read annotation file {xml_path}: {error}") from None
    stem = os.path.splitext(os.path.basename(xml_path))[0]
    file_name = (root.findtext("filename") or "").strip() or stem + ".jpg"
    try:
        height = int(float(root.findtext("size/height") or 0))
        width = int(float(root.findtext("size/width") or 0))
    except ValueError:
        height = width = 0
    boxes, classes, difficult = [], [], []
    for position, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        index = label_map.index_of_name(name)
        if index is None:
            raise ValueError(f"object {position}: unknown class name {name!r} (label map: "
                             f"{list(label_map.names)})")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"object {position} ({name}) has no <bndbox>")
        x1, y1, x2, y2 = (_number(box, k, xml_path, position)
                          for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([y1 - 1.0, x1 - 1.0, y2, x2])
        classes.append(index)
        try:
            difficult.append(bool(int(obj.findtext("difficult") or 0)) and not keep_difficult)
        except ValueError:
            raise ValueError(f"object {position}: <difficult> must be 0 or 1") from None
    return (file_name, height, width, np.array(boxes, np.float32).reshape(-1, 4),
            np.array(classes, np.int32), np.array(difficult, bool))


def read_voc(root, split, report, *, skip_bad_records=False, label_map=None,
             keep_difficult=False):
    """Records of the images listed in `ImageSets/Main/<split>.txt`; returns (records, map).

    Malformed XML, a missing XML file, unknown class names and non-numeric coordinates are
    collected and raised together (`BadRecordError`, naming each XML file), or skipped and
    reported with `skip_bad_records`.
    """
    root = os.fspath(root)
    return _read(read_split(root, split), os.path.join(root, "Annotations"),
                 os.path.join(root, "JPEGImages"), report, skip_bad_records,
                 label_map or default_label_map(root), keep_difficult)


def read_voc_folders(annotations, images, list_file, report, *, skip_bad_records=False,
                     label_map=None, keep_difficult=False):
    """Records of VOC XML files in the folder `annotations` whose images are in `images`
    (default: beside the XML): those `list_file` names (`read_list`), or every XML file
    when it is empty. Returns (records, map); errors as `read_voc`."""
    annotations = os.fspath(annotations)
    if not os.path.isdir(annotations):
        raise ValueError(f"data.voc_annotations: {annotations} is not a folder of VOC XML "
                         "files")
    images = os.fspath(images) if images else annotations
    if not os.path.isdir(images):
        raise ValueError(f"data.voc_images: {images} is not a folder")
    if list_file:
        stems = read_list(list_file)
    else:
        stems = sorted(os.path.splitext(os.path.basename(p))[0]
                       for p in glob.glob(os.path.join(annotations, "*.xml")))
        if not stems:
            raise ValueError(f"data.voc_annotations: no .xml files in {annotations}")
    return _read(stems, annotations, images, report, skip_bad_records,
                 label_map or default_label_map("", annotations), keep_difficult)


def _read(stems, annotation_dir, image_dir, report, skip_bad_records, label_map,
          keep_difficult):
    records, problems, ids = [], [], {}
    for stem in stems:
        xml_path = os.path.join(annotation_dir, stem + ".xml")
        image_id = records_lib.stable_id(stem)
        if image_id in ids:
            raise ValueError(f"VOC stems {ids[image_id]!r} and {stem!r} hash to the same id; "
                             "rename one of the files")
        ids[image_id] = stem
        if not os.path.isfile(xml_path):
            problems.append((image_id, stem, f"annotation file not found: {xml_path}"))
            continue
        try:
            file_name, height, width, boxes, classes, difficult = parse_xml(
                xml_path, label_map, keep_difficult)
        except ValueError as error:
            problems.append((image_id, stem, f"{error} in {xml_path}"))
            continue
        path = os.path.join(image_dir, file_name)
        if not os.path.exists(path) and os.path.exists(os.path.join(image_dir, stem + ".jpg")):
            file_name, path = stem + ".jpg", os.path.join(image_dir, stem + ".jpg")
        records.append(records_lib.ImageRecord(
            image_id=image_id, name=file_name, height=height, width=width, boxes=boxes,
            classes=classes, is_crowd=difficult,
            annotation_ids=[f"object {k}" for k in range(len(boxes))], source=xml_path,
            path=path))
    records_lib.raise_or_skip(problems, report, skip_bad_records,
                              "Fix or remove the XML files named above (or pass a "
                              "data.label_map listing every class name).")
    return records, label_map
