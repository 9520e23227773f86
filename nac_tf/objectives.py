"""Training objectives: NAC (Eq. 19), NAC-MQ (Eq. 20), SimCLR NT-Xent (Eq. 21-22), MoCo-v2 InfoNCE.

Pure `keras.ops` functions of tensors: no layers, no state, no TensorFlow calls, so they run
eagerly, under `tf.function` and inside `tf.distribute` replica contexts, in float32 or float64
(everything is computed in the dtype of the first argument).

Batch layout shared by every function: N = 2K rows, rows 0..K-1 are the first views and rows
K..2K-1 the second views of the same K images, so the other view of row i is
pi(i) = (i + K) mod 2K. Functions that take per-row "own" predictions (inference-network logits,
momentum keys) pair row i with the prediction of row pi(i) themselves: a network reading one
view predicts the code of the other view, so it cannot copy the code it is scored on.

Noisy channel (Sec. 3.1): z~ = m * z with independent signs m, P(m = -1) = p (the flip
probability) and beta = 1/2 log((1 - p) / p); the caller draws m (nac_tf.methods: one
mask per global row, so replicas draw what one device would).
"""
import math
import numbers

import keras
from keras import ops


# --------------------------------------------------------------------------------------------
# Argument checks and shared pieces.
# --------------------------------------------------------------------------------------------

def _is_python_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_flip_prob(flip_prob):
    # Tensors (e.g. a scheduled p) cannot be checked without running the graph; they are trusted.
    if _is_python_number(flip_prob) and not 0.0 < float(flip_prob) < 0.5:
        raise ValueError(
            f"`flip_prob` must be in the open interval (0, 0.5) (a channel with non-zero "
            f"capacity); received flip_prob={flip_prob!r}.")


def _check_positive(name, value):
    if _is_python_number(value) and not float(value) > 0.0:
        raise ValueError(f"`{name}` must be > 0; received {name}={value!r}.")


def _check_non_negative(name, value):
    if _is_python_number(value) and not float(value) >= 0.0:
        raise ValueError(f"`{name}` must be >= 0; received {name}={value!r}.")


def _check_view_pairs(name, x):
    """`x` must be a matrix [2K, D]; an odd static row count cannot hold view pairs."""
    if len(x.shape) != 2:
        raise ValueError(
            f"`{name}` must be a matrix [2K, D] (first views then second views); received "
            f"shape {tuple(x.shape)}.")
    rows = x.shape[0]
    if rows is not None and rows % 2 != 0:
        raise ValueError(
            f"`{name}` must have an even number of rows 2K (K first views then the K second "
            f"views); received {rows} rows.")


def _check_same_shape(name, x, reference_name, reference):
    if len(x.shape) != len(reference.shape) or any(
            a is not None and b is not None and a != b for a, b in zip(x.shape, reference.shape)):
        raise ValueError(
            f"`{name}` must have the shape of `{reference_name}` {tuple(reference.shape)}; "
            f"received shape {tuple(x.shape)}.")


def _check_same_width(name, x, reference_name, reference):
    if len(x.shape) != 2 or (
            x.shape[1] is not None and reference.shape[1] is not None
            and x.shape[1] != reference.shape[1]):
        raise ValueError(
            f"`{name}` must be a matrix [M, D] with the code width D={reference.shape[1]} of "
            f"`{reference_name}`; received shape {tuple(x.shape)}.")


def _as_float(x, dtype):
    return ops.cast(ops.convert_to_tensor(x), dtype)


def _scalar(value, dtype):
    """A scalar in `dtype`; Python numbers are converted directly, not through float32."""
    if _is_python_number(value):
        return ops.convert_to_tensor(value, dtype=dtype)
    return ops.cast(value, dtype)


def _compute_dtype(x):
    """The dtype of a floating input, float32 for anything else (e.g. int or numpy lists)."""
    dtype = keras.backend.standardize_dtype(ops.convert_to_tensor(x).dtype)
    return dtype if "float" in dtype else "float32"


