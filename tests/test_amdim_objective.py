"""AMDIM's objective and mixture network against float64 NumPy references.

The references are written from the equations (AMDIM Eq. 2-3, Sec. 3.3, 3.5, 3.7, Eq. 6-7)
with explicit loops: every score is its own dot product, and every positive (source row,
location) gets the log-sum-exp of its own list of terms, [the positive] + [every location of
every other image]. `amdim_loss`'s reference walks the rows one by one (row r of view v
predicts the other view's half of the targets), instead of the implementation's two
directions; they do not call `nac_tf.objectives`.

Tolerances: 1e-10 relative in float64 (only summation order differs) and 2e-5 relative in
float32 (epsilon 1.2e-7 times dot products of up to 64 terms and log-sum-exps of a few hundred),
each with an absolute floor of the same size times the loss's scale, so a loss that happens
to be near 0 is not over-constrained.
"""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.models import MixtureFeatures
from nac_tf.objectives import amdim_loss, amdim_mixture_nce_loss, amdim_nce_loss

RTOL = {"float64": 1e-10, "float32": 2e-5}


# ---------------------------------------------------------------------------------------------
# Independent float64 references.
# ---------------------------------------------------------------------------------------------

def _logsumexp(values):
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    return top + np.log(np.sum(np.exp(values - top)))


def ref_scores(source, targets):
    """Raw scores s[j, l] = source . targets[j, l] / sqrt(D) (AMDIM Eq. 3, the authors' scale)."""
    m, locations, d = targets.shape
    s = np.empty((m, locations))
    for j in range(m):
        for l in range(locations):
            s[j, l] = float(np.dot(source, targets[j, l])) / math.sqrt(d)
    return s


def ref_nce_terms(source, targets, positive, clip):
    """One source row: its nce terms [L] (AMDIM Eq. 2) and its raw scores [M, L]."""
    raw = ref_scores(source, targets)
    clipped = clip * np.tanh(raw / clip)
    m, locations = raw.shape
    negatives = [clipped[j, l] for j in range(m) if j != positive for l in range(locations)]
    terms = np.empty(locations)
    for l in range(locations):
        terms[l] = clipped[positive, l] - _logsumexp([clipped[positive, l]] + negatives)
    return terms, raw


def ref_nce_loss(sources, targets, positive_index, clip=20.0):
    terms, raws = [], []
    for i in range(sources.shape[0]):
        t, raw = ref_nce_terms(sources[i], targets, positive_index[i], clip)
        terms.append(t)
        raws.append(raw)
    return -np.mean(terms), np.mean(np.square(raws))


def ref_amdim_loss(f1, f5, f7, locations, targets5=None, targets7=None, offset=0,
                   weight=4e-2, clip=20.0):
    """AMDIM Sec. 3.5: per row, 1->5, 1->7, 5->5 against the other view of the global batch."""
    n = f1.shape[0]
    k = n // 2
    if targets5 is None:
        targets5 = f5.reshape(n, -1, f5.shape[-1])
        targets7 = f7.reshape(n, -1, f7.shape[-1])
    big_k = targets5.shape[0] // 2
    terms = {"1t5": [], "1t7": [], "5t5": []}
    squares = {"1t5": [], "1t7": [], "5t5": []}
    for r in range(n):
        view, image = divmod(r, k)
        other = slice(big_k, 2 * big_k) if view == 0 else slice(0, big_k)
        row, col = divmod(int(locations[r]), f5.shape[2])
        for task, source, targets in (("1t5", f1[r], targets5), ("1t7", f1[r], targets7),
                                      ("5t5", f5[r, row, col], targets5)):
            t, raw = ref_nce_terms(source, targets[other], offset + image, clip)
            terms[task].extend(t)
            squares[task].extend(np.square(raw).ravel())
    losses = {task: -np.mean(values) for task, values in terms.items()}
    regularisers = {task: np.mean(values) for task, values in squares.items()}
    return sum(losses.values()) + weight * sum(regularisers.values()), losses, regularisers


