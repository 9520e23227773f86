"""Objectives against float64 NumPy references written from the paper's equations.

References loop over rows and use only NumPy; they do not call `nac_tf.objectives`.
Tolerances: 1e-10 relative in float64 (summation-order rounding only) and 1e-5 relative in
float32 (float32 epsilon 1.2e-7 times sums of a few hundred terms), each with an absolute floor
scaled to the size of the summands so a loss that happens to be near 0 is not over-constrained.
"""

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.objectives import (inference_likelihood_loss, info_nce_loss, nac_loss,
                               nac_mq_loss, nac_mq_mutual_information_bound,
                               nac_mutual_information_bound, nt_xent_loss)

FLIP_PROBS = [0.05, 0.1, 0.25, 0.4, 0.49]
# (K images, D code bits, M extra negatives / queue length)
SHAPES = [(1, 3, 5), (4, 16, 24), (64, 128, 200)]
RTOL = {"float64": 1e-10, "float32": 1e-5}


# ---------------------------------------------------------------------------------------------
# Independent float64 references.
# ---------------------------------------------------------------------------------------------

def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _logsumexp(values):
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    return top + np.log(np.sum(np.exp(values - top)))


def _other(i, n):
    return (i + n // 2) % n


def _beta(p):
    return 0.5 * np.log((1.0 - p) / p)


def ref_positive(noisy_codes, logits):
    """Eq. 15 per row: 1/2 sum_d (z~_d r_d + log q_d (1 - q_d)), q = sigma(r of the other view)."""
    n = noisy_codes.shape[0]
    out = np.empty(n)
    for i in range(n):
        r = logits[_other(i, n)]
        out[i] = 0.5 * np.sum(noisy_codes[i] * r + _log_sigmoid(r) + _log_sigmoid(-r))
    return out


def ref_nac_loss(codes, logits, signs, p, negatives=None):
    """Eq. 19, negated, constants dropped."""
    negatives = codes if negatives is None else negatives
    noisy = signs * codes
    pos = ref_positive(noisy, logits)
    total = 0.0
    for i in range(codes.shape[0]):
        scores = [_beta(p) * np.dot(noisy[i], negatives[k]) for k in range(negatives.shape[0])]
        total += -pos[i] + _logsumexp(scores)
    return total / codes.shape[0]


def ref_mi_bound(codes, logits, signs, p, samples=None):
    """Eq. 18 written with the distributions themselves (Eq. 13 and the channel of Eq. 17).

    log Q(z~|x) = sum_d [(1 + z~_d)/2 log q_d + (1 - z~_d)/2 log(1 - q_d)] and
    log P(z~|c_k) = sum_d [(1 + z~_d c_k,d)/2 log(1 - p) + (1 - z~_d c_k,d)/2 log p], both
    linear in z~ so they are the relaxations used in Eq. 19.
    """
    samples = codes if samples is None else samples
    noisy = signs * codes
    n = codes.shape[0]
    total = 0.0
    for i in range(n):
        r = logits[_other(i, n)]
        log_q = np.sum((1 + noisy[i]) / 2 * _log_sigmoid(r) + (1 - noisy[i]) / 2 * _log_sigmoid(-r))
        log_p = [np.sum((1 + noisy[i] * c) / 2 * np.log(1 - p) + (1 - noisy[i] * c) / 2 * np.log(p))
                 for c in samples]
        total += log_q - (_logsumexp(log_p) - np.log(len(samples)))
    return total / n


def ref_nac_mq_loss(codes, momentum_logits, signs, p, queue, l2_weight):
    """Eq. 20, negated, constants dropped."""
    return (ref_nac_loss(codes, momentum_logits, signs, p, negatives=queue)
            + l2_weight * np.mean(np.sum(codes ** 2, axis=1)))


def ref_nt_xent(projections, temperature, negatives=None, offset=0):
    """Eq. 21-22: -log exp(u_i.u_pi(i)/tau) / sum_{k != i} exp(u_i.n_k/tau), mean over rows."""
    units = projections / np.linalg.norm(projections, axis=1, keepdims=True)
    negatives = units if negatives is None else negatives
    n = units.shape[0]
    total = 0.0
    for i in range(n):
        scores = [np.dot(units[i], negatives[k]) / temperature
                  for k in range(negatives.shape[0]) if k != offset + i]
        total += _logsumexp(scores) - np.dot(units[i], units[_other(i, n)]) / temperature
    return total / n


def ref_info_nce(queries, keys, queue, temperature):
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    q, k, v = unit(queries), unit(keys), unit(queue)
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        logits = np.concatenate([[np.dot(q[i], k[_other(i, n)])], v @ q[i]]) / temperature
        total += -(logits[0] - _logsumexp(logits))
    return total / n


# ---------------------------------------------------------------------------------------------
# Random inputs.
# ---------------------------------------------------------------------------------------------

def _nac_inputs(seed, k, d, m, p):
    rng = np.random.default_rng(seed)
    codes = np.tanh(2.0 * rng.normal(size=(2 * k, d)))
    logits = 3.0 * rng.normal(size=(2 * k, d))
    signs = np.where(rng.random(size=(2 * k, d)) < p, -1.0, 1.0)
    negatives = np.tanh(2.0 * rng.normal(size=(m, d)))
    return codes, logits, signs, negatives


def _assert_close(got, expected, dtype, scale):
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype)
    # The absolute floor is the relative tolerance times the size of the summands.
    np.testing.assert_allclose(float(got), expected, rtol=RTOL[dtype],
                               atol=RTOL[dtype] * scale)


