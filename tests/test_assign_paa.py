"""PAA assignment (docs/PAA.md, Steps A-F) against the reference vectors T1-T7, the
assignment toy, the loss values and the pre-assignment example (docs/CONVENTIONS.md,
"Reference values")."""

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import tensorflow as tf
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from paa_tf.assign import BACKGROUND, IGNORE, assign, paa_candidates_and_gmm
from paa_tf.assign.iou_match import anchor_gt_iou, match_anchors
from paa_tf.assign.paa import anchor_costs, level_bounds, select_from_costs
from paa_tf.assign.separation import separate
from paa_tf.config import AssignConfig
from paa_tf.ops.anchors import generate_anchors
from paa_tf.ops.gmm import fit_gmm_1d

VECTORS = {
    "T1": [0.10, 0.12, 0.15, 0.20, 0.90, 1.00, 1.10, 1.20, 1.30],
    "T2": [0.5, 0.5],
    "T3": [0.3, 1.7],
    "T4": [0.35, 1.08, 1.09, 1.11, 1.22, 1.26, 1.48, 1.84],
    "T5": [4.9987, 4.9994, 4.9995],
    "T6": [0.40, 0.47, 0.54, 0.56, 0.62, 0.69, 1.90, 1.97, 2.04, 2.05, 2.12, 2.19, 2.20, 2.27,
           2.34, 2.35, 2.42, 2.49, 2.50, 2.57, 2.64, 2.65, 2.72, 2.79, 2.80, 2.87, 2.94],
    "T7": [2.00, 2.02, 2.05, 2.10, 2.11, 2.20, 2.30, 2.45, 2.60],
}
R = lambda a, b: set(range(a, b))  # noqa: E731

# (vector, scheme, extra options) -> (positives, ignored); the rest are negatives.
# kk_c, mm_c, b_orig: the reference positive sets of T1-T7. a, b, d, fnp, fsr: the module's
# rules applied by hand to the reference components and log-densities.
EXPECTED = [
    ("T1", "kk_c", {}, R(0, 4), set()),
    ("T1", "mm_c", {}, R(0, 4), set()),
    ("T1", "b_orig", {}, R(0, 4), set()),
    ("T1", "a", {}, R(0, 4), set()),
    ("T1", "d", {}, R(0, 4), set()),
    ("T2", "kk_c", {}, {0}, set()),
    ("T2", "mm_c", {}, {0}, set()),
    ("T3", "kk_c", {}, {0}, set()),
    ("T3", "mm_c", {}, {0}, set()),
    ("T3", "b_orig", {}, {0}, set()),
    ("T3", "b", {}, {0}, set()),
    ("T4", "kk_c", {}, R(0, 7), set()),
    ("T4", "mm_c", {}, {0, 6}, set()),
    ("T4", "b_orig", {}, R(0, 7), set()),
    ("T4", "b", {}, R(0, 7), set()),
    ("T4", "a", {}, {0, 6, 7}, set()),
    ("T4", "d", {}, {0, 6, 7}, {1, 2}),
    ("T5", "kk_c", {}, {0, 1, 2}, set()),
    ("T5", "mm_c", {"no_component0": "none"}, set(), set()),
    ("T5", "kk_c", {"no_component0": "none"}, set(), set()),
    ("T5", "b", {}, {0, 1, 2}, set()),
    ("T6", "kk_c", {}, {0, 1, 2}, set()),
    ("T6", "mm_c", {}, {0, 1, 2}, set()),
    ("T6", "b_orig", {}, {0, 1, 2}, R(3, 10)),
    ("T6", "b", {}, {0, 1, 2}, R(3, 16)),
    ("T6", "a", {}, R(0, 6), set()),
    ("T6", "d", {}, R(0, 6), R(6, 16)),
    ("T6", "fnp", {"fnp_count": 5}, R(0, 5), set()),
    ("T6", "fsr", {"fsr_threshold": 0.1}, R(0, 14), set()),  # cost < ln 10 = 2.3026
    ("T6", "fsr", {"fsr_threshold": 0.2}, R(0, 6), set()),  # cost < ln 5 = 1.6094
    ("T7", "kk_c", {}, {0, 1, 2}, set()),
    ("T7", "mm_c", {}, {0, 1, 2}, set()),
    ("T7", "b_orig", {}, {0, 1, 2}, set()),
]


