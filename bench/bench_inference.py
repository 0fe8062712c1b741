"""Exported PAA SavedModel (with and without score voting) vs Model Garden's RetinaNet, CPU.

Three SavedModels, all ResNet-50 + FPN (P3-P7), 80 classes, random weights, the same square
input bucket, each exported with its own library and reloaded in this process:
  PAA, voting      `paa_tf.export` of configs/paa_r50_fpn_1x_coco.yaml, score voting on
  PAA, no voting   the same model and weights, exported with score voting off
  RetinaNet        Model Garden's `retinanet_resnetfpn_coco` experiment exported with
                   `official.vision.serving` (`DetectionModule`, input type image_tensor),
                   its default detection generator (NMS) settings kept
Each is fed the same real COCO photo as uint8 [1, h, w, 3] through its `image_tensor`-kind
signature (ours: `image_tensor`; RetinaNet's: `serving_default`), so each model resizes and pads
it with its own pre-processing. Calls are interleaved round-robin (A, B, C, A, B, C, ...) so
machine load hits all three alike; the median of `--repeats` calls per model is reported.

Random weights put every class probability near the classifier's prior. Both models get the
same raised prior (`--prior`, default 0.2; the usual 0.01 gives random-weight models no
candidate above the 0.05 score threshold): PAA through `model.prior_prob`, RetinaNet, whose
config has no prior option, by setting its classifier bias to the same value after building.
Post-processing then sees its worst case (PAA: 1,000 candidates on every level; RetinaNet:
every (anchor, class) pair above the threshold). The script prints how many candidates pass
the score threshold in each model.

The raised prior is PAA's worst case but not RetinaNet's: Model Garden's default NMS (v2) runs,
for each class, a padded NMS over its top 5,000 boxes in tiles of 512 that stops early only once
that class holds 100 kept boxes; boxes under the threshold are zeroed, not skipped. With the
raised prior every class fills 100 at once; with few boxes above the threshold (a trained model
on a real photo, or `--prior 0.01` here) every class scans all its tiles, which is slower. Run
both priors to bracket the comparison.

    taskset -c 1 .venv/bin/python bench/bench_inference.py                  # 640x640
    taskset -c 1 .venv/bin/python bench/bench_inference.py --size 256 --repeats 2
"""

import argparse
import glob
import math
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before TensorFlow: keeps Keras 3 out of the process (see paa_tf/__init__.py).
import paa_tf  # noqa: E402,F401  # isort: skip

import bench_common  # noqa: E402  (bench/ is the script folder)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

PAA_CONFIG = "configs/paa_r50_fpn_1x_coco.yaml"
RETINANET_EXPERIMENT = "retinanet_resnetfpn_coco"
NUM_CLASSES = 80
IMAGE_GLOBS = ("../shared/data/coco_mini/val2017/*.jpg", "../shared/data/coco_mini/train2017/*.jpg")
SCORE_THRESHOLD = 0.05  # both models' default pre-NMS score threshold (checked below)


def machine_facts():
    """The common machine line plus TF's thread settings."""
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    threads = ("TF default threads" if intra == inter == 0
               else f"TF threads intra {intra}, inter {inter}")
    return f"{bench_common.machine_facts(tf)} | {threads}"


def load_photo():
    """(path, uint8 [1, h, w, 3] RGB) of the first COCO JPEG of ../shared/data."""
    for pattern in IMAGE_GLOBS:
        paths = sorted(glob.glob(pattern))
        if paths:
            image = tf.io.decode_jpeg(tf.io.read_file(paths[0]), channels=3)
            return paths[0], image[None]
    raise SystemExit(f"no COCO JPEG found under {IMAGE_GLOBS}; run from the project root with "
                     "../shared/data present")


def prior_bias(prior):
    """Classifier bias whose sigmoid is `prior` (the focal-loss prior initialisation)."""
    return -math.log((1.0 - prior) / prior)


# --- PAA ----------------------------------------------------------------------------------