def _cast(dtype, *arrays):
    return [tf.constant(a, dtype=dtype) for a in arrays]


# ---------------------------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", FLIP_PROBS)
@pytest.mark.parametrize("k, d, m", SHAPES)
def test_nac_loss_and_bound_match_reference(p, k, d, m):
    codes, logits, signs, negatives = _nac_inputs(int(1000 * p) + k, k, d, m, p)
    for given in (None, negatives):
        expected_loss = ref_nac_loss(codes, logits, signs, p, given)
        expected_bound = ref_mi_bound(codes, logits, signs, p, given)
        scale = d * (1.0 + 3.0 + _beta(p))
        for dtype in ("float64", "float32"):
            args = _cast(dtype, codes, logits, signs)
            neg = None if given is None else tf.constant(given, dtype=dtype)
            _assert_close(nac_loss(*args, p, negatives=neg), expected_loss, dtype, scale)
            _assert_close(nac_mutual_information_bound(*args, p, negatives=neg),
                          expected_bound, dtype, scale)


@pytest.mark.parametrize("p", FLIP_PROBS)
@pytest.mark.parametrize("k, d, m", SHAPES)
def test_nac_mq_loss_and_bound_match_reference(p, k, d, m):
    codes, logits, signs, queue = _nac_inputs(int(1000 * p) + 7 * k, k, d, m, p)
    l2_weight = 0.1
    expected_loss = ref_nac_mq_loss(codes, logits, signs, p, queue, l2_weight)
    expected_bound = ref_mi_bound(codes, logits, signs, p, queue)
    scale = d * (1.0 + 3.0 + _beta(p))
    for dtype in ("float64", "float32"):
        args = _cast(dtype, codes, logits, signs)
        q = tf.constant(queue, dtype=dtype)
        _assert_close(nac_mq_loss(*args, p, q, l2_weight), expected_loss, dtype, scale)
        _assert_close(nac_mq_mutual_information_bound(*args, p, q), expected_bound, dtype, scale)


def ref_nac_mq_positive_key(codes, momentum_logits, signs, p, queue, keys, l2_weight):
    """Eq. 20 with each row's positive key prepended to the queue (the authors' ImageNet code,
    MoCo's layout): row i's samples are [keys[pi(i)], queue_1, ..., queue_M]."""
    noisy = signs * codes
    pos = ref_positive(noisy, momentum_logits)
    n = codes.shape[0]
    total = 0.0
    for i in range(n):
        samples = np.vstack([keys[_other(i, n)][None], queue])
        scores = [_beta(p) * np.dot(noisy[i], s) for s in samples]
        total += -pos[i] + _logsumexp(scores) + l2_weight * np.sum(codes[i] ** 2)
    return total / n


