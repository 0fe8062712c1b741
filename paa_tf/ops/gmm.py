"""Batched EM for a two-component 1-D Gaussian mixture (paper Eq. 4; docs/PAA.md, Step D).

PAA fits, for every ground truth (GT) separately, a 2-component GMM to the
costs of its candidate anchors. The authors call scikit-learn once per GT;
here every GT of a batch is one row of a padded `[G, N]` tensor and the EM of
all rows runs at once in float64, each row frozen at the iteration where its
own stopping test fires, so the result equals scikit-learn's
`GaussianMixture(2, weights_init=[.5, .5], means_init=[[min], [max]],
precisions_init=[[[1]], [[1]]])` fitted on that row alone (covariance 'full',
tol 1e-3, reg_covar 1e-6, at most 100 iterations).

The arithmetic follows scikit-learn's own formulation where it matters for the
last bits: Gaussians are evaluated through the precision Cholesky factor
`1/sqrt(var)`, N_k carries the `10·eps` regulariser, and the returned
log-densities use scipy's `max + log1p(exp(min - max))`. Inside the loop the
E-step spends one `exp` per point (posteriors 1/(1+e), e/(1+e)) and one `log`
per row, which agrees with the per-point form to a few ulp and is ~3x faster.
Rows that are still iterating are moved to smaller buffers as the others stop,
so the cost follows the typical iteration count, not the slowest row's.

Component 0 starts at the smallest cost, so it is the "positive" component.
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

TOL = 1e-3
REG_COVAR = 1e-6
MAX_ITER = 100
_EPS10 = 10.0 * np.finfo(np.float64).eps
_LOG_2PI = math.log(2.0 * math.pi)


class GmmResult(NamedTuple):
    """Fitted mixture per row and per-point quantities under the final parameters.

    Shapes: G rows (ground truths), N padded points, K = 2 components.
    Padded points (mask False) hold component -1 and zeros elsewhere.

    Attributes:
      components: int32 [G, N], argmax_k of the weighted component log-density
        (ties go to component 0, as `numpy.argmax` does): scikit-learn's `predict`.
      log_density: float64 [G, N], mixture log-density `log Σ_k w_k N(x; μ_k, σ²_k)`:
        scikit-learn's `score_samples`.
      component_log_prob: float64 [G, N, 2], `log w_k + log N(x; μ_k, σ²_k)`.
      prob_fg: float64 [G, N], posterior of component 0 (`predict_proba[:, 0]`).
      weights, means, variances: float64 [G, 2] final parameters.
      n_iter: int32 [G], EM iterations run (0 for empty rows).
      converged: bool [G], whether the tolerance test fired before `max_iter`.
    """

    components: tf.Tensor
    log_density: tf.Tensor
    component_log_prob: tf.Tensor
    prob_fg: tf.Tensor
    weights: tf.Tensor
    means: tf.Tensor
    variances: tf.Tensor
    n_iter: tf.Tensor
    converged: tf.Tensor


def _weighted_log_prob(x, weights, means, variances):
    """[G, N, 2] log w_k + log N(x | μ_k, σ²_k), via the precision Cholesky factor."""
    prec_chol = 1.0 / tf.sqrt(variances)  # [G, 2]
    y = x[:, :, None] * prec_chol[:, None, :] - (means * prec_chol)[:, None, :]
    log_gauss = -0.5 * (_LOG_2PI + tf.square(y)) + tf.math.log(prec_chol)[:, None, :]
    return log_gauss + tf.math.log(weights)[:, None, :]


def _log_sum_exp2(log_prob):
    """log(exp(a) + exp(b)) over the last axis of size 2, written as scipy writes it."""
    hi = tf.reduce_max(log_prob, axis=-1)
    lo = tf.reduce_min(log_prob, axis=-1)
    return hi + tf.math.log1p(tf.exp(lo - hi))


_SHRINK = 2
_MIN_ROWS = 8


class _EmState(NamedTuple):
    active: tf.Tensor
    weights: tf.Tensor
    means: tf.Tensor
    variances: tf.Tensor
    lb_prev: tf.Tensor
    n_iter: tf.Tensor
    converged: tf.Tensor


def _m_step(x, resp, reg_covar):
    nk = tf.reduce_sum(resp, axis=1) + _EPS10  # [G, 2]
    means = tf.reduce_sum(resp * x[:, :, None], axis=1) / nk
    diff = x[:, :, None] - means[:, None, :]
    variances = tf.reduce_sum(resp * tf.square(diff), axis=1) / nk + reg_covar
    weights = nk / tf.reduce_sum(nk, axis=1, keepdims=True)
    return weights, means, variances


def _em_step(data, state, settings):
    x, maskf, count_safe = data
    tol, reg_covar, max_iter = settings
    log_prob = _weighted_log_prob(x, state.weights, state.means, state.variances)
    hi = tf.reduce_max(log_prob, axis=-1)
    lo = tf.reduce_min(log_prob, axis=-1)
    ratio = tf.exp(lo - hi)
    one_plus = 1.0 + ratio * maskf
    log_lik = tf.reduce_sum(hi * maskf, axis=1) + tf.math.log(tf.reduce_prod(one_plus, axis=1))
    lower_bound = log_lik / count_safe
    r_hi = maskf / one_plus
    r_lo = ratio * r_hi
    first_is_hi = log_prob[..., 0] >= log_prob[..., 1]
    resp = tf.stack([tf.where(first_is_hi, r_hi, r_lo), tf.where(first_is_hi, r_lo, r_hi)],
                    axis=-1)
    new_w, new_m, new_v = _m_step(x, resp, reg_covar)
    active = state.active
    keep = active[:, None]
    stop = tf.abs(lower_bound - state.lb_prev) < tol
    n_iter = state.n_iter + tf.cast(active, tf.int32)
    return _EmState(
        active=tf.logical_and(tf.logical_and(active, tf.logical_not(stop)), n_iter < max_iter),
        weights=tf.where(keep, new_w, state.weights),
        means=tf.where(keep, new_m, state.means),
        variances=tf.where(keep, new_v, state.variances),
        lb_prev=tf.where(active, lower_bound, state.lb_prev),
        n_iter=n_iter,
        converged=tf.logical_or(state.converged, tf.logical_and(active, stop)))


def _run_em(data, state, settings, leave_at):
    """Iterate until at most `leave_at` rows are still running."""
    def cond(state):
        return tf.reduce_sum(tf.cast(state.active, tf.int32)) > leave_at

    def body(state):
        return (_em_step(data, state, settings),)

    return tf.while_loop(cond, body, (state,), maximum_iterations=settings[2])[0]


def fit_gmm_1d(scores, mask, tol=TOL, reg_covar=REG_COVAR, max_iter=MAX_ITER):
    """Fit one 2-component 1-D GMM per row of `scores`, each row on its masked points.

    Row g runs scikit-learn's EM on `scores[g, mask[g]]`: init w = (½, ½),
    μ = (min, max), σ² = (1, 1); per iteration an E-step (mean log-likelihood
    LB under the current parameters), an M-step, then a stop when
    |LB − LB_prev| < `tol`. Rows stop independently; a stopped row keeps its
    parameters while the others go on. A row with one point, or with all points
    equal, converges to two identical components (σ² = `reg_covar`) without NaN.
    An empty row (no masked point) keeps the initial parameters (w = ½, μ = 0,
    σ² = 1), n_iter 0, converged False.

    Args:
      scores: float [G, N] values (cast to float64; non-finite values at
        padded positions are ignored). Pass float32 costs as they are: the
        cast to float64 is what the reference does.
      mask: bool [G, N], True for real points. Any layout (need not be a prefix).
      tol, reg_covar, max_iter: scikit-learn's settings (defaults: KK's call, docs/PAA.md).

    Returns:
      `GmmResult`. Usable eagerly, in `tf.function` and under `jit_compile=True`
      (all shapes static); see `fit_gmm_1d_jit`.
    """
    mask = tf.convert_to_tensor(mask, tf.bool)
    x = tf.where(mask, tf.cast(scores, tf.float64), tf.zeros_like(mask, tf.float64))
    maskf = tf.cast(mask, tf.float64)
    count = tf.reduce_sum(maskf, axis=1)  # [G]
    nonempty = count > 0
    count_safe = tf.maximum(count, 1.0)
    big = tf.constant(np.finfo(np.float64).max, tf.float64)
    x_min = tf.reduce_min(tf.where(mask, x, big), axis=1)
    x_max = tf.reduce_max(tf.where(mask, x, -big), axis=1)
    x_min = tf.where(nonempty, x_min, 0.0)
    x_max = tf.where(nonempty, x_max, 0.0)

    rows = tf.shape(x)[0]
    state = _EmState(
        active=nonempty,
        weights=tf.fill([rows, 2], tf.constant(0.5, tf.float64)),
        means=tf.stack([x_min, x_max], axis=1),
        variances=tf.ones([rows, 2], tf.float64),
        lb_prev=tf.fill([rows], tf.constant(-np.inf, tf.float64)),
        n_iter=tf.zeros([rows], tf.int32),
        converged=tf.zeros([rows], tf.bool))
    data = (x, maskf, count_safe)
    settings = (tf.constant(tol, tf.float64), tf.constant(reg_covar, tf.float64), max_iter)

    # Most rows stop within ~10 iterations, a few run 40+. Iterating the whole
    # batch until the slowest row stops wastes most of the work, so whenever at
    # most half of the rows is still running they move to a 2x smaller buffer
    # (static sizes G, G/2, G/4, ... down to 8 rows, for XLA). Rows never
    # interact, so this changes no result.
    static_rows = x.shape[0]
    caps = [static_rows] if static_rows is not None else [None]
    while caps[-1] is not None and caps[-1] // _SHRINK >= _MIN_ROWS:
        caps.append(caps[-1] // _SHRINK)
    for phase, cap in enumerate(caps):
        leave_at = caps[phase + 1] if phase + 1 < len(caps) else 0
        if phase == 0:
            state = _run_em(data, state, settings, leave_at)
            continue
        # top_k of the 0/1 flags lists every running row first (at most `cap` of them).
        rows_in = tf.math.top_k(tf.cast(state.active, tf.int32), k=cap).indices
        sub_data = tuple(tf.gather(t, rows_in) for t in data)
        sub_state = _EmState(*(tf.gather(t, rows_in) for t in state))
        sub_state = _run_em(sub_data, sub_state, settings, leave_at)
        state = _EmState(*(tf.tensor_scatter_nd_update(full, rows_in[:, None], part)
                           for full, part in zip(state, sub_state)))
    weights, means, variances = state.weights, state.means, state.variances
    n_iter, converged = state.n_iter, state.converged

    log_prob = _weighted_log_prob(x, weights, means, variances)
    log_density = _log_sum_exp2(log_prob)
    components = tf.where(log_prob[..., 1] > log_prob[..., 0], 1, 0)
    prob_fg = tf.exp(log_prob[..., 0] - log_density)
    zeros = tf.zeros_like(log_density)
    return GmmResult(
        components=tf.where(mask, components, -1),
        log_density=tf.where(mask, log_density, zeros),
        component_log_prob=tf.where(mask[:, :, None], log_prob, tf.zeros_like(log_prob)),
        prob_fg=tf.where(mask, prob_fg, zeros),
        weights=weights,
        means=means,
        variances=variances,
        n_iter=n_iter,
        converged=converged,
    )


# XLA-compiled entry point; retraced only for a new [G, N] shape or new settings.
fit_gmm_1d_jit = tf.function(fit_gmm_1d, jit_compile=True, reduce_retracing=False)