def build_paa(size, prior):
    """(config, PAADetector with random weights) for a size x size bucket."""
    from paa_tf import config as config_lib
    from paa_tf.modeling.detector import build_detector

    config = config_lib.load_config(PAA_CONFIG, overrides=[
        f"data.image_size=[{size},{size}]", f"data.min_size=[{size}]", f"data.max_size={size}",
        f"model.prior_prob={prior}"])
    config.model.backbone_checkpoint = None
    if config.model.num_classes != NUM_CLASSES:
        raise SystemExit(f"{PAA_CONFIG} has {config.model.num_classes} classes, not "
                         f"{NUM_CLASSES}")
    tf.random.set_seed(0)
    return config, build_detector(config)


def export_paa(config, model, scratch, votings=(True, False)):
    """Export `model` with score voting on and/or off; returns {voting: dir}."""
    from paa_tf import export, postprocess, serving_preprocess
    from paa_tf.data import label_map as label_map_lib

    label_map = label_map_lib.LabelMap(
        ids=tuple(range(1, NUM_CLASSES + 1)), names=tuple(f"class{i}" for i in range(NUM_CLASSES)))
    label_path = label_map_lib.write_label_map(label_map, os.path.join(scratch, "lm.json"))
    preprocess = serving_preprocess.ServingPreprocess.from_config(config)
    dirs = {}
    for voting in votings:
        params = postprocess.PostprocessParams.from_config(config, score_voting=voting)
        module = export.ExportedDetector(model, preprocess, params, label_map)
        base = os.path.join(scratch, f"paa_{'voting' if voting else 'novoting'}")
        dirs[voting] = export.save_exported(module, base, 1, assets=(label_path,))
    return dirs


def paa_candidates(config, model, image):
    """(pairs with p > threshold, pre-NMS candidates) of PAA on uint8 [1, h, w, 3] `image`.

    Pairs are (anchor, class) pairs whose class probability passes the score threshold;
    candidates are those the KK rule keeps (at most `eval.pre_nms_topk` per level) and that
    NMS and voting see.
    """
    from paa_tf import postprocess, serving_preprocess

    preprocess = serving_preprocess.ServingPreprocess.from_config(config)
    params = postprocess.PostprocessParams.from_config(config)
    images, image_info = serving_preprocess.preprocess_images(image, preprocess)
    outputs = model(images, training=False)
    probs = tf.sigmoid(tf.cast(outputs["cls_logits"], tf.float32))
    pairs = int(tf.reduce_sum(tf.cast(probs > params.score_threshold, tf.int32)))
    level_sizes = postprocess.level_sizes_from_ids(np.asarray(model.level_ids))
    iou_logits = outputs.get("iou_logits")
    candidates = postprocess.select_candidates(
        outputs["cls_logits"], outputs["box_deltas"], iou_logits, model.anchors, level_sizes,
        image_info, params=params)
    kept = int(tf.reduce_sum(tf.cast(candidates["scores"] > 0, tf.int32)))
    return pairs, kept


# --- RetinaNet ----------------------------------------------------------------------------

def retinanet_params(size):
    """Model Garden experiment config: RetinaNet R50-FPN, 80 classes, size x size, no
    checkpoint (random weights)."""
    from official.core import exp_factory
    from official.vision.configs import retinanet  # noqa: F401  (registers the experiment)

    params = exp_factory.get_exp_config(RETINANET_EXPERIMENT)
    params.task.model.num_classes = NUM_CLASSES
    params.task.model.input_size = [size, size, 3]
    params.task.init_checkpoint = None
    return params


