"""Exported PAA SavedModel (with and without score voting) vs Model Garden's RetinaNet, CPU.

Four SavedModels, all ResNet-50 + FPN (P3-P7), 80 foreground classes, random weights, the same
square input bucket, each exported with its own library and reloaded in this process:
  PAA, voting         `paa_tf.serving.export` of configs/paa_r50_fpn_1x_coco.yaml, score voting on
  PAA, no voting      the same model and weights, exported with score voting off
  RetinaNet, NMS v2   Model Garden's `retinanet_resnetfpn_coco` experiment exported with
                      `official.vision.serving` (`DetectionModule`, input type image_tensor),
                      its default detection generator (`nms_version: v2`)
  RetinaNet, batched  the same weights and export with `nms_version: batched`, which calls
                      `tf.image.combined_non_max_suppression`, the NMS kernel PAA's export uses
Model Garden's RetinaNet drops class 0 as an implicit background, so it is built with 81
classes: 80 foreground classes on both sides. Each model is fed the same real COCO photos as
uint8 [1, h, w, 3] through its `image_tensor`-kind signature (ours: `image_tensor`;
RetinaNet's: `serving_default`), so each model resizes and pads them with its own
pre-processing. Timed calls run in rounds: each round runs every model over all photos, the
order of the models reversed every other round, so machine load hits all alike; the median
over rounds of the time per photo is reported.

Score voting's cost is also timed directly: on each photo, the candidates and the NMS-kept
detections PAA produces are computed once, and a `tf.function` of the voting step alone
(`paa_tf.inference.postprocess.score_voting`) is timed on them; its median is set against the
end-to-end time of `PAA, voting`. (The difference of two end-to-end medians is below their
noise.)

Random weights put every class probability near the classifier's prior. Both models get the
same raised prior (`--prior`, default 0.2; the usual 0.01 gives random-weight models no
candidate above the 0.05 score threshold): PAA through `model.prior_prob`, RetinaNet, whose
config has no prior option, by setting its classifier bias to the same value after building.
The script prints how many candidates pass the score threshold in each model.

Why the NMS version matters: Model Garden's default NMS (v2) runs, for each class, a padded NMS
over its top 5,000 boxes in tiles of 512 that stops early only once that class holds 100 kept
boxes; boxes under the threshold are zeroed, not skipped. With the raised prior every class
fills its 100 early; with few boxes above the threshold (`--prior 0.01` here, and a trained
model on a real photo, where nearly every class has no object) every class scans all its
tiles, which is slow. The `batched` version drops boxes under the threshold first.

    .venv/bin/python bench/bench_inference.py                            # 640x640, prior 0.2
    .venv/bin/python bench/bench_inference.py --prior 0.01
    .venv/bin/python bench/bench_inference.py --size 256 --photos 2 --rounds 1   # smoke run
"""

import argparse
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
NUM_CLASSES = 80  # foreground classes, both models
RETINANET_NMS = {"RetinaNet, NMS v2": "v2", "RetinaNet, batched": "batched"}


def machine_facts():
    """The common machine line plus TF's thread settings."""
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    threads = ("TF default threads" if intra == inter == 0
               else f"TF threads intra {intra}, inter {inter}")
    return f"{bench_common.machine_facts(tf)} | {threads}"


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
    from paa_tf.data import label_map as label_map_lib
    from paa_tf.inference import postprocess
    from paa_tf.serving import export, requests

    label_map = label_map_lib.LabelMap(
        ids=tuple(range(1, NUM_CLASSES + 1)), names=tuple(f"class{i}" for i in range(NUM_CLASSES)))
    label_path = label_map_lib.write_label_map(label_map, os.path.join(scratch, "lm.json"))
    preprocess, max_pixels = requests.export_preprocess(config)
    dirs = {}
    for voting in votings:
        params = postprocess.PostprocessParams.from_config(config, score_voting=voting)
        module = export.ExportedDetector(model, preprocess, params, label_map, max_pixels)
        base = os.path.join(scratch, f"paa_{'voting' if voting else 'novoting'}")
        dirs[voting] = export.save_exported(module, base, 1, assets=(label_path,))
    return dirs


