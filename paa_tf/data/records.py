"""The common in-memory record list every reader produces, and its validation.

A reader (COCO, VOC, TFRecord) turns its source into `ImageRecord`s: one per image with the
boxes of that image in *original* pixels, `[ymin, xmin, ymax, xmax]` float32, contiguous class
indices and crowd flags. Everything that can be wrong with an annotation is found here, in
Python, before TensorFlow sees the data, so that an error names the file and the record.

Problems are collected in a `BadRecordReport`. Without `skip_bad_records` the first check that
finds problems raises `BadRecordError` (listing them); with it, the bad images are skipped,
counted, and listed by id in the report.

Documented filters (docs/CONVENTIONS.md, "Data filters"), applied by `filter_boxes`, are not
errors: they are counted in `BadRecordReport.filtered`.
  - crowd boxes (COCO `iscrowd`, VOC `difficult`) are kept out of the training targets;
  - boxes crossing the image border by at most `box_tolerance` px are clipped to the image;
  - boxes of width or height <= 1 px after clipping are removed;
  - for training only, images left without any box are skipped.
"""

import collections
import dataclasses
import functools
import hashlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
from PIL import Image

from paa_tf import config as config_lib

LOGGER = logging.getLogger("paa_tf.data")
MIN_BOX_SIZE = 1.0  # boxes with width or height <= this (px) are removed (docs/CONVENTIONS.md)
_MAX_LISTED = 20  # problems spelled out in an error message


class BadRecordError(ValueError):
    """Annotations or images that cannot be used; the message lists them and how to fix."""


@dataclasses.dataclass
class ImageRecord:
    """One image and its annotations, as read from the source.

    `boxes` float32 [N, 4] yxyx in original-image pixels; `classes` int32 [N] contiguous
    0..C-1; `is_crowd` bool [N]; `annotation_ids` [N] ids used in messages (COCO annotation
    ids, VOC object positions). `path` (image file) or `tfrecord_index` (global position of
    the record among the sorted shards) says where the pixels are.
    """

    image_id: int
    name: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    is_crowd: np.ndarray
    annotation_ids: list
    source: str
    path: Optional[str] = None
    tfrecord_index: int = -1

    def describe(self):
        return f"image id {self.image_id} ({self.name}) in {self.source}"


@dataclasses.dataclass
class BadRecordReport:
    """Bad records skipped (with ids and reasons) and counts of the documented filters."""

    entries: list = dataclasses.field(default_factory=list)  # skipped: (image id, name, reason)
    warnings: list = dataclasses.field(default_factory=list)  # kept but changed: same layout
    filtered: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    split: str = ""
    label_map: object = None  # the LabelMap of the data (set by the pipeline)
    num_images: int = 0  # images that the pipeline emits per pass
    num_boxes: int = 0  # GT boxes that the pipeline emits per pass
    id_to_name: dict = dataclasses.field(default_factory=dict)  # source id -> file name

    def add(self, image_id, name, reason):
        self.entries.append((image_id, name, reason))

    @property
    def num_skipped(self):
        return len({(e[0], e[1]) for e in self.entries})

    @property
    def skipped_ids(self):
        return sorted({e[0] for e in self.entries if e[0] is not None})

    def summary(self, max_listed=_MAX_LISTED,
                filtered_title="documented filters (docs/CONVENTIONS.md)"):
        """Printable report; `filtered_title` names the counts of `filtered` (e.g. 'counted'
        where the records are kept, as in a TFRecord conversion)."""
        lines = [f"data '{self.split}': {self.num_images} images, {self.num_boxes} boxes; "
                 f"{self.num_skipped} bad records skipped"]
        if self.filtered:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.filtered.items()))
            lines.append(f"  {filtered_title}: {counts}")
        for image_id, name, reason in self.entries[:max_listed]:
            lines.append(f"  skipped image id {image_id} ({name}): {reason}")
        if len(self.entries) > max_listed:
            lines.append(f"  ... and {len(self.entries) - max_listed} more "
                         "(all in BadRecordReport.entries)")
        for image_id, name, reason in self.warnings[:max_listed]:
            lines.append(f"  changed image id {image_id} ({name}): {reason}")
        if len(self.warnings) > max_listed:
            lines.append(f"  ... and {len(self.warnings) - max_listed} more "
                         "(all in BadRecordReport.warnings)")
        return "\n".join(lines)

    def log(self):
        """Log the summary: a warning when records were skipped, info otherwise."""
        level = logging.WARNING if self.entries or self.warnings else logging.INFO
        LOGGER.log(level, "%s", self.summary())

    def __str__(self):
        return self.summary()


