"""Batched EM of `paa_tf.ops.gmm` against the reference vectors T1-T7 (docs/CONVENTIONS.md,
"Reference values") and scikit-learn."""

import warnings

import numpy as np
import pytest
import tensorflow as tf
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from paa_tf.ops.gmm import fit_gmm_1d, fit_gmm_1d_jit

# T1-T7: values, EM iterations, weights, means, variances, components, s (prefix).
VECTORS = {
    "T1": ([0.10, 0.12, 0.15, 0.20, 0.90, 1.00, 1.10, 1.20, 1.30], 3,
           [0.508178, 0.491822], [0.522219, 0.831732], [0.22289461, 0.20515809],
           [0, 0, 0, 0, 1, 1, 1, 1, 1],
           [-0.903000, -0.856226, -0.789082, -0.685224, -0.301017, -0.413049, -0.568154,
            -0.766817, -1.009510]),
    "T2": ([0.5, 0.5], 3, [0.5, 0.5], [0.5, 0.5], [1e-6, 1e-6], [0, 0], [5.988817, 5.988817]),
    "T3": ([0.3, 1.7], 9, None, [0.3, 1.7], [1e-6, 1e-6], [0, 1], [5.295670, 5.295670]),
    "T4": ([0.35, 1.08, 1.09, 1.11, 1.22, 1.26, 1.48, 1.84], 15,
           [0.479915, 0.520085], [1.211900, 1.148160], [0.31666701, 0.00519073],
           [0, 1, 1, 1, 1, 1, 0, 0],
           [-2.251087, 0.775586, 0.880201, 1.042975, 0.738086, 0.184139, -1.191389, -1.701041]),
    "T5": ([4.9987, 4.9994, 4.9995], 3, [0.49999998, 0.50000002], [4.9992, 4.9992], None,
           [1, 1, 1], [5.818238, 5.911434, 5.889244]),
    "T6": ([0.40, 0.47, 0.54, 0.56, 0.62, 0.69, 1.90, 1.97, 2.04, 2.05, 2.12, 2.19, 2.20, 2.27,
            2.34, 2.35, 2.42, 2.49, 2.50, 2.57, 2.64, 2.65, 2.72, 2.79, 2.80, 2.87, 2.94], 8,
           [0.222222, 0.777778], [0.546667, 2.420000], [0.00892322, 0.09326773],
           [0] * 6 + [1] * 21,
           [-1.268811, -0.392820, -0.065957, -0.073428, -0.364803, -1.214645, -1.433703]),
    "T7": ([2.00, 2.02, 2.05, 2.10, 2.11, 2.20, 2.30, 2.45, 2.60], 19,
           [0.518845, 0.481155], [2.055648, 2.362587], [0.00200543, 0.02872019],
           [0, 0, 0, 0, 0, 1, 1, 1, 1],
           [0.811154, 1.256699, 1.566995, 1.154177, 0.950097, -0.300424, 0.056381, -0.008452,
            -0.856704]),
}
T1_PROB_FG = [0.710185, 0.703269, 0.692780, 0.675021, 0.421276, 0.388931, 0.358426, 0.329882,
              0.303358]


def pad_rows(sets, width=45, dtype=np.float64):
    scores = np.full((len(sets), width), np.inf, dtype)
    mask = np.zeros((len(sets), width), bool)
    for i, values in enumerate(sets):
        scores[i, :len(values)] = values
        mask[i, :len(values)] = True
    return scores, mask


