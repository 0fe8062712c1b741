"""Pictures (paa-tf issue 7, item 4): drawn detections, PAA's assignment of one GT (paper
Fig. 1 / 4a), positives per GT over training (Fig. 4b) and `bin/paa_visualize`."""

import math
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from matplotlib.patches import Rectangle
from PIL import Image
from scipy.stats import norm
from sklearn.mixture import GaussianMixture

from paa_tf.assign import paa_candidates_and_gmm
from paa_tf.assign.labels import CANDIDATE_POSITIVE
from paa_tf.visualization import assignment, curves, drawing


def test_draw_detections_draws_boxes_and_labels_only():
    """Outlines in the class colour, labels above the box, the rest of the image untouched;
    padding (-1) and detections under the threshold are not drawn."""
    image = np.full((120, 160, 3), 90, np.uint8)
    boxes = np.array([[40, 30, 100, 90], [10, 100, 30, 150], [0, 0, 50, 50]], np.float32)
    drawn = drawing.draw_detections(image, boxes, [0.9, 0.2, 0.8], [2, 1, -1],
                                      class_names=["a", "b", "c"], score_threshold=0.5,
                                      line_width=1)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    colour = drawing.class_colour(2)
    assert np.all(drawn[40:101, 30] == colour) and np.all(drawn[40:101, 90] == colour)
    assert np.all(drawn[100, 30:91] == colour)
    assert np.all(drawn[41:100, 31:90] == 90)  # inside the box
    changed = np.any(drawn != 90, axis=-1)
    label_rows = changed[:40]
    assert label_rows[:, 30:].any()  # the label sits above the box
    assert not changed[:, 92:].any() and not changed[102:].any()
    assert not changed[:25, :28].any()  # where the padded detection would have been
    only_best = drawing.draw_detections(image, boxes[:1], [0.9], [2], ["a", "b", "c"],
                                          line_width=1)
    assert np.array_equal(drawn, only_best)
    with pytest.raises(ValueError, match="same length"):
        drawing.draw_detections(image, boxes, [0.9], [0, 1, 2])


def _label_height(drawn, box, colour):
    """Rows of the filled label above `box` (ymin, xmin, ...): class colour at column xmin."""
    rows = 0
    while rows < box[0] and np.all(drawn[box[0] - 1 - rows, box[1]] == colour):
        rows += 1
    return rows


def test_labels_fit_a_large_photo_and_their_size_can_be_set():
    """On a 2048x1371 photo the label is the size `label_font_size` gives (a fraction of
    the old 1/22 of the shorter side, 62 px); an explicit size is drawn as asked."""
    assert drawing.label_font_size(1371) == 19
    assert drawing.label_font_size(256) == 10 and drawing.label_font_size(4000) == 32
    photo = np.full((1371, 2048, 3), 90, np.uint8)
    box = (700, 900, 900, 1200)
    colour = drawing.class_colour(1)
    def height(font_size=None):
        return _label_height(drawing.draw_detections(photo, [box], [0.9], [1], ["pawn"],
                                                       font_size=font_size), box, colour)

    default, old_rule = height(), height(round(1371 / 22))
    assert default == height(19) and 0 < default < old_rule / 2
    assert height(50) > 2 * default  # --label_size of paa_predict


@pytest.fixture(scope="module")
def tiny_model():
    from paa_tf import config as config_lib
    from paa_tf.modeling.detector import build_detector

    config = config_lib.load_config(overrides=[
        "data.image_size=[128,128]", "model.backbone=tiny", "model.freeze_at=0",
        "model.frozen_bn=false", "model.num_classes=3", "model.min_level=3",
        "model.max_level=5", "model.fpn_channels=16", "model.head_convs=1",
        "model.head_channels=32", "model.octave_base_scale=4.0"])
    tf_keras.utils.set_random_seed(3)
    return build_detector(config)


def _sklearn_gmm(costs):
    """Step D of docs/PAA.md with scikit-learn (float64 input), the independent oracle."""
    x = np.asarray(costs, np.float32).astype(np.float64)[:, None]
    gmm = GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                          precisions_init=[[[1.0]], [[1.0]]]).fit(x)
    return gmm.predict(x), gmm.weights_, gmm.means_[:, 0], gmm.covariances_[:, 0, 0]


