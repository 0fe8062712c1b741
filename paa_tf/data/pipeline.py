"""One `tf.data` pipeline for COCO, VOC and TFRecord data: `build_dataset`.

Load time (Python): the reader builds the record list, every image is checked (header, end
marker and, by default, a TensorFlow decode: see `records.image_problem`), boxes are validated
and filtered (docs/CONVENTIONS.md, "Data filters"; see `records`), and bad records raise a
`BadRecordError` or, with `skip_bad_records`, are skipped and listed in the returned
`BadRecordReport`. Nothing bad reaches TensorFlow's pipeline: a decode failure inside
`tf.data` would stop the iterator without naming the record (and cannot be caught per
element there while the iterator stays checkpointable), so the load-time decode is the default.

Graph (per image): read/parse bytes -> decode (JPEG/PNG/...) -> resize (shorter side S, longer
<= L, fits the bucket) and normalise (mean/std, RGB 0-255) -> flip (training) -> pad to the
static bucket [H, W] -> GT padded to `max_instances` with -1. With `data.buckets: square` the
bucket is the canvas `data.image_size`; with `orientation` it is the image's orientation
bucket (`paa_tf.data.buckets`), and each batch holds images of one bucket (training groups
row indices before reading; evaluation groups decoded images and keeps partial batches), so
H and W are static per batch but not in the dataset's element_spec. Batched elements:

  image       float32 [B, H, W, 3]
  gt_boxes    float32 [B, M, 4]  yxyx pixels of the resized input (-1 rows pad); continuous,
                                  or the authors' inclusive "+1" boxes with `plus_one`
  gt_classes  int32   [B, M]     contiguous 0..C-1 (-1 pads); crowd boxes never included
  image_info  float32 [B, 4, 2]  [[orig_h, orig_w], [scaled_h, scaled_w], [scale_y, scale_x],
                                  [offset_y, offset_x]]; original box = (box - offset) / scale
  source_id   int64   [B]        COCO image id (VOC: records.stable_id of the file stem)

Randomness (flip, multi-scale S) is stateless, keyed on (seed, replica, element counter), so
it does not depend on the parallel map's scheduling; `deterministic` fixes the order as well.
Evaluation always keeps the record order: which images `max_batches` covers, and the order of
the results file, must not depend on which decode finished first.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from paa_tf.data import buckets as buckets_lib
from paa_tf.data import coco as coco_lib
from paa_tf.data import label_map as label_map_lib
from paa_tf.data import records as records_lib
from paa_tf.data import tfrecord as tfrecord_lib
from paa_tf.data import transforms
from paa_tf.data import voc as voc_lib
from paa_tf.data.inference_preprocess import InferencePreprocess
from paa_tf.data.label_map import load_label_map  # noqa: F401  (public API of this module)


def dataset_label_map(config):
    """The LabelMap of the data: `data.label_map` when set, else derived from the source."""
    if config.label_map:
        return label_map_lib.load_label_map(config.label_map)
    if config.format == "coco":
        annotations = config.train_annotations or config.val_annotations
        content = coco_lib.load_coco_json(annotations)
        return label_map_lib.from_coco_categories(content.get("categories"), annotations)
    if config.format == "voc":
        return voc_lib.default_label_map(config.voc_root, config.voc_annotations or None)
    if config.format == "tfrecord":
        return tfrecord_lib.default_label_map(
            tfrecord_lib.find_shards(config.train_tfrecords or config.val_tfrecords))
    raise ValueError(f"data.format is {config.format!r}; choose 'coco', 'voc' or 'tfrecord'")


def run_label_map(config):
    """The LabelMap a trained model is saved with (`label_map.json` beside its checkpoints):
    `data.label_map` when set (validated here, early), else the one derived from the source.
    """
    if config.label_map:
        return label_map_lib.load_label_map(config.label_map)
    return dataset_label_map(config)


def describe_source(config, split):
    """The data `split` ('train' | 'val') reads, for messages: 'data/x/val2017',
    'data/voc test', 'data/xml (list data/val.csv)', 'data/*.tfrecord'."""
    train = split == "train"
    if config.format == "voc" and config.voc_annotations:
        images = config.voc_images or config.voc_annotations
        listed = config.voc_train_list if train else config.voc_val_list
        where = (config.voc_annotations if images == config.voc_annotations
                 else f"{config.voc_annotations} + {images}")
        return f"{where} ({f'list {listed}' if listed else 'every XML'})"
    return {"coco": config.train_images if train else config.val_images,
            "voc": f"{config.voc_root} {config.voc_train_split if train else config.voc_val_split}",
            "tfrecord": config.train_tfrecords if train else config.val_tfrecords,
            }.get(config.format, "")


def load_records(config, split="train", is_training=True, skip_bad_records=None):
    """Validated, filtered records of `split`; returns (records, report, tfrecord_layout).

    `tfrecord_layout` is (files, readable counts) for the TFRecord format, else None.
    `report.max_instances` is the GT rows per image: `data.max_instances`, or when that is
    None the most boxes in one image of the split after the filters.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split is {split!r}; choose 'train' or 'val'")
    skip = config.skip_bad_records if skip_bad_records is None else bool(skip_bad_records)
    # The report names the files read: paa_eval may point the 'val' slot at any split.
    source = describe_source(config, split)
    report = records_lib.BadRecordReport(split=f"{split}: {source}" if source else split)
    label_map = label_map_lib.load_label_map(config.label_map) if config.label_map else None
    level = config.verify_images
    layout = None
    if config.format == "coco":
        annotations = config.train_annotations if split == "train" else config.val_annotations
        images = config.train_images if split == "train" else config.val_images
        records, label_map = coco_lib.read_coco(annotations, images, report,
                                                skip_bad_records=skip, label_map=label_map)
        records = records_lib.verify_images(records, report, level=level, skip_bad_records=skip)
    elif config.format == "voc" and config.voc_annotations:
        records, label_map = voc_lib.read_voc_folders(
            config.voc_annotations, config.voc_images,
            config.voc_train_list if split == "train" else config.voc_val_list, report,
            skip_bad_records=skip, label_map=label_map, keep_difficult=config.voc_keep_difficult)
        records = records_lib.verify_images(records, report, level=level, skip_bad_records=skip)
    elif config.format == "voc":
        voc_split = config.voc_train_split if split == "train" else config.voc_val_split
        records, label_map = voc_lib.read_voc(
            config.voc_root, voc_split, report, skip_bad_records=skip, label_map=label_map,
            keep_difficult=config.voc_keep_difficult)
        records = records_lib.verify_images(records, report, level=level, skip_bad_records=skip)
    elif config.format == "tfrecord":
        files = tfrecord_lib.find_shards(
            config.train_tfrecords if split == "train" else config.val_tfrecords)
        label_map = label_map or tfrecord_lib.default_label_map(files)
        records, counts = tfrecord_lib.scan_tfrecords(
            files, report, label_map=label_map, level=level, skip_bad_records=skip)
        layout = (files, counts)
    else:
        raise ValueError(f"data.format is {config.format!r}; choose 'coco', 'voc' or 'tfrecord'")
    report.id_to_name = {r.image_id: r.name for r in records}
    records = records_lib.finalize(
        records, report, is_training=is_training, max_instances=config.max_instances,
        box_tolerance=float(config.box_tolerance), skip_bad_records=skip)
    if not records:
        raise ValueError(f"data '{report.split}' has no usable images after validation and "
                         f"filtering:\n{report.summary()}")
    report.label_map = label_map
    report.num_images = len(records)
    report.num_boxes = int(sum(len(r.boxes) for r in records))
    return records, report, layout


