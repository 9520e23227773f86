"""NAC's objectives over a noisy binary channel: NAC (Eq. 19), NAC-MQ (Eq. 20), their
mutual-information bounds (Eq. 18) and the inference network's own likelihood (Eq. 13-15).

Noisy channel (Sec. 3.1): z~ = m * z with independent signs m, P(m = -1) = p (the flip
probability) and beta = 1/2 log((1 - p) / p); the caller draws m (nac_tf.methods: one
mask per global row, so replicas draw what one device would).
"""
import math

from keras import ops

from nac_tf.methods.registry import FLIP_PROB, L2_WEIGHT, MQ_BETA
from nac_tf.objectives.common import (as_float, check_same_shape, check_same_width,
                                      check_setting, check_view_pairs, compute_dtype,
                                      is_python_number, other_view, scalar)


def _channel_beta(flip_prob, dtype):
    """beta = 1/2 log((1 - p) / p), the per-bit log-likelihood ratio of the channel (Eq. 5-7)."""
    if is_python_number(flip_prob):
        # Python float64 arithmetic, then a single rounding to the compute dtype.
        return scalar(0.5 * math.log((1.0 - flip_prob) / flip_prob), dtype)
    p = ops.cast(flip_prob, dtype)
    return 0.5 * ops.log((1.0 - p) / p)


def _log_channel_normaliser(flip_prob, dtype):
    """log(p (1 - p)); Eq. 7: log P(c~|c) = beta c~.c + (D/2) log(p (1 - p)) on {-1, 1}^D."""
    if is_python_number(flip_prob):
        return scalar(math.log(flip_prob) + math.log1p(-flip_prob), dtype)
    p = ops.cast(flip_prob, dtype)
    return ops.log(p) + ops.log(1.0 - p)


def _positive_term(noisy_codes, logits):
    """Per-row log Q(z~_i | x_pi(i)) of the mean-field Bernoulli posterior (Eq. 13-15).

    pos_i = 1/2 sum_d (z~_i,d r_pi(i),d + log sigma(r) + log sigma(-r)), r = r_pi(i),d, where
    log sigma(r) + log sigma(-r) = -softplus(-r) - softplus(r) avoids log(0) for large |r|.
    `logits` are each row's own predictions; the pairing with the other view happens here.
    """
    r = other_view(logits)
    return 0.5 * ops.sum(noisy_codes * r - ops.softplus(-r) - ops.softplus(r), axis=-1)


def _negative_term(noisy_codes, samples, beta):
    """Per-row logsumexp_k(beta z~_i . s_k): the subsampled log-marginal of Eq. 16-17 (no log M)."""
    return ops.logsumexp(beta * ops.matmul(noisy_codes, ops.transpose(samples)), axis=-1)


def _mutual_information_constant(num_samples, dim, flip_prob, dtype):
    """log M - (D/2) log(p (1 - p)): the constants the training losses drop (Eq. 15, 17, 18)."""
    log_m = ops.log(ops.cast(num_samples, dtype))
    return log_m - 0.5 * ops.cast(dim, dtype) * _log_channel_normaliser(flip_prob, dtype)


