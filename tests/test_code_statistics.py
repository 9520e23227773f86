"""Activation-code statistics against NumPy computed from the definitions (exact counts)."""
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.code_statistics import activation_code_statistics


def _reference(pre_activations):
    bits = (np.asarray(pre_activations) > 0).astype(np.int64)
    n, d = bits.shape
    distinct = np.unique(bits, axis=0).shape[0] / n
    distances = [np.count_nonzero(bits[i] != bits[j]) / d
                 for i in range(n) for j in range(n) if i != j]
    mean_hamming = float(np.mean(distances)) if distances else 0.0
    balance = 1.0 - np.mean(np.abs(2.0 * bits.mean(axis=0) - 1.0))
    return {"distinct_code_fraction": distinct, "mean_hamming_distance": mean_hamming,
            "bit_balance": balance}


def _check(pre_activations, **expected_values):
    got = {name: float(value) for name, value in
           activation_code_statistics(pre_activations).items()}
    expected = _reference(pre_activations)
    assert set(got) == set(expected)
    for name in expected:
        # float32 arithmetic on exact integer counts: only the final divisions round.
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    for name, value in expected_values.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("n, d", [(2, 1), (7, 3), (64, 8), (200, 128)])
def test_random_codes_match_reference(n, d):
    _check(np.random.default_rng(n).normal(size=(n, d)))


def test_duplicate_rows_are_counted_once():
    rng = np.random.default_rng(1)
    words = rng.normal(size=(5, 6))
    # 12 rows built from 5 codewords, repeats interleaved and with different magnitudes
    # (only the sign matters).
    rows = words[[0, 1, 0, 2, 3, 1, 4, 4, 0, 2, 3, 3]] * rng.uniform(0.5, 2.0, size=(12, 1))
    assert np.unique(rows > 0, axis=0).shape[0] == 5  # precondition: 5 distinct codewords
    _check(rows, distinct_code_fraction=5 / 12)


def test_zero_counts_as_the_off_bit():
    # sgn(0) is treated as -1: a zero and a negative entry give the same codeword.
    rows = np.array([[0.0, 1.0], [-3.0, 2.0], [0.5, -1.0]])
    _check(rows, distinct_code_fraction=2 / 3, bit_balance=2 / 3)


def test_constant_codes():
    constant = np.tile(np.array([[1.0, -1.0, 2.0, -0.5]]), (10, 1))
    _check(constant, distinct_code_fraction=0.1, mean_hamming_distance=0.0, bit_balance=0.0)


def test_complementary_codes_are_balanced_and_maximally_distant():
    word = np.where(np.random.default_rng(2).random(16) < 0.5, -1.0, 1.0)
    rows = np.stack([word, -word])
    _check(rows, distinct_code_fraction=1.0, mean_hamming_distance=1.0, bit_balance=1.0)


def test_single_row():
    _check(np.array([[0.3, -0.2, 1.0]]), distinct_code_fraction=1.0, mean_hamming_distance=0.0,
           bit_balance=0.0)


def test_runs_in_graph_mode_with_a_dynamic_batch_size():
    traced = tf.function(activation_code_statistics,
                         input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    rng = np.random.default_rng(3)
    for n in (1, 5, 33):
        rows = rng.normal(size=(n, 8)).astype(np.float32)
        rows[n // 2:] = rows[: n - n // 2]  # force duplicates
        got = {k: float(v) for k, v in traced(rows).items()}
        expected = _reference(rows)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)


def test_outputs_are_float32_scalars_for_any_float_input():
    for dtype in (tf.float16, tf.float32, tf.float64):
        stats = activation_code_statistics(tf.ones((3, 4), dtype))
        for value in stats.values():
            assert value.dtype == tf.float32 and value.shape == ()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="`pre_activations`.*matrix"):
        activation_code_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="`pre_activations`.*at least one row"):
        activation_code_statistics(np.zeros((0, 5)))
