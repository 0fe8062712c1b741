"""The exported SavedModel end to end vs the network alone, in one process.

Builds the detector of a config (random weights; the class prior raised so that every level
fills its 1,000 pre-NMS candidates: the post-processing's worst case), exports it with
`paa_tf.serving.export`, reloads it, and times on the same JPEG:
  network     the Keras model on an already pre-processed batch (tf.function)
  exported    `serving_default` of the reloaded SavedModel: decode, resize, normalise, pad,
              network, candidates, NMS, score voting, normalised outputs
and prints the two times and their ratio (the cost of doing everything in the graph).

    .venv/bin/python bench/bench_export.py                       # R50-FPN, 640x640 bucket
    .venv/bin/python bench/bench_export.py --config configs/quickstart.yaml --size 256
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from paa_tf import config as config_lib  # noqa: E402
from paa_tf.data import label_map as label_map_lib  # noqa: E402
from paa_tf.data import transforms  # noqa: E402
from paa_tf.inference import postprocess  # noqa: E402
from paa_tf.modeling.detector import build_detector  # noqa: E402
from paa_tf.serving import (
    export,  # noqa: E402
    requests,  # noqa: E402
)


def _timed(fn, repeats):
    fn()  # warm-up (tracing, kernel selection)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/paa_r50_fpn_1x_coco.yaml")
    parser.add_argument("--size", type=int, default=640, help="square bucket (multiple of 128)")
    parser.add_argument("--image", default="480x640", help="test image HxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = config_lib.load_config(args.config, overrides=[
        f"data.image_size=[{args.size},{args.size}]", f"data.min_size=[{args.size}]",
        f"data.max_size={args.size}", "model.prior_prob=0.2"])
    config.model.backbone_checkpoint = None
    tf.random.set_seed(0)
    model = build_detector(config)
    label_map = label_map_lib.LabelMap(
        ids=tuple(range(1, config.model.num_classes + 1)),
        names=tuple(f"class{i}" for i in range(config.model.num_classes)))
    preprocess, max_pixels = requests.export_preprocess(config)
    params = postprocess.PostprocessParams.from_config(config)
    module = export.ExportedDetector(model, preprocess, params, label_map, max_pixels)
    height, width = (int(v) for v in args.image.split("x"))
    rng = np.random.default_rng(0)
    pixels = tf.image.resize(rng.uniform(0, 255, (1, height // 16, width // 16, 3)),
                             [height, width])[0]
    jpeg = tf.io.encode_jpeg(tf.cast(pixels, tf.uint8), quality=90).numpy()
    encoded = tf.constant([jpeg] * args.batch)

    with tempfile.TemporaryDirectory() as scratch:
        label_path = label_map_lib.write_label_map(label_map, os.path.join(scratch, "lm.json"))
        start = time.perf_counter()
        version_dir = export.save_exported(module, os.path.join(scratch, "export"), 1,
                                           assets=(label_path,))
        export_s = time.perf_counter() - start
        serving = tf.saved_model.load(version_dir).signatures["serving_default"]
        images = tf.stack([preprocess(transforms.decode_image(item))[0] for item in encoded])
        network = tf.function(lambda x: model(x, training=False))
        network_s = _timed(lambda: tf.nest.map_structure(lambda t: t.numpy(), network(images)),
                           args.repeats)
        exported_s = _timed(lambda: serving(inputs=encoded)["num_detections"].numpy(),
                            args.repeats)
        count = serving(inputs=encoded)["num_detections"].numpy()
    print(f"{config.model.backbone}, bucket {args.size}x{args.size}, {args.image} JPEG, batch "
          f"{args.batch}, {count[0]:.0f} detections/image, {os.cpu_count()} CPUs "
          f"(export took {export_s:.0f} s)")
    print(f"network alone      : {network_s * 1000:8.1f} ms/batch")
    print(f"exported, end to end: {exported_s * 1000:8.1f} ms/batch "
          f"({args.batch / exported_s:.2f} images/s)")
    print(f"ratio exported/network: {exported_s / network_s:.2f}")


if __name__ == "__main__":
    main()
