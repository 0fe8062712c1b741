"""Post-processing: candidate rules, class-aware NMS, score voting, mapping back, TTA
(docs/PAA.md, "Inference")."""

import math

import numpy as np
import pytest
import tensorflow as tf

from paa_tf.inference import postprocess as pp
from paa_tf.ops import boxes as box_ops

# The voting example (docs/CONVENTIONS.md, "Reference values"), boxes (x1, y1, x2, y2)
# converted to yxyx.
_SPEC_XYXY = np.array([[10, 10, 50, 50], [12, 10, 52, 50], [8, 12, 48, 52],
                       [30, 30, 80, 80], [200, 200, 240, 240]], np.float32)
_SPEC_SCORES = np.array([0.9, 0.8, 0.6, 0.5, 0.7], np.float32)


def _yxyx(xyxy):
    return np.asarray(xyxy, np.float32)[..., [1, 0, 3, 2]]


def _logit(p):
    return math.log(p / (1.0 - p))


def _info(orig_hw, scaled_hw, scale_yx, offset_yx=(0.0, 0.0)):
    return np.array([[orig_hw, scaled_hw, scale_yx, offset_yx]], np.float32)


@pytest.mark.parametrize("plus_one, sigma, expected_xyxy", [
    (True, 0.025, (10.4702, 10.2178, 50.4702, 50.2178)),
    (False, 0.025, (10.4757, 10.2087, 50.4757, 50.2087)),
    (True, 0.0025, (10.0543, 10.0, 50.0543, 50.0)),
])
def test_score_voting_reproduces_reference_example(plus_one, sigma, expected_xyxy):
    """The voting example: the voted box under KK's +1 IoU, MM's continuous IoU and the paper's
    sigma."""
    candidates = _yxyx(_SPEC_XYXY)[None]
    voted = pp.score_voting(candidates[:, :1], np.zeros((1, 1), np.int32), candidates,
                            _SPEC_SCORES[None, :, None], sigma=sigma, iou_threshold=0.01,
                            plus_one=plus_one).numpy()[0, 0]
    np.testing.assert_allclose(voted[[1, 0, 3, 2]], expected_xyxy, atol=1e-4)


def test_score_voting_ignores_other_classes_and_far_boxes():
    """Only same-class candidates with IoU > 0.01 vote: far and class-1 boxes change nothing."""
    det = _yxyx([[10, 10, 50, 50]])[None]
    cands = _yxyx([[10, 10, 50, 50], [12, 10, 52, 50], [300, 300, 340, 340]])[None]
    scores = np.zeros((1, 3, 2), np.float32)
    scores[0, 0, 0] = 0.9
    scores[0, 1, 1] = 0.8  # overlapping but of another class
    scores[0, 2, 0] = 0.7  # same class but IoU 0
    voted = pp.score_voting(det, np.zeros((1, 1), np.int32), cands, scores).numpy()
    np.testing.assert_allclose(voted, det, atol=1e-6)