def ref_mi_bound_positive_key(codes, logits, signs, p, queue, keys):
    """`ref_mi_bound` with row-specific samples [keys[pi(i)]; queue] (M + 1 of them)."""
    noisy = signs * codes
    n = codes.shape[0]
    total = 0.0
    for i in range(n):
        samples = np.vstack([keys[_other(i, n)][None], queue])
        r = logits[_other(i, n)]
        log_q = np.sum((1 + noisy[i]) / 2 * _log_sigmoid(r)
                       + (1 - noisy[i]) / 2 * _log_sigmoid(-r))
        log_p = [np.sum((1 + noisy[i] * c) / 2 * np.log(1 - p)
                        + (1 - noisy[i] * c) / 2 * np.log(p)) for c in samples]
        total += log_q - (_logsumexp(log_p) - np.log(len(samples)))
    return total / n


@pytest.mark.parametrize("p", [0.1, 0.4])
@pytest.mark.parametrize("k, d, m", SHAPES)
def test_nac_mq_positive_key_denominator_matches_reference(p, k, d, m):
    codes, logits, signs, queue = _nac_inputs(int(1000 * p) + 11 * k, k, d, m, p)
    keys = np.tanh(2.0 * np.random.default_rng(k).normal(size=codes.shape))
    l2_weight = 0.1
    expected_loss = ref_nac_mq_positive_key(codes, logits, signs, p, queue, keys, l2_weight)
    expected_bound = ref_mi_bound_positive_key(codes, logits, signs, p, queue, keys)
    scale = d * (1.0 + 3.0 + _beta(p))
    for dtype in ("float64", "float32"):
        args = _cast(dtype, codes, logits, signs)
        q, key = _cast(dtype, queue, keys)
        _assert_close(nac_mq_loss(*args, p, q, l2_weight, positive_keys=key), expected_loss,
                      dtype, scale)
        _assert_close(nac_mq_mutual_information_bound(*args, p, q, positive_keys=key),
                      expected_bound, dtype, scale)


def ref_nac_mq_divided_by_beta(codes, momentum_logits, signs, p, queue, l2_weight):
    """The authors' CIFAR NAC-MQ denominator: logsumexp_m(z~_i . v_m / beta); the positive
    and the l2 term as in Eq. 20."""
    noisy = signs * codes
    pos = ref_positive(noisy, momentum_logits)
    total = 0.0
    for i in range(codes.shape[0]):
        scores = [np.dot(noisy[i], v) / _beta(p) for v in queue]
        total += -pos[i] + _logsumexp(scores) + l2_weight * np.sum(codes[i] ** 2)
    return total / codes.shape[0]


@pytest.mark.parametrize("p", [0.1, 0.4])
def test_nac_mq_beta_divided_matches_reference(p):
    codes, logits, signs, queue = _nac_inputs(int(1000 * p) + 13, 4, 16, 24, p)
    expected = ref_nac_mq_divided_by_beta(codes, logits, signs, p, queue, 0.1)
    c, r, m, q = _cast("float64", codes, logits, signs, queue)
    got = nac_mq_loss(c, r, m, p, q, 0.1, beta_rule="divide")
    _assert_close(got, expected, "float64", 16 * (1.0 + 3.0 + 1.0 / _beta(p)))
    # The default multiplies (Eq. 20): another value whenever beta != 1.
    assert abs(float(nac_mq_loss(codes, logits, signs, p, queue, 0.1)) - expected) > 1e-3
    with pytest.raises(ValueError, match="beta_rule"):
        nac_mq_loss(codes, logits, signs, p, queue, 0.1, beta_rule="divided")


def test_nac_mq_positive_keys_get_no_gradient():
    codes, logits, signs, queue = _nac_inputs(5, 4, 16, 24, 0.4)
    keys = tf.Variable(np.tanh(codes[::-1].copy()))
    with tf.GradientTape() as tape:
        loss = nac_mq_loss(codes, logits, signs, 0.4, queue, 0.1, positive_keys=keys)
    assert tape.gradient(loss, keys) is None


