"""AMDIM's objectives (Bachman, Hjelm and Buchwalter, NeurIPS 2019): the NCE loss of
antecedent features against consequent feature maps (AMDIM Eq. 2-5, `amdim_nce_loss`), its
mixture-based 1->7 variant (AMDIM Sec. 3.7, `amdim_mixture_nce_loss`) and the multiscale
objective of a view pair (AMDIM Sec. 3.5, `amdim_loss`).

AMDIM scores antecedent features (f_1, or one f_5 location) against consequent feature maps:
`targets` [M, L, D] hold L locations of each of M images, and each source row names its
positive image; every location of every other image is a negative (AMDIM Fig. 1c).
"""
import math

from keras import ops

from nac_tf.methods.registry import (AMDIM_CLIP_VALUE, AMDIM_MIXTURE_ENTROPY_WEIGHT,
                                     AMDIM_REGULARIZATION_WEIGHT)
from nac_tf.objectives.common import (as_float, check_setting, check_view_pairs,
                                      compute_dtype, is_python_number, scalar)


# Arguments that are not settings: the mixture's explicit temperature tau, and alpha beside it.
def _check_positive(name, value):
    if is_python_number(value) and not float(value) > 0.0:
        raise ValueError(f"`{name}` must be > 0; received {name}={value!r}.")


def _check_non_negative(name, value):
    if is_python_number(value) and not float(value) >= 0.0:
        raise ValueError(f"`{name}` must be >= 0; received {name}={value!r}.")


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
        return scalar(1.0 / math.sqrt(width), dtype)
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
    clip = scalar(clip_value, dtype)
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
    dtype = compute_dtype(sources)
    sources = as_float(sources, dtype)
    targets = as_float(targets, dtype)
    _check_rank("sources", sources, layout.count(",") + 1, layout)
    positive_index = _checked_positive_index(sources, targets, positive_index, layout)
    scores = ops.einsum("n...d,mld->n...ml", sources, targets) * _inverse_sqrt_width(
        sources, dtype)
    nce, regulariser = _clipped_nce_terms(scores, positive_index, clip_value)
    return nce, regulariser, dtype


def amdim_nce_loss(sources, targets, positive_index, clip_value=AMDIM_CLIP_VALUE.default):
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
    check_setting(AMDIM_CLIP_VALUE, clip_value, "clip_value")
    nce, regulariser, _ = _source_nce_terms(sources, targets, positive_index, clip_value,
                                            "[n, D]")
    return -ops.mean(nce), regulariser


def amdim_mixture_nce_loss(sources, targets, positive_index, entropy_weight,
                           clip_value=AMDIM_CLIP_VALUE.default, temperature=None):
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
    check_setting(AMDIM_CLIP_VALUE, clip_value, "clip_value")
    if temperature is None:
        check_setting(AMDIM_MIXTURE_ENTROPY_WEIGHT, entropy_weight, "entropy_weight")
    else:
        _check_non_negative("entropy_weight", entropy_weight)
        _check_positive("temperature", temperature)
    nce, regulariser, dtype = _source_nce_terms(sources, targets, positive_index, clip_value,
                                                "[n, k mixture components, D]")  # [n, k, L]

    alpha = scalar(entropy_weight, dtype)
    tau = 1.0 / alpha if temperature is None else scalar(temperature, dtype)
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
               regularization_weight=AMDIM_REGULARIZATION_WEIGHT.default,
               clip_value=AMDIM_CLIP_VALUE.default, f1_mixture=None,
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
    check_setting(AMDIM_REGULARIZATION_WEIGHT, regularization_weight,
                  "regularization_weight")
    check_setting(AMDIM_CLIP_VALUE, clip_value, "clip_value")
    dtype = compute_dtype(f1)
    f1 = as_float(f1, dtype)
    f5 = as_float(f5, dtype)
    f7 = as_float(f7, dtype)
    check_view_pairs("f1", f1)
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
    if is_python_number(image_offset) and (int(image_offset) != image_offset or image_offset < 0):
        raise ValueError(
            f"`image_offset` must be a non-negative integer; received "
            f"image_offset={image_offset!r}.")
    if targets5 is None:
        if not (is_python_number(image_offset) and image_offset == 0):
            raise ValueError(
                f"`image_offset` must be 0 when `targets5` and `targets7` are None (this "
                f"replica is the whole batch); received image_offset={image_offset!r}.")
        targets5, targets7 = _flat_locations(f5), _flat_locations(f7)
    else:
        targets5 = as_float(targets5, dtype)
        targets7 = as_float(targets7, dtype)
        _check_amdim_targets("targets5", targets5, "f5", f5, width)
        _check_amdim_targets("targets7", targets7, "f7", f7, width)
        _check_dim("targets7", targets7, 0, _static_dim(targets5, 0),
                   "the number of rows 2K of `targets5`")
        global_rows = _static_dim(targets5, 0)
        if (is_python_number(image_offset) and rows is not None and global_rows is not None
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
        f1_mixture = as_float(f1_mixture, dtype)
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
            + scalar(regularization_weight, dtype) * regulariser)
    metrics.update(nce_1t5=loss_1t5, nce_1t7=loss_1t7, nce_5t5=loss_5t5,
                   score_regulariser=regulariser)
    return loss, metrics