def _np_iou(a, b, plus_one):
    one = 1.0 if plus_one else 0.0
    ih = min(a[2], b[2]) - max(a[0], b[0]) + one
    iw = min(a[3], b[3]) - max(a[1], b[1]) + one
    inter = max(ih, 0.0) * max(iw, 0.0)
    area_a = max(a[2] - a[0] + one, 0.0) * max(a[3] - a[1] + one, 0.0)
    area_b = max(b[2] - b[0] + one, 0.0) * max(b[3] - b[1] + one, 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _np_voting_oracle(det_boxes, det_classes, cand_boxes, cand_scores, sigma, thr, plus_one):
    """Per-detection loop, as the reference implementations do it."""
    out = det_boxes.astype(np.float64).copy()
    for b in range(det_boxes.shape[0]):
        for d in range(det_boxes.shape[1]):
            c = det_classes[b, d]
            if c < 0:
                continue
            num, den = np.zeros(4), 0.0
            for n in range(cand_boxes.shape[1]):
                s = cand_scores[b, n, c]
                if s <= 0:
                    continue
                iou = _np_iou(det_boxes[b, d], cand_boxes[b, n], plus_one)
                if iou > thr:
                    w = math.exp(-(1.0 - iou) ** 2 / sigma) * s
                    num += w * cand_boxes[b, n]
                    den += w
            if den > 0:
                out[b, d] = num / den
    return out


def _random_boxes(rng, shape, size=200.0):
    yx = rng.uniform(0, size, shape + (2,))
    hw = rng.uniform(5, 60, shape + (2,))
    return np.concatenate([yx, yx + hw], axis=-1).astype(np.float32)


@pytest.mark.parametrize("plus_one", [False, True])
def test_vectorised_voting_matches_numpy_loop_oracle(plus_one):
    rng = np.random.default_rng(0)
    batch, num_det, num_cand, num_classes = 2, 15, 120, 3
    cands = _random_boxes(rng, (batch, num_cand))
    # Detections are jittered copies of candidates so that many candidates overlap them.
    pick = rng.integers(0, num_cand, (batch, num_det))
    dets = np.take_along_axis(cands, pick[..., None], axis=1) + rng.normal(
        0, 3, (batch, num_det, 4)).astype(np.float32)
    classes = rng.integers(0, num_classes, (batch, num_det)).astype(np.int32)
    classes[1, -4:] = -1  # padded detections
    scores = rng.uniform(0, 1, (batch, num_cand, num_classes)).astype(np.float32)
    scores[rng.uniform(size=scores.shape) < 0.5] = 0.0
    got = pp.score_voting(dets, classes, cands, scores, sigma=0.025, iou_threshold=0.01,
                          plus_one=plus_one).numpy()
    want = _np_voting_oracle(dets, classes, cands, scores, 0.025, 0.01, plus_one)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert not np.allclose(got[0], dets[0]), "voting moved nothing: the oracle check is vacuous"


def _params(**kwargs):
    return pp.PostprocessParams(**kwargs)


def test_nms_is_class_aware():
    """Overlapping boxes of different classes both survive; same class at IoU > 0.6 does not."""
    boxes = _yxyx([[0, 0, 100, 100], [0, 10, 100, 110], [0, 0, 100, 100], [0, 50, 100, 150]])
    scores = np.zeros((1, 4, 2), np.float32)
    scores[0, 0, 0] = 0.9
    scores[0, 1, 0] = 0.8  # IoU 0.818 with box 0, same class: suppressed
    scores[0, 2, 1] = 0.7  # identical box, other class: kept
    scores[0, 3, 0] = 0.6  # IoU 0.333 with box 0: kept
    out = pp.nms_and_vote(boxes[None], scores, _params(score_voting=False))
    assert int(out["num_detections"][0]) == 3
    np.testing.assert_allclose(out["detection_scores"][0, :3], [0.9, 0.7, 0.6])
    np.testing.assert_array_equal(out["detection_classes"][0, :4], [0, 1, 0, -1])
    np.testing.assert_allclose(out["detection_boxes"][0, 1], boxes[2])


def test_nms_keeps_at_most_max_detections_by_score():
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng, (1, 50), size=2000.0)
    scores = rng.uniform(0.1, 1.0, (1, 50, 1)).astype(np.float32)
    out = pp.nms_and_vote(boxes, scores, _params(score_voting=False, max_detections=10))
    assert out["detection_scores"].shape == (1, 10)
    np.testing.assert_allclose(out["detection_scores"][0], np.sort(scores[0, :, 0])[::-1][:10])


def test_zero_detections_are_safe():
    """No candidate at all (every batch entry padded): zero detections, no NaN (MM issue #4021)."""
    boxes = np.zeros((2, 6, 4), np.float32)
    scores = np.zeros((2, 6, 3), np.float32)
    out = pp.nms_and_vote(boxes, scores, _params(score_voting=True))
    np.testing.assert_array_equal(out["num_detections"], [0, 0])
    for key in ("detection_boxes", "detection_scores"):
        assert np.all(np.isfinite(out[key])) and not np.any(out[key])
    assert np.all(out["detection_classes"].numpy() == -1)


def _toy_head(p_q_pairs, num_classes=1):
    """Logits for anchors far apart, anchor a having class-0 probability p and quality q."""
    num = len(p_q_pairs)
    anchors = np.array([[0, 100 * a, 32, 100 * a + 32] for a in range(num)], np.float32)
    cls = np.full((1, num, num_classes), -12.0, np.float32)
    for a, (p, _) in enumerate(p_q_pairs):
        cls[0, a, 0] = _logit(p)
    iou = np.array([[_logit(q) for _, q in p_q_pairs]], np.float32)
    deltas = np.zeros((1, num, 4), np.float32)
    info = _info((64, 100 * num), (64, 100 * num), (1, 1))
    return cls, deltas, iou, anchors, info