def test_nac_mq_l2_term_is_on_the_clean_code():
    codes, logits, signs, queue = _nac_inputs(3, 4, 16, 24, 0.1)
    with_l2 = float(nac_mq_loss(codes, logits, signs, 0.1, queue, 0.5))
    without = float(nac_mq_loss(codes, logits, signs, 0.1, queue, 0.0))
    np.testing.assert_allclose(with_l2 - without, 0.5 * np.mean(np.sum(codes ** 2, 1)),
                               rtol=1e-12)


@pytest.mark.parametrize("k, d", [(1, 3), (4, 16), (64, 128)])
def test_inference_likelihood_loss_matches_reference(k, d):
    codes, logits, signs, _ = _nac_inputs(k, k, d, 1, 0.2)
    noisy = signs * codes
    expected = -np.mean(ref_positive(noisy, logits))
    for dtype in ("float64", "float32"):
        got = inference_likelihood_loss(*_cast(dtype, logits, noisy))
        _assert_close(got, expected, dtype, d * 4.0)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("k, d, m", SHAPES)
def test_nt_xent_matches_reference(temperature, k, d, m):
    rng = np.random.default_rng(k + int(10 * temperature))
    projections = rng.normal(size=(2 * k, d))
    for dtype in ("float64", "float32"):
        got = nt_xent_loss(tf.constant(projections, dtype=dtype), temperature)
        _assert_close(got, ref_nt_xent(projections, temperature), dtype, 2.0 / temperature)


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("k, d, m", SHAPES)
def test_info_nce_matches_reference(temperature, k, d, m):
    rng = np.random.default_rng(k + int(100 * temperature))
    queries, keys = rng.normal(size=(2, 2 * k, d))
    queue = rng.normal(size=(m, d))
    expected = ref_info_nce(queries, keys, queue, temperature)
    for dtype in ("float64", "float32"):
        got = info_nce_loss(*_cast(dtype, queries, keys, queue), temperature)
        _assert_close(got, expected, dtype, 2.0 / temperature)