def build_retinanet_module(params, size, prior):
    """Model Garden's detection export module (uint8 image_tensor input, batch 1) with its
    RetinaNet built and the classifier bias set to the `prior`."""
    from official.vision.serving import detection

    tf.random.set_seed(0)
    module = detection.DetectionModule(params=params, batch_size=1, input_image_size=[size, size],
                                       input_type="image_tensor", num_channels=3)
    module.serve(tf.zeros([1, size, size, 3], tf.uint8))  # creates the variables
    biases = [v for v in module.model.head.trainable_variables
              if "scores" in v.name and "bias" in v.name]
    if not biases:
        raise SystemExit("RetinaNet head: no classifier bias variable found ('scores' ... "
                         "'bias'); Model Garden's layer names changed")
    for bias in biases:
        bias.assign(tf.fill(bias.shape, prior_bias(prior)))
    return module, [v.name for v in biases]


def export_retinanet(module, params, size, scratch):
    """Export with `official.vision.serving.export_saved_model_lib`; returns the folder."""
    from official.vision.serving import export_saved_model_lib

    export_dir = os.path.join(scratch, "retinanet")
    export_saved_model_lib.export_inference_graph(
        input_type="image_tensor", batch_size=1, input_image_size=[size, size], params=params,
        checkpoint_path=None, export_dir=export_dir, export_module=module)
    return export_dir


def retinanet_anchors(params, size):
    """Anchors per image of RetinaNet at a size x size padded input."""
    model = params.task.model
    per_location = model.anchor.num_scales * len(model.anchor.aspect_ratios)
    return sum(math.ceil(size / 2 ** level) ** 2 * per_location
               for level in range(model.min_level, model.max_level + 1))


def retinanet_candidates(module, params, image):
    """(pairs with p > threshold, boxes entering NMS) of RetinaNet on uint8 [1, h, w, 3].

    The v2 generator keeps per class the `pre_nms_top_k` best pairs above the threshold, so
    NMS sees sum over classes of min(pairs of the class, pre_nms_top_k) boxes.
    """
    generator = params.task.model.detection_generator
    images, _, _ = module.preprocess(image)
    model = module.model
    features = model.decoder(model.backbone(images, training=False), training=False)
    raw_scores, _, _ = model.head(features, training=False)
    per_class = []
    for logits in raw_scores.values():
        probs = tf.sigmoid(tf.reshape(logits, [-1, NUM_CLASSES]))
        per_class.append(tf.reduce_sum(
            tf.cast(probs > generator.pre_nms_score_threshold, tf.int64), axis=0))
    per_class = tf.add_n(per_class).numpy()
    into_nms = int(np.minimum(per_class, generator.pre_nms_top_k).sum())
    return int(per_class.sum()), into_nms


# --- timing -------------------------------------------------------------------------------