@pytest.mark.parametrize("rule, kept_anchor, kept_score", [
    ("kk", 0, math.sqrt(0.06 * 0.04)), ("mm", 1, math.sqrt(0.04 * 0.9))])
def test_candidate_rules_disagree_as_documented(rule, kept_anchor, kept_score):
    """(p=.06, q=.04) survives KK (p > .05) not MM; (p=.04, q=.9) the opposite (docs/PAA.md,
    "Inference")."""
    cls, deltas, iou, anchors, info = _toy_head([(0.06, 0.04), (0.04, 0.9)])
    out = pp.postprocess(cls, deltas, iou, anchors, info, level_sizes=[2],
                         params=_params(candidate_rule=rule))
    assert int(out["num_detections"][0]) == 1
    np.testing.assert_allclose(out["detection_scores"][0, 0], kept_score, rtol=1e-5)
    np.testing.assert_allclose(out["detection_boxes"][0, 0], anchors[kept_anchor], atol=1e-4)


def test_kk_topk_counts_anchor_class_pairs_per_level():
    """KK's per-level top-k counts (anchor, class) pairs; MM's counts anchors."""
    cls, deltas, iou, anchors, info = _toy_head([(0.9, 0.9), (0.8, 0.9)], num_classes=2)
    cls[0, :, 1] = [_logit(0.7), _logit(0.6)]
    kk = pp.select_candidates(cls, deltas, iou, anchors, [2], info,
                              _params(pre_nms_topk=3))["scores"].numpy()
    kept = np.sort(kk[kk > 0])
    np.testing.assert_allclose(kept, np.sqrt(np.array([0.7, 0.8, 0.9]) * 0.9), rtol=1e-5)
    mm = pp.select_candidates(cls, deltas, iou, anchors, [2], info,
                              _params(pre_nms_topk=1, candidate_rule="mm"))["scores"].numpy()
    np.testing.assert_allclose(np.sort(mm[mm > 0]), np.sqrt(np.array([0.7, 0.9]) * 0.9),
                               rtol=1e-5)


def test_topk_is_per_level():
    """A weak anchor of the second level survives a top-1 taken per level, not overall."""
    cls, deltas, iou, anchors, info = _toy_head([(0.9, 0.9), (0.8, 0.9), (0.3, 0.9)])
    out = pp.postprocess(cls, deltas, iou, anchors, info, level_ids=np.array([0, 0, 1]),
                         params=_params(pre_nms_topk=1, score_voting=False))
    np.testing.assert_allclose(out["detection_scores"][0, :3],
                               [math.sqrt(0.81), math.sqrt(0.27), 0.0], rtol=1e-5)


@pytest.mark.parametrize("score, expected", [("sqrt", 0.54), ("product", 0.2916), ("cls", 0.36)])
def test_unified_score(score, expected):
    """p = 0.36, q = 0.81 -> sqrt 0.54, product 0.2916; "cls" or no IoU head -> p."""
    cls, deltas, iou, anchors, info = _toy_head([(0.36, 0.81)])
    out = pp.postprocess(cls, deltas, iou, anchors, info, level_sizes=[1],
                         params=_params(score=score))
    np.testing.assert_allclose(out["detection_scores"][0, 0], expected, rtol=1e-5)
    out = pp.postprocess(cls, deltas, None, anchors, info, level_sizes=[1],
                         params=_params(score=score))
    np.testing.assert_allclose(out["detection_scores"][0, 0], 0.36, rtol=1e-5)