@dataclasses.dataclass
class _Table:
    """Ragged annotations of the records as flat constants, indexed by row."""

    source_ids: np.ndarray
    splits: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    paths: np.ndarray
    portrait: np.ndarray  # int32 [N], 1 where the record's height > width (bucket choice)

    @classmethod
    def of(cls, records):
        lengths = [len(r.boxes) for r in records]
        return cls(portrait=np.array([int(r.height or 0) > int(r.width or 0) for r in records],
                                     np.int32),
                   source_ids=np.array([r.image_id for r in records], np.int64),
                   splits=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   boxes=np.concatenate([r.boxes.reshape(-1, 4) for r in records]).astype(
                       np.float32).reshape(-1, 4),
                   classes=np.concatenate([r.classes for r in records]).astype(np.int32),
                   paths=np.array([r.path or "" for r in records], object))


def _shorter_side(seed, counter, config, is_training):
    """The shorter side S of element `counter`: drawn from `config.min_size` (training), else
    the evaluation scale `config.eval_shorter_side`.

    Stateless on (seed, counter), so the bucket grouping and the resize draw the same S.
    """
    if not is_training:
        return tf.constant(config.eval_shorter_side, tf.int32)
    sizes = tuple(int(s) for s in config.min_size)
    min_s, max_s = min(sizes), max(sizes)
    if max_s > min_s:
        key = tf.stack([tf.cast(seed, tf.int64), tf.cast(counter, tf.int64)])
        return tf.random.stateless_uniform([], key, min_s, max_s + 1, dtype=tf.int32)
    return tf.constant(max_s, tf.int32)