def test_pairing_uses_the_other_view():
    """Swapping the halves of the logits must change the loss (row i is scored by pi(i))."""
    codes, logits, signs, _ = _nac_inputs(5, 3, 8, 1, 0.1)
    swapped = np.concatenate([logits[3:], logits[:3]])
    assert abs(float(nac_loss(codes, logits, signs, 0.1))
               - float(nac_loss(codes, swapped, signs, 0.1))) > 1e-3
    # ...and the reference agrees with the swapped pairing being a different objective.
    np.testing.assert_allclose(float(nac_loss(codes, swapped, signs, 0.1)),
                               ref_nac_loss(codes, swapped, signs, 0.1), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Gradients: tf.GradientTape in float64 against central differences of the references.
# ---------------------------------------------------------------------------------------------

def _finite_difference(function, array, step=1e-6):
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        plus, minus = array.copy(), array.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (function(plus) - function(minus)) / (2 * step)
    return grad


def _tape_gradients(function, *arrays):
    variables = [tf.constant(a, dtype=tf.float64) for a in arrays]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        value = function(*variables)
    # Unconnected inputs (behind a stop-gradient) get zeros rather than None.
    gradients = tape.gradient(value, variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [g.numpy() for g in gradients]


# Central differences with step 1e-6 have truncation error ~1e-12 * f''' and rounding error
# ~1e-16 * |f| / 1e-6 ~ 1e-9 for losses of size ~10; 1e-6 absolute is well above both.
GRAD_ATOL = 1e-6


@pytest.mark.parametrize("p", [0.05, 0.25, 0.49])
@pytest.mark.parametrize("given_negatives", [False, True])
def test_nac_loss_gradients_match_finite_differences(p, given_negatives):
    codes, logits, signs, negatives = _nac_inputs(11, 3, 5, 4, p)
    neg = negatives if given_negatives else None
    if given_negatives:
        got = _tape_gradients(lambda c, r, n: nac_loss(c, r, signs, p, negatives=n),
                              codes, logits, negatives)
    else:
        got = _tape_gradients(lambda c, r: nac_loss(c, r, signs, p), codes, logits)
    np.testing.assert_allclose(
        got[0], _finite_difference(lambda c: ref_nac_loss(c, logits, signs, p, neg), codes),
        atol=GRAD_ATOL)
    np.testing.assert_allclose(
        got[1], _finite_difference(lambda r: ref_nac_loss(codes, r, signs, p, neg), logits),
        atol=GRAD_ATOL)
    if given_negatives:
        np.testing.assert_allclose(
            got[2],
            _finite_difference(lambda n: ref_nac_loss(codes, logits, signs, p, n), negatives),
            atol=GRAD_ATOL)
    # Not a vacuous comparison: the gradients are of order 1e-2 or more.
    assert np.abs(got[0]).max() > 1e-2 and np.abs(got[1]).max() > 1e-2


@pytest.mark.parametrize("p", [0.1, 0.4])
def test_nac_mq_loss_gradients_match_finite_differences(p):
    codes, logits, signs, queue = _nac_inputs(12, 3, 5, 7, p)
    got = _tape_gradients(lambda c, r: nac_mq_loss(c, r, signs, p, queue, 0.1), codes, logits)
    np.testing.assert_allclose(
        got[0],
        _finite_difference(lambda c: ref_nac_mq_loss(c, logits, signs, p, queue, 0.1), codes),
        atol=GRAD_ATOL)
    np.testing.assert_allclose(
        got[1],
        _finite_difference(lambda r: ref_nac_mq_loss(codes, r, signs, p, queue, 0.1), logits),
        atol=GRAD_ATOL)
    assert np.abs(got[0]).max() > 1e-2 and np.abs(got[1]).max() > 1e-2


def test_nt_xent_and_info_nce_gradients_match_finite_differences():
    rng = np.random.default_rng(13)
    projections = rng.normal(size=(6, 5))
    got = _tape_gradients(lambda x: nt_xent_loss(x, 0.5), projections)[0]
    np.testing.assert_allclose(
        got, _finite_difference(lambda x: ref_nt_xent(x, 0.5), projections), atol=GRAD_ATOL)

    queries, keys = rng.normal(size=(2, 6, 5))
    queue = rng.normal(size=(9, 5))
    got_q, got_k = _tape_gradients(lambda q, k: info_nce_loss(q, k, queue, 0.2), queries, keys)
    np.testing.assert_allclose(
        got_q, _finite_difference(lambda q: ref_info_nce(q, keys, queue, 0.2), queries),
        atol=GRAD_ATOL)
    # Keys are constants for the loss (stop-gradient), although the value depends on them.
    np.testing.assert_array_equal(got_k, np.zeros_like(keys))
    value_slope = _finite_difference(lambda k: ref_info_nce(queries, k, queue, 0.2), keys)
    assert np.abs(value_slope).max() > 1e-3


def test_inference_likelihood_loss_stops_gradient_to_noisy_codes():
    codes, logits, signs, _ = _nac_inputs(14, 3, 5, 1, 0.2)
    noisy = signs * codes
    grad_logits, grad_noisy = _tape_gradients(inference_likelihood_loss, logits, noisy)
    np.testing.assert_array_equal(grad_noisy, np.zeros_like(noisy))
    # The loss does depend on the noisy codes, so a zero gradient is the stop-gradient's doing.
    assert np.abs(_finite_difference(
        lambda z: -np.mean(ref_positive(z, logits)), noisy)).max() > 1e-2
    np.testing.assert_allclose(
        grad_logits,
        _finite_difference(lambda r: -np.mean(ref_positive(noisy, r)), logits), atol=GRAD_ATOL)


# ---------------------------------------------------------------------------------------------
# The dropped constants: loss + bound is a constant, so the minimiser (and the gradient) agree.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", FLIP_PROBS)
def test_loss_and_bound_differ_by_the_dropped_constants_only(p):
    k, d, m = 4, 16, 24
    for seed in range(3):
        codes, logits, signs, negatives = _nac_inputs(100 + seed, k, d, m, p)
        channel = -(d / 2) * np.log(p * (1 - p))
        for given, num in ((None, 2 * k), (negatives, m)):
            loss = float(nac_loss(codes, logits, signs, p, negatives=given))
            bound = float(nac_mutual_information_bound(codes, logits, signs, p, negatives=given))
            np.testing.assert_allclose(loss + bound, np.log(num) + channel, rtol=1e-12)
        mq_loss = float(nac_mq_loss(codes, logits, signs, p, negatives, 0.0))
        mq_bound = float(nac_mq_mutual_information_bound(codes, logits, signs, p, negatives))
        np.testing.assert_allclose(mq_loss + mq_bound, np.log(m) + channel, rtol=1e-12)

    # Equal and opposite gradients, w.r.t. every input of the encoder and inference network.
    grads_loss = _tape_gradients(lambda c, r: nac_loss(c, r, signs, p), codes, logits)
    grads_bound = _tape_gradients(
        lambda c, r: nac_mutual_information_bound(c, r, signs, p), codes, logits)
    for g_loss, g_bound in zip(grads_loss, grads_bound):
        np.testing.assert_allclose(g_loss, -g_bound, rtol=1e-12, atol=1e-14)
        assert np.abs(g_loss).max() > 1e-2


def test_bound_reaches_log_m_with_separated_codewords_and_the_true_posterior():
    """With c in {-1,1}^D exactly and Q = P(c~|c) (r = 2 beta c_pi(i)), Eq. 18 is ~ log M.

    Per row the bound is log M - log(1 + sum_{k != i} P(c~|c_k) / P(c~|c_i)); for a noisy code
    with F flips, each ratio is exp(-2 beta (d_H(c~, c_k) - F)) <= exp(-2 beta (d_min - 2 F_max)),
    which the test computes and requires to be negligible before asserting.
    """
    k, d, p = 16, 512, 0.05
    rng = np.random.default_rng(0)
    words = np.where(rng.random((k, d)) < 0.5, -1.0, 1.0)
    codes = np.concatenate([words, words])  # both views share their image's codeword
    signs = np.where(rng.random(codes.shape) < p, -1.0, 1.0)
    beta = _beta(p)
    logits = 2 * beta * np.concatenate([words, words])  # row pi(i) predicts c_i: the true Q

    distances = (d - words @ words.T) / 2
    d_min = distances[~np.eye(k, dtype=bool)].min()
    f_max = (signs < 0).sum(axis=1).max()
    worst_gap = (2 * k) * np.exp(-2 * beta * (d_min - 2 * f_max))
    assert worst_gap < 1e-12, "precondition: codewords must be far apart relative to the noise"

    # Negatives = the K distinct codewords: M = K equiprobable messages, the bound is log K.
    bound = float(nac_mutual_information_bound(codes, logits, signs, p, negatives=words))
    assert abs(bound - np.log(k)) < 1e-9
    # Default negatives hold each codeword twice: 1/M sum_k P = 2/M P(c~|c_i), so log(M/2).
    bound = float(nac_mutual_information_bound(codes, logits, signs, p))
    assert abs(bound - np.log(k)) < 1e-9

    # A noisier channel cannot separate the words: below log M, but never above it.
    noisy_p = 0.45
    signs = np.where(rng.random(codes.shape) < noisy_p, -1.0, 1.0)
    logits = 2 * _beta(noisy_p) * codes
    bound = float(nac_mutual_information_bound(codes, logits, signs, noisy_p, negatives=words))
    assert bound <= np.log(k) + 1e-12
    assert bound < np.log(k) - 0.1


# ---------------------------------------------------------------------------------------------
# NT-Xent with gathered negatives: two replicas simulated by slicing one global batch.
# ---------------------------------------------------------------------------------------------

def _local_batch(first_views, second_views, replica, per_replica):
    rows = slice(replica * per_replica, (replica + 1) * per_replica)
    return np.concatenate([first_views[rows], second_views[rows]])


def test_nt_xent_with_gathered_negatives_equals_the_global_loss():
    rng = np.random.default_rng(21)
    k_global, d, replicas = 6, 8, 2
    per_replica = k_global // replicas
    first_views, second_views = rng.normal(size=(2, k_global, d))
    locals_ = [_local_batch(first_views, second_views, r, per_replica) for r in range(replicas)]
    units = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in locals_]
    gathered = np.concatenate(units)  # what an all-gather along rows returns
    n_local = 2 * per_replica

    local_losses = [float(nt_xent_loss(locals_[r], 0.3, negatives=gathered,
                                       negatives_offset=tf.constant(r * n_local)))
                    for r in range(replicas)]
    global_batch = np.concatenate([first_views, second_views])
    expected = float(nt_xent_loss(global_batch, 0.3))
    np.testing.assert_allclose(np.mean(local_losses), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, ref_nt_xent(global_batch, 0.3), rtol=1e-6)

    # Masking the wrong rows (replica 1 without its offset) changes the loss.
    wrong = float(nt_xent_loss(locals_[1], 0.3, negatives=gathered, negatives_offset=0))
    assert abs(wrong - local_losses[1]) > 1e-3


# ---------------------------------------------------------------------------------------------
# Graph mode, dynamic batch size and a real replica context.
# ---------------------------------------------------------------------------------------------

def test_functions_trace_with_a_dynamic_batch_size():
    spec = tf.TensorSpec([None, 6], tf.float32)
    traced_nac = tf.function(lambda c, r, m: nac_loss(c, r, m, 0.1), input_signature=[spec] * 3)
    traced_mq = tf.function(lambda c, r, m, q: nac_mq_loss(c, r, m, 0.1, q, 0.1),
                            input_signature=[spec] * 4)
    traced_xent = tf.function(lambda x: nt_xent_loss(x, 0.5), input_signature=[spec])
    traced_nce = tf.function(lambda q, k, v: info_nce_loss(q, k, v, 0.2),
                             input_signature=[spec] * 3)
    for k in (2, 5):
        codes, logits, signs, queue = _nac_inputs(k, k, 6, 9, 0.1)
        codes, logits, signs, queue = [a.astype(np.float32) for a in (codes, logits, signs, queue)]
        np.testing.assert_allclose(float(traced_nac(codes, logits, signs)),
                                   ref_nac_loss(codes, logits, signs, 0.1), rtol=1e-5)
        np.testing.assert_allclose(float(traced_mq(codes, logits, signs, queue)),
                                   ref_nac_mq_loss(codes, logits, signs, 0.1, queue, 0.1),
                                   rtol=1e-5)
        np.testing.assert_allclose(float(traced_xent(logits)), ref_nt_xent(logits, 0.5),
                                   rtol=1e-5)
        np.testing.assert_allclose(float(traced_nce(codes, logits, queue)),
                                   ref_info_nce(codes, logits, queue, 0.2), rtol=1e-5)


def test_losses_under_mirrored_strategy_with_all_gathered_negatives(two_replica_strategy):
    strategy = two_replica_strategy
    p, k_local, d = 0.1, 3, 8
    inputs = [_nac_inputs(30 + r, k_local, d, 1, p)[:3] for r in range(2)]

    @tf.function
    def step(codes, logits, signs, projections):
        context = tf.distribute.get_replica_context()
        negatives = context.all_gather(codes, axis=0)
        units = context.all_gather(tf.math.l2_normalize(projections, axis=1), axis=0)
        offset = context.replica_id_in_sync_group * tf.shape(projections)[0]
        return (nac_loss(codes, logits, signs, p, negatives=negatives),
                nt_xent_loss(projections, 0.5, negatives=units, negatives_offset=offset))

    def per_replica(index):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(inputs[ctx.replica_id_in_sync_group][index], tf.float64))

    results = strategy.run(step, args=tuple(per_replica(i) for i in (0, 1, 2, 1)))
    nac_values = [float(v) for v in strategy.experimental_local_results(results[0])]
    xent_values = [float(v) for v in strategy.experimental_local_results(results[1])]

    all_codes = np.concatenate([x[0] for x in inputs])
    units = np.concatenate([x[1] / np.linalg.norm(x[1], axis=1, keepdims=True) for x in inputs])
    for r in range(2):
        codes, logits, signs = inputs[r]
        np.testing.assert_allclose(nac_values[r],
                                   ref_nac_loss(codes, logits, signs, p, all_codes), rtol=1e-10)
        np.testing.assert_allclose(xent_values[r],
                                   ref_nt_xent(logits, 0.5, units, offset=r * 2 * k_local),
                                   rtol=1e-10)