def raise_or_skip(problems, report, skip_bad_records, fix):
    """Record `problems` [(image_id, name, reason)]; raise unless `skip_bad_records`.

    `fix` is a sentence telling the user how to repair that kind of problem.
    """
    if not problems:
        return
    if not skip_bad_records:
        listed = "\n".join(f"  image id {i} ({n}): {r}" for i, n, r in problems[:_MAX_LISTED])
        more = (f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED
                else "")
        raise BadRecordError(f"{len(problems)} bad record(s) in data '{report.split}':\n{listed}"
                             f"{more}\n{fix} Or set data.skip_bad_records=true to skip, count "
                             "and report them.")
    for problem in problems:
        report.add(*problem)


def stable_id(name):
    """A stable positive int64 id (48 bits) for a string key such as a VOC file stem."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:6], "big")


def box_problems(record, box_tolerance):
    """Reasons why the boxes of `record` are unusable (empty list when they are fine)."""
    boxes = record.boxes
    problems = []
    finite = np.all(np.isfinite(boxes), axis=-1)
    for k in np.nonzero(~finite)[0]:
        problems.append(f"annotation {record.annotation_ids[k]}: box has a non-finite "
                        f"coordinate {boxes[k].tolist()}")
    with np.errstate(invalid="ignore"):
        negative = finite & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
        limits = np.array([record.height, record.width], np.float32) + box_tolerance
        outside = finite & ~negative & (
            np.any(boxes < -box_tolerance, axis=-1)
            | (boxes[:, 2] > limits[0]) | (boxes[:, 3] > limits[1]))
    for k in np.nonzero(negative)[0]:
        y1, x1, y2, x2 = boxes[k].tolist()
        problems.append(f"annotation {record.annotation_ids[k]}: box has negative size "
                        f"(xmin {x1:g} xmax {x2:g} ymin {y1:g} ymax {y2:g})")
    for k in np.nonzero(outside)[0]:
        y1, x1, y2, x2 = boxes[k].tolist()
        problems.append(f"annotation {record.annotation_ids[k]}: box (xmin {x1:g} ymin {y1:g} "
                        f"xmax {x2:g} ymax {y2:g}) lies outside the {record.width}x"
                        f"{record.height} image by more than {box_tolerance:g} px")
    return problems


def filter_boxes(record, report, drop_crowd=True):
    """Clip to the image and apply the box filters (docs/CONVENTIONS.md); boxes, classes kept.

    Returns (boxes float32 [K, 4] yxyx original pixels, classes int32 [K]); counts what it
    removed in `report.filtered`. Assumes `box_problems` found nothing.
    """
    boxes = record.boxes.astype(np.float32).reshape(-1, 4)
    limits = np.array([record.height, record.width] * 2, np.float32)
    clipped = np.clip(boxes, 0.0, limits)
    moved = np.any(clipped != boxes, axis=-1)
    size_ok = ((clipped[:, 2] - clipped[:, 0]) > MIN_BOX_SIZE) & (
        (clipped[:, 3] - clipped[:, 1]) > MIN_BOX_SIZE)
    crowd = record.is_crowd.astype(bool) if drop_crowd else np.zeros(len(boxes), bool)
    keep = size_ok & ~crowd
    report.filtered["crowd boxes kept out of targets"] += int(crowd.sum())
    report.filtered["boxes <= 1 px removed"] += int((~size_ok & ~crowd).sum())
    report.filtered["boxes clipped to the image"] += int((moved & keep).sum())
    return clipped[keep], record.classes.astype(np.int32)[keep]


def _pick(boxes, limit):
    """Indices of the `limit` largest boxes, in their original order."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.sort(np.argsort(-areas, kind="stable")[:limit])


def validate_boxes(records, report, *, box_tolerance, skip_bad_records):
    """The records whose boxes pass `box_problems`; the others raise or are reported."""
    problems, kept = [], []
    for record in records:
        reasons = box_problems(record, box_tolerance)
        problems.extend((record.image_id, record.name, f"{r} in {record.source}")
                        for r in reasons)
        if not reasons:
            kept.append(record)
    raise_or_skip(problems, report, skip_bad_records,
                  f"Fix the boxes in the annotation file (boxes may cross the image border by "
                  f"at most data.box_tolerance={box_tolerance:g} px).")
    return kept


