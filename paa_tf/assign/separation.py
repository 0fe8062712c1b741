"""Separation schemes: which of a GT's candidates become positive (paper Fig. 3; docs/PAA.md,
Step E).

Every function works on candidate lists sorted by ascending cost, one GT per row
(`[G, N]`, padded entries masked out), with the fitted GMM of `paa_tf.ops.gmm`.
Notation: position i = rank in the sorted list; F = positions in component 0
(the low-cost, "positive" mode); s_i = mixture log-density; n = list length;
j* = the member of F with the largest s (ties: smallest position); j_b = the
member of component 1 with the largest s (ties: smallest position).

Schemes (`assign.separation`):

* 'kk_c' (default, authors' code): positives = positions 0..j*, all others negative.
  Cuts at the mode of the positive Gaussian; may include component-1 members below j*.
* 'mm_c' (mmdetection): positives = members of F at positions <= j*; never a
  component-1 member.
* 'a' (paper Fig. 3a): positives = F, negatives = component 1. The boundary is where
  the two posteriors cross.
* 'b' (paper Fig. 3b, as intended): positives = positions 0..j*, negatives =
  positions j_b..n-1, the candidates in between ignored. Positives win where the
  ranges overlap. Without component-1 members the non-positives are negative.
* 'b_orig' (authors' first release, the index bug of kkhoot/PAA issue #8): as 'b'
  but the negatives are the *last j_b + 1* positions instead of j_b..n-1 (reference
  vector T6, docs/CONVENTIONS.md).
* 'd' (paper Fig. 3d, our reading): positives = F (the posterior-crossing boundary
  of (a)), negatives = component-1 members at positions >= j_b (the negative mode,
  as in (b)), the component-1 members between the two boundaries ignored. The paper
  text only says the four panels of Fig. 3 are "different boundary schemes"; with
  (a) = crossing/crossing, (b) = positive mode/negative mode and (c) = positive
  mode/immediately after, (d) is read as the remaining combination, crossing for
  positives and negative mode for negatives. The author's remark that the buggy (b)
  "works like something in between (c) and (d)" (issue #8) fits this reading: its
  positives are those of (c), its negatives start well before the negative mode.
* 'fnp' (Table 1, fixed number of positives): the `fnp_count` lowest-cost candidates
  are positive, the rest negative; the GMM is not used.
* 'fsr' (Table 1, fixed score range): positive iff the paper's anchor score
  S = exp(-cost) (Eq. 3: cost = -log S) exceeds `fsr_threshold`, i.e. cost <
  -log(threshold); the rest negative. With the prior bias an IoU-positive anchor
  costs about 1.13 (focal) + GIoU loss, so S is around 0.1-0.3 early in training,
  which is why the paper reports that FSR(>0.3) "fails because the model cannot find
  anchors whose scores are within the range at early iterations".

Policies, for the GMM-based schemes only ('fnp' and 'fsr' apply their rule as is):
* `single_candidate`: 'pos' (authors) makes a lone candidate positive; 'neg'
  (mmdetection) makes it negative, so its GT has no positive.
* `no_component0` (F empty, e.g. T5): 'all_pos' (authors) makes every candidate
  positive; 'none' (mmdetection) makes every candidate negative.
"""

import tensorflow as tf

from paa_tf import config as config_lib
from paa_tf.assign.labels import CANDIDATE_IGNORE, CANDIDATE_NEGATIVE, CANDIDATE_POSITIVE

SCHEMES = config_lib.choices("assign.separation")
GMM_SCHEMES = tuple(s for s in SCHEMES if s not in ("fnp", "fsr"))  # those using the GMM


def _first_max_position(members, log_density, positions, size):
    """Smallest position among `members` whose log-density is the members' maximum.

    Returns int32 [G]; `size` where a row has no member.
    """
    neg_inf = tf.constant(-float("inf"), log_density.dtype)
    best = tf.reduce_max(tf.where(members, log_density, neg_inf), axis=1, keepdims=True)
    at_best = tf.logical_and(members, log_density >= best)
    return tf.reduce_min(tf.where(at_best, positions, size), axis=1)