def paa_voting_inputs(config, model, image):
    """What PAA's exported graph feeds score voting on uint8 [1, h, w, 3] `image`.

    Returns (pairs with p > threshold, voting inputs): the inputs are the NMS-kept detections
    (`det_boxes` float32 [1, D, 4], `det_classes` int32 [1, D], -1 pads) and the candidates
    (`cand_boxes` float32 [1, N, 4], `cand_scores` float32 [1, N, C]), all yxyx input pixels,
    exactly as `paa_tf.inference.postprocess.nms_and_vote` passes them to `score_voting`.
    """
    import dataclasses

    from paa_tf.data.inference_preprocess import InferencePreprocess
    from paa_tf.inference import postprocess

    params = postprocess.PostprocessParams.from_config(config)
    images, image_info = (t[None] for t in InferencePreprocess.from_config(config)(image[0]))
    outputs = model(images, training=False)
    probs = tf.sigmoid(tf.cast(outputs["cls_logits"], tf.float32))
    pairs = int(tf.reduce_sum(tf.cast(probs > params.score_threshold, tf.int32)))
    level_sizes = postprocess.level_sizes_from_ids(np.asarray(model.level_ids))
    candidates = postprocess.select_candidates(
        outputs["cls_logits"], outputs["box_deltas"], outputs.get("iou_logits"), model.anchors,
        level_sizes, image_info, params=params)
    kept = postprocess.nms_and_vote(candidates["boxes"], candidates["scores"],
                                    dataclasses.replace(params, score_voting=False))
    return pairs, {"det_boxes": kept["detection_boxes"],
                   "det_classes": kept["detection_classes"],
                   "cand_boxes": candidates["boxes"], "cand_scores": candidates["scores"]}


def time_voting(config, voting_inputs, repeats):
    """Median seconds of a `tf.function` of `score_voting` alone on each photo's inputs."""
    from paa_tf.inference import postprocess

    params = postprocess.PostprocessParams.from_config(config)
    vote = tf.function(lambda det_boxes, det_classes, cand_boxes, cand_scores:
                       postprocess.score_voting(det_boxes, det_classes, cand_boxes, cand_scores,
                                                sigma=params.voting_sigma,
                                                iou_threshold=params.voting_iou,
                                                plus_one=params.plus_one))
    medians = []
    for inputs in voting_inputs:
        def call(inputs=inputs):
            return vote(**inputs).numpy()
        call()  # trace
        medians.append(statistics.median(bench_common.run_times(call, repeats)))
    return medians


# --- RetinaNet ----------------------------------------------------------------------------

def retinanet_params(size, nms_version):
    """Model Garden experiment config: RetinaNet R50-FPN, 80 foreground classes (+ the
    implicit background class 0 its detection generator drops), size x size, NMS
    `nms_version`, no checkpoint (random weights)."""
    from official.core import exp_factory
    from official.vision.configs import retinanet  # noqa: F401  (registers the experiment)

    params = exp_factory.get_exp_config(RETINANET_EXPERIMENT)
    params.task.model.num_classes = NUM_CLASSES + 1
    params.task.model.input_size = [size, size, 3]
    params.task.model.detection_generator.nms_version = nms_version
    params.task.init_checkpoint = None
    return params


def build_retinanet_module(params, size, prior, weights_from=None):
    """Model Garden's detection export module (uint8 image_tensor input, batch 1) with its
    RetinaNet built and the classifier bias set to the `prior`, or with the weights of the
    module `weights_from`."""
    from official.vision.serving import detection

    tf.random.set_seed(0)
    module = detection.DetectionModule(params=params, batch_size=1, input_image_size=[size, size],
                                       input_type="image_tensor", num_channels=3)
    module.serve(tf.zeros([1, size, size, 3], tf.uint8))  # creates the variables
    if weights_from is not None:
        module.model.set_weights(weights_from.model.get_weights())
        return module, []
    biases = [v for v in module.model.head.trainable_variables
              if "scores" in v.name and "bias" in v.name]
    if not biases:
        raise SystemExit("RetinaNet head: no classifier bias variable found ('scores' ... "
                         "'bias'); Model Garden's layer names changed")
    for bias in biases:
        bias.assign(tf.fill(bias.shape, prior_bias(prior)))
    return module, [v.name for v in biases]


