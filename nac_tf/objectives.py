"""Training objectives: NAC (Eq. 19), NAC-MQ (Eq. 20), SimCLR NT-Xent (Eq. 21-22), MoCo-v2
InfoNCE, and AMDIM's multiscale NCE (`amdim_loss`, `amdim_nce_loss`) with its mixture-based
1->7 variant (`amdim_mixture_nce_loss`). Equation and section numbers are the NAC paper's unless
marked "AMDIM" (Bachman, Hjelm and Buchwalter, NeurIPS 2019).

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

AMDIM scores antecedent features (f_1, or one f_5 location) against consequent feature maps:
`targets` [M, L, D] hold L locations of each of M images, and each source row names its
positive image; every location of every other image is a negative (AMDIM Fig. 1c).
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


# --------------------------------------------------------------------------------------------
# AMDIM (Bachman, Hjelm and Buchwalter, 2019): multiscale NCE and mixture features.
# --------------------------------------------------------------------------------------------

def _static_dim(x, axis):
    """The static size of `x` along `axis`, None when it is only known at run time."""
    return x.shape[axis]


def _check_rank(name, x, rank, layout):
    if len(x.shape) != rank:
        raise ValueError(
            f"`{name}` must have rank {rank}, {layout}; received shape {tuple(x.shape)}.")


def _check_dim(name, x, axis, expected, what):
    """`x.shape[axis]` must equal `expected` when both are static."""
    actual = _static_dim(x, axis)
    if actual is not None and expected is not None and actual != expected:
        raise ValueError(
            f"`{name}` must have {what}={expected} along axis {axis}; received shape "
            f"{tuple(x.shape)}.")


def _static_integers(x):
    """The values of `x` when known before running (Python ints, lists, NumPy), else None."""
    # Tensors, even eager ones, are trusted like a tensor `flip_prob`: no TensorFlow calls here.
    if ops.is_tensor(x):
        return None
    try:
        return [int(v) for v in ops.convert_to_numpy(x).reshape(-1)]
    except (TypeError, ValueError):
        return None


def _check_index_range(name, x, upper, what):
    values = _static_integers(x)
    if values is not None and upper is not None and any(v < 0 or v >= upper for v in values):
        bad = sorted({v for v in values if v < 0 or v >= upper})
        raise ValueError(
            f"`{name}` must hold {what} in [0, {upper}); received out-of-range values {bad}.")


def _index_vector(name, values, upper, what, layout, rows, rows_what):
    """`values` as an int32 vector `layout` of `rows` entries in [0, `upper`) (range checked
    when the values are static; `what` and `rows_what` name them in errors)."""
    _check_index_range(name, values, upper, what)
    values = ops.cast(ops.convert_to_tensor(values), "int32")
    if len(values.shape) != 1:
        raise ValueError(f"`{name}` must be a vector {layout}; received shape "
                         f"{tuple(values.shape)}.")
    _check_dim(name, values, 0, rows, rows_what)
    return values


def _checked_positive_index(sources, targets, positive_index, sources_layout):
    """Checks `targets` against `sources` and returns `positive_index` as an int32 tensor."""
    _check_rank("targets", targets, 3, "[M images, L locations, D]")
    _check_dim("targets", targets, 2, _static_dim(sources, -1), "the width D of `sources`")
    positive_index = _index_vector(
        "positive_index", positive_index, _static_dim(targets, 0), "image indices of `targets`",
        "[n] (one positive image per source row)", _static_dim(sources, 0),
        f"the number of rows n of `sources` {sources_layout}")
    return positive_index


def _inverse_sqrt_width(x, dtype):
    """1 / sqrt(D) for D = the last axis of `x` (the authors' code scales scores by it)."""
    width = _static_dim(x, -1)
    if width is not None:
        return _scalar(1.0 / math.sqrt(width), dtype)
    return ops.rsqrt(ops.cast(ops.shape(x)[-1], dtype))


def _clipped_nce_terms(scores, positive_index, clip_value):
    """Per-positive NCE log-softmax terms of AMDIM Eq. 2 with the stabilisers of AMDIM Sec. 3.3.

    scores: raw matching scores s [n, ..., M, L] (source row, optional mixture axes, image,
      location); positive_index [n]: each source row's positive image.
    Returns (nce [n, ..., L], regulariser): nce = s'_p,l - log(exp(s'_p,l) + sum_{j != p, l'}
    exp(s'_j,l')) for every location l of the positive image p, s' = c tanh(s / c), and the
    regulariser mean(s^2) taken on s before the clipping.
    """
    dtype = scores.dtype
    regulariser = ops.mean(ops.square(scores))
    clip = _scalar(clip_value, dtype)
    clipped = clip * ops.tanh(scores / clip)

    is_positive = ops.one_hot(positive_index, ops.shape(scores)[-2], dtype="bool")
    for _ in range(len(scores.shape) - 3):  # mixture axes between rows and images
        is_positive = ops.expand_dims(is_positive, 1)
    is_positive = ops.expand_dims(is_positive, -1)  # [n, ..., M, 1]

    positive = ops.sum(ops.where(is_positive, clipped, ops.zeros_like(clipped)), axis=-2)
    # The positive image's own locations are not negatives (the authors' code masks them too):
    # they are filled with -c, the least clipped score, so they never raise the max below, and
    # their exponentials are dropped from the sum.
    negatives = ops.where(is_positive, -clip, clipped)
    # The negatives are shared by every location of a source row's positive: one max and one
    # sum of exponentials per row [n, ..., 1], then a per-location two-term log-sum-exp. Both
    # shifts are maxima of the terms they shift, so every exponential is <= 1 and no overflow
    # can occur whatever the clip value; the result does not depend on the shifts, so they
    # are constants for the gradient.
    negative_max = ops.stop_gradient(ops.max(negatives, axis=(-2, -1)))[..., None]
    exponentials = ops.exp(negatives - negative_max[..., None])
    negative_sum = ops.sum(ops.where(is_positive, ops.zeros_like(exponentials), exponentials),
                           axis=(-2, -1))[..., None]
    shift = ops.stop_gradient(ops.maximum(positive, negative_max))
    log_denominator = shift + ops.log(
        ops.exp(positive - shift) + ops.exp(negative_max - shift) * negative_sum)
    return positive - log_denominator, regulariser


def _source_nce_terms(sources, targets, positive_index, clip_value, layout):
    """(nce, regulariser, dtype) of `_clipped_nce_terms` for sources [n, D] or [n, k, D]
    (`layout` names the expected shape) against targets [M, L, D]: nce is [n, L] or
    [n, k, L]."""
    dtype = _compute_dtype(sources)
    sources = _as_float(sources, dtype)
    targets = _as_float(targets, dtype)
    _check_rank("sources", sources, layout.count(",") + 1, layout)
    positive_index = _checked_positive_index(sources, targets, positive_index, layout)
    scores = ops.einsum("n...d,mld->n...ml", sources, targets) * _inverse_sqrt_width(
        sources, dtype)
    nce, regulariser = _clipped_nce_terms(scores, positive_index, clip_value)
    return nce, regulariser, dtype


def amdim_nce_loss(sources, targets, positive_index, clip_value=20.0):
    """AMDIM's NCE loss (AMDIM Eq. 2, 5) of sources against consequent maps; minimise it.

    s[i, j, l] = sources_i . targets_j,l / sqrt(D) (the dot-product score of AMDIM Eq. 3; the
    1/sqrt(D) is the authors' code's). Each source row i is paired with every location l of its
    positive image p = positive_index[i], and each such positive is contrasted with every
    location of every OTHER image (not with the other locations of image p), as in AMDIM
    Fig. 1c and the authors' code. Scores are soft-clipped, s' = c tanh(s / c), after the
    regulariser and before the log-softmax (AMDIM Sec. 3.3).

    Args:
      sources: antecedent features [n, D].
      targets: consequent features [M, L, D], L locations of each of M images.
      positive_index: int [n] in [0, M) (checked when given as Python / NumPy values; tensors
        are trusted).
      clip_value: c > 0 of the soft clipping (20, AMDIM Sec. 3.3).

    Returns:
      (loss, regulariser): loss = -mean_{i, l} nce[i, l], regulariser = mean_{i, j, l} s^2 on
      the unclipped scores, both scalars in the dtype of `sources`.
    """
    _check_positive("clip_value", clip_value)
    nce, regulariser, _ = _source_nce_terms(sources, targets, positive_index, clip_value,
                                            "[n, D]")
    return -ops.mean(nce), regulariser


def amdim_mixture_nce_loss(sources, targets, positive_index, entropy_weight, clip_value=20.0,
                           temperature=None):
    """AMDIM's mixture objective (AMDIM Sec. 3.7, Eq. 6-7), negated; minimise it.

    Each antecedent has k mixture features f_1^1..f_1^k (`sources`). Component j scores every
    consequent f_7^l of the positive image with the NCE log-softmax term s_nce^j,l of
    `amdim_nce_loss` (the same negatives, clipping and 1/sqrt(D)). Per consequent l, Eq. 6
    maximises sum_j q(j | l) s_nce^j,l + alpha H(q(. | l)) over q, with optimum (Eq. 7)

        q(j | l) = softmax_j(tau s_nce^j,l),   tau = 1 / alpha,

    and Eq. 6 at that q equals alpha logsumexp_j(s_nce^j,l / alpha). The entropy is counted
    once per consequent (Eq. 6 writes alpha H(q) inside the sum over j; read literally that
    multiplies alpha by k, a renaming of alpha). q is held fixed in the gradient (the inner
    maximisation over q of Eq. 6); with tau = 1 / alpha this is also the exact gradient of the
    maximised objective (at the optimum dEq.6/dq = 0). With k = 1, q = 1 and H = 0: the loss is
    the plain 1->7 `amdim_nce_loss`.

    Args:
      sources: mixture features [n, k, D] of each source row (`nac_tf.models.MixtureFeatures`).
      targets: consequent features [M, L, D]; positive_index: int [n] in [0, M).
      entropy_weight: alpha > 0 of Eq. 6 (alpha >= 0 when `temperature` is given).
      clip_value: c > 0 of the soft clipping (AMDIM Sec. 3.3).
      temperature: tau > 0 of Eq. 7; default 1 / alpha, the q that is optimal for Eq. 6. The
        paper tunes tau as a hyperparameter; another tau gives a q that is not Eq. 6's optimum.

    Returns:
      (loss, regulariser, entropy): loss = -mean_{i, l} [sum_j q s_nce + alpha H(q)];
      regulariser = mean s^2 over all n k M L unclipped scores; entropy = mean_{i, l} H(q) in
      nats (log k for uniform q, 0 for one component).
    """
    _check_positive("clip_value", clip_value)
    if temperature is None:
        _check_positive("entropy_weight", entropy_weight)
    else:
        _check_non_negative("entropy_weight", entropy_weight)
        _check_positive("temperature", temperature)
    nce, regulariser, dtype = _source_nce_terms(sources, targets, positive_index, clip_value,
                                                "[n, k mixture components, D]")  # [n, k, L]

    alpha = _scalar(entropy_weight, dtype)
    tau = 1.0 / alpha if temperature is None else _scalar(temperature, dtype)
    log_q = ops.stop_gradient(ops.log_softmax(tau * nce, axis=1))
    q = ops.exp(log_q)
    entropy = -ops.sum(q * log_q, axis=1)
    objective = ops.sum(q * nce, axis=1) + alpha * entropy
    return -ops.mean(objective), regulariser, ops.mean(entropy)


def _check_feature_map(name, x, rows, width):
    _check_rank(name, x, 4, "[2k, H, W, D] (a feature map per row)")
    _check_dim(name, x, 0, rows, "the number of rows 2k of `f1`")
    _check_dim(name, x, 3, width, "the width D of `f1`")


def _check_amdim_targets(name, targets, feature_map_name, feature_map, width):
    _check_rank(name, targets, 3, "[2K, H * W, D] (the global batch's flattened feature maps)")
    rows = _static_dim(targets, 0)
    if rows is not None and rows % 2 != 0:
        raise ValueError(
            f"`{name}` must have an even number of rows 2K (the K first views then the K second "
            f"views of the global batch); received {rows} rows.")
    height, breadth = _static_dim(feature_map, 1), _static_dim(feature_map, 2)
    locations = None if height is None or breadth is None else height * breadth
    _check_dim(name, targets, 1, locations,
               f"the number of locations H * W of `{feature_map_name}`")
    _check_dim(name, targets, 2, width, "the width D of `f1`")


def _flat_locations(feature_map):
    """[N, H, W, D] -> [N, H * W, D], locations in row-major order."""
    shape = ops.shape(feature_map)
    return ops.reshape(feature_map, (-1, shape[1] * shape[2], shape[3]))


def amdim_loss(f1, f5, f7, source_locations, targets5=None, targets7=None, image_offset=0,
               regularization_weight=4e-2, clip_value=20.0, f1_mixture=None,
               mixture_entropy_weight=None, mixture_temperature=None):
    """AMDIM's multiscale objective (AMDIM Sec. 3.5): 1->5, 1->7 and 5->5 NCE across views.

    This replica holds k images as 2k rows [first views; second views]; the global batch holds
    K images. Each task scores sources of one view against the consequent features of the
    OTHER view of the whole global batch (`amdim_nce_loss`): a first-view row i (global image
    g = image_offset + i) against targets[K:2K] with positive g, a second-view row against
    targets[0:K]. loss_t is the mean of the two directions, reg_t likewise, and

        loss = loss_1t5 + loss_1t7 + loss_5t5
               + regularization_weight * (reg_1t5 + reg_1t7 + reg_5t5).

    Every term is a mean over this replica's source rows (and over the whole global batch's
    targets), so the mean over R replicas of their losses is the loss one device computes on
    the global batch.

    The paper's weight is lambda = 4e-2 (AMDIM Sec. 3.3). The authors' code computes the same
    formula with 5e-2 (5e-2 mean(s^2) per score set, the six sets summed with a factor 1/2);
    pass regularization_weight=5e-2 for theirs.

    Args:
      f1: phi_1(f_1) [2k, D] of this replica's rows (phi_1 is the identity in the authors' code).
      f5, f7: phi_5(f_5) [2k, 5, 5, D] and phi_7(f_7) [2k, 7, 7, D] (any H x W works).
      source_locations: int [2k] in [0, H5 * W5): the f5 location (row-major) that is row r's
        5->5 source, drawn uniformly by the caller (checked when given as Python / NumPy
        values; tensors are trusted).
      targets5, targets7: the global batch's f5 [2K, H5 * W5, D] and f7 [2K, H7 * W7, D] in the
        single-device row layout, all-gathered across replicas with their gradients; both None
        (default): this replica is the whole batch (K = k), the targets are f5 and f7.
      image_offset: global index of this replica's first image (replica_id * k); 0 when the
        targets are None.
      regularization_weight: lambda >= 0 of the squared-score regulariser.
      clip_value: c > 0 of the soft clipping c tanh(s / c).
      f1_mixture: optional mixture features m_k(f_1) [2k, k_mix, D] (AMDIM Sec. 3.7,
        `nac_tf.models.MixtureFeatures`); given, the 1->7 task is `amdim_mixture_nce_loss` of
        them (1->5 keeps f1).
      mixture_entropy_weight, mixture_temperature: alpha and tau of `amdim_mixture_nce_loss`.

    Returns:
      (loss, metrics): the scalar loss and {"nce_1t5", "nce_1t7", "nce_5t5",
      "score_regulariser"} (the three loss_t and reg_1t5 + reg_1t7 + reg_5t5), plus
      "mixture_entropy" (mean H(q) in nats) with `f1_mixture`; all in the dtype of `f1`.
    """
    _check_non_negative("regularization_weight", regularization_weight)
    _check_positive("clip_value", clip_value)
    dtype = _compute_dtype(f1)
    f1 = _as_float(f1, dtype)
    f5 = _as_float(f5, dtype)
    f7 = _as_float(f7, dtype)
    _check_view_pairs("f1", f1)
    rows, width = _static_dim(f1, 0), _static_dim(f1, 1)
    _check_feature_map("f5", f5, rows, width)
    _check_feature_map("f7", f7, rows, width)
    height5, breadth5 = _static_dim(f5, 1), _static_dim(f5, 2)
    source_locations = _index_vector(
        "source_locations", source_locations,
        None if height5 is None or breadth5 is None else height5 * breadth5,
        "locations of the f5 map", "[2k] (one f5 location per row)", rows,
        "the number of rows 2k of `f1`")

    if (targets5 is None) != (targets7 is None):
        raise ValueError(
            "`targets5` and `targets7` must be given together (the gathered global batch) or "
            "both be None (this replica is the whole batch); received "
            f"targets5={'None' if targets5 is None else 'a tensor'}, "
            f"targets7={'None' if targets7 is None else 'a tensor'}.")
    if _is_python_number(image_offset) and (int(image_offset) != image_offset or image_offset < 0):
        raise ValueError(
            f"`image_offset` must be a non-negative integer; received "
            f"image_offset={image_offset!r}.")
    if targets5 is None:
        if not (_is_python_number(image_offset) and image_offset == 0):
            raise ValueError(
                f"`image_offset` must be 0 when `targets5` and `targets7` are None (this "
                f"replica is the whole batch); received image_offset={image_offset!r}.")
        targets5, targets7 = _flat_locations(f5), _flat_locations(f7)
    else:
        targets5 = _as_float(targets5, dtype)
        targets7 = _as_float(targets7, dtype)
        _check_amdim_targets("targets5", targets5, "f5", f5, width)
        _check_amdim_targets("targets7", targets7, "f7", f7, width)
        _check_dim("targets7", targets7, 0, _static_dim(targets5, 0),
                   "the number of rows 2K of `targets5`")
        global_rows = _static_dim(targets5, 0)
        if (_is_python_number(image_offset) and rows is not None and global_rows is not None
                and image_offset + rows // 2 > global_rows // 2):
            raise ValueError(
                f"`image_offset` + k must be at most the K={global_rows // 2} images of the "
                f"targets; received image_offset={image_offset!r} with k={rows // 2}.")

    # Row r's 5->5 source: the f5 vector at its drawn location.
    f5_sources = ops.take_along_axis(
        _flat_locations(f5), source_locations[:, None, None], axis=1)[:, 0, :]

    local_images = ops.shape(f1)[0] // 2
    global_images = ops.shape(targets5)[0] // 2
    positive_index = ops.cast(image_offset, "int32") + ops.arange(local_images, dtype="int32")

    def both_directions(loss_function, sources, targets, **kwargs):
        # First views predict the second-view half of the global batch, and vice versa.
        first = loss_function(sources[:local_images], targets[global_images:], positive_index,
                              clip_value=clip_value, **kwargs)
        second = loss_function(sources[local_images:], targets[:global_images], positive_index,
                               clip_value=clip_value, **kwargs)
        return [0.5 * (a + b) for a, b in zip(first, second)]

    loss_1t5, reg_1t5 = both_directions(amdim_nce_loss, f1, targets5)
    loss_5t5, reg_5t5 = both_directions(amdim_nce_loss, f5_sources, targets5)
    metrics = {}
    if f1_mixture is None:
        loss_1t7, reg_1t7 = both_directions(amdim_nce_loss, f1, targets7)
    else:
        f1_mixture = _as_float(f1_mixture, dtype)
        _check_rank("f1_mixture", f1_mixture, 3, "[2k, k_mix, D]")
        _check_dim("f1_mixture", f1_mixture, 0, rows, "the number of rows 2k of `f1`")
        _check_dim("f1_mixture", f1_mixture, 2, width, "the width D of `f1`")
        if mixture_entropy_weight is None:
            raise ValueError("`mixture_entropy_weight` (alpha of AMDIM Eq. 6) is required with "
                             "`f1_mixture`.")
        loss_1t7, reg_1t7, entropy = both_directions(
            amdim_mixture_nce_loss, f1_mixture, targets7,
            entropy_weight=mixture_entropy_weight, temperature=mixture_temperature)
        metrics["mixture_entropy"] = entropy

    regulariser = reg_1t5 + reg_1t7 + reg_5t5
    loss = (loss_1t5 + loss_1t7 + loss_5t5
            + _scalar(regularization_weight, dtype) * regulariser)
    metrics.update(nce_1t5=loss_1t5, nce_1t7=loss_1t7, nce_5t5=loss_5t5,
                   score_regulariser=regulariser)
    return loss, metrics