def sklearn_fit(values):
    """The reference call (KK's, Step D), on float32-rounded values passed as float64."""
    x = np.asarray(values, np.float64).reshape(-1, 1)
    gmm = GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                          precisions_init=[[[1.0]], [[1.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    return gmm, gmm.predict(x), gmm.score_samples(x)


@pytest.fixture(scope="module")
def vectors_fit():
    names = list(VECTORS)
    scores, mask = pad_rows([VECTORS[n][0] for n in names])
    fit = fit_gmm_1d_jit(scores, mask)
    return {name: i for i, name in enumerate(names)}, fit


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VECTORS))
def test_reference_vectors_float64(name, vectors_fit):
    """T1-T7: iterations, parameters, components and log-densities, all in one batch."""
    rows, fit = vectors_fit
    i = rows[name]
    values, n_iter, weights, means, variances, components, s = VECTORS[name]
    n = len(values)
    assert fit.n_iter[i].numpy() == n_iter
    assert fit.converged[i].numpy()
    np.testing.assert_array_equal(fit.components[i, :n].numpy(), components)
    np.testing.assert_allclose(fit.log_density[i, :len(s)].numpy(), s, atol=1.5e-6)
    if weights is not None:
        np.testing.assert_allclose(fit.weights[i].numpy(), weights, atol=1.5e-6)
    np.testing.assert_allclose(fit.means[i].numpy(), means, atol=1.5e-6)
    if variances is not None:
        np.testing.assert_allclose(fit.variances[i].numpy(), variances, rtol=1e-5, atol=1e-9)
    else:  # T5: "σ² ≈ 1.13e-6"
        np.testing.assert_allclose(fit.variances[i].numpy(), [1.13e-6, 1.13e-6], rtol=0.01)
    assert np.all(fit.components[i, n:].numpy() == -1)


def test_t1_posterior_of_positive_component(vectors_fit):
    rows, fit = vectors_fit
    np.testing.assert_allclose(fit.prob_fg[rows["T1"], :9].numpy(), T1_PROB_FG, atol=1.5e-6)


@pytest.mark.parametrize("name", list(VECTORS))
def test_reference_components_hold_for_float32_costs(name):
    """The reference component labels also hold for float32 input (the costs' dtype)."""
    values, _, _, _, _, components, _ = VECTORS[name]
    scores, mask = pad_rows([values], dtype=np.float32)
    fit = fit_gmm_1d_jit(scores, mask)
    np.testing.assert_array_equal(fit.components[0, :len(values)].numpy(), components)


def random_sets(rng, count):
    """Candidate-cost sets of 1-45 points in the shapes PAA sees, rounded to float32."""
    sets = []
    kinds = ["bimodal", "uniform", "ties", "near_degenerate", "all_equal", "lognormal", "slow"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        n = int(rng.integers(1, 46))
        if kind == "bimodal":
            k = int(rng.integers(0, n + 1))
            x = np.concatenate([rng.normal(rng.uniform(0.2, 1.5), rng.uniform(0.02, 0.3), k),
                                rng.normal(rng.uniform(1.5, 3.5), rng.uniform(0.02, 0.5), n - k)])
        elif kind == "uniform":
            x = rng.uniform(0.0, rng.uniform(0.01, 4.0), n)
        elif kind == "ties":
            x = rng.choice(np.round(rng.uniform(0.1, 3.0, int(rng.integers(1, 5))), 2), n)
        elif kind == "near_degenerate":
            x = rng.uniform(1.0, 5.0) + rng.normal(0.0, 10.0 ** rng.uniform(-6, -2), n)
        elif kind == "all_equal":
            x = np.full(n, rng.uniform(0.0, 5.0))
        elif kind == "lognormal":
            x = rng.lognormal(0.0, 0.7, n)
        else:
            x = 2.0 + np.sort(rng.exponential(rng.uniform(0.01, 0.2), n))
        sets.append(np.sort(np.asarray(x, np.float32)).astype(np.float64))
    return sets


@pytest.mark.slow
def test_matches_sklearn_on_1000_random_sets():
    """Step D: labels equal `GaussianMixture` called as KK calls it; s within 1e-6.

    All sets run as one batch, so each row must stop at its own iteration to agree.
    Single-point sets (scikit-learn refuses to fit them) are checked in closed form.
    """
    rng = np.random.default_rng(20200704)
    sets = random_sets(rng, 1100)
    scores, mask = pad_rows(sets)
    fit = fit_gmm_1d_jit(scores.astype(np.float32), mask)
    components = fit.components.numpy()
    log_density = fit.log_density.numpy()
    n_iter = fit.n_iter.numpy()
    compared = 0
    for i, values in enumerate(sets):
        n = len(values)
        if n == 1:
            # Two identical components on one point: σ² = reg_covar, s = log N(0; 0, 1e-6).
            assert components[i, 0] == 0
            np.testing.assert_allclose(log_density[i, 0], -0.5 * np.log(2 * np.pi * 1e-6),
                                       atol=1e-9)
            continue
        gmm, labels, s = sklearn_fit(values)
        np.testing.assert_array_equal(components[i, :n], labels, err_msg=f"set {i}: {values}")
        np.testing.assert_allclose(log_density[i, :n], s, atol=1e-6, err_msg=f"set {i}")
        assert n_iter[i] == gmm.n_iter_, f"set {i}"
        compared += 1
    assert compared >= 1000
    assert np.isfinite(log_density).all()


def test_rows_are_independent_and_jit_matches_eager():
    """Per-GT convergence: a row's fit is bit-identical alone, in a batch, with or without XLA."""
    t7 = VECTORS["T7"][0]
    batch_scores, batch_mask = pad_rows([VECTORS["T1"][0], t7, [1.0]])
    alone_scores, alone_mask = pad_rows([t7])
    batched = fit_gmm_1d_jit(batch_scores, batch_mask)
    alone = fit_gmm_1d_jit(alone_scores, alone_mask)
    eager = fit_gmm_1d(batch_scores, batch_mask)
    np.testing.assert_array_equal(batched.log_density[1].numpy(), alone.log_density[0].numpy())
    np.testing.assert_array_equal(batched.means[1].numpy(), alone.means[0].numpy())
    assert batched.n_iter.numpy().tolist() == [3, 19, 3]
    np.testing.assert_array_equal(batched.components.numpy(), eager.components.numpy())
    np.testing.assert_allclose(batched.log_density.numpy(), eager.log_density.numpy(),
                               atol=1e-12)


def test_empty_single_equal_and_scattered_rows_stay_finite():
    """No NaN for an empty row, one point, all-equal points, or a non-prefix mask with inf pads."""
    scores = np.full((4, 8), np.inf, np.float32)
    mask = np.zeros((4, 8), bool)
    scores[1, 3] = 2.5
    mask[1, 3] = True
    scores[2, :8] = 0.75
    mask[2, :] = True
    scores[3, [0, 2, 5]] = [0.1, 0.2, 3.0]
    mask[3, [0, 2, 5]] = True
    fit = fit_gmm_1d_jit(scores, mask)
    for field in fit:
        if field.dtype.is_floating:
            assert np.isfinite(field.numpy()).all()
    assert fit.n_iter[0].numpy() == 0 and not fit.converged[0].numpy()
    assert (fit.components[0].numpy() == -1).all()
    assert fit.components[1].numpy().tolist() == [-1, -1, -1, 0, -1, -1, -1, -1]
    assert (fit.components[2].numpy() == 0).all()
    np.testing.assert_allclose(fit.means[2].numpy(), [0.75, 0.75])
    _, labels, s = sklearn_fit([0.1, 0.2, 3.0])
    np.testing.assert_array_equal(fit.components[3].numpy()[[0, 2, 5]], labels)
    np.testing.assert_allclose(fit.log_density[3].numpy()[[0, 2, 5]], s, atol=1e-9)


def test_jit_function_is_not_retraced_for_new_values():
    fit_gmm_1d_jit(*pad_rows([[0.1, 0.2]], width=7))
    before = fit_gmm_1d_jit.experimental_get_tracing_count()
    fit_gmm_1d_jit(*pad_rows([[0.3, 0.9, 1.0]], width=7))
    assert fit_gmm_1d_jit.experimental_get_tracing_count() == before


def test_max_iter_caps_iterations():
    scores, mask = pad_rows([VECTORS["T7"][0]])
    fit = fit_gmm_1d(tf.constant(scores), mask, max_iter=5)
    assert fit.n_iter[0].numpy() == 5 and not fit.converged[0].numpy()