def _other_view(x):
    """Rows reordered so that row i holds row pi(i) = (i + K) mod 2K (swap the two halves)."""
    # A roll by K is the half swap for N = 2K and works for a dynamic N inside tf.function.
    return ops.roll(x, shift=ops.shape(x)[0] // 2, axis=0)


def _channel_beta(flip_prob, dtype):
    """beta = 1/2 log((1 - p) / p), the per-bit log-likelihood ratio of the channel (Eq. 5-7)."""
    if _is_python_number(flip_prob):
        # Python float64 arithmetic, then a single rounding to the compute dtype.
        return _scalar(0.5 * math.log((1.0 - flip_prob) / flip_prob), dtype)
    p = ops.cast(flip_prob, dtype)
    return 0.5 * ops.log((1.0 - p) / p)


def _log_channel_normaliser(flip_prob, dtype):
    """log(p (1 - p)); Eq. 7: log P(c~|c) = beta c~.c + (D/2) log(p (1 - p)) on {-1, 1}^D."""
    if _is_python_number(flip_prob):
        return _scalar(math.log(flip_prob) + math.log1p(-flip_prob), dtype)
    p = ops.cast(flip_prob, dtype)
    return ops.log(p) + ops.log(1.0 - p)


def _positive_term(noisy_codes, logits):
    """Per-row log Q(z~_i | x_pi(i)) of the mean-field Bernoulli posterior (Eq. 13-15).

    pos_i = 1/2 sum_d (z~_i,d r_pi(i),d + log sigma(r) + log sigma(-r)), r = r_pi(i),d, where
    log sigma(r) + log sigma(-r) = -softplus(-r) - softplus(r) avoids log(0) for large |r|.
    `logits` are each row's own predictions; the pairing with the other view happens here.
    """
    r = _other_view(logits)
    return 0.5 * ops.sum(noisy_codes * r - ops.softplus(-r) - ops.softplus(r), axis=-1)


def _negative_term(noisy_codes, samples, beta):
    """Per-row logsumexp_k(beta z~_i . s_k): the subsampled log-marginal of Eq. 16-17 (no log M)."""
    return ops.logsumexp(beta * ops.matmul(noisy_codes, ops.transpose(samples)), axis=-1)


def _mutual_information_constant(num_samples, dim, flip_prob, dtype):
    """log M - (D/2) log(p (1 - p)): the constants the training losses drop (Eq. 15, 17, 18)."""
    log_m = ops.log(ops.cast(num_samples, dtype))
    return log_m - 0.5 * ops.cast(dim, dtype) * _log_channel_normaliser(flip_prob, dtype)


def _noisy_channel_terms(codes, logits, flip_signs, flip_prob, samples,
                         codes_name, logits_name, samples_name, positive_keys=None):
    """Validated, dtype-aligned per-row positive and negative terms shared by NAC and NAC-MQ.

    `positive_keys` [2K, D] (optional): each row's own momentum code; row i's denominator then
    also holds beta z~_i . k_pi(i), the key of its other view (MoCo's positive logit), and the
    number of samples is M + 1.
    """
    _check_flip_prob(flip_prob)
    dtype = _compute_dtype(codes)
    codes = _as_float(codes, dtype)
    logits = _as_float(logits, dtype)
    flip_signs = _as_float(flip_signs, dtype)
    _check_view_pairs(codes_name, codes)
    _check_same_shape(logits_name, logits, codes_name, codes)
    _check_same_shape("flip_signs", flip_signs, codes_name, codes)
    samples = codes if samples is None else _as_float(samples, dtype)
    _check_same_width(samples_name, samples, codes_name, codes)

    noisy_codes = flip_signs * codes
    beta = _channel_beta(flip_prob, dtype)
    positive = _positive_term(noisy_codes, logits)
    num_samples = ops.shape(samples)[0]
    if positive_keys is None:
        negative = _negative_term(noisy_codes, samples, beta)
    else:
        positive_keys = ops.stop_gradient(_as_float(positive_keys, dtype))
        _check_same_shape("positive_keys", positive_keys, codes_name, codes)
        own_key = beta * ops.sum(noisy_codes * _other_view(positive_keys), axis=-1,
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
                positive_keys=None):
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

    Returns:
      Scalar mean_i [-pos_i + logsumexp_m(beta z~_i . v_m) + lambda ||z_i||^2], the
      logsumexp over [k_pi(i); v_1..v_M] with `positive_keys`.
    """
    _check_non_negative("l2_weight", l2_weight)
    codes, positive, negative, _ = _noisy_channel_terms(
        codes, momentum_logits, flip_signs, flip_prob, queue, "codes", "momentum_logits",
        "queue", positive_keys)
    l2_weight = _scalar(l2_weight, codes.dtype)
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
    dtype = _compute_dtype(logits)
    logits = _as_float(logits, dtype)
    noisy_codes = ops.stop_gradient(_as_float(noisy_codes, dtype))
    _check_view_pairs("logits", logits)
    _check_same_shape("noisy_codes", noisy_codes, "logits", logits)
    return -ops.mean(_positive_term(noisy_codes, logits))


# --------------------------------------------------------------------------------------------
# Contrastive baselines.
# --------------------------------------------------------------------------------------------

def nt_xent_loss(projections, temperature, negatives=None, negatives_offset=0):
    """SimCLR's NT-Xent (Eq. 21-22), the negative of the mean of Eq. 21 over rows.

    u = l2-normalised projections; row i's positive is u_pi(i) and its denominator is
    sum_{k != i} exp(u_i . n_k / tau) over the negatives n (default: u itself).

    Args:
      projections: [2K, D] projection-head outputs (normalised here).
      temperature: tau > 0.
      negatives: l2-normalised [M, D]; under distribution, the all-gathered normalised
        projections of every replica (they contain the positives too, as in SimCLR).
      negatives_offset: global row of local row 0 inside `negatives` (e.g. replica_id * 2K, may
        be a scalar tensor); local row j's own entry, masked out, is row offset + j.

    Returns:
      Scalar mean_i [logsumexp_{k != i}(u_i . n_k / tau) - u_i . u_pi(i) / tau].
    """
    _check_positive("temperature", temperature)
    dtype = _compute_dtype(projections)
    projections = _as_float(projections, dtype)
    _check_view_pairs("projections", projections)
    units = ops.normalize(projections, axis=-1, order=2)
    negatives = units if negatives is None else _as_float(negatives, dtype)
    _check_same_width("negatives", negatives, "projections", projections)
    inverse_temperature = 1.0 / _scalar(temperature, dtype)

    # The positive is recomputed locally so that it never depends on where the local rows sit
    # in the gathered matrix; its copy inside `negatives` stays in the denominator.
    positive = ops.sum(units * _other_view(units), axis=-1) * inverse_temperature
    similarities = ops.matmul(units, ops.transpose(negatives)) * inverse_temperature
    own_rows = ops.cast(negatives_offset, "int32") + ops.arange(ops.shape(units)[0],
                                                                dtype="int32")
    is_self = ops.expand_dims(own_rows, 1) == ops.expand_dims(
        ops.arange(ops.shape(negatives)[0], dtype="int32"), 0)
    # A large finite negative instead of -inf: exp underflows to exactly 0 and no inf - inf
    # can appear in the gradient; |u.n / tau| <= 1/tau is far smaller.
    similarities = ops.where(is_self, _scalar(-1e9, dtype), similarities)
    return ops.mean(ops.logsumexp(similarities, axis=-1) - positive)


def info_nce_loss(queries, keys, queue, temperature):
    """MoCo-v2 InfoNCE, symmetrised over the two views.

    Args:
      queries: online projections q [2K, D].
      keys: each row's own momentum projection k [2K, D]; query i is matched with key pi(i)
        (the other view), and keys are treated as constants (stop-gradient).
      queue: negative keys [M, D].
      temperature: tau > 0.
    All three are l2-normalised here.

    Returns:
      Scalar mean_i -log softmax([q_i . k_pi(i), q_i . queue_1, ..., q_i . queue_M] / tau)[0].
    """
    _check_positive("temperature", temperature)
    dtype = _compute_dtype(queries)
    queries = _as_float(queries, dtype)
    keys = ops.stop_gradient(_as_float(keys, dtype))
    queue = ops.stop_gradient(_as_float(queue, dtype))
    _check_view_pairs("queries", queries)
    _check_same_shape("keys", keys, "queries", queries)
    _check_same_width("queue", queue, "queries", queries)
    queries = ops.normalize(queries, axis=-1, order=2)
    keys = ops.normalize(keys, axis=-1, order=2)
    queue = ops.normalize(queue, axis=-1, order=2)
    inverse_temperature = 1.0 / _scalar(temperature, dtype)

    positive = ops.sum(queries * _other_view(keys), axis=-1, keepdims=True)
    negative = ops.matmul(queries, ops.transpose(queue))
    logits = ops.concatenate([positive, negative], axis=-1) * inverse_temperature
    return ops.mean(ops.logsumexp(logits, axis=-1) - logits[:, 0])