def decide(values, scheme, **options):
    costs = np.full((1, 45), np.inf, np.float32)
    costs[0, :len(values)] = values
    mask = np.isfinite(costs)
    fit = fit_gmm_1d(costs, mask)
    out = separate(costs, mask, fit.components, fit.log_density, scheme=scheme, **options)
    return out.numpy()[0, :len(values)]


@pytest.mark.parametrize("name,scheme,options,positives,ignored", EXPECTED)
def test_separation_schemes_on_reference_vectors(name, scheme, options, positives, ignored):
    """T1-T7 (docs/PAA.md, Step E) for every scheme with values."""
    out = decide(VECTORS[name], scheme, **options)
    assert set(np.flatnonzero(out == 1)) == positives
    assert set(np.flatnonzero(out == -1)) == ignored
    assert set(np.flatnonzero(out == 0)) == set(range(len(out))) - positives - ignored


@pytest.mark.parametrize("policy,expected", [("pos", 1), ("neg", 0)])
def test_single_candidate_policy(policy, expected):
    """One candidate is positive (KK) or negative (MM), whatever the scheme (Step E)."""
    for scheme in ("kk_c", "mm_c", "a", "b", "b_orig", "d"):
        assert decide([0.7], scheme, single_candidate=policy).tolist() == [expected]


def test_bad_scheme_is_rejected():
    with pytest.raises(ValueError, match="separation"):
        decide([0.1, 0.2], "e")


# The assignment toy: 12 anchors, 3 levels, K = 2, two GTs of classes 3 and 7.
TOY_LEVELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2], np.int32)
TOY_MATCH = [0, 0, 0, -1, 1, 1, 0, 0, 1, -1, 0, 1]
TOY_COST = [0.30, 0.25, 0.90, np.inf, 0.40, 1.50, 0.35, 1.20, 0.45, np.inf, 2.00, 0.42]


def run_toy(matched, costs, classes, **options):
    config = AssignConfig(topk=2, max_gt_per_batch=4, **options)
    return select_from_costs(config, tf.constant([costs], tf.float32),
                             tf.constant([matched], tf.int32), tf.constant([classes], tf.int32),
                             level_bounds(TOY_LEVELS, 3))


@pytest.mark.parametrize("variant", [{}, {"separation": "mm_c", "single_candidate": "neg",
                                          "no_component0": "none"}])
def test_end_to_end_toy(variant):
    """The assignment toy: candidates, components, s and the final labels (KK and MM agree here)."""
    labels, pos_gt, num_pos, diag = run_toy(TOY_MATCH, TOY_COST, [3, 7], **variant)
    b = BACKGROUND
    assert labels.numpy()[0].tolist() == [3, 3, b, b, 7, b, b, b, b, b, b, 7]
    assert pos_gt.numpy()[0].tolist() == [0, 0, -1, -1, 1, -1, -1, -1, -1, -1, -1, 1]
    assert num_pos.numpy()[0].tolist() == [2, 2]
    anchors = diag.candidate_anchors.numpy()[0]
    assert anchors[0].tolist() == [1, 0, 6, 7, 10, -1]
    assert anchors[1].tolist() == [4, 11, 8, 5, -1, -1]
    assert diag.components.numpy()[0, 0, :5].tolist() == [0, 0, 0, 1, 1]
    assert diag.components.numpy()[0, 1, :4].tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(diag.log_density.numpy()[0, 0, :5],
                               [1.0190, 1.7682, 1.0190, -1.4147, -1.4212], atol=1e-4)
    np.testing.assert_allclose(diag.log_density.numpy()[0, 1, :4],
                               [2.0340, 2.6641, 1.8371, 4.6025], atol=1e-4)


@pytest.mark.parametrize("policy,label3,gt2_positives", [("pos", 5, 1), ("neg", BACKGROUND, 0)])
def test_toy_variant_lone_candidate(policy, label3, gt2_positives):
    """Assignment toy variant: anchor 3 is the only candidate of a third GT (class 5)."""
    matched = list(TOY_MATCH)
    matched[3] = 2
    costs = list(TOY_COST)
    costs[3] = 0.8
    labels, _, num_pos, _ = run_toy(matched, costs, [3, 7, 5], single_candidate=policy)
    assert labels.numpy()[0, 3] == label3
    assert num_pos.numpy()[0].tolist() == [2, 2, gt2_positives]