def interleaved_medians(fns, repeats, warmup=2):
    """Median seconds per call of each of `fns` (name -> callable), called round-robin."""
    for _ in range(warmup):  # first calls: graph loading, kernel selection
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def signature_call(signature, image):
    """Callable running `signature` on uint8 `image` and fetching every output."""
    def call():
        return {k: v.numpy() for k, v in signature(inputs=image).items()}
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640,
                        help="square input bucket (multiple of 128)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per model")
    parser.add_argument("--threads", type=int, default=None,
                        help="TF intra- and inter-op threads (default: TF's own choice)")
    parser.add_argument("--prior", type=float, default=0.2,
                        help="classifier prior of both models (0.01 is the usual init)")
    args = parser.parse_args()
    if args.size % 128:
        parser.error(f"--size {args.size} must be a multiple of 128 (PAA's padded bucket)")
    if not 0.0 < args.prior < 1.0:
        parser.error(f"--prior {args.prior} must lie in (0, 1)")
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    # Model Garden's eager map_fn and unbuilt-layer serialisation notices are expected here.
    tf.get_logger().setLevel("ERROR")
    print(machine_facts())
    photo_path, image = load_photo()
    print(f"image: {photo_path} ({image.shape[1]}x{image.shape[2]}), input bucket "
          f"{args.size}x{args.size}, classifier prior {args.prior} (both models), random "
          f"weights, batch 1, {args.repeats} interleaved calls per model")

    paa_config, paa_model = build_paa(args.size, args.prior)
    ret_params = retinanet_params(args.size)
    generator = ret_params.task.model.detection_generator
    if generator.pre_nms_score_threshold != paa_config.eval.score_threshold:
        print(f"note: score thresholds differ: PAA {paa_config.eval.score_threshold}, "
              f"RetinaNet {generator.pre_nms_score_threshold}")
    ret_module, bias_names = build_retinanet_module(ret_params, args.size, args.prior)

    with tempfile.TemporaryDirectory(prefix="bench_inference_") as scratch:
        start = time.perf_counter()
        paa_dirs = export_paa(paa_config, paa_model, scratch)
        paa_export_s = time.perf_counter() - start
        start = time.perf_counter()
        ret_dir = export_retinanet(ret_module, ret_params, args.size, scratch)
        ret_export_s = time.perf_counter() - start

        ev = paa_config.eval
        paa_pairs, paa_kept = paa_candidates(paa_config, paa_model, image)
        ret_pairs, ret_nms = retinanet_candidates(ret_module, ret_params, image)
        print(f"PAA R50-FPN      : {int(paa_model.anchors.shape[0]):7d} anchors/image (1 per "
              f"location); post-processing: p > {ev.score_threshold}, top {ev.pre_nms_topk} "
              f"per level, class-aware NMS IoU {ev.nms_iou}, {ev.max_detections} detections, "
              f"score voting (sigma {ev.voting_sigma}, IoU > {ev.voting_iou}) on/off; "
              f"export {paa_export_s:.0f} s for both")
        print(f"                   {paa_pairs} (anchor, class) pairs pass p > "
              f"{ev.score_threshold}; {paa_kept} candidates enter NMS and voting")
        print(f"RetinaNet R50-FPN: {retinanet_anchors(ret_params, args.size):7d} anchors/image "
              f"({ret_params.task.model.anchor.num_scales * len(ret_params.task.model.anchor.aspect_ratios)}"  # noqa: E501
              f" per location); Model Garden default detection generator: nms_version "
              f"{generator.nms_version}, pre_nms_score_threshold "
              f"{generator.pre_nms_score_threshold}, pre_nms_top_k {generator.pre_nms_top_k} "
              f"per class, nms_iou_threshold {generator.nms_iou_threshold}, max_num_detections "
              f"{generator.max_num_detections}; export {ret_export_s:.0f} s")
        print(f"                   {ret_pairs} (anchor, class) pairs pass p > "
              f"{generator.pre_nms_score_threshold}; {ret_nms} boxes enter NMS; prior set "
              f"through the bias of {', '.join(bias_names)} (the config has no prior option)")

        voting = tf.saved_model.load(paa_dirs[True]).signatures["image_tensor"]
        no_voting = tf.saved_model.load(paa_dirs[False]).signatures["image_tensor"]
        retinanet = tf.saved_model.load(ret_dir).signatures["serving_default"]
        calls = {"PAA, voting": signature_call(voting, image),
                 "PAA, no voting": signature_call(no_voting, image),
                 "RetinaNet": signature_call(retinanet, image)}
        first = {name: fn() for name, fn in calls.items()}
        medians = interleaved_medians(calls, args.repeats)

    for name, seconds in medians.items():
        count = int(np.asarray(first[name]["num_detections"]).reshape(-1)[0])
        top = float(np.max(first[name]["detection_scores"]))
        print(f"{name:15s}: {seconds * 1000:8.1f} ms/image  {1 / seconds:6.2f} images/s  "
              f"({count} detections, top score {top:.3f})")
    t_vote, t_plain, t_ret = (medians[k] for k in ("PAA, voting", "PAA, no voting", "RetinaNet"))
    print(f"speed ratio PAA+voting / RetinaNet   : {t_ret / t_vote:.2f} (>1: PAA faster)")
    print(f"speed ratio PAA-no-voting / RetinaNet: {t_ret / t_plain:.2f} (>1: PAA faster)")
    print(f"score voting share of PAA end-to-end time: {100 * (t_vote - t_plain) / t_vote:.1f}%")


if __name__ == "__main__":
    main()