def _noisy_channel_terms(codes, logits, flip_signs, flip_prob, samples,
                         codes_name, logits_name, samples_name, positive_keys=None,
                         beta_rule="multiply"):
    """Validated, dtype-aligned per-row positive and negative terms shared by NAC and NAC-MQ.

    `positive_keys` [2K, D] (optional): each row's own momentum code; row i's denominator then
    also holds beta z~_i . k_pi(i), the key of its other view (MoCo's positive logit), and the
    number of samples is M + 1. `beta_rule="divide"` scores the denominator with z~ . s / beta
    instead (the authors' CIFAR NAC-MQ code); the positive term never involves beta.
    """
    check_setting(FLIP_PROB, flip_prob)
    dtype = compute_dtype(codes)
    codes = as_float(codes, dtype)
    logits = as_float(logits, dtype)
    flip_signs = as_float(flip_signs, dtype)
    check_view_pairs(codes_name, codes)
    check_same_shape(logits_name, logits, codes_name, codes)
    check_same_shape("flip_signs", flip_signs, codes_name, codes)
    samples = codes if samples is None else as_float(samples, dtype)
    check_same_width(samples_name, samples, codes_name, codes)

    noisy_codes = flip_signs * codes
    beta = _channel_beta(flip_prob, dtype)
    if MQ_BETA.check(beta_rule, "beta_rule") == "divide":
        beta = 1.0 / beta
    positive = _positive_term(noisy_codes, logits)
    num_samples = ops.shape(samples)[0]
    if positive_keys is None:
        negative = _negative_term(noisy_codes, samples, beta)
    else:
        positive_keys = ops.stop_gradient(as_float(positive_keys, dtype))
        check_same_shape("positive_keys", positive_keys, codes_name, codes)
        own_key = beta * ops.sum(noisy_codes * other_view(positive_keys), axis=-1,
                                 keepdims=True)
        negative = ops.logsumexp(ops.concatenate(
            [own_key, beta * ops.matmul(noisy_codes, ops.transpose(samples))], axis=-1),
            axis=-1)
        num_samples = num_samples + 1
    constant = _mutual_information_constant(num_samples, ops.shape(codes)[1], flip_prob, dtype)
    return codes, positive, negative, constant


# --------------------------------------------------------------------------------------------
# NAC (Eq. 19).
# --------------------------------------------------------------------------------------------

def nac_loss(codes, logits, flip_signs, flip_prob, negatives=None):
    """Negative relaxed NAC objective (Eq. 19), constants dropped; minimise it.

    Args:
      codes: tanh codes z [2K, D] (first views, then second views).
      logits: each row's OWN inference-network logits r(h_i) [2K, D]; row i is scored with the
        logits of its other view pi(i).
      flip_signs: the channel's signs m in {-1, +1} [2K, D]; z~ = m * z.
      flip_prob: p in (0, 0.5) (Python float, checked; or a scalar tensor, trusted).
      negatives: clean codes [M, D] of the denominator; default `codes` (all 2K rows, self
        included, as the authors do). Under distribution: the all-gathered codes of every
        replica.

    Returns:
      Scalar mean_i [-pos_i + logsumexp_k(beta z~_i . negatives_k)].
    """
    _, positive, negative, _ = _noisy_channel_terms(
        codes, logits, flip_signs, flip_prob, negatives, "codes", "logits", "negatives")
    return ops.mean(negative - positive)


def nac_mutual_information_bound(codes, logits, flip_signs, flip_prob, negatives=None):
    """Lower bound of Eq. 18 on I(X; C~) in nats, all constants included (a training metric).

    For c, c~ in {-1, 1}^D the channel gives (Eq. 7) log P(c~|c_k) = beta c~.c_k + (D/2) log(p(1-p))
    (each agreeing bit has probability 1 - p, each flipped bit p), and the mean-field posterior
    gives log Q(c~ | x) = pos exactly (Eq. 15). Eq. 18 is E[log Q(c~|x)] - E[log (1/M)
    sum_k P(c~ | c_k)], i.e.

        mean_i [pos_i - logsumexp_k(beta z~_i . n_k)] + log M - (D/2) log(p (1 - p)),

    M = number of negatives. It equals -nac_loss + that constant, so it has the same gradients
    up to sign. Same arguments as `nac_loss`.
    """
    # The channel constant -(D/2) log(p (1 - p)) is at least D log 2 (p (1 - p) <= 1/4) and
    # equals it only at p = 0.5, so "D log 2" would be wrong for every usable channel: at
    # p = 0.1, D = 128 the constant is 128 * 1.204 = 154.1 nats, not 88.7.
    _, positive, negative, constant = _noisy_channel_terms(
        codes, logits, flip_signs, flip_prob, negatives, "codes", "logits", "negatives")
    return ops.mean(positive - negative) + constant