def test_topk_ties_prefer_smaller_anchor_index():
    """Equal costs: per-level top-K and the pooled sort keep the smaller anchor index first."""
    costs = [0.5, 0.5, 0.5, np.inf, 0.5, 0.5, 0.5, 0.5, 0.5, np.inf, 0.5, 0.5]
    matched = [0, 0, 0, -1, 0, 0, 0, 0, 0, -1, 0, 0]
    _, _, _, diag = run_toy(matched, costs, [1, 2])
    assert diag.candidate_anchors.numpy()[0, 0].tolist() == [0, 1, 6, 7, 10, 11]
    # All equal (the T2 situation): one component, an exact tie in s, position 0 wins.
    assert diag.decisions.numpy()[0, 0].tolist() == [1, 0, 0, 0, 0, 0]


def yxyx(x1, y1, x2, y2):
    return [y1, x1, y2, x2]


def test_pre_assignment_kk_vs_mm():
    """The pre-assignment example: the KK matcher keeps A on GT1; MM's rescue moves A to GT2."""
    anchors = np.array([yxyx(10, 0, 110, 100), yxyx(0, 0, 100, 100)], np.float32)
    gts = np.array([[yxyx(0, 0, 100, 100), yxyx(40, 0, 140, 100)]], np.float32)
    iou = anchor_gt_iou(anchors, gts, [[0, 1]])
    np.testing.assert_allclose(iou.numpy()[0], [[0.8182, 1.0], [0.5385, 0.4286]], atol=1e-4)
    iou_p1 = anchor_gt_iou(anchors, gts, [[0, 1]], plus_one=True)
    np.testing.assert_allclose(iou_p1.numpy()[0], [[0.8198, 1.0], [0.5420, 0.4326]], atol=1e-4)
    assert match_anchors(iou, 0.1, "kk")[0].numpy().tolist() == [[0, 0]]
    assert match_anchors(iou, 0.1, "mm")[0].numpy().tolist() == [[1, 0]]


def test_low_quality_rescue_gives_anchor_its_own_argmax_gt():
    """Step A.4 (KK): a GT's best anchor below 0.1 is matched, to the anchor's own argmax GT."""
    anchors = np.array([yxyx(0, 0, 100, 100), yxyx(300, 300, 400, 400)], np.float32)
    gts = np.array([[yxyx(0, 0, 8, 8), yxyx(0, 0, 9, 9), yxyx(0, 0, -1, -1)]], np.float32)
    iou = anchor_gt_iou(anchors, gts, [[0, 1, -1]])  # both GTs' best: anchor 0, IoU < 0.1
    assert match_anchors(iou, 0.1, "kk")[0].numpy().tolist() == [[1, -1]]
    assert match_anchors(iou, 0.1, "mm")[0].numpy().tolist() == [[1, -1]]
    assert match_anchors(iou, 0.1, "kk", allow_low_quality=False)[0].numpy().tolist() == [[-1, -1]]


def test_anchor_cost_matches_reference_losses():
    """Reference loss values: focal cost at the prior bias (80 classes) + λ·GIoU loss of two
    10 px boxes."""
    logits = np.full((1, 2, 80), -4.59512, np.float32)
    pred = np.array([[yxyx(0, 0, 10, 10), yxyx(0, 0, 10, 10)]], np.float32)
    gts = np.array([[yxyx(5, 5, 15, 15)]], np.float32)
    for lam in (1.0, 1.3):
        cost = anchor_costs(logits, pred, gts, [[4]], tf.constant([[0, -1]]), score_lambda=lam)
        np.testing.assert_allclose(cost.numpy()[0, 0], 1.128441373 + lam * 1.079365, rtol=1e-5)
        assert cost.numpy()[0, 1] == np.inf


# --- End to end against an independent NumPy + scikit-learn reference -------------------

def make_batch(seed, batch=3, num_gt=5, num_classes=4, size=128):
    rng = np.random.default_rng(seed)
    anchors, levels = generate_anchors(size, size)
    gt = np.full((batch, num_gt, 4), -1.0, np.float32)
    cls = np.full((batch, num_gt), -1, np.int32)
    for b, count in enumerate([num_gt, 2, 0][:batch]):
        for m in range(count):
            y, x = rng.uniform(0, size - 20, 2)
            h, w = rng.uniform(12, size - max(y, x), 2)
            gt[b, m] = [y, x, min(y + h, size), min(x + w, size)]
            cls[b, m] = rng.integers(0, num_classes)
    logits = rng.normal(-3.0, 1.5, (batch, len(anchors), num_classes)).astype(np.float32)
    pred = (anchors[None] + rng.normal(0, 6, (batch, len(anchors), 4))).astype(np.float32)
    return anchors, levels, gt, cls, logits, pred