def test_output_dtype_follows_the_input():
    codes, logits, signs, queue = _nac_inputs(1, 2, 4, 3, 0.1)
    for dtype in (tf.float32, tf.float64):
        c, r, m, q = _cast(dtype, codes, logits, signs, queue)
        assert nac_loss(c, r, m, 0.1).dtype == dtype
        assert nac_mutual_information_bound(c, r, m, 0.1).dtype == dtype
        assert nac_mq_loss(c, r, m, 0.1, q, 0.1).dtype == dtype
        assert nac_mq_mutual_information_bound(c, r, m, 0.1, q).dtype == dtype
        assert inference_likelihood_loss(r, c).dtype == dtype
        assert nt_xent_loss(c, 0.5).dtype == dtype
        assert info_nce_loss(c, r, q, 0.5).dtype == dtype


def test_tensor_flip_prob_gives_the_same_value_as_a_python_float():
    codes, logits, signs, queue = _nac_inputs(2, 3, 8, 5, 0.3)
    as_tensor = tf.constant(0.3, tf.float64)
    np.testing.assert_allclose(float(nac_loss(codes, logits, signs, as_tensor)),
                               float(nac_loss(codes, logits, signs, 0.3)), rtol=1e-12)
    np.testing.assert_allclose(
        float(nac_mq_mutual_information_bound(codes, logits, signs, as_tensor, queue)),
        float(nac_mq_mutual_information_bound(codes, logits, signs, 0.3, queue)), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad arguments.
# ---------------------------------------------------------------------------------------------

def test_odd_number_of_rows_is_rejected():
    odd = np.zeros((5, 4))
    with pytest.raises(ValueError, match="`codes`.*even"):
        nac_loss(odd, odd, odd + 1, 0.1)
    with pytest.raises(ValueError, match="`codes`.*even"):
        nac_mutual_information_bound(odd, odd, odd + 1, 0.1)
    with pytest.raises(ValueError, match="`codes`.*even"):
        nac_mq_loss(odd, odd, odd + 1, 0.1, np.zeros((3, 4)), 0.1)
    with pytest.raises(ValueError, match="`logits`.*even"):
        inference_likelihood_loss(odd, odd)
    with pytest.raises(ValueError, match="`projections`.*even"):
        nt_xent_loss(odd + 1, 0.5)
    with pytest.raises(ValueError, match="`queries`.*even"):
        info_nce_loss(odd + 1, odd + 1, np.ones((3, 4)), 0.5)


@pytest.mark.parametrize("bad_p", [0.0, 0.5, -0.1, 0.7, 1.0, 1])
def test_flip_prob_outside_the_open_interval_is_rejected(bad_p):
    x = np.zeros((4, 3))
    # The range is the setting's declaration (nac_tf.methods.registry.FLIP_PROB).
    message = r"flip_prob: .* outside the accepted range \(0\.0, 0\.5\)"
    with pytest.raises(ValueError, match=message):
        nac_loss(x, x, x + 1, bad_p)
    with pytest.raises(ValueError, match=message):
        nac_mq_mutual_information_bound(x, x, x + 1, bad_p, x)


def test_other_bad_arguments_are_rejected():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="`logits`.*shape"):
        nac_loss(x, np.zeros((4, 2)), x + 1, 0.1)
    with pytest.raises(ValueError, match="`flip_signs`.*shape"):
        nac_loss(x, x, np.ones((2, 3)), 0.1)
    with pytest.raises(ValueError, match="`negatives`.*D=3"):
        nac_loss(x, x, x + 1, 0.1, negatives=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="`queue`.*D=3"):
        nac_mq_loss(x, x, x + 1, 0.1, np.zeros((4, 5)), 0.1)
    with pytest.raises(ValueError, match=r"l2_weight: -1.0 is outside the accepted range \[0"):
        nac_mq_loss(x, x, x + 1, 0.1, x, -1.0)
    with pytest.raises(ValueError, match=r"temperature: 0.0 is outside the accepted range \(0"):
        nt_xent_loss(x + 1, 0.0)
    with pytest.raises(ValueError, match=r"temperature: -0.5 is outside the accepted range \(0"):
        info_nce_loss(x + 1, x + 1, x + 1, -0.5)
    with pytest.raises(ValueError, match="`codes`.*matrix"):
        nac_loss(np.zeros(4), np.zeros(4), np.ones(4), 0.1)