def export_retinanet(module, params, size, scratch, name):
    """Export with `official.vision.serving.export_saved_model_lib`; returns the folder."""
    from official.vision.serving import export_saved_model_lib

    export_dir = os.path.join(scratch, name)
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
    """(pairs with p > threshold, boxes entering v2's NMS) of RetinaNet on uint8 [1, h, w, 3].

    Foreground classes only (class 0 is dropped by the detection generator). The v2 generator
    keeps per class the `pre_nms_top_k` best pairs above the threshold, so its NMS sees the sum
    over classes of min(pairs of the class, pre_nms_top_k) boxes; the batched one sees every
    pair above the threshold.
    """
    generator = params.task.model.detection_generator
    images, _, _ = module.preprocess(image)
    model = module.model
    features = model.decoder(model.backbone(images, training=False), training=False)
    raw_scores, _, _ = model.head(features, training=False)
    per_class = []
    for logits in raw_scores.values():
        probs = tf.sigmoid(tf.reshape(logits, [-1, NUM_CLASSES + 1]))[:, 1:]
        per_class.append(tf.reduce_sum(
            tf.cast(probs > generator.pre_nms_score_threshold, tf.int64), axis=0))
    per_class = tf.add_n(per_class).numpy()
    into_nms = int(np.minimum(per_class, generator.pre_nms_top_k).sum())
    return int(per_class.sum()), into_nms