def separate(costs, mask, components, log_density, scheme="kk_c", single_candidate="pos",
             no_component0="all_pos", fnp_count=10, fsr_threshold=0.1):
    """Per-candidate decisions for sorted candidate lists.

    Args:
      costs: float [G, N] candidate costs, ascending along each row's valid prefix.
      mask: bool [G, N] valid candidates; must be a prefix of each row.
      components: int32 [G, N] GMM components of the sorted candidates.
      log_density: float64 [G, N] mixture log-densities.
      scheme: one of `SCHEMES` (see module docstring).
      single_candidate: 'pos' or 'neg'.
      no_component0: 'all_pos' or 'none'.
      fnp_count: positives per GT for 'fnp'.
      fsr_threshold: score threshold in (0, 1) for 'fsr'.
    Returns:
      int32 [G, N] of `CANDIDATE_POSITIVE` (1), `CANDIDATE_NEGATIVE` (0),
      `CANDIDATE_IGNORE` (-1); padded entries are negative.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"assign.separation must be one of {SCHEMES}, got {scheme!r}")
    if single_candidate not in config_lib.choices("assign.single_candidate"):
        raise ValueError(f"assign.single_candidate must be 'pos' or 'neg', got "
                         f"{single_candidate!r}")
    if no_component0 not in config_lib.choices("assign.no_component0"):
        raise ValueError(f"assign.no_component0 must be 'all_pos' or 'none', got "
                         f"{no_component0!r}")
    mask = tf.convert_to_tensor(mask, tf.bool)
    size = tf.shape(mask)[1]
    positions = tf.range(size)[None, :]
    count = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1, keepdims=True)  # [G, 1]
    pos_c = tf.constant(CANDIDATE_POSITIVE)
    neg_c = tf.constant(CANDIDATE_NEGATIVE)
    ign_c = tf.constant(CANDIDATE_IGNORE)

    def finish(is_pos, is_ign=None):
        out = tf.where(is_pos, pos_c, tf.where(is_ign, ign_c, neg_c)) if is_ign is not None \
            else tf.where(is_pos, pos_c, neg_c)
        return tf.where(mask, out, neg_c)

    if scheme == "fnp":
        return finish(positions < fnp_count)
    if scheme == "fsr":
        if not 0.0 < fsr_threshold < 1.0:
            raise ValueError(f"assign.fsr_threshold must be in (0, 1), got {fsr_threshold}")
        # exp(-cost) > t  <=>  cost < -log t; compared in float64 to avoid exp underflow.
        limit = -tf.math.log(tf.constant(fsr_threshold, tf.float64))
        return finish(tf.cast(costs, tf.float64) < limit)

    comp0 = tf.logical_and(mask, tf.equal(components, 0))
    comp1 = tf.logical_and(mask, tf.equal(components, 1))
    has0 = tf.reduce_any(comp0, axis=1, keepdims=True)
    has1 = tf.reduce_any(comp1, axis=1, keepdims=True)
    j_star = _first_max_position(comp0, log_density, positions, size)[:, None]
    j_b = _first_max_position(comp1, log_density, positions, size)[:, None]
    prefix = positions <= j_star

    if scheme == "kk_c":
        is_pos, is_ign = prefix, None
    elif scheme == "mm_c":
        is_pos, is_ign = tf.logical_and(comp0, prefix), None
    elif scheme == "a":
        is_pos, is_ign = comp0, None
    elif scheme == "b":
        is_pos = prefix
        is_ign = tf.logical_and(has1, tf.logical_and(~prefix, positions < j_b))
    elif scheme == "b_orig":
        is_pos = prefix
        first_neg = count - (j_b + 1)
        is_ign = tf.logical_and(has1, tf.logical_and(~prefix, positions < first_neg))
    else:  # 'd'
        is_pos = comp0
        is_ign = tf.logical_and(comp1, positions < j_b)

    if no_component0 == "all_pos":
        is_pos = tf.where(has0, is_pos, True)
    else:
        is_pos = tf.where(has0, is_pos, False)
    if is_ign is not None:
        is_ign = tf.logical_and(is_ign, has0)
    single = tf.equal(count, 1)
    is_pos = tf.where(single, single_candidate == "pos", is_pos)
    if is_ign is not None:
        is_ign = tf.logical_and(is_ign, ~single)
    return finish(is_pos, is_ign)
