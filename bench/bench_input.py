"""Input pipeline throughput (images/s), side by side with a decode-only reader.

For each input size (the R50 setting 800/1333 in a 1408x1408 bucket, and the quickstart
256x256) it times, in one process:
  decode-only : tf.data read + JPEG decode of the same files (an upper bound for any pipeline)
  pipeline    : paa_tf.data.pipeline.build_dataset(..., is_training=True): decode, multi-scale
                resize, flip, normalise, pad, GT padding, batching
  tfrecord    : the same pipeline reading TFRecords written by paa_make_tfrecord
and prints images/s and the ratio pipeline / decode-only. It also times the load-time image
check (`pipeline.load_records`) at `data.verify_images` 'header' and 'decode' (the default,
which decodes every image with TensorFlow to find data corrupt behind a valid header),
alternating, and prints the milliseconds per image of each.

    .venv/bin/python bench/bench_input.py [--images N] [--coco_root ../shared/data/coco_mini]

Without the real COCO excerpt it generates 640x480 JPEGs (noise + shapes) in a temp folder.
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from paa_tf.config import DataConfig  # noqa: E402
from paa_tf.data import (
    pipeline,  # noqa: E402
    tfrecord_convert,  # noqa: E402
)


def generated_coco(folder, count=64):
    """A COCO-layout folder of `count` 640x480 JPEGs with 3 boxes each."""
    from PIL import Image
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(count):
        pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        pixels = (pixels // 4 + np.linspace(0, 180, 640, dtype=np.uint8)[None, :, None])
        Image.fromarray(pixels).save(os.path.join(folder, "images", f"{i}.jpg"), quality=90)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 480, "width": 640})
        for k in range(3):
            annotations.append({"id": 3 * i + k + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [50.0 + 100 * k, 60.0, 80.0, 120.0], "iscrowd": 0})
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "thing"}]}, f)
    return os.path.join(folder, "images"), path


def rate(make_dataset, images, batch_size, repeats):
    """Median (images/s, CPU ms/image) over `repeats` fresh iterators of `images` images.

    CPU ms/image is this process's CPU time (all threads) per image: less sensitive than
    images/s to other jobs sharing the machine.
    """
    rates, cpu = [], []
    for _ in range(repeats):
        iterator = iter(make_dataset())
        for _ in range(3):
            next(iterator)
        batches = max(1, images // batch_size)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            batch = next(iterator)
        first = batch["image"] if isinstance(batch, dict) else batch
        np.asarray(first[0, 0])  # the last batch is materialised
        rates.append(batches * batch_size / (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - start_cpu) / (batches * batch_size))
    return float(np.median(rates)), float(np.median(cpu))


def decode_only(paths):
    return tf.data.Dataset.from_tensor_slices(paths).repeat().map(
        lambda p: tf.shape(tf.io.decode_jpeg(tf.io.read_file(p), channels=3)),
        num_parallel_calls=tf.data.AUTOTUNE).batch(8).prefetch(tf.data.AUTOTUNE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--coco_root", default=os.path.join(here, "..", "shared", "data",
                                                            "coco_mini"))
    parser.add_argument("--images", type=int, default=160, help="images timed per figure")
    parser.add_argument("--repeats", type=int, default=3, help="figures are medians of this")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_input_")
    annotations = os.path.join(args.coco_root, "annotations", "instances_train2017.json")
    if os.path.isfile(annotations):
        image_dir, source = os.path.join(args.coco_root, "train2017"), "coco_mini train2017"
    else:
        image_dir, annotations = generated_coco(tmp)
        source = "generated 640x480 JPEGs"
    tfrecord_convert.convert("coco", os.path.join(tmp, "tf", "train"), 4,
                          annotations=annotations, images=image_dir)
    with open(annotations) as f:
        paths = [os.path.join(image_dir, i["file_name"]) for i in json.load(f)["images"]]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"TF {tf.__version__}; data: {source}; {args.images} images per figure")
    base, base_cpu = rate(lambda: decode_only(paths), args.images, 8, args.repeats)
    print(f"{'decode-only (read + decode_jpeg)':42s} {base:6.1f} images/s "
          f"({base_cpu:5.1f} CPU ms/image)")
    files = DataConfig(format="coco", train_images=image_dir, train_annotations=annotations,
                       max_instances=100)
    load = {"header": [], "decode": []}
    for order in (("header", "decode"), ("decode", "header")) * args.repeats:
        for level in order:
            start = time.perf_counter()
            records, _, _ = pipeline.load_records(
                dataclasses.replace(files, verify_images=level), "train")
            load[level].append(1000 * (time.perf_counter() - start) / len(records))
    print(f"{'load-time check, header / decode':42s} "
          + " / ".join(f"{np.median(load[k]):5.2f}" for k in ("header", "decode"))
          + " ms per image (median wall time, 8 threads)")
    settings = [("800/1333 in 1408x1408, batch 2", dict(min_size=(800,), max_size=1333,
                                                       image_size=(1408, 1408)), 2),
                ("quickstart 256x256, batch 8", dict(min_size=(256,), max_size=256,
                                                    image_size=(256, 256)), 8)]
    for name, sizes, batch_size in settings:
        files = DataConfig(format="coco", train_images=image_dir, train_annotations=annotations,
                           max_instances=100, **sizes)
        shards = DataConfig(format="tfrecord", max_instances=100,
                            train_tfrecords=os.path.join(tmp, "tf", "train-*"), **sizes)
        for source, config in (("files", files), ("tfrecord", shards)):
            images_s, cpu_ms = rate(
                lambda c=config, b=batch_size: pipeline.build_dataset(c, "train", True, b)[0],
                args.images, batch_size, args.repeats)
            print(f"{name + ', ' + source:42s} {images_s:6.1f} images/s ({cpu_ms:5.1f} CPU "
                  f"ms/image) | pipeline / decode-only: {images_s / base:.2f} in images/s, "
                  f"{cpu_ms / base_cpu:.1f}x the CPU")

if __name__ == "__main__":
    main()