def signature_call(signature):
    """Callable running `signature` on a uint8 image and fetching every output."""
    def call(image):
        return {k: v.numpy() for k, v in signature(inputs=image).items()}
    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640,
                        help="square input bucket (multiple of 128)")
    parser.add_argument("--photos", type=int, default=4, help="real COCO photos")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (all photos each)")
    parser.add_argument("--voting-repeats", type=int, default=50,
                        help="timed calls of the voting step alone per photo")
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
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    photos = bench_common.load_photos(args.photos, tf)
    images = [image for _, image in photos]
    print("photos: " + ", ".join(f"{os.path.basename(p)} ({i.shape[1]}x{i.shape[2]})"
                                 for p, i in photos))
    print(f"input bucket {args.size}x{args.size}, classifier prior {args.prior} (both models), "
          f"random weights, batch 1, {args.rounds} rounds over the photos, model order "
          "reversed every other round")

    paa_config, paa_model = build_paa(args.size, args.prior)
    ret_params = {name: retinanet_params(args.size, version)
                  for name, version in RETINANET_NMS.items()}
    first_params = next(iter(ret_params.values()))
    generator = first_params.task.model.detection_generator
    if generator.pre_nms_score_threshold != paa_config.eval.score_threshold:
        print(f"note: score thresholds differ: PAA {paa_config.eval.score_threshold}, "
              f"RetinaNet {generator.pre_nms_score_threshold}")
    ret_modules, bias_names = {}, []
    for name, params in ret_params.items():
        source = next(iter(ret_modules.values()), None)
        ret_modules[name], names = build_retinanet_module(params, args.size, args.prior,
                                                          weights_from=source)
        bias_names += names

    with tempfile.TemporaryDirectory(prefix="bench_inference_") as scratch:
        start = time.perf_counter()
        paa_dirs = export_paa(paa_config, paa_model, scratch)
        paa_export_s = time.perf_counter() - start
        start = time.perf_counter()
        ret_dirs = {name: export_retinanet(ret_modules[name], params, args.size, scratch,
                                           f"retinanet_{RETINANET_NMS[name]}")
                    for name, params in ret_params.items()}
        ret_export_s = time.perf_counter() - start

        ev = paa_config.eval
        paa_counts = [paa_voting_inputs(paa_config, paa_model, image) for image in images]
        first_module = next(iter(ret_modules.values()))
        ret_counts = [retinanet_candidates(first_module, first_params, image)
                      for image in images]
        kept = [int(tf.reduce_sum(tf.cast(tf.reduce_max(v["cand_scores"], -1) > 0, tf.int32)))
                for _, v in paa_counts]
        detections = [int(tf.reduce_sum(tf.cast(v["det_classes"] >= 0, tf.int32)))
                      for _, v in paa_counts]
        anchors_per_location = (first_params.task.model.anchor.num_scales
                                * len(first_params.task.model.anchor.aspect_ratios))
        print(f"PAA R50-FPN      : {int(paa_model.anchors.shape[0]):7d} anchors/image (1 per "
              f"location); post-processing: p > {ev.score_threshold}, top {ev.pre_nms_topk} "
              f"per level, class-aware NMS IoU {ev.nms_iou} (combined_non_max_suppression), "
              f"{ev.max_detections} detections, score voting (sigma {ev.voting_sigma}, IoU > "
              f"{ev.voting_iou}) on/off; export {paa_export_s:.0f} s for both")
        print(f"                   per photo: {[c for c, _ in paa_counts]} (anchor, class) "
              f"pairs pass p > {ev.score_threshold}; {kept} candidates enter NMS and voting; "
              f"{detections} detections are voted")
        print(f"RetinaNet R50-FPN: {retinanet_anchors(first_params, args.size):7d} anchors/image "
              f"({anchors_per_location} per location), {NUM_CLASSES} foreground classes; Model "
              f"Garden's detection generator: pre_nms_score_threshold "
              f"{generator.pre_nms_score_threshold}, pre_nms_top_k {generator.pre_nms_top_k} "
              f"per class (v2 only), nms_iou_threshold {generator.nms_iou_threshold}, "
              f"max_num_detections {generator.max_num_detections}; nms_version v2 (default) "
              f"and batched; export {ret_export_s:.0f} s for both")
        print(f"                   per photo: {[c for c, _ in ret_counts]} (anchor, class) pairs "
              f"pass p > {generator.pre_nms_score_threshold} (all enter batched NMS); "
              f"{[n for _, n in ret_counts]} boxes enter v2's NMS; prior set through the bias "
              f"of {', '.join(sorted(set(bias_names)))} (the config has no prior option)")

        signatures = {"PAA, voting": tf.saved_model.load(paa_dirs[True]).signatures["image_tensor"],
                      "PAA, no voting":
                          tf.saved_model.load(paa_dirs[False]).signatures["image_tensor"]}
        for name, directory in ret_dirs.items():
            signatures[name] = tf.saved_model.load(directory).signatures["serving_default"]
        calls = {name: signature_call(signature) for name, signature in signatures.items()}
        first = {name: calls[name](images[0]) for name in calls}
        cpu = {}
        medians = bench_common.alternating_rounds(calls, images, args.rounds, cpu=cpu)
    voting = time_voting(paa_config, [v for _, v in paa_counts], args.voting_repeats)

    print(f"\n{'':20s}{'ms/photo':>10s}{'photos/s':>10s}{'CPU ms/photo':>14s}   detections, "
          "top score (first photo)")
    for name, seconds in medians.items():
        count = int(np.asarray(first[name]["num_detections"]).reshape(-1)[0])
        top = float(np.max(first[name]["detection_scores"]))
        print(f"{name:20s}{seconds * 1e3:10.1f}{1 / seconds:10.2f}{cpu[name] * 1e3:14.1f}   "
              f"{count}, {top:.3f}")
    t_vote, cpu_vote = medians["PAA, voting"], cpu["PAA, voting"]
    for name in (*RETINANET_NMS, "PAA, no voting"):
        print(f"speed ratio {name} / PAA, voting: wall {medians[name] / t_vote:.3f}, CPU "
              f"{cpu[name] / cpu_vote:.3f} (>1: PAA with voting faster)")
    print("score voting alone (tf.function of paa_tf.inference.postprocess.score_voting on "
          f"each photo's detections and candidates, median of {args.voting_repeats}): "
          + ", ".join(f"{t * 1e3:.2f}" for t in voting) + " ms; "
          f"{100 * statistics.median(voting) / t_vote:.2f} % of PAA's end-to-end time")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