def _bucket_fn(config, table, is_training, seed):
    """(counter, row) -> int32 index of the element's bucket in `buckets.bucket_shapes`."""
    # The table's columns are this split's scales (`buckets.scale_sides`), smallest first.
    first = min(buckets_lib.scale_sides(config, is_training))
    _, lookup = buckets_lib.bucket_lookup(config, is_training)
    lookup, portrait = tf.constant(lookup), tf.constant(table.portrait)
    return lambda counter, row: lookup[
        portrait[row], _shorter_side(seed, counter, config, is_training) - first]


def _example_fn(config, table, is_training, seed, plus_one):
    """(counter, row, encoded bytes) -> element dict (unbatched), padded to its bucket;
    `plus_one` as in `build_dataset`."""
    shapes, _ = buckets_lib.bucket_lookup(config, is_training)
    bucket_of = _bucket_fn(config, table, is_training, seed)
    splits, boxes_flat = tf.constant(table.splits), tf.constant(table.boxes)
    classes_flat, source_ids = tf.constant(table.classes), tf.constant(table.source_ids)
    shape_table = tf.constant(shapes, tf.int32)
    evaluation = InferencePreprocess.from_data_config(config)

    def fn(counter, row, encoded):
        image = transforms.decode_image(encoded)
        start, end = splits[row], splits[row + 1]
        boxes, classes = boxes_flat[start:end], classes_flat[start:end]
        key = tf.stack([tf.cast(seed, tf.int64), counter])
        shorter = _shorter_side(seed, counter, config, is_training)
        # One bucket: its static Python shape; several: the element's own, chosen at run time.
        image_size = shapes[0] if len(shapes) == 1 else tf.unstack(
            shape_table[bucket_of(counter, row)])
        if not is_training:  # exactly what every program that runs a model does
            image, image_info = evaluation(image, canvas=image_size)
            boxes, classes = transforms.pad_instances(
                transforms.scale_boxes(boxes, image_info, plus_one), classes,
                config.max_instances)
            return {"image": image, "gt_boxes": boxes, "gt_classes": classes,
                    "image_info": image_info, "source_id": source_ids[row]}
        image, image_info = transforms.resize_image(image, shorter, config.max_size, image_size,
                                                    config.pixel_mean, config.pixel_std)
        boxes = transforms.scale_boxes(boxes, image_info, plus_one)
        if is_training and config.flip_prob > 0:
            flip = tf.random.stateless_uniform([], key + [0, 1 << 40]) < config.flip_prob
            image, boxes = tf.cond(
                flip, lambda: transforms.flip_left_right(image, boxes, plus_one),
                lambda: (image, boxes))
        image = transforms.pad_image(image, image_size)
        boxes, classes = transforms.pad_instances(boxes, classes, config.max_instances)
        return {"image": image, "gt_boxes": boxes, "gt_classes": classes,
                "image_info": image_info, "source_id": source_ids[row]}

    return fn


