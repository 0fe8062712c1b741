"""Training curves from a run's TensorBoard event files: PAA's positives per GT box over
training (paper Fig. 4b).

`read_scalars` reads the `pos_per_gt` and `gt_without_pos` scalars (or any others) that
`bin/paa_train` writes; `positives_per_gt_plot` draws them.
"""

import glob
import os
from typing import Dict, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

SCALAR_TAGS = ("pos_per_gt", "gt_without_pos")


def read_scalars(log_dir, tags: Sequence[str] = SCALAR_TAGS) -> Dict[str, Tuple]:
    """TensorBoard scalars of `log_dir`'s event files: {tag: (steps int64 [n], values
    float64 [n])} sorted by step; a step written twice (a resumed run) keeps the later value.

    Reads both `tf.summary.scalar` (TF2, tensor values) and TF1 `simple_value` summaries.
    Raises ValueError when there is no event file or none of `tags` was written.
    """
    import tensorflow as tf  # reading event files only: drawing pictures needs no TensorFlow

    files = sorted(glob.glob(os.path.join(os.fspath(log_dir), "events.out.tfevents.*")),
                   key=os.path.getmtime)
    if not files:
        raise ValueError(f"no TensorBoard event files in {log_dir}; give the training folder "
                         "(--model_dir of bin/paa_train; the scalars are in its train/ folder)")
    found: Dict[str, Dict[int, float]] = {tag: {} for tag in tags}
    for path in files:
        # Each record of an event file is one serialized Event (summary_iterator, the
        # deprecated reader, does the same and prints a deprecation warning).
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag not in found:
                    continue
                if value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    number = float(tf.make_ndarray(value.tensor))
                found[value.tag][int(event.step)] = number
    if not any(found.values()):
        raise ValueError(f"{log_dir}: the event files hold none of the scalars {list(tags)}; "
                         "they are written every train.log_every steps by bin/paa_train")
    return {tag: (np.array(sorted(values), np.int64),
                  np.array([values[s] for s in sorted(values)], np.float64))
            for tag, values in found.items() if values}


def positives_per_gt_plot(model_dir, title=None):
    """Positives per GT box over training (paper Fig. 4b) from a training folder's logs.

    Reads `pos_per_gt` (mean positives per GT over each logging window) and, on a second
    axis, `gt_without_pos` (fraction of GTs without any positive) from `model_dir/train`
    (or `model_dir` itself when it holds the event files).
    Returns (matplotlib Figure, {tag: (steps, values)}).
    """
    log_dir = os.path.join(os.fspath(model_dir), "train")
    if not os.path.isdir(log_dir):
        log_dir = os.fspath(model_dir)
    scalars = read_scalars(log_dir)
    figure = Figure(figsize=(8.0, 4.2), dpi=100, layout="constrained")
    axes = figure.subplots()
    lines = []
    if "pos_per_gt" in scalars:
        steps, values = scalars["pos_per_gt"]
        lines += axes.plot(steps, values, color="#1a9641", marker="o", markersize=3,
                           linewidth=1.8, label="positives per GT (mean over log window)")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("training step")
    axes.set_ylabel("positive anchors per GT box")
    axes.grid(alpha=0.3)
    if "gt_without_pos" in scalars:
        twin = axes.twinx()
        steps, values = scalars["gt_without_pos"]
        lines += twin.plot(steps, values, color="#d7191c", linewidth=1.2, linestyle="--",
                           label="fraction of GTs without a positive")
        twin.set_ylabel("fraction of GTs without a positive")
        twin.set_ylim(0, max(0.05, float(values.max()) * 1.2))
    axes.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)
    axes.set_title(title or f"PAA positives per GT during training ({model_dir})", fontsize=10)
    return figure, scalars