def ref_mixture_loss(sources, targets, positive_index, alpha, clip=20.0, tau=None,
                     fixed_q=None):
    """AMDIM Eq. 6 with q of Eq. 7 (or `fixed_q` [n, L, k]), negated; returns (loss, reg, H, q)."""
    tau = 1.0 / alpha if tau is None else tau
    n, k, _ = sources.shape
    objectives, entropies, raws, qs = [], [], [], []
    for i in range(n):
        per_component = []
        for j in range(k):
            t, raw = ref_nce_terms(sources[i, j], targets, positive_index[i], clip)
            per_component.append(t)
            raws.append(raw)
        s = np.array(per_component)  # [k, L]
        q_row = []
        for l in range(s.shape[1]):
            weights = np.exp(tau * s[:, l] - np.max(tau * s[:, l]))
            q = weights / weights.sum() if fixed_q is None else fixed_q[i, l]
            entropy = -sum(qj * math.log(qj) for qj in q if qj > 0)
            objectives.append(float(np.dot(q, s[:, l])) + alpha * entropy)
            entropies.append(entropy)
            q_row.append(q)
        qs.append(q_row)
    return -np.mean(objectives), np.mean(np.square(raws)), np.mean(entropies), np.array(qs)


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------

def _amdim_inputs(seed, k, d, size5=5, size7=7, scale=1.0):
    rng = np.random.default_rng(seed)
    f1 = scale * rng.normal(size=(2 * k, d))
    f5 = scale * rng.normal(size=(2 * k, size5, size5, d))
    f7 = scale * rng.normal(size=(2 * k, size7, size7, d))
    # Correlate each image's two views, so positives score higher than negatives on average.
    for x in (f1, f5, f7):
        x[k:] = 0.6 * x[:k] + 0.8 * x[k:]
    locations = rng.integers(0, size5 * size5, size=2 * k)
    return f1, f5, f7, locations