def _file_rows(table, is_training, repeat, seed, pipelines, read=True):
    """Dataset of (row, encoded bytes) reading image files; of rows alone without `read`."""
    paths = tf.constant(table.paths.astype(str))
    rows = tf.data.Dataset.range(len(table.source_ids))
    if pipelines[0] > 1:
        rows = rows.shard(*pipelines)
    if is_training:
        rows = rows.shuffle(len(table.source_ids), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        rows = rows.repeat()
    if not read:
        return rows
    return rows.map(lambda row: (row, tf.io.read_file(paths[row])))


def _tfrecord_rows(records, layout, config, is_training, repeat, seed, pipelines):
    """Dataset of (row, encoded bytes) reading TFRecord shards (corrupt tails never read)."""
    files, counts = layout
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    row_of = np.full(max(int(np.sum(counts)), 1), -1, np.int64)
    row_of[[r.tfrecord_index for r in records]] = np.arange(len(records))
    row_of = tf.constant(row_of)
    shards = tf.data.Dataset.from_tensor_slices((files, np.array(counts, np.int64), offsets))
    by_file = pipelines[0] > 1 and len(files) >= pipelines[0]
    if by_file:
        shards = shards.shard(*pipelines)
    if is_training:
        # One file order for every pipeline (base seed), so record-level sharding partitions.
        shards = shards.shuffle(len(files), seed=int(config.seed),
                                reshuffle_each_iteration=True)
    if repeat:
        shards = shards.repeat()

    def read(path, count, offset):
        return tf.data.TFRecordDataset(path).take(count).enumerate().map(
            lambda i, s: (offset + i, s))

    cycle = min(len(files), 8) if is_training else 1
    # Sequential interleave: TF 2.20's parallel interleave races with the symbolic checkpoint
    # of the map after it (a segfault in ParallelInterleaveIterator::WriteElement, 4 of 4
    # runs of 20 pipelines). Decoding, not reading, is the costly part and stays parallel.
    data = shards.interleave(read, cycle_length=cycle)
    if pipelines[0] > 1 and not by_file:
        data = data.shard(*pipelines)
    data = data.map(lambda index, s: (row_of[index], s)).filter(lambda row, s: row >= 0)
    if is_training and config.shuffle_buffer > 1:
        data = data.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return data.map(lambda row, s: (row, tfrecord_lib.encoded_image(s)))


def encoded_rows(records, layout, config):
    """Dataset of (row int64, encoded tf.string []) of `records` in their order, unshuffled:
    the files' bytes, or their TFRecord shards' `image/encoded` (`layout` from
    `load_records`). What a model that decodes for itself reads (`paa_tf.evaluation.inputs`)."""
    if layout is None:
        return _file_rows(_Table.of(records), False, False, 0, (1, 0))
    return _tfrecord_rows(records, layout, config, False, False, 0, (1, 0))


def _group_by_bucket(data, batch_size):
    """Batches of `batch_size` elements padded to one bucket (the last of each may be short).

    For finite passes (evaluation): grouping by the padded shape keeps every image and flushes
    the partial batches at the end. Never checkpointed, so GroupByWindow is fine here.
    """
    def key(element):
        shape = tf.shape(element["image"], out_type=tf.int64)
        return shape[0] * 100003 + shape[1]

    return data.group_by_window(key, lambda _, window: window.batch(batch_size),
                                window_size=batch_size)


def _bucketed_training(config, table, records, layout, batch_size, input_context, parallel,
                       plus_one):
    """Repeated training batches of one bucket each, split between the input pipelines.

    Every pipeline walks the same shuffled row stream (base seed), groups the rows into
    global batches of one bucket (`buckets.group_into_batches`, before any file is read), and
    decodes only its own share of each global batch. So the replicas of one step all get
    per-replica batches of the same shape, and a step's global batch is one partition of the
    stream whatever the number of pipelines. TFRecord pipelines each read every record's
    bytes (decoding, the costly part, is still split).
    """
    pipelines, pipeline_id, replicas = 1, 0, 1
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        replicas = input_context.num_replicas_in_sync
    global_batch = batch_size * replicas
    share = global_batch // pipelines
    seed = int(config.seed) * 1009  # one stream for all pipelines
    if layout is None:
        paths = tf.constant(table.paths.astype(str))
        rows = _file_rows(table, True, True, seed, (1, 0), read=False)
        rows = rows.map(lambda row: (row, paths[row]))
    else:
        rows = _tfrecord_rows(records, layout, config, True, True, seed, (1, 0))
    bucket_of = _bucket_fn(config, table, True, seed)
    rows = rows.scan(tf.constant(0, tf.int64),  # the counter as in build_dataset (not enumerate)
                     lambda count, pair: (count + 1, (count, pair[0], pair[1])))
    grouped = buckets_lib.group_into_batches(
        rows, lambda i, row, payload: bucket_of(i, row),
        len(buckets_lib.bucket_shapes(config, True)), global_batch)
    lo = pipeline_id * share
    mine = grouped.map(lambda i, row, payload: (i[lo:lo + share], row[lo:lo + share],
                                                payload[lo:lo + share])).unbatch()
    example = _example_fn(config, table, True, seed, plus_one)
    if layout is None:
        def element(i, row, path):
            return example(i, row, tf.io.read_file(path))
    else:
        element = example
    # In order, always: a reordered element could land in a batch of another bucket's shape.
    data = mine.map(element, num_parallel_calls=parallel, deterministic=True)
    return data.batch(batch_size, drop_remainder=True)


def build_dataset(data_config, split="train", is_training=True, batch_size=1,
                  input_context=None, skip_bad_records=None, repeat=None, plus_one=False):
    """The batched input pipeline of `split`; returns (tf.data.Dataset, BadRecordReport).

    `batch_size` is the batch of the returned dataset: under a `tf.distribute` strategy that
    is the per-replica batch (global batch // replicas), and `input_context` (the
    `tf.distribute.InputContext` given by `strategy.distribute_datasets_from_function`) shards
    the records per input pipeline. Training (`is_training`) shuffles,
    flips, samples S from `min_size` and, by default (`repeat=None`), repeats forever with
    full batches (static batch size); evaluation keeps images without boxes and the last
    partial batch. The
    report lists skipped records by id and the counts of the documented filters.
    `plus_one` (`model.plus_one`) gives `gt_boxes` in the authors' "+1" pixels (see
    `transforms.scale_boxes`); records and evaluation ground truth stay continuous.
    """
    config = data_config
    records, report, layout = load_records(config, split, is_training, skip_bad_records)
    report.log()
    config = dataclasses.replace(config, max_instances=report.max_instances)
    repeat = is_training if repeat is None else repeat
    pipelines, replica = (1, 0), 0
    if input_context is not None:
        pipelines = (input_context.num_input_pipelines, input_context.input_pipeline_id)
        replica = input_context.input_pipeline_id
    seed = int(config.seed) * 1009 + replica
    table = _Table.of(records)
    parallel = tf.data.AUTOTUNE if config.num_parallel_calls < 0 else config.num_parallel_calls
    several = len(buckets_lib.bucket_shapes(config, is_training)) > 1
    if several and is_training and repeat:
        return _finish(_bucketed_training(config, table, records, layout, int(batch_size),
                                          input_context, parallel, bool(plus_one)),
                       bool(config.deterministic)), report
    if layout is None:
        data = _file_rows(table, is_training, repeat, seed, pipelines)
    else:
        data = _tfrecord_rows(records, layout, config, is_training, repeat, seed, pipelines)
    ordered = bool(config.deterministic) or not is_training
    example = _example_fn(config, table, is_training, seed, bool(plus_one))
    # Each element gets its index in the stream (the key of its random draws) from a scan,
    # not from `enumerate()`: enumerate is a zip with a range, and TF 2.20's zip re-saves
    # the symbolic state of a shuffle holding its whole input wrongly once that state has
    # been restored, so the second resume of a run failed at its first batch ("Expected 1
    # components but got 0" in IteratorGetNext; docs/ROBUSTNESS.md). A scan keeps the
    # counter in its own saved state.
    data = data.scan(tf.constant(0, tf.int64),
                     lambda count, pair: (count + 1, (count, pair[0], pair[1])))
    data = data.map(example, num_parallel_calls=parallel, deterministic=ordered)
    if several:
        data = _group_by_bucket(data, int(batch_size))
    else:
        data = data.batch(int(batch_size), drop_remainder=bool(is_training and repeat))
    return _finish(data, ordered), report


def _finish(data, ordered):
    """Prefetching and the options every pipeline of `build_dataset` shares."""
    data = data.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = ordered
    # A checkpointed iterator then stores positions, not the prefetched image batches
    # (256x256 batch 8: 39 KB instead of 9.5 MB; 1408x1408 batches are 48 MB each).
    options.experimental_symbolic_checkpoint = True
    return data.with_options(options)
