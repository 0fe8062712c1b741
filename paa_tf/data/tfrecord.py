"""TFRecords in Model Garden's `image/object/bbox/*` layout: writer and validating scanner.

Keys (one `tf.train.Example` per image; Model Garden's COCO TFRecords read as they are):
  image/encoded (bytes, original JPEG/PNG file), image/format, image/filename,
  image/source_id (bytes, decimal COCO image id), image/height, image/width (int64),
  image/object/bbox/{ymin,xmin,ymax,xmax} (float, normalised to [0, 1] by height/width),
  image/object/class/label (int64, the dataset's category id, e.g. COCO 1..90),
  image/object/class/text (bytes), image/object/is_crowd (int64), image/object/area (float).
The label map (ids -> contiguous indices) is written beside the shards as label_map.json.

`scan_tfrecords` reads every record once in Python (annotations and a header check of the
image, not a full decode) so that the pipeline knows the records and their problems up front.
"""

import os

import numpy as np
import tensorflow as tf

from paa_tf.data import label_map as label_map_lib
from paa_tf.data import records as records_lib
from paa_tf.data.image_files import image_format


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def make_example(record, encoded, label_map):
    """A `tf.train.Example` of `record` (raw reader output, original pixels) and its bytes."""
    height, width = float(record.height), float(record.width)
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
    ids = [int(label_map.ids[c]) for c in record.classes]
    names = [label_map.names[c].encode("utf-8") for c in record.classes]
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([(image_format(encoded) or "").encode()]),
        "image/filename": _bytes([record.name.encode("utf-8")]),
        "image/source_id": _bytes([str(int(record.image_id)).encode("ascii")]),
        "image/height": _ints([int(record.height)]),
        "image/width": _ints([int(record.width)]),
        "image/object/bbox/ymin": _floats((boxes[:, 0] / height).tolist()),
        "image/object/bbox/xmin": _floats((boxes[:, 1] / width).tolist()),
        "image/object/bbox/ymax": _floats((boxes[:, 2] / height).tolist()),
        "image/object/bbox/xmax": _floats((boxes[:, 3] / width).tolist()),
        "image/object/class/label": _ints(ids),
        "image/object/class/text": _bytes(names),
        "image/object/is_crowd": _ints([int(bool(c)) for c in record.is_crowd]),
        "image/object/area": _floats(((boxes[:, 2] - boxes[:, 0])
                                      * (boxes[:, 3] - boxes[:, 1])).tolist()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_paths(output_prefix, num_shards):
    return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def write_tfrecords(records, output_prefix, num_shards, label_map):
    """Write `records` (with image paths) round-robin into `num_shards` files.

    Image bytes are copied unchanged (no re-encoding). Also writes label_map.json beside the
    shards. Returns the list of shard paths.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    paths = shard_paths(output_prefix, num_shards)
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for k, record in enumerate(records):
            with open(record.path, "rb") as f:
                encoded = f.read()
            example = make_example(record, encoded, label_map)
            writers[k % num_shards].write(example.SerializeToString())
    finally:
        for writer in writers:
            writer.close()
    label_map_lib.write_label_map(label_map, os.path.join(
        os.path.dirname(os.path.abspath(output_prefix)), label_map_lib.LABEL_MAP_FILENAME))
    return paths


def find_shards(pattern):
    """Sorted files matching the glob `pattern` (comma-separated globs allowed).

    A label_map.json beside the shards is not a shard, so `folder/*` works.
    """
    files = sorted({f for p in str(pattern).split(",") if p.strip()
                    for f in tf.io.gfile.glob(p.strip())
                    if os.path.basename(f) != label_map_lib.LABEL_MAP_FILENAME})
    if not files:
        raise ValueError(f"no TFRecord files match {pattern!r}; check data.train_tfrecords / "
                         "data.val_tfrecords (glob patterns)")
    return files


def default_label_map(files):
    """label_map.json beside the first shard, or a ValueError saying how to provide one."""
    path = os.path.join(os.path.dirname(files[0]), label_map_lib.LABEL_MAP_FILENAME)
    if os.path.isfile(path):
        return label_map_lib.load_label_map(path)
    raise ValueError(f"no label map for the TFRecords in {os.path.dirname(files[0])}: set "
                     "data.label_map to a label_map.json or to the COCO instances JSON whose "
                     "categories the records use (class/label holds dataset ids)")


def encoded_image(serialized):
    """The `image/encoded` bytes (tf.string []) of one serialized Example (in-graph)."""
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    return tf.io.parse_single_example(serialized, spec)["image/encoded"]


def read_encoded(record, layout):
    """The image file bytes of one `ImageRecord`: its file, or its TFRecord shard's record
    (`layout` = (files, counts) from `paa_tf.data.pipeline.load_records`), read by skipping
    to it rather than decoding the shards before it."""
    if record.path:
        with open(record.path, "rb") as f:
            return f.read()
    files, counts = layout
    offset = record.tfrecord_index
    for path, count in zip(files, counts):
        if offset < count:
            serialized = next(iter(tf.data.TFRecordDataset(path).skip(offset).take(1)))
            return encoded_image(serialized).numpy()
        offset -= count
    raise ValueError(f"{record.describe()}: record {record.tfrecord_index} is not in the "
                     f"shards {list(files)}")


def _feature_list(feature, key, kind):
    if key not in feature:
        return []
    return list(getattr(feature[key], kind).value)


def _source_id(raw):
    text = raw.decode("utf-8", "replace").strip()
    return (int(text) if text.isdigit() else records_lib.stable_id(text)), text


def _parse(example, label_map):
    """Raw Example -> (image_id, name, encoded, height, width, boxes, classes, crowd)."""
    feature = example.features.feature
    encoded = _feature_list(feature, "image/encoded", "bytes_list")
    if len(encoded) != 1:
        raise ValueError("has no image/encoded bytes")
    source = _feature_list(feature, "image/source_id", "bytes_list")
    if not source:
        raise ValueError("has no image/source_id")
    image_id, text = _source_id(source[0])
    height = (_feature_list(feature, "image/height", "int64_list") or [0])[0]
    width = (_feature_list(feature, "image/width", "int64_list") or [0])[0]
    coords = [_feature_list(feature, f"image/object/bbox/{k}", "float_list")
              for k in ("ymin", "xmin", "ymax", "xmax")]
    labels = _feature_list(feature, "image/object/class/label", "int64_list")
    crowd = _feature_list(feature, "image/object/is_crowd", "int64_list") or [0] * len(labels)
    if len({len(c) for c in coords} | {len(labels), len(crowd)}) != 1:
        raise ValueError(f"has {[len(c) for c in coords]} box coordinates, {len(labels)} "
                         f"labels and {len(crowd)} crowd flags; the lists must match")
    classes = [label_map.index_of_id(int(i)) for i in labels]
    unknown = sorted({int(i) for i, c in zip(labels, classes) if c is None})
    if unknown:
        raise ValueError(f"has unknown class/label id(s) {unknown} (label map ids: "
                         f"{list(label_map.ids)[:10]}...)")
    names = _feature_list(feature, "image/filename", "bytes_list")
    name = names[0].decode("utf-8", "replace") if names else text
    boxes = np.array(coords, np.float64).T.reshape(-1, 4)
    return (image_id, name, encoded[0], int(height), int(width), boxes,
            np.array(classes, np.int32).reshape(-1), np.array(crowd, bool).reshape(-1))


def scan_tfrecords(files, report, *, label_map, level="header", skip_bad_records=False):
    """Read and validate every record of `files`; returns (records, readable_counts).

    Each record has `tfrecord_index` = its global position (shards in order, then position in
    the shard) and boxes in original pixels. `readable_counts[i]` is how many records of shard
    i can be read: a corrupt shard tail is reported and never read again by the pipeline.
    """
    records, problems, counts, offset = [], [], [], 0
    for path in files:
        position = 0
        iterator = iter(tf.data.TFRecordDataset(path))
        while True:
            try:
                serialized = next(iterator).numpy()
            except StopIteration:
                break
            except (tf.errors.DataLossError, tf.errors.OpError) as error:
                problems.append((None, f"{path} record {position}", "shard is corrupt from "
                                 f"here on ({type(error).__name__}); records after it are not "
                                 "read. Rewrite the shard"))
                break
            where, image_id = f"{path} record {position}", None
            try:
                example = tf.train.Example.FromString(serialized)
                source = _feature_list(example.features.feature, "image/source_id",
                                       "bytes_list")
                image_id = _source_id(source[0])[0] if source else None
                (image_id, name, encoded, height, width, boxes, classes,
                 crowd) = _parse(example, label_map)
            except Exception as error:  # a protobuf DecodeError or our ValueError
                problems.append((image_id, where, f"{error}"))
                position += 1
                continue
            reason, size = records_lib.image_problem(encoded, (height, width), level)
            if reason:
                problems.append((image_id, where, reason))
            else:
                height, width = size if height <= 0 else (height, width)
                scale = np.array([height, width, height, width], np.float64)
                records.append(records_lib.ImageRecord(
                    image_id=image_id, name=name, height=height, width=width,
                    boxes=(boxes * scale).astype(np.float32), classes=classes, is_crowd=crowd,
                    annotation_ids=[f"object {k}" for k in range(len(classes))], source=where,
                    tfrecord_index=offset + position))
            position += 1
        counts.append(position)
        offset += position
    records_lib.raise_or_skip(problems, report, skip_bad_records,
                              "Rewrite these records (e.g. with paa_make_tfrecord) or pass the "
                              "right data.label_map.")
    return records, counts