def reference_paa(costs, matched, cls, levels, topk, scheme):
    """Steps C-F of docs/PAA.md written directly, with one scikit-learn fit per GT."""
    batch, num_anchors = costs.shape
    labels = np.full((batch, num_anchors), BACKGROUND)
    for b in range(batch):
        for g in np.flatnonzero(cls[b] >= 0):
            cand = []
            for lvl in np.unique(levels):
                idx = np.flatnonzero((matched[b] == g) & (levels == lvl))
                idx = idx[np.lexsort((idx, costs[b, idx]))][:topk]
                cand.extend(idx.tolist())
            cand = np.array(cand, int)
            if cand.size == 0:
                continue
            cand = cand[np.lexsort((cand, costs[b, cand]))]
            if cand.size == 1:
                labels[b, cand[0]] = cls[b, g]
                continue
            x = costs[b, cand].astype(np.float64).reshape(-1, 1)
            gmm = GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                                  precisions_init=[[[1.0]], [[1.0]]])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gmm.fit(x)
            comp, s = gmm.predict(x), gmm.score_samples(x)
            fg = np.flatnonzero(comp == 0)
            if fg.size == 0:
                labels[b, cand] = cls[b, g]
                continue
            j = fg[np.argmax(s[fg])]
            chosen = cand[:j + 1] if scheme == "kk_c" else cand[fg[fg <= j]]
            labels[b, chosen] = cls[b, g]
    return labels


@pytest.mark.parametrize("seed,scheme", [(0, "kk_c"), (1, "kk_c"), (2, "mm_c")])
def test_assign_matches_reference_pipeline(seed, scheme):
    anchors, levels, gt, cls, logits, pred = make_batch(seed)
    config = AssignConfig(method="paa", separation=scheme, max_gt_per_batch=8)
    result, diag = paa_candidates_and_gmm(config, anchors, levels, 5, gt, cls, logits, pred)
    costs = diag.anchor_costs.numpy()
    matched = diag.matched_gt_iou.numpy()
    expected = reference_paa(costs, matched, cls, levels, 9, scheme)
    np.testing.assert_array_equal(result.labels.numpy(), expected)

    # Step B costs against NumPy formulas (focal sum + GIoU loss, λ = 1).
    b, a = np.nonzero(matched >= 0)
    g = matched[b, a]
    z = logits[b, a].astype(np.float64)
    t = np.eye(logits.shape[-1])[cls[b, g]]
    p = 1 / (1 + np.exp(-z))
    pt = np.where(t == 1, p, 1 - p)
    focal = (np.where(t == 1, 0.25, 0.75) * (1 - pt) ** 2 * -np.log(pt)).sum(-1)
    pb, gb = pred[b, a].astype(np.float64), gt[b, g].astype(np.float64)
    pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2])
    inter = np.prod(np.clip(np.minimum(pb[:, 2:], gb[:, 2:]) - np.maximum(pb[:, :2], gb[:, :2]),
                            0, None), axis=1)
    union = np.prod(pb[:, 2:] - pb[:, :2], 1) + np.prod(gb[:, 2:] - gb[:, :2], 1) - inter
    encl = np.prod(np.maximum(pb[:, 2:], gb[:, 2:]) - np.minimum(pb[:, :2], gb[:, :2]), 1)
    giou = inter / union - (encl - union) / encl
    np.testing.assert_allclose(costs[b, a], focal + 1 - giou, rtol=2e-5, atol=2e-5)
    assert np.all(np.isinf(costs[matched < 0]))

    # Result consistency: zero-GT image all background, positives carry their GT box.
    labels = result.labels.numpy()
    assert (labels[2] == BACKGROUND).all()
    pos = result.positive_mask.numpy()
    np.testing.assert_array_equal(pos, labels >= 0)
    mg = result.matched_gt.numpy()
    bb, aa = np.nonzero(pos)
    np.testing.assert_array_equal(result.matched_boxes.numpy()[bb, aa], gt[bb, mg[bb, aa]])
    np.testing.assert_array_equal(labels[bb, aa], cls[bb, mg[bb, aa]])
    assert (result.matched_boxes.numpy()[~pos] == 0).all() and (mg[~pos] == -1).all()
    npg = result.num_positives_per_gt.numpy()
    assert (npg[cls < 0] == 0).all()
    for bi in range(3):
        for m in range(5):
            assert npg[bi, m] == np.sum(pos[bi] & (mg[bi] == m))