def test_boxes_decoded_clipped_and_mapped_back_by_hand():
    """Decode, clip to the scaled image, then (box - offset) / scale, clip to the original."""
    anchors = np.array([[10, 20, 42, 52], [40, 150, 104, 214]], np.float32)
    deltas = np.zeros((1, 2, 4), np.float32)
    deltas[0, 0] = [10 * 0.25, 0.0, 0.0, 5 * math.log(2.0)]  # centre down by h/4, twice as wide
    cls = np.array([[[_logit(0.9)], [_logit(0.8)]]], np.float32)
    iou = np.array([[_logit(0.9), _logit(0.9)]], np.float32)
    # Original 100x90 image resized by 2 to 200x180, then shifted by (4, 6).
    info = _info((100, 90), (200, 180), (2, 2), (4, 6))
    out = pp.postprocess(cls, deltas, iou, anchors, info, level_sizes=[2],
                         params=_params(score_voting=False))
    # Anchor 0: centre (26, 36) -> (34, 36), size 32x64 -> [18, 4, 50, 68] in input pixels.
    # Anchor 1: [40, 150, 104, 214] clipped at scaled width 180 -> [40, 150, 104, 180].
    want = np.array([[(18 - 4) / 2, (4 - 6) / 2, (50 - 4) / 2, (68 - 6) / 2],
                     [(40 - 4) / 2, (150 - 6) / 2, (104 - 4) / 2, (180 - 6) / 2]])
    want[:, [1, 3]] = np.clip(want[:, [1, 3]], 0, 90)
    np.testing.assert_allclose(out["detection_boxes"][0, :2], want, atol=1e-4)
    np.testing.assert_allclose(
        pp.map_to_original(np.array([[[18, 4, 50, 68]]], np.float32), info).numpy()[0, 0],
        [7, 0, 23, 31], atol=1e-5)


def test_padded_batch_entry_gives_no_detections_and_no_nan():
    """Entry 1 has only hopeless logits and an all-zero image_info (a padding image)."""
    cls, deltas, iou, anchors, info = _toy_head([(0.9, 0.9), (0.7, 0.8)])
    cls = np.concatenate([cls, np.full_like(cls, -30.0)])
    deltas = np.concatenate([deltas, deltas])
    iou = np.concatenate([iou, iou])
    info = np.concatenate([info, np.zeros_like(info)])
    out = pp.postprocess(cls, deltas, iou, anchors, info, level_sizes=[2])
    np.testing.assert_array_equal(out["num_detections"], [2, 0])
    for value in out.values():
        assert np.all(np.isfinite(value.numpy()))
    assert not np.any(out["detection_boxes"][1]) and np.all(out["detection_classes"][1] == -1)


def test_postprocess_voting_uses_overlapping_candidates():
    """Two same-class overlapping anchors: NMS keeps the best, voting pulls it towards the other."""
    anchors = _yxyx([[10, 10, 50, 50], [12, 10, 52, 50]])
    cls = np.array([[[_logit(0.81)], [_logit(0.64)]]], np.float32)
    iou = np.zeros((1, 2), np.float32)  # q = 0.5
    info = _info((100, 100), (100, 100), (1, 1))
    out = pp.postprocess(cls, np.zeros((1, 2, 4), np.float32), iou, anchors, info,
                         level_sizes=[2], params=_params(plus_one=False))
    assert int(out["num_detections"][0]) == 1
    s = np.sqrt([0.81 * 0.5, 0.64 * 0.5])
    iou01 = _np_iou(anchors[0], anchors[1], False)
    w = s * np.exp(-(1 - np.array([1.0, iou01])) ** 2 / 0.025)
    want = (w[:, None] * anchors).sum(0) / w.sum()
    np.testing.assert_allclose(out["detection_boxes"][0, 0], want, atol=1e-4)


def test_params_from_config():
    from paa_tf import config as config_lib
    cfg = config_lib.load_config(overrides=["eval.candidate_rule=mm", "eval.voting_sigma=0.0025",
                                            "model.plus_one=true", "model.delta_clamp=mm"])
    params = pp.PostprocessParams.from_config(cfg)
    assert params.candidate_rule == "mm" and params.voting_sigma == 0.0025
    assert params.plus_one and params.delta_clamp == "mm"
    with pytest.raises(ValueError, match="candidate_rule"):
        pp.PostprocessParams(candidate_rule="xx")


def test_level_sizes_from_ids():
    assert pp.level_sizes_from_ids(np.array([0, 0, 0, 1, 1, 2])) == [3, 2, 1]
    with pytest.raises(ValueError, match="sorted"):
        pp.level_sizes_from_ids(np.array([1, 0]))