def test_assignment_figure_shows_what_paa_assign_decided(tiny_model):
    """The figure's candidates, decisions, GMM and separation point are PAA's for that GT:
    same anchors and costs as `paa_candidates_and_gmm`, GMM as scikit-learn fits it, the
    separation at the KK 'kk_c' cut (j* = first component-0 candidate of maximal
    log-density, docs/PAA.md Step E), and the drawn curves are w_k N(mu_k, sigma_k^2)."""
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (128, 128, 3)).astype(np.float32)
    gt_boxes = np.array([[10, 12, 50, 60], [30, 40, 110, 100], [-1, -1, -1, -1]], np.float32)
    gt_classes = np.array([0, 2, -1], np.int32)
    figure, view = assignment.assignment_figure(tiny_model, image, gt_boxes, gt_classes, 1,
                                               class_names=["a", "b", "c"])

    outputs = tiny_model(image[None], training=False)
    _, diag = paa_candidates_and_gmm(
        tiny_model.config.assign, tiny_model.anchors, tiny_model.level_ids,
        tiny_model.num_levels, gt_boxes[None], gt_classes[None], outputs["cls_logits"],
        tiny_model.decode(outputs["box_deltas"]))
    mask = diag.candidate_mask.numpy()[0, 1]
    n = int(mask.sum())
    assert n >= 6
    np.testing.assert_array_equal(view.anchor_indices, diag.candidate_anchors.numpy()[0, 1, :n])
    np.testing.assert_allclose(view.costs, diag.candidate_costs.numpy()[0, 1, :n], rtol=1e-6)
    np.testing.assert_array_equal(view.decisions, diag.decisions.numpy()[0, 1, :n])
    np.testing.assert_allclose(view.anchors, tiny_model.anchors.numpy()[view.anchor_indices])
    assert np.all(np.diff(view.costs) >= 0)

    components, weights, means, variances = _sklearn_gmm(view.costs)
    np.testing.assert_array_equal(view.components, components)
    np.testing.assert_allclose(view.weights, weights, rtol=1e-5)
    np.testing.assert_allclose(view.means, means, rtol=1e-5)
    np.testing.assert_allclose(view.variances, variances, rtol=1e-4)

    log_density = diag.log_density.numpy()[0, 1, :n]
    members = np.flatnonzero(view.components == 0)
    j_star = members[np.argmax(log_density[members])]
    assert view.separation == pytest.approx(view.costs[j_star])
    np.testing.assert_array_equal(view.positive, np.arange(n) <= j_star)
    assert np.all(view.decisions[view.positive] == CANDIDATE_POSITIVE)

    left, right = figure.axes[:2]
    rectangles = [p for p in left.patches if isinstance(p, Rectangle)]
    assert len(rectangles) == 1 + n  # the GT and every candidate anchor
    lines = {line.get_label().split(":")[0].split(" =")[0]: line for line in right.lines}
    assert lines["separation"].get_xdata()[0] == pytest.approx(view.separation)
    for k, name in enumerate(("positive mode", "negative mode")):
        x, y = lines[name].get_xdata(), lines[name].get_ydata()
        np.testing.assert_allclose(y, weights[k] * norm.pdf(x, means[k], math.sqrt(variances[k])),
                                   rtol=1e-4, atol=1e-9)
    bars = [p for p in right.patches if isinstance(p, Rectangle)]
    area = sum(b.get_height() * b.get_width() for b in bars)
    assert area == pytest.approx(1.0)  # a density histogram, on the scale of the curves


def test_assignment_rejects_a_padded_gt(tiny_model):
    image = np.zeros((128, 128, 3), np.float32)
    with pytest.raises(ValueError, match="gt_index 1"):
        assignment.assignment_data(tiny_model, image, [[0, 0, 40, 40], [-1, -1, -1, -1]],
                                  [0, -1], 1)


def _write_scalars(log_dir, values, start_step=10, every=10):
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for i, value in enumerate(values):
            step = start_step + i * every
            tf.summary.scalar("pos_per_gt", value, step=step)
            tf.summary.scalar("gt_without_pos", value / 100.0, step=step)
            tf.summary.scalar("losses/loss", 1.0, step=step)
    writer.close()


def test_positives_per_gt_plot_reads_the_training_scalars(tmp_path):
    """The plotted points are the `pos_per_gt` scalars as written (TF2 tensor summaries);
    a resumed run's rewrite of a step replaces the earlier value."""
    import time

    _write_scalars(tmp_path / "train", [8.0, 7.5, 6.25])
    time.sleep(0.05)  # the resumed run's file is newer
    _write_scalars(tmp_path / "train", [6.5, 5.0], start_step=30)
    figure, scalars = curves.positives_per_gt_plot(tmp_path)
    steps, values = scalars["pos_per_gt"]
    np.testing.assert_array_equal(steps, [10, 20, 30, 40])
    np.testing.assert_allclose(values, [8.0, 7.5, 6.5, 5.0])
    np.testing.assert_allclose(scalars["gt_without_pos"][1], [0.08, 0.075, 0.065, 0.05],
                               rtol=1e-6)
    line = figure.axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), steps)
    np.testing.assert_allclose(line.get_ydata(), values)
    with pytest.raises(ValueError, match="no TensorBoard event files"):
        curves.positives_per_gt_plot(tmp_path / "nothing")


@pytest.mark.slow
def test_bin_paa_visualize_on_a_training_run(repo_root, tmp_path):
    """`bin/paa_visualize` draws the assignment picture of a run's training image and the
    positives plot of its logs; `--image` finds the same record as `--data_index`."""
    from tests.test_predict import tiny_run

    _, _, model_dir, paths = tiny_run(tmp_path)
    _write_scalars(model_dir / "train", [9.0, 8.0])
    script = str(repo_root / "bin" / "paa_visualize")
    picture = tmp_path / "assign.png"
    proc = subprocess.run([sys.executable, script, f"--model_dir={model_dir}", "--data_index=1",
                           f"--output={picture}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "candidates" in proc.stdout and Image.open(picture).format == "PNG"
    by_index = assignment.assignment_picture(model_dir, tmp_path / "a.png", data_index=1)
    by_file = assignment.assignment_picture(model_dir, tmp_path / "b.png",
                                     image=f"{paths['train_image_dir']}/train_000002.jpg")
    np.testing.assert_array_equal(by_index.anchor_indices, by_file.anchor_indices)
    np.testing.assert_array_equal(by_index.decisions, by_file.decisions)
    with pytest.raises(ValueError, match="not an image of the run's data"):
        assignment.assignment_picture(model_dir, tmp_path / "c.png", image=str(picture))
    plot = tmp_path / "positives.png"
    proc = subprocess.run([sys.executable, script, f"--model_dir={model_dir}",
                           "--positives_plot", f"--output={plot}"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pos_per_gt: 2 points" in proc.stdout and Image.open(plot).format == "PNG"
    assert "deprecated" not in proc.stderr, proc.stderr[-3000:]
