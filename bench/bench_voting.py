"""Score voting: the vectorised TF version vs a per-detection Python loop, identical inputs.

The reference implementations vote one detection at a time (select the same-class
candidates, IoU, weights, weighted mean). This script times that loop (NumPy, the
per-detection body vectorised over candidates as the references do with torch tensors)
against `paa_tf.inference.postprocess.score_voting` (one [B, D, N] weight matrix and a matmul),
eagerly, inside `tf.function` and XLA-compiled, checks they agree, and prints the ratios.

    .venv/bin/python bench/bench_voting.py [--detections 100] [--candidates 1000]
        [--classes 80] [--repeats 20]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from paa_tf.inference import postprocess as pp  # noqa: E402


def make_inputs(num_det, num_cand, num_classes, seed=0):
    """KK-style candidates (one class per row) and detections drawn among them."""
    rng = np.random.default_rng(seed)
    yx = rng.uniform(0, 800, (num_cand, 2))
    hw = rng.uniform(16, 200, (num_cand, 2))
    cand_boxes = np.concatenate([yx, yx + hw], -1).astype(np.float32)
    cand_classes = rng.integers(0, num_classes, num_cand)
    cand_scores = rng.uniform(0.05, 1.0, num_cand).astype(np.float32)
    pick = rng.choice(num_cand, num_det, replace=False)
    return {
        "det_boxes": cand_boxes[pick], "det_classes": cand_classes[pick].astype(np.int32),
        "cand_boxes": cand_boxes, "cand_classes": cand_classes, "cand_scores": cand_scores,
    }


def loop_voting(det_boxes, det_classes, cand_boxes, cand_classes, cand_scores,
                sigma=0.025, iou_threshold=0.01):
    """Per-detection loop (the references' structure), continuous IoU."""
    out = det_boxes.copy()
    for d in range(det_boxes.shape[0]):
        same = cand_classes == det_classes[d]
        boxes, scores = cand_boxes[same], cand_scores[same]
        box = det_boxes[d]
        ih = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
        iw = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
        inter = ih * iw
        union = ((box[2] - box[0]) * (box[3] - box[1])
                 + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)
        iou = inter / union
        keep = iou > iou_threshold
        weights = np.exp(-np.square(1.0 - iou[keep]) / sigma) * scores[keep]
        if weights.size:
            out[d] = (weights[:, None] * boxes[keep]).sum(0) / weights.sum()
    return out


def _time(fn, repeats):
    fn()  # warm-up (tracing for tf.function)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    x = make_inputs(args.detections, args.candidates, args.classes)
    dense = (np.eye(args.classes, dtype=np.float32)[x["cand_classes"]]
             * x["cand_scores"][:, None])
    tf_inputs = (tf.constant(x["det_boxes"][None]), tf.constant(x["det_classes"][None]),
                 tf.constant(x["cand_boxes"][None]), tf.constant(dense[None]))

    def run_loop():
        return loop_voting(x["det_boxes"], x["det_classes"], x["cand_boxes"],
                           x["cand_classes"], x["cand_scores"])

    def run_eager():
        return pp.score_voting(*tf_inputs).numpy()

    graph_fn = tf.function(pp.score_voting)

    def run_graph():
        return graph_fn(*tf_inputs).numpy()

    xla_fn = tf.function(pp.score_voting, jit_compile=True)

    def run_xla():
        return xla_fn(*tf_inputs).numpy()

    reference = run_loop()
    for name, fn in (("eager", run_eager), ("tf.function", run_graph), ("XLA", run_xla)):
        np.testing.assert_allclose(fn()[0], reference, rtol=1e-4, atol=1e-3,
                                   err_msg=f"vectorised voting ({name}) disagrees with the loop")
    t_loop = _time(run_loop, args.repeats)
    t_eager = _time(run_eager, args.repeats)
    t_graph = _time(run_graph, args.repeats)
    t_xla = _time(run_xla, args.repeats)
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    print(f"score voting, {args.detections} detections x {args.candidates} candidates x "
          f"{args.classes} classes, median of {args.repeats}, {device}")
    print(f"  per-detection loop (NumPy):   {t_loop * 1e3:8.2f} ms")
    print(f"  vectorised TF, eager:         {t_eager * 1e3:8.2f} ms  "
          f"(loop / vectorised = {t_loop / t_eager:.1f}x)")
    print(f"  vectorised TF, tf.function:   {t_graph * 1e3:8.2f} ms  "
          f"(loop / vectorised = {t_loop / t_graph:.1f}x)")
    print(f"  vectorised TF, jit_compile:   {t_xla * 1e3:8.2f} ms  "
          f"(loop / vectorised = {t_loop / t_xla:.1f}x)")


if __name__ == "__main__":
    main()