def _assert_close(got, expected, dtype, scale=1.0):
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(float(got), expected, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def _finite_difference(function, x, step=1e-6):
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        gradient[index] = (function(plus) - function(minus)) / (2 * step)
    return gradient


def _tape_gradients(function, *arrays):
    variables = [tf.constant(a, dtype=tf.float64) for a in arrays]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        value = function(*variables)
    return [g.numpy() for g in tape.gradient(value, variables)]


# Central differences with step 1e-6: truncation ~1e-12 f''', rounding ~1e-16 |f| / 1e-6 ~ 1e-9
# for losses of size ~10; 1e-6 absolute is well above both and far below the gradients (>1e-2).
GRAD_ATOL = 1e-6


# ---------------------------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------------------------

# (n sources, M images, L locations, D, clip value)
NCE_SHAPES = [(1, 1, 4, 3, 20.0), (3, 2, 1, 5, 20.0), (4, 6, 25, 16, 20.0),
              (5, 7, 49, 32, 1.5)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n, m, locations, d, clip", NCE_SHAPES)
def test_amdim_nce_loss_matches_reference(dtype, n, m, locations, d, clip):
    rng = np.random.default_rng(n * 100 + m)
    sources = 2.0 * rng.normal(size=(n, d))
    targets = 2.0 * rng.normal(size=(m, locations, d))
    positive = rng.integers(0, m, size=n)
    loss, regulariser = amdim_nce_loss(tf.constant(sources, dtype), tf.constant(targets, dtype),
                                       positive, clip_value=clip)
    expected_loss, expected_regulariser = ref_nce_loss(sources, targets, positive, clip)
    _assert_close(loss, expected_loss, dtype, scale=np.log(m * locations) + 1.0)
    _assert_close(regulariser, expected_regulariser, dtype, scale=expected_regulariser)
    if m == 1:  # no other image: nothing to contrast with, every term is log(1) = 0
        assert float(loss) == 0.0


# (k images per replica, D, f5 size, f7 size, clip value, regularisation weight)
AMDIM_SHAPES = [(1, 4, 5, 7, 20.0, 4e-2), (3, 8, 5, 7, 20.0, 4e-2), (6, 64, 5, 7, 2.0, 0.3),
                (2, 6, 3, 4, 20.0, 5e-2)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("k, d, size5, size7, clip, weight", AMDIM_SHAPES)
def test_amdim_loss_matches_reference(dtype, k, d, size5, size7, clip, weight):
    f1, f5, f7, locations = _amdim_inputs(k + d, k, d, size5, size7, scale=1.5)
    loss, metrics = amdim_loss(*(tf.constant(x, dtype) for x in (f1, f5, f7)), locations,
                               regularization_weight=weight, clip_value=clip)
    expected, losses, regularisers = ref_amdim_loss(f1, f5, f7, locations, weight=weight,
                                                    clip=clip)
    regulariser = sum(regularisers.values())
    scale = np.log(2 * k * size7 ** 2) + 1.0
    _assert_close(loss, expected, dtype, scale)
    for task in ("1t5", "1t7", "5t5"):
        _assert_close(metrics[f"nce_{task}"], losses[task], dtype, scale)
    _assert_close(metrics["score_regulariser"], regulariser, dtype, regulariser)
    assert set(metrics) == {"nce_1t5", "nce_1t7", "nce_5t5", "score_regulariser"}


def test_amdim_loss_with_gathered_targets_matches_reference():
    """One replica of three, with the global batch's targets (the layout of a gather)."""
    k, d, replicas, replica = 2, 5, 3, 1
    f1, f5, f7, locations = _amdim_inputs(7, k * replicas, d, 3, 4)
    big_k = k * replicas
    local = np.r_[replica * k:(replica + 1) * k, big_k + replica * k:big_k + (replica + 1) * k]
    targets5 = f5.reshape(2 * big_k, 9, d)
    targets7 = f7.reshape(2 * big_k, 16, d)
    loss, metrics = amdim_loss(f1[local], f5[local], f7[local], locations[local], targets5,
                               targets7, image_offset=replica * k)
    expected, losses, _ = ref_amdim_loss(f1[local], f5[local], f7[local], locations[local],
                                         targets5, targets7, offset=replica * k)
    _assert_close(loss, expected, "float64")
    _assert_close(metrics["nce_5t5"], losses["5t5"], "float64")


# ---------------------------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------------------------

def test_amdim_loss_gradients_match_finite_differences():
    k, d, clip, weight = 2, 3, 1.5, 0.3  # a small clip and a large weight: both terms matter
    f1, f5, f7, locations = _amdim_inputs(21, k, d, 2, 3, scale=1.5)
    got = _tape_gradients(
        lambda a, b, c: amdim_loss(a, b, c, locations, regularization_weight=weight,
                                   clip_value=clip)[0], f1, f5, f7)

    inputs = [f1, f5, f7]
    for index, (gradient, name) in enumerate(zip(got, ("f1", "f5", "f7"))):
        def reference(x, index=index):
            arrays = list(inputs)
            arrays[index] = x
            return ref_amdim_loss(*arrays, locations, weight=weight, clip=clip)[0]
        expected = _finite_difference(reference, inputs[index])
        np.testing.assert_allclose(gradient, expected, atol=GRAD_ATOL, err_msg=name)
        assert np.abs(gradient).max() > 1e-2, name
    # Only the source location of f5 is a source; every f5 location is a target.
    assert np.all(np.abs(got[1]) > 0)


def test_amdim_loss_gradients_reach_the_gathered_targets():
    k, d, clip, weight = 1, 3, 2.0, 0.2
    f1, f5, f7, locations = _amdim_inputs(22, 2 * k, d, 2, 2)  # K = 2 images, R = 2
    local = np.array([1, 3])  # replica 1: image 1, both views
    t5, t7 = f5.reshape(4, 4, d), f7.reshape(4, 4, d)
    got = _tape_gradients(
        lambda a, b: amdim_loss(f1[local], f5[local], f7[local], locations[local], a, b,
                                image_offset=1, regularization_weight=weight,
                                clip_value=clip)[0], t5, t7)
    for index, (gradient, target) in enumerate(zip(got, (t5, t7))):
        def reference(x, index=index):
            targets = [t5, t7]
            targets[index] = x
            return ref_amdim_loss(f1[local], f5[local], f7[local], locations[local],
                                  *targets, offset=1, weight=weight, clip=clip)[0]
        np.testing.assert_allclose(gradient, _finite_difference(reference, target),
                                   atol=GRAD_ATOL)
        assert np.abs(gradient).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Replicas: R replicas compute what one device computes.
# ---------------------------------------------------------------------------------------------

def _replica_losses(f1, f5, f7, locations, replicas, **kwargs):
    """Splits a global batch [views 1 of K; views 2 of K] into replicas' rows and losses."""
    big_k = f1.shape[0] // 2
    k = big_k // replicas
    targets5 = tf.reshape(f5, (2 * big_k, -1, f5.shape[-1]))
    targets7 = tf.reshape(f7, (2 * big_k, -1, f7.shape[-1]))
    results = []
    for replica in range(replicas):
        local = np.r_[replica * k:(replica + 1) * k, big_k + replica * k:big_k + (replica + 1) * k]
        results.append(amdim_loss(tf.gather(f1, local), tf.gather(f5, local),
                                  tf.gather(f7, local), locations[local], targets5, targets7,
                                  image_offset=replica * k, **kwargs))
    return results


def test_mean_of_replica_losses_is_the_single_device_loss():
    f1, f5, f7, locations = _amdim_inputs(31, 4, 6)
    kwargs = dict(regularization_weight=0.1, clip_value=3.0)
    variables = [tf.constant(x, tf.float64) for x in (f1, f5, f7)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(variables)
        single, single_metrics = amdim_loss(*variables, locations, **kwargs)
        replicas = _replica_losses(*variables, locations, replicas=2, **kwargs)
        mean = tf.add_n([loss for loss, _ in replicas]) / 2.0
    np.testing.assert_allclose(float(mean), float(single), rtol=1e-12)
    for name, value in single_metrics.items():
        np.testing.assert_allclose(np.mean([float(m[name]) for _, m in replicas]), float(value),
                                   rtol=1e-12, err_msg=name)
    # The gradients of the global rows too (through the targets as well as the sources).
    # (tf.gather's gradients are IndexedSlices; convert_to_tensor densifies them.)
    for g_single, g_mean in zip(tape.gradient(single, variables), tape.gradient(mean, variables)):
        np.testing.assert_allclose(tf.convert_to_tensor(g_mean).numpy(),
                                   tf.convert_to_tensor(g_single).numpy(), rtol=1e-10, atol=1e-14)
    # Not trivially equal: the replicas' own losses differ.
    assert abs(float(replicas[0][0]) - float(replicas[1][0])) > 1e-3


def test_traces_with_a_dynamic_batch_and_a_tensor_offset():
    d = 4
    traced = tf.function(
        lambda a, b, c, s, t5, t7, offset: amdim_loss(a, b, c, s, t5, t7, image_offset=offset),
        input_signature=[tf.TensorSpec([None, d], tf.float32),
                         tf.TensorSpec([None, 3, 3, d], tf.float32),
                         tf.TensorSpec([None, 4, 4, d], tf.float32),
                         tf.TensorSpec([None], tf.int32),
                         tf.TensorSpec([None, 9, d], tf.float32),
                         tf.TensorSpec([None, 16, d], tf.float32),
                         tf.TensorSpec([], tf.int32)])
    for k in (1, 3):
        f1, f5, f7, locations = [x.astype(np.float32) if x.dtype == np.float64 else x
                                 for x in _amdim_inputs(k, 2 * k, d, 3, 4)]
        local = np.r_[k:2 * k, 3 * k:4 * k]  # replica 1 of 2
        t5, t7 = f5.reshape(4 * k, 9, d), f7.reshape(4 * k, 16, d)
        loss, _ = traced(f1[local], f5[local], f7[local], locations[local].astype(np.int32),
                         t5, t7, tf.constant(k))
        expected = ref_amdim_loss(f1[local], f5[local], f7[local], locations[local], t5, t7,
                                  offset=k)[0]
        np.testing.assert_allclose(float(loss), expected, rtol=RTOL["float32"])


# ---------------------------------------------------------------------------------------------
# The stabilisers (AMDIM Sec. 3.3).
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_soft_clipping_bounds_the_scores(dtype):
    clip = 20.0
    f1, f5, f7, locations = _amdim_inputs(41, 3, 8, scale=1e3)  # raw scores ~1e6
    variables = [tf.constant(x, dtype) for x in (f1, f5, f7)]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        _, metrics = amdim_loss(*variables, locations, clip_value=clip)
        nce = metrics["nce_1t5"] + metrics["nce_1t7"] + metrics["nce_5t5"]
    gradients = tape.gradient(nce, variables)
    assert np.isfinite(float(nce)) and float(metrics["score_regulariser"]) > 1e10
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients)
    # Clipped scores lie in [-c, c], so each term is at least -2c - log(number of terms).
    bound = 2 * clip + np.log(1 + 2 * 49)
    for task in ("1t5", "1t7", "5t5"):
        assert 0.0 <= float(metrics[f"nce_{task}"]) <= bound
    # The same scores unclipped are far beyond the bound (NumPy: the softmax saturates).
    unclipped = ref_amdim_loss(f1, f5, f7, locations, clip=1e12)[1]
    assert max(unclipped.values()) > 10 * bound


def test_regulariser_is_taken_before_the_clipping():
    sources = np.array([[3.0, 0.0], [0.0, -2.0]])
    targets = np.array([[[4.0, 0.0], [1.0, 1.0]], [[0.0, 5.0], [2.0, -3.0]]])
    clip = 1.0
    _, regulariser = amdim_nce_loss(sources, targets, [0, 1], clip_value=clip)
    raw = np.einsum("nd,mld->nml", sources, targets) / np.sqrt(2.0)
    np.testing.assert_allclose(float(regulariser), np.mean(raw ** 2), rtol=1e-12)
    # After the clipping it could not exceed c^2 = 1.
    assert float(regulariser) > 10 * clip ** 2
    assert np.mean((clip * np.tanh(raw / clip)) ** 2) < clip ** 2


def test_regularisation_weight_multiplies_the_summed_regulariser():
    f1, f5, f7, locations = _amdim_inputs(42, 2, 4)
    plain, metrics = amdim_loss(f1, f5, f7, locations, regularization_weight=0.0)
    weighted, _ = amdim_loss(f1, f5, f7, locations, regularization_weight=0.05)
    nce = sum(float(metrics[f"nce_{t}"]) for t in ("1t5", "1t7", "5t5"))
    np.testing.assert_allclose(float(plain), nce, rtol=1e-12)
    np.testing.assert_allclose(float(weighted) - float(plain),
                               0.05 * float(metrics["score_regulariser"]), rtol=1e-10)


def test_output_dtypes_follow_f1():
    f1, f5, f7, locations = _amdim_inputs(43, 2, 4)
    for dtype in (tf.float32, tf.float64):
        loss, metrics = amdim_loss(tf.constant(f1, dtype), f5, f7, locations)
        assert loss.dtype == dtype and all(v.dtype == dtype for v in metrics.values())
        nce, regulariser = amdim_nce_loss(tf.constant(f1, dtype), f5.reshape(4, 25, 4),
                                          [0, 1, 2, 3])
        assert nce.dtype == dtype and regulariser.dtype == dtype


# ---------------------------------------------------------------------------------------------
# Mixture features (AMDIM Sec. 3.7).
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n, components, m, locations, d, alpha, tau, clip", [
    (3, 2, 4, 9, 5, 0.5, None, 20.0), (4, 3, 5, 49, 16, 1.0, None, 20.0),
    (2, 4, 3, 16, 8, 0.1, 2.0, 2.0), (2, 3, 3, 4, 6, 0.0, 1.0, 20.0)])
def test_mixture_loss_matches_reference(dtype, n, components, m, locations, d, alpha, tau, clip):
    rng = np.random.default_rng(n + 10 * components + m)
    sources = 2.0 * rng.normal(size=(n, components, d))
    targets = 2.0 * rng.normal(size=(m, locations, d))
    positive = rng.integers(0, m, size=n)
    loss, regulariser, entropy = amdim_mixture_nce_loss(
        tf.constant(sources, dtype), tf.constant(targets, dtype), positive, alpha,
        clip_value=clip, temperature=tau)
    expected = ref_mixture_loss(sources, targets, positive, alpha, clip, tau)
    scale = np.log(m * locations) + 1.0
    _assert_close(loss, expected[0], dtype, scale)
    _assert_close(regulariser, expected[1], dtype, expected[1])
    _assert_close(entropy, expected[2], dtype, np.log(components))
    assert 0.0 < float(entropy) < np.log(components)


def test_mixture_with_one_component_is_the_plain_nce_loss():
    rng = np.random.default_rng(51)
    sources = rng.normal(size=(4, 6))
    targets = rng.normal(size=(5, 49, 6))
    positive = np.array([0, 3, 4, 3])
    plain, plain_regulariser = amdim_nce_loss(sources, targets, positive, clip_value=3.0)
    for alpha in (0.1, 1.0, 10.0):
        loss, regulariser, entropy = amdim_mixture_nce_loss(
            sources[:, None, :], targets, positive, alpha, clip_value=3.0)
        np.testing.assert_allclose(float(loss), float(plain), rtol=1e-12)
        np.testing.assert_allclose(float(regulariser), float(plain_regulariser), rtol=1e-12)
        assert float(entropy) == 0.0


def test_mixture_of_identical_components_gains_alpha_log_k():
    """Equal scores: q is uniform (Eq. 7), H = log k, and Eq. 6 = s_nce + alpha log k."""
    rng = np.random.default_rng(52)
    sources = rng.normal(size=(3, 4))
    targets = rng.normal(size=(3, 9, 4))
    positive = np.array([2, 0, 1])
    plain, _ = amdim_nce_loss(sources, targets, positive)
    loss, _, entropy = amdim_mixture_nce_loss(np.repeat(sources[:, None], 3, axis=1), targets,
                                              positive, 0.7)
    np.testing.assert_allclose(float(entropy), np.log(3.0), rtol=1e-12)
    np.testing.assert_allclose(float(loss), float(plain) - 0.7 * np.log(3.0), rtol=1e-12)


def test_mixture_gradient_is_the_gradient_of_the_maximised_objective():
    """With tau = 1 / alpha, q is Eq. 6's maximiser: holding it fixed gives the full gradient."""
    rng = np.random.default_rng(53)
    sources = 1.5 * rng.normal(size=(2, 3, 3))
    targets = 1.5 * rng.normal(size=(3, 4, 3))
    positive = np.array([1, 2])
    alpha = 0.5
    got = _tape_gradients(lambda s, t: amdim_mixture_nce_loss(s, t, positive, alpha)[0],
                          sources, targets)
    for gradient, index in zip(got, (0, 1)):
        def reference(x, index=index):
            args = [sources, targets]
            args[index] = x
            return ref_mixture_loss(args[0], args[1], positive, alpha)[0]
        expected = _finite_difference(reference, [sources, targets][index])
        np.testing.assert_allclose(gradient, expected, atol=GRAD_ATOL)
        assert np.abs(gradient).max() > 1e-2
    # Another tau: the gradient is Eq. 6's at fixed q (q held constant), not the total one.
    tau = 5.0
    got = _tape_gradients(
        lambda s: amdim_mixture_nce_loss(s, targets, positive, alpha, temperature=tau)[0],
        sources)[0]
    q = ref_mixture_loss(sources, targets, positive, alpha, tau=tau)[3]
    fixed = _finite_difference(
        lambda s: ref_mixture_loss(s, targets, positive, alpha, tau=tau, fixed_q=q)[0], sources)
    moving = _finite_difference(
        lambda s: ref_mixture_loss(s, targets, positive, alpha, tau=tau)[0], sources)
    np.testing.assert_allclose(got, fixed, atol=GRAD_ATOL)
    assert np.abs(got - moving).max() > 1e-3


def test_amdim_loss_with_mixture_features_replaces_the_1t7_task():
    k, d, alpha = 3, 6, 0.4
    f1, f5, f7, locations = _amdim_inputs(54, k, d)
    mixture = np.random.default_rng(55).normal(size=(2 * k, 2, d))
    plain, plain_metrics = amdim_loss(f1, f5, f7, locations)
    loss, metrics = amdim_loss(f1, f5, f7, locations, f1_mixture=mixture,
                               mixture_entropy_weight=alpha)
    targets7 = f7.reshape(2 * k, 49, d)
    images = np.arange(k)
    first = ref_mixture_loss(mixture[:k], targets7[k:], images, alpha)
    second = ref_mixture_loss(mixture[k:], targets7[:k], images, alpha)
    np.testing.assert_allclose(float(metrics["nce_1t7"]), 0.5 * (first[0] + second[0]),
                               rtol=1e-10)
    np.testing.assert_allclose(float(metrics["mixture_entropy"]), 0.5 * (first[2] + second[2]),
                               rtol=1e-10)
    for task in ("nce_1t5", "nce_5t5"):
        np.testing.assert_allclose(float(metrics[task]), float(plain_metrics[task]), rtol=1e-12)
    regularisers = ref_amdim_loss(f1, f5, f7, locations)[2]
    regulariser = regularisers["1t5"] + regularisers["5t5"] + 0.5 * (first[1] + second[1])
    np.testing.assert_allclose(float(metrics["score_regulariser"]), regulariser, rtol=1e-10)
    np.testing.assert_allclose(
        float(loss), sum(float(metrics[f"nce_{t}"]) for t in ("1t5", "1t7", "5t5"))
        + 4e-2 * regulariser, rtol=1e-10)


def test_mixture_features_layer_shapes_and_residual():
    k, d, hidden = 3, 4, 5
    layer = MixtureFeatures(k, hidden, name="mixture")
    f1 = np.random.default_rng(56).normal(size=(6, d)).astype(np.float32)
    out = layer(f1)
    assert tuple(out.shape) == (6, k, d) and layer.compute_output_shape((None, d)) == (None, k, d)
    assert [v.path for v in layer.weights] == [
        "mixture/hidden_dense/kernel", "mixture/hidden_dense/bias",
        "mixture/output_dense/kernel", "mixture/output_dense/bias"]
    w1, b1, w2, b2 = [v.numpy() for v in layer.weights]
    assert w2.shape == (hidden, k * d)
    residual = np.maximum(f1 @ w1 + b1, 0.0) @ w2 + b2
    for j in range(k):  # component j: f_1 plus its block of the output layer
        np.testing.assert_allclose(out.numpy()[:, j], f1 + residual[:, j * d:(j + 1) * d],
                                   rtol=1e-5, atol=1e-6)
    # The components differ at initialisation (distinct output blocks), and with a zero output
    # layer every component is exactly f_1: the residual connection.
    assert np.abs(out.numpy()[:, 0] - out.numpy()[:, 1]).max() > 1e-3
    layer.output_dense.kernel.assign(np.zeros_like(w2))
    layer.output_dense.bias.assign(np.zeros_like(b2))
    np.testing.assert_array_equal(layer(f1).numpy(), np.repeat(f1[:, None], k, axis=1))
    clone = MixtureFeatures.from_config(layer.get_config())
    assert (clone.num_components, clone.hidden_dim, clone.name) == (k, hidden, "mixture")
    with pytest.raises(ValueError, match="num_components"):
        MixtureFeatures(0, 4)
    with pytest.raises(ValueError, match="hidden_dim"):
        MixtureFeatures(2, 2.5)
    assert isinstance(layer, keras.layers.Layer)


# ---------------------------------------------------------------------------------------------
# Bad arguments.
# ---------------------------------------------------------------------------------------------

def test_bad_arguments_are_rejected():
    f1, f5, f7, locations = _amdim_inputs(61, 2, 4)
    t5, t7 = f5.reshape(4, 25, 4), f7.reshape(4, 49, 4)
    cases = [
        (lambda: amdim_loss(f1[:3], f5[:3], f7[:3], locations[:3]), "`f1`.*even"),
        (lambda: amdim_loss(f1, f5[:2], f7, locations), "`f5`.*rows 2k"),
        (lambda: amdim_loss(f1, f5[..., :3], f7, locations), "`f5`.*width D"),
        (lambda: amdim_loss(f1, f5, f7[:, 0], locations), "`f7`.*rank 4"),
        (lambda: amdim_loss(f1, f5, f7, [0, 3, 25, 1]), r"`source_locations`.*\[0, 25\).*25"),
        (lambda: amdim_loss(f1, f5, f7, [0, -1, 2, 1]), "`source_locations`.*-1"),
        (lambda: amdim_loss(f1, f5, f7, locations[:3]), "`source_locations`.*rows 2k"),
        (lambda: amdim_loss(f1, f5, f7, locations, targets5=t5), "`targets5` and `targets7`"),
        (lambda: amdim_loss(f1, f5, f7, locations, image_offset=2), "`image_offset` must be 0"),
        (lambda: amdim_loss(f1, f5, f7, locations, t5, t7, image_offset=-1), "`image_offset`"),
        (lambda: amdim_loss(f1, f5, f7, locations, t5, t7, image_offset=1),
         "`image_offset` \\+ k"),
        (lambda: amdim_loss(f1, f5, f7, locations, t5[:3], t7[:3]), "`targets5`.*even"),
        (lambda: amdim_loss(f1, f5, f7, locations, t5[:, :24], t7), "`targets5`.*locations"),
        (lambda: amdim_loss(f1, f5, f7, locations, t5, t7[..., :3]), "`targets7`.*width D"),
        (lambda: amdim_loss(f1, f5, f7, locations, t5, t7[:2]), "`targets7`.*rows 2K"),
        (lambda: amdim_loss(f1, f5, f7, locations, regularization_weight=-0.1),
         r"regularization_weight: -0.1 is outside the accepted range \[0"),
        (lambda: amdim_loss(f1, f5, f7, locations, clip_value=0.0),
         r"clip_value: 0.0 is outside the accepted range \(0"),
        (lambda: amdim_loss(f1, f5, f7, locations, f1_mixture=f1[:, None]),
         "`mixture_entropy_weight`"),
        (lambda: amdim_loss(f1, f5, f7, locations, f1_mixture=f1, mixture_entropy_weight=1.0),
         "`f1_mixture`.*rank 3"),
        (lambda: amdim_nce_loss(f1, t5, [0, 1, 2, 4]), r"`positive_index`.*\[0, 4\)"),
        (lambda: amdim_nce_loss(f1, t5, [0, 1, 2]), "`positive_index`.*rows n"),
        (lambda: amdim_nce_loss(f1, t5[..., :3], [0, 1, 2, 3]), "`targets`.*width D"),
        (lambda: amdim_nce_loss(f1, f5, [0, 1, 2, 3]), "`targets`.*rank 3"),
        (lambda: amdim_nce_loss(f1[None], t5, [0]), "`sources`.*rank 2"),
        (lambda: amdim_nce_loss(f1, t5, [[0, 1, 2, 3]]), "`positive_index`.*vector"),
        (lambda: amdim_mixture_nce_loss(f1, t5, [0, 1, 2, 3], 1.0), "`sources`.*rank 3"),
        (lambda: amdim_mixture_nce_loss(f1[:, None], t5, [0, 1, 2, 3], 0.0),
         r"entropy_weight: 0.0 is outside the accepted range \(0"),
        (lambda: amdim_mixture_nce_loss(f1[:, None], t5, [0, 1, 2, 3], -1.0, temperature=1.0),
         "`entropy_weight`.*>= 0"),
        (lambda: amdim_mixture_nce_loss(f1[:, None], t5, [0, 1, 2, 3], 1.0, temperature=0.0),
         "`temperature`.*> 0"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
