"""Every deployable format of one run side by side: latency per image and COCO AP.

Loads the files `bin/paa_export --formats saved_model,onnx,litert,litert_fp16,litert_int8`
wrote into `--export_dir` (`paa_tf.serving.formats`), each in its own runtime in this one
process (`paa_tf.serving.runtimes`: TensorFlow, onnxruntime CPU, ai_edge_litert), and
  latency  times each format on the same real photos (`--photos`: the first N JPEGs of a
           glob), one image per call, the formats' order reversed every other round
           (`bench_common.alternating_rounds`); prints the median wall and CPU ms per image
           and the ratio to the SavedModel;
  AP       runs each format over a COCO-format split (`--annotations`, `--images`: the
           quickstart's val split) and scores it with pycocotools (`coco_scoring`).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_formats.py --export_dir runs/quickstart/export \\
        --annotations data/shapes/annotations/instances_val.json --images data/shapes/val \\
        --photos 'data/shapes/val/*.jpg'
"""

import argparse
import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from bench_common import alternating_rounds, machine_facts  # noqa: E402

from paa_tf.evaluation import coco_scoring  # noqa: E402
from paa_tf.run_folder import RunFolder  # noqa: E402
from paa_tf.serving import export, formats, litert_export, onnx_export, runtimes  # noqa: E402

FILES = {"saved_model": "", "onnx": f"onnx/{onnx_export.FILENAME}",
         "litert": f"litert/{litert_export.FILENAME}",
         "litert_fp16": f"litert_fp16/{litert_export.FILENAME}",
         "litert_int8": f"litert_int8/{litert_export.FILENAME}"}


def _decode(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy()


def coco_ap(run, coco_gt, image_dir):
    """COCO AP (0-100) and AP50 of `run` over every image of `coco_gt`."""
    results = []
    for image_id in sorted(coco_gt.getImgIds()):
        info = coco_gt.loadImgs(image_id)[0]
        image = _decode(os.path.join(image_dir, info["file_name"]))
        out = run(image[None])
        height, width = image.shape[:2]
        for k in range(int(out["num_detections"][0])):
            ymin, xmin, ymax, xmax = out["detection_boxes"][0, k] * np.array([height, width] * 2)
            results.append({"image_id": image_id, "category_id": int(
                out["detection_classes"][0, k]), "bbox": [float(xmin), float(ymin),
                float(xmax - xmin), float(ymax - ymin)],
                "score": float(out["detection_scores"][0, k])})
    metrics = coco_scoring.coco_evaluate(coco_gt, results, verbose=False)
    return 100 * metrics["AP"], 100 * metrics["AP50"]


def network_split(model_dir, photos, rounds, threads):
    """Where the time goes: the network alone (Keras model on the pre-processed canvas, as
    TensorFlow, LiteRT fp32 and LiteRT int8) beside the whole files' figures above, so that
    whole - network is the pre/post-processing each runtime pays."""
    run = RunFolder(model_dir)
    module, _ = export.restore_detector(run, run.config())
    model = module._holder.model
    pre = module._preprocess
    canvas = [pre(p[0])[0][None].numpy()
              for p in photos]
    network = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec(canvas[0].shape, tf.float32)])
    concrete = network.get_concrete_function()
    calls = {"network TF": lambda x: network(tf.constant(x))}
    for variant in ("fp32", "int8"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
        if variant == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([c] for c in canvas)
        interpreter = Interpreter(model_content=converter.convert(), num_threads=threads)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]

        def invoke(x, interpreter=interpreter, index=index):
            interpreter.set_tensor(index, x)
            interpreter.invoke()
        calls[f"network LiteRT {variant}"] = invoke
    cpu = {}
    wall = alternating_rounds(calls, canvas, rounds, cpu=cpu)
    for name in calls:
        print(f"| {name} | {1000 * wall[name]:.1f} | {1000 * cpu[name]:.1f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export_dir", required=True)
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--photos", required=True, help="glob of the JPEGs to time")
    parser.add_argument("--num_photos", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", default=",".join(formats.FORMATS))
    parser.add_argument("--model_dir", help="the run folder: also time the network alone")
    args = parser.parse_args()
    print(machine_facts(tf))
    names = formats.check_formats(args.formats.split(","))
    runs = {name: runtimes.load_runner(name, os.path.join(args.export_dir, FILES[name]),
                                       num_threads=args.threads) for name in names}
    photos = [_decode(p)[None] for p in sorted(glob.glob(args.photos))[:args.num_photos]]
    sizes = sorted({p.shape[1:3] for p in photos})
    print(f"latency: {len(photos)} photos {sizes[:3]}{'...' if len(sizes) > 3 else ''}, "
          f"{args.rounds} alternating rounds, {args.threads} threads per runtime")
    cpu = {}
    wall = alternating_rounds(runs, photos, args.rounds, cpu=cpu)
    coco_gt = coco_scoring.load_coco(args.annotations)
    base = wall.get("saved_model")
    print("| format | ms / image (wall) | ms / image (CPU) | speed-up vs SavedModel | AP | "
          "AP50 |")
    print("|---|---|---|---|---|---|")
    for name in names:
        ap, ap50 = coco_ap(runs[name], coco_gt, args.images)
        ratio = f"{base / wall[name]:.2f}x" if base else "-"
        print(f"| {name} | {1000 * wall[name]:.1f} | {1000 * cpu[name]:.1f} | {ratio} | "
              f"{ap:.2f} | {ap50:.2f} |", flush=True)
    if args.model_dir:
        print("| network alone | ms / image (wall) | ms / image (CPU) |\n|---|---|---|")
        network_split(args.model_dir, photos, args.rounds, args.threads)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
