"""The contrastive baselines' objectives: SimCLR's NT-Xent (Eq. 21-22) and MoCo-v2's
InfoNCE against a queue."""
from keras import ops

from nac_tf.methods.registry import TEMPERATURE
from nac_tf.objectives.common import (as_float, check_same_shape, check_same_width,
                                      check_setting, check_view_pairs, compute_dtype,
                                      other_view, scalar)


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
    check_setting(TEMPERATURE, temperature)
    dtype = compute_dtype(projections)
    projections = as_float(projections, dtype)
    check_view_pairs("projections", projections)
    units = ops.normalize(projections, axis=-1, order=2)
    negatives = units if negatives is None else as_float(negatives, dtype)
    check_same_width("negatives", negatives, "projections", projections)
    inverse_temperature = 1.0 / scalar(temperature, dtype)

    # The positive is recomputed locally so that it never depends on where the local rows sit
    # in the gathered matrix; its copy inside `negatives` stays in the denominator.
    positive = ops.sum(units * other_view(units), axis=-1) * inverse_temperature
    similarities = ops.matmul(units, ops.transpose(negatives)) * inverse_temperature
    own_rows = ops.cast(negatives_offset, "int32") + ops.arange(ops.shape(units)[0],
                                                                dtype="int32")
    is_self = ops.expand_dims(own_rows, 1) == ops.expand_dims(
        ops.arange(ops.shape(negatives)[0], dtype="int32"), 0)
    # A large finite negative instead of -inf: exp underflows to exactly 0 and no inf - inf
    # can appear in the gradient; |u.n / tau| <= 1/tau is far smaller.
    similarities = ops.where(is_self, scalar(-1e9, dtype), similarities)
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
    check_setting(TEMPERATURE, temperature)
    dtype = compute_dtype(queries)
    queries = as_float(queries, dtype)
    keys = ops.stop_gradient(as_float(keys, dtype))
    queue = ops.stop_gradient(as_float(queue, dtype))
    check_view_pairs("queries", queries)
    check_same_shape("keys", keys, "queries", queries)
    check_same_width("queue", queue, "queries", queries)
    queries = ops.normalize(queries, axis=-1, order=2)
    keys = ops.normalize(keys, axis=-1, order=2)
    queue = ops.normalize(queue, axis=-1, order=2)
    inverse_temperature = 1.0 / scalar(temperature, dtype)

    positive = ops.sum(queries * other_view(keys), axis=-1, keepdims=True)
    negative = ops.matmul(queries, ops.transpose(queue))
    logits = ops.concatenate([positive, negative], axis=-1) * inverse_temperature
    return ops.mean(ops.logsumexp(logits, axis=-1) - logits[:, 0])