def test_merge_tta_unflips_rescales_and_votes():
    """Two views of a 100x100 image: x1 unflipped, x2 flipped; candidates meet in the original."""
    info_1 = _info((100, 100), (100, 100), (1, 1))
    info_2 = _info((100, 100), (200, 200), (2, 2))
    # View 1 sees the object at yxyx [20, 30, 60, 70] (its frame is the original's).
    view1 = {"boxes": _yxyx([[30, 20, 70, 60]])[None], "scores": np.array([[[0.9]]], np.float32)}
    # View 2 sees it at original [20, 32, 60, 72]: x2 gives [40, 64, 120, 144], and
    # mirroring in the 200-pixel-wide scaled image gives x in [200 - 144, 200 - 64].
    view2 = {"boxes": np.array([[[40, 56, 120, 136]]], np.float32),
             "scores": np.array([[[0.8]]], np.float32)}
    mapped = pp.views_to_original(view2, info_2, flipped=True)["boxes"].numpy()
    np.testing.assert_allclose(mapped[0, 0], [20, 32, 60, 72], atol=1e-5)
    views = [{"candidates": view1, "image_info": info_1, "flipped": False},
             {"candidates": view2, "image_info": info_2, "flipped": True}]
    out = pp.merge_tta(views, _params())
    assert int(out["num_detections"][0]) == 1  # IoU 0.905 > 0.6: one survives NMS
    boxes = np.array([[20, 30, 60, 70], [20, 32, 60, 72]], np.float64)
    iou = _np_iou(boxes[0], boxes[1], False)
    w = np.array([0.9, 0.8 * math.exp(-(1 - iou) ** 2 / 0.025)])
    np.testing.assert_allclose(out["detection_boxes"][0, 0], (w[:, None] * boxes).sum(0) / w.sum(),
                               atol=1e-4)
    np.testing.assert_allclose(out["detection_scores"][0, 0], 0.9)


@pytest.mark.slow
def test_runs_in_saved_model_with_dynamic_batch(tmp_path):
    """The whole post-processing inside a SavedModel signature, batch 1 and 3, equals eager."""
    rng = np.random.default_rng(2)
    anchors = np.concatenate([_random_boxes(rng, (12,), 120.0), _random_boxes(rng, (4,), 120.0)])
    sizes = [12, 4]
    params = _params(pre_nms_topk=10, max_detections=5)

    class Post(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 16, 3], tf.float32),
                                      tf.TensorSpec([None, 16, 4], tf.float32),
                                      tf.TensorSpec([None, 16], tf.float32),
                                      tf.TensorSpec([None, 4, 2], tf.float32)])
        def __call__(self, cls, deltas, iou, info):
            return pp.postprocess(cls, deltas, iou, anchors, info, level_sizes=sizes,
                                  params=params)

    tf.saved_model.save(Post(), str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    for batch in (1, 3):
        inputs = (rng.normal(0, 2, (batch, 16, 3)).astype(np.float32),
                  rng.normal(0, 0.5, (batch, 16, 4)).astype(np.float32),
                  rng.normal(0, 1, (batch, 16)).astype(np.float32),
                  np.repeat(_info((60, 60), (120, 120), (2, 2)), batch, axis=0))
        got = loaded(*inputs)
        want = pp.postprocess(*inputs[:3], anchors, inputs[3], level_sizes=sizes, params=params)
        assert got["detection_boxes"].shape == (batch, 5, 4)
        assert int(tf.reduce_sum(got["num_detections"])) > 0
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)
        assert got["detection_classes"].dtype == tf.int32


def test_decode_matches_box_ops():
    """Candidate boxes are exactly `decode_boxes` of the selected anchors, clipped."""
    rng = np.random.default_rng(3)
    anchors = _random_boxes(rng, (8,), 100.0)
    deltas = rng.normal(0, 0.3, (1, 8, 4)).astype(np.float32)
    cls = np.full((1, 8, 1), 3.0, np.float32)
    info = _info((400, 400), (400, 400), (1, 1))
    cand = pp.select_candidates(cls, deltas, None, anchors, [8], info, _params())
    want = box_ops.clip_boxes(box_ops.decode_boxes(deltas[0], anchors), 400, 400).numpy()
    got = cand["boxes"].numpy()[0]
    order_got = np.lexsort(got.T)
    order_want = np.lexsort(want.T)
    np.testing.assert_allclose(got[order_got], want[order_want], atol=1e-4)