# --------------------------------------------------------------------------------------------
# NAC-MQ (Eq. 20).
# --------------------------------------------------------------------------------------------

def nac_mq_loss(codes, momentum_logits, flip_signs, flip_prob, queue, l2_weight,
                positive_keys=None, beta_rule="multiply"):
    """Negative relaxed NAC-MQ objective (Eq. 20), constants dropped; minimise it.

    Which momentum codes the denominator holds is the caller's choice of `queue` and
    `positive_keys`. The authors' CIFAR code writes the current batch's momentum codes into
    the queue before the loss (pass that queue); their ImageNet code prepends each row's
    positive key, MoCo's way (pass `positive_keys`); Eq. 20 read literally uses the stored
    queue alone.

    Args:
      codes: online tanh codes z [2K, D].
      momentum_logits: each row's own momentum inference-network logits r^ [2K, D] (row i is
        scored with r^ of pi(i)).
      flip_signs: channel signs m [2K, D].
      flip_prob: p in (0, 0.5).
      queue: momentum codes v_m [M, D].
      l2_weight: lambda >= 0 of the lambda ||z||^2 term (on the clean code z).
      positive_keys: optional momentum codes k [2K, D] of each row's own view; row i's
        denominator then also holds beta z~_i . k_pi(i) (no gradient through k).
      beta_rule: "multiply" (Eq. 20) or "divide": the denominator's scores are
        z~_i . v_m / beta, as the authors' CIFAR NAC-MQ code computes them.

    Returns:
      Scalar mean_i [-pos_i + logsumexp_m(beta z~_i . v_m) + lambda ||z_i||^2], the
      logsumexp over [k_pi(i); v_1..v_M] with `positive_keys`.
    """
    check_setting(L2_WEIGHT, l2_weight)
    codes, positive, negative, _ = _noisy_channel_terms(
        codes, momentum_logits, flip_signs, flip_prob, queue, "codes", "momentum_logits",
        "queue", positive_keys, beta_rule)
    l2_weight = scalar(l2_weight, codes.dtype)
    return ops.mean(negative - positive + l2_weight * ops.sum(ops.square(codes), axis=-1))


def nac_mq_mutual_information_bound(codes, momentum_logits, flip_signs, flip_prob, queue,
                                    positive_keys=None):
    """Eq. 20's lower bound on I(X; C~) in nats: mean_i[pos_i - lse_i] + log M - (D/2) log(p(1-p)).

    Same derivation as `nac_mutual_information_bound` with the M queued momentum codes (M + 1
    with `positive_keys`, see `nac_mq_loss`) as the samples of the marginal; the
    lambda ||z||^2 regulariser is not part of the bound.
    """
    _, positive, negative, constant = _noisy_channel_terms(
        codes, momentum_logits, flip_signs, flip_prob, queue, "codes", "momentum_logits",
        "queue", positive_keys)
    return ops.mean(positive - negative) + constant


def inference_likelihood_loss(logits, noisy_codes):
    """Negative log-likelihood of the other view's noisy code under the ONLINE inference net.

    Eq. 20 scores codes with the momentum network r^, so the online inference network gets no
    gradient from it; this trains it (Eq. 13-15) by maximising log Q(z~_pi(i) | x_i), with z~
    held fixed (stop-gradient) so the term cannot move the encoder's codes.

    Args:
      logits: each row's own online logits r [2K, D] (row i is scored with r of pi(i)).
      noisy_codes: z~ = m * z [2K, D].

    Returns:
      Scalar mean_i [-pos_i].
    """
    dtype = compute_dtype(logits)
    logits = as_float(logits, dtype)
    noisy_codes = ops.stop_gradient(as_float(noisy_codes, dtype))
    check_view_pairs("logits", logits)
    check_same_shape("noisy_codes", noisy_codes, "logits", logits)
    return -ops.mean(_positive_term(noisy_codes, logits))