def finalize(records, report, *, is_training, max_instances, box_tolerance, skip_bad_records,
             drop_crowd=True):
    """Validate boxes, apply the filters, enforce `max_instances`; returns kept records.

    Each returned record has `boxes`/`classes` replaced by the filtered targets (crowd removed,
    clipped) in original pixels, in the input order. The raw crowd flags stay available from
    the source (pycocotools reads them from the JSON for evaluation).
    """
    kept = validate_boxes(records, report, box_tolerance=box_tolerance,
                          skip_bad_records=skip_bad_records)
    filtered = [(record, *filter_boxes(record, report, drop_crowd=drop_crowd))
                for record in kept]
    too_many = [(r.image_id, r.name, f"{len(b)} boxes after filtering, more than "
                 f"data.max_instances={max_instances}")
                for r, b, _ in filtered if len(b) > max_instances]
    if too_many and not skip_bad_records:
        raise_or_skip(too_many, report, False, "Raise data.max_instances.")
    out = []
    for record, boxes, classes in filtered:
        if len(boxes) > max_instances:
            # Truncation keeps the image (dropping it would lose more) and is reported by id.
            report.warnings.append((record.image_id, record.name, f"kept the {max_instances} "
                                    f"largest of {len(boxes)} boxes (data.max_instances)"))
            index = _pick(boxes, max_instances)
            boxes, classes = boxes[index], classes[index]
        if is_training and len(boxes) == 0:
            report.filtered["training images without a valid box skipped"] += 1
            continue
        out.append(dataclasses.replace(record, boxes=boxes, classes=classes,
                                       is_crowd=np.zeros(len(boxes), bool)))
    return out


def to_coco_dict(records, label_map, raw=True):
    """COCO ground-truth dict of `records` (e.g. to evaluate VOC data with pycocotools).

    Boxes become `[x, y, w, h]`; image ids are the records' source ids. With `raw=True` the
    records are expected to be the reader's output (crowd flags included as `iscrowd`).
    """
    images, annotations = [], []
    for record in records:
        images.append({"id": int(record.image_id), "file_name": record.name,
                       "height": int(record.height), "width": int(record.width)})
        crowd = record.is_crowd if raw else np.zeros(len(record.boxes), bool)
        for box, cls, is_crowd in zip(record.boxes, record.classes, crowd):
            y1, x1, y2, x2 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": int(record.image_id),
                                "category_id": int(label_map.ids[int(cls)]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(bool(is_crowd))})
    return {"images": images, "annotations": annotations,
            "categories": label_map.coco_categories()}


# --- image files ------------------------------------------------------------------------

_PNG_END = b"IEND\xaeB`\x82"
LEVELS = config_lib.choices("data.verify_images")  # image checks, each doing more than the last
_EXIF_ORIENTATION = 0x0112