def test_accepts_half_precision_logits_and_rank3_iou_logits():
    """Mixed-precision head outputs ([B, A, 1] IoU logits, float16) give the float32 result."""
    cls, deltas, iou, anchors, info = _toy_head([(0.36, 0.81), (0.9, 0.5)])
    want = pp.postprocess(cls, deltas, iou, anchors, info, level_sizes=[2])
    got = pp.postprocess(tf.constant(cls, tf.float16), tf.constant(deltas, tf.float16),
                         tf.constant(iou[..., None], tf.float16), anchors, info, level_sizes=[2])
    assert got["detection_boxes"].dtype == tf.float32
    np.testing.assert_allclose(got["detection_scores"], want["detection_scores"], atol=2e-3)
    np.testing.assert_allclose(got["detection_boxes"], want["detection_boxes"], atol=1e-2)


def _np_greedy_nms(boxes, scores, threshold, plus_one):
    """Greedy NMS written out (the authors' kernel: suppress when IoU > threshold).

    boxes [N, 4] yxyx, scores [N] distinct; returns the kept indices by descending score.
    """
    kept = []
    for i in np.argsort(-scores):
        if all(_np_iou(boxes[i], boxes[k], plus_one) <= threshold for k in kept):
            kept.append(int(i))
    return kept


def _random_small_boxes(rng, count):
    """Boxes 3-8 px wide in clusters around 8 centres: many pairs overlap near IoU 0.6, where
    the +1 in each side decides."""
    centre = rng.uniform(0, 60, (8, 2))[rng.integers(0, 8, count)] + rng.normal(0, 0.8,
                                                                                (count, 2))
    size = rng.uniform(3, 8, (count, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plus_one_nms_equals_a_greedy_plus_one_iou_oracle(seed):
    rng = np.random.default_rng(seed)
    count, classes = 80, 2
    boxes = _random_small_boxes(rng, count)
    label = rng.integers(0, classes, count)
    score = (rng.permutation(count) + 1.0) / (count + 1.0)  # distinct: no tie to break
    scores = np.zeros((1, count, classes), np.float32)
    scores[0, np.arange(count), label] = score
    straddling = sum(_np_iou(boxes[i], boxes[j], False) <= 0.6 < _np_iou(boxes[i], boxes[j], True)
                     for i in range(count) for j in range(i) if label[i] == label[j])
    assert straddling > 5  # same-class pairs: continuous IoU <= 0.6 < +1 IoU
    kept_sets = {}
    for plus_one in (False, True):
        out = pp.nms_and_vote(boxes[None], scores, _params(
            plus_one=plus_one, score_voting=False, max_detections=count, nms_iou=0.6))
        num = int(out["num_detections"][0])
        want = sorted((k for c in range(classes) for k in np.flatnonzero(label == c)[
            _np_greedy_nms(boxes[label == c], score[label == c], 0.6, plus_one)]),
            key=lambda k: -score[k])
        assert num == len(want)
        np.testing.assert_allclose(out["detection_scores"][0, :num], score[want], rtol=1e-6)
        np.testing.assert_array_equal(out["detection_classes"][0, :num], label[want])
        # The kept boxes come back unshifted (float32 rounding of the +1 shift aside).
        np.testing.assert_allclose(out["detection_boxes"][0, :num], boxes[want], atol=1e-5)
        kept_sets[plus_one] = set(want)
    # Small boxes: the two conventions keep different sets, so the oracle check has teeth.
    assert kept_sets[True] != kept_sets[False]


def test_plus_one_nms_suppresses_a_pair_whose_continuous_iou_is_below_the_threshold():
    # x1 y1 x2 y2: continuous IoU 4*2.8 / (16 + 16 - 11.2) = 0.538 <= 0.6, both kept;
    # +1 IoU 5*3.8 / (25 + 25 - 19) = 0.613 > 0.6, the lower score suppressed.
    boxes = _yxyx([[0, 0, 4, 4], [1.2, 0, 5.2, 4]])[None]
    assert _np_iou(boxes[0, 0], boxes[0, 1], False) == pytest.approx(11.2 / 20.8)
    assert _np_iou(boxes[0, 0], boxes[0, 1], True) == pytest.approx(19.0 / 31.0)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    continuous = pp.nms_and_vote(boxes, scores, _params(score_voting=False))
    plus_one = pp.nms_and_vote(boxes, scores, _params(score_voting=False, plus_one=True))
    assert int(continuous["num_detections"][0]) == 2
    assert int(plus_one["num_detections"][0]) == 1
    np.testing.assert_allclose(plus_one["detection_boxes"][0, 0], boxes[0, 0], atol=1e-6)
