"""Activation-code diagnostics: how many codewords (linear regions) the encoder actually uses.

NAC's denominator pushes codewords c = sgn(a) apart (Sec. 3.1, Eq. 10), i.e. it increases the
number of distinct linear regions the data fall into, the paper's measure of nonlinear
expressivity. These statistics track that on a batch of pre-activations a [N, D], with bit d of
row i set when a_i,d > 0 (a <= 0 counts as bit 0 / code -1, so sgn(0) is never 0).
Pure `keras.ops`, graph-friendly (no unique / sort), O(N^2 D) via one matmul.
"""
from keras import ops


def _check_pre_activations(pre_activations):
    if len(pre_activations.shape) != 2:
        raise ValueError(
            "`pre_activations` must be a matrix [N, D] (one row per example); received shape "
            f"{tuple(pre_activations.shape)}.")
    if pre_activations.shape[0] == 0:
        raise ValueError("`pre_activations` must have at least one row; received 0 rows.")


def activation_code_statistics(pre_activations):
    """Diversity and balance of the activation code c = sgn(a) of a batch.

    Args:
      pre_activations: a [N, D] (N >= 1), the last pre-activation of the encoder's head.

    Returns:
      Dict of float32 scalar tensors:
        distinct_code_fraction: (number of distinct codewords) / N, in (0, 1].
        mean_hamming_distance: mean over ordered pairs i != j of Hamming(c_i, c_j) / D, in
          [0, 1]; 0 when N = 1.
        bit_balance: 1 - mean_d |2 P(bit_d = 1) - 1|; 1 when every bit is on for half of the
          batch, 0 when every bit is constant.
    """
    pre_activations = ops.convert_to_tensor(pre_activations)
    _check_pre_activations(pre_activations)
    # float32 holds the integer inner products exactly for D < 2^24.
    bits = ops.cast(pre_activations > 0, "float32")
    signs = 2.0 * bits - 1.0
    num_rows = ops.cast(ops.shape(signs)[0], "float32")
    dim = ops.cast(ops.shape(signs)[1], "float32")

    # Hamming(c_i, c_j) = (D - c_i . c_j) / 2 for c in {-1, +1}^D.
    hamming = 0.5 * (dim - ops.matmul(signs, ops.transpose(signs)))

    # Row i repeats an earlier codeword iff it has distance 0 to some row j < i; counting only
    # the first occurrence of each codeword gives the number of distinct rows.
    earlier = ops.tril(ops.ones_like(hamming), k=-1) > 0
    repeats_earlier_row = ops.any(ops.logical_and(earlier, hamming == 0.0), axis=1)
    num_distinct = num_rows - ops.sum(ops.cast(repeats_earlier_row, "float32"))

    # The diagonal is 0, so the full sum is the sum over i != j; max(.., 1) makes N = 1 give 0.
    num_pairs = ops.maximum(num_rows * (num_rows - 1.0), 1.0)
    mean_hamming = ops.sum(hamming) / (num_pairs * dim)

    bit_on_rate = ops.mean(bits, axis=0)
    bit_balance = 1.0 - ops.mean(ops.abs(2.0 * bit_on_rate - 1.0))

    return {
        "distinct_code_fraction": num_distinct / num_rows,
        "mean_hamming_distance": mean_hamming,
        "bit_balance": bit_balance,
    }