def _image_format(head):
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"GIF8":
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def image_problem(source, expected_hw=None, level="header"):
    """Check that an image decodes in TensorFlow: (reason or None, (height, width) or None).

    `source` is a file path or the encoded bytes. `level`: 'header' reads the header and the
    end marker (a truncated JPEG/PNG lacks it) and decodes only files without one; 'decode'
    (the default) also decodes every image with TensorFlow, as the pipeline will, which is
    the only way to find data corrupt behind a valid header (a broken Huffman table,
    scrambled PNG data); 'full' also decodes it with PIL; 'none' checks nothing. Sizes are as
    a viewer shows the image: a JPEG's EXIF orientation 5-8 swaps the stored height and
    width, as decoding does (`paa_tf.data.exif`).
    """
    if level == "none":
        return None, expected_hw
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
            head, tail, size = data[:16], data[-32:], len(data)
            opener = lambda: io.BytesIO(data)  # noqa: E731
        else:
            with open(source, "rb") as f:
                head = f.read(16)
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 32))
                tail = f.read()
            opener = lambda: source  # noqa: E731
    except FileNotFoundError:
        return f"image file not found: {source}", None
    except OSError as error:
        return f"cannot read image file {source}: {error}", None
    if size == 0:
        return "image is empty (0 bytes)", None
    kind = _image_format(head)
    if kind is None:
        return (f"not a JPEG, PNG, GIF, BMP or WebP image (starts with {head[:8]!r}); convert "
                "it to JPEG or PNG"), None
    tail = tail.rstrip(b"\x00\r\n ")
    complete = {"jpeg": tail.endswith(b"\xff\xd9"), "png": tail.endswith(_PNG_END)}.get(kind)
    try:
        with Image.open(opener()) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if kind == "jpeg" else 1
            if orientation in (5, 6, 7, 8):
                width, height = height, width  # shown turned by 90 degrees
            if level == "full" or not complete:
                image.load()
    except Exception as error:  # PIL raises many types for corrupt data
        return (f"{kind.upper()} data is truncated or corrupt ({type(error).__name__}: "
                f"{error}); re-encode or replace the file"), None
    if kind in ("jpeg", "png") and not complete:
        return (f"{kind.upper()} data is truncated (no end marker); re-encode or replace "
                "the file"), None
    if level in ("decode", "full"):
        reason = _tensorflow_decode_problem(data if isinstance(source, (bytes, bytearray))
                                            else None, source)
        if reason:
            return reason, None
    if expected_hw and expected_hw[0] > 0 and tuple(expected_hw) != (height, width):
        if tuple(expected_hw) == (width, height) and orientation in (5, 6, 7, 8):
            return (f"image is {width}x{height} (WxH) as shown (EXIF orientation {orientation}, "
                    f"stored {height}x{width}) but the annotation says {expected_hw[1]}x"
                    f"{expected_hw[0]}: it was made on the stored pixels. Images are used as "
                    "viewers show them; if the boxes are on the stored pixels, clear the tag "
                    "(exiftool -Orientation=1 -n FILE), else fix the annotation's "
                    "width/height"), (height, width)
        return (f"image is {width}x{height} (WxH) but the annotation says {expected_hw[1]}x"
                f"{expected_hw[0]}; fix the annotation's width/height"), (height, width)
    return None, (height, width)


@functools.cache
def _graph_decode():
    """`transforms.decode_image` as one compiled function (op by op, the EXIF parser's loop
    made the check 30x slower than the decode)."""
    # TensorFlow only for 'decode' checks: reading records stays light without them.
    import tensorflow as tf

    from paa_tf.data import transforms

    # Traced here, once: the checks call it from several threads, and a tf.function's
    # first calls made at the same time each trace it (and TensorFlow warns of retracing).
    return tf.function(lambda encoded: tf.shape(transforms.decode_image(encoded)),
                       input_signature=[tf.TensorSpec([], tf.string)]).get_concrete_function()


def _tensorflow_decode_problem(data, path):
    """Why TensorFlow's decoder (`transforms.decode_image`) fails on the image, or None.

    `data`: the encoded bytes, or None to read them from `path`. The pipeline decodes with
    the same function, and a decode failure inside `tf.data` cannot be caught per record
    there without making the checkpointed iterator log a warning per element, so it is
    found here, before training.
    """
    import tensorflow as tf  # only for 'decode' checks: reading records stays light without

    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    try:
        _graph_decode()(tf.constant(data))
    except tf.errors.OpError as error:
        message = (getattr(error, "message", None) or str(error)).strip().splitlines()[0]
        return (f"image data is corrupt behind a valid header: TensorFlow cannot decode it "
                f"({message[:120]}); re-encode or replace the file")
    return None


def verify_images(records, report, *, level, skip_bad_records, workers=8):
    """Check every record's image file (in parallel); fills unknown sizes (height 0).

    Returns the records whose image is usable; problems raise or are skipped and reported.
    """
    if level not in LEVELS:
        raise ValueError(f"data.verify_images is {level!r}; choose one of {', '.join(LEVELS)}")
    def check(record):
        return image_problem(record.path, (record.height, record.width), level)

    if level == "none":
        results = [(None, (r.height, r.width)) for r in records]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check, records))
    problems, out = [], []
    for record, (reason, size) in zip(records, results):
        if reason:
            problems.append((record.image_id, record.name, f"{reason} ({record.path})"))
            continue
        if record.height <= 0 or record.width <= 0:
            record = dataclasses.replace(record, height=size[0], width=size[1])
        out.append(record)
    raise_or_skip(problems, report, skip_bad_records,
                  "Replace or re-encode the image files, or remove their records.")
    return out