@pytest.mark.parametrize("scheme", ["b", "b_orig", "d"])
def test_ignore_schemes_reach_the_anchor_labels(scheme):
    anchors, levels, gt, cls, logits, pred = make_batch(3)
    config = AssignConfig(separation=scheme, max_gt_per_batch=8)
    result, diag = paa_candidates_and_gmm(config, anchors, levels, 5, gt, cls, logits, pred)
    dec = diag.decisions.numpy()
    cand = diag.candidate_anchors.numpy()
    labels = result.labels.numpy()
    b, m, n = np.nonzero(dec == -1)
    assert (labels[b, cand[b, m, n]] == IGNORE).all()
    assert np.sum(labels == IGNORE) == len(b)


@pytest.mark.slow
def test_no_gradient_flows_and_whole_assignment_compiles_with_xla():
    anchors, levels, gt, cls, logits, pred = make_batch(4)
    config = AssignConfig(max_gt_per_batch=16)
    logits_v, pred_v = tf.Variable(logits), tf.Variable(pred)
    with tf.GradientTape(persistent=True) as tape:
        result, diag = paa_candidates_and_gmm(config, anchors, levels, 5, gt, cls, logits_v,
                                              pred_v)
        finite = tf.where(tf.math.is_finite(diag.anchor_costs), diag.anchor_costs, 0.0)
        total = tf.reduce_sum(finite) + tf.reduce_sum(result.matched_boxes)
    assert tape.gradient(total, [logits_v, pred_v]) == [None, None]

    compiled = tf.function(lambda g, c, z, p: assign(config, anchors, levels, 5, g, c, z, p),
                           jit_compile=True)
    jitted = compiled(gt, cls, logits, pred)
    for got, want in zip(jitted, result):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    from paa_tf.config import AssignConfig
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    from paa_tf.assign import assign
    from test_assign_paa import make_batch
    anchors, levels, gt, cls, logits, pred = make_batch(5, batch=4)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    data = tf.data.Dataset.from_tensor_slices((gt, cls, logits, pred)).batch(4)
    for method in ("paa", "iou", "atss"):
        config = AssignConfig(method=method, max_gt_per_batch=16)
        fn = lambda g, c, z, p: assign(config, anchors, levels, 5, g, c, z, p)
        step = tf.function(lambda inputs: strategy.run(fn, args=inputs))
        out = step(next(iter(strategy.experimental_distribute_dataset(data))))
        want = fn(gt, cls, logits, pred)
        for got, ref in zip(out, want):
            parts = strategy.experimental_local_results(got)
            assert len(parts) == 2 and parts[0].shape[0] == 2, parts
            np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts]), ref.numpy())
        print(method, "ok", int(tf.reduce_sum(want.num_positives_per_gt)))
""")


@pytest.mark.slow
def test_runs_under_mirrored_strategy_on_two_cpu_devices(repo_root):
    """strategy.run on 2 logical CPUs (per-replica batch 2, one image without GT) = 1 device."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(repo_root), str(repo_root / "tests")],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split()[:2] for line in proc.stdout.split("\n") if line] == [
        ["paa", "ok"], ["iou", "ok"], ["atss", "ok"]]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["paa", "iou", "atss"])
def test_unknown_batch_size_and_project_config(method):
    """Evaluation's last partial batch has a dynamic B; the project's AssignConfig is accepted."""
    from paa_tf.config import AssignConfig

    anchors, levels, gt, cls, logits, pred = make_batch(6)
    config = AssignConfig(method=method)
    spec = [tf.TensorSpec([None, 5, 4], tf.float32), tf.TensorSpec([None, 5], tf.int32),
            tf.TensorSpec([None, len(anchors), 4], tf.float32),
            tf.TensorSpec([None, len(anchors), 4], tf.float32)]
    dynamic = tf.function(lambda g, c, z, p: assign(config, anchors, levels, 5, g, c, z, p),
                          input_signature=spec)
    got = dynamic(gt, cls, logits, pred)
    want = assign(config, anchors, levels, 5, gt, cls, logits, pred)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert want.num_positives_per_gt.numpy()[0].sum() > 0
