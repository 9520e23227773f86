"""MLP evaluation (docs/protocols.md section 2; AMDIM's MLP evaluation): one SGD step of the
MLP against a float64 NumPy reference, the inference-mode logits against Keras' layers, a
problem a linear probe cannot solve, determinism, the image path and input checks."""
import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.evaluation.linear import LinearEvalConfig, linear_evaluation
from nac_tf.evaluation.mlp import (BATCH_NORM_EPSILON, MLPClassifier, MLPEvalConfig,
                                   MLPEvalResult, _dropout, _MLPTrainer, mlp_evaluation,
                                   mlp_evaluation_from_images, train_mlp_classifier)


def _reference_step(x, y, weights, learning_rate, num_classes):
    """Float64 forward and backward of dense (no bias) -> BatchNorm (batch statistics) ->
    ReLU -> dense on the whole batch, mean softmax cross-entropy, written from the
    definitions, then one plain SGD step w <- w - lr * g. Returns (loss, new weights,
    batch mean, biased batch variance)."""
    w1, gamma, beta, w2, b = (np.asarray(w, np.float64) for w in weights)
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    z = x @ w1
    mean, var = z.mean(axis=0), z.var(axis=0)
    inv_std = 1.0 / np.sqrt(var + BATCH_NORM_EPSILON)
    z_hat = (z - mean) * inv_std
    pre = gamma * z_hat + beta
    hidden = np.maximum(pre, 0.0)
    logits = hidden @ w2 + b
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(probs[np.arange(n), y]))
    d_logits = (probs - np.eye(num_classes)[y]) / n
    d_w2, d_b = hidden.T @ d_logits, d_logits.sum(axis=0)
    d_pre = (d_logits @ w2.T) * (pre > 0)
    d_gamma, d_beta = (d_pre * z_hat).sum(axis=0), d_pre.sum(axis=0)
    d_z_hat = d_pre * gamma
    d_z = inv_std / n * (n * d_z_hat - d_z_hat.sum(axis=0)
                         - z_hat * (d_z_hat * z_hat).sum(axis=0))
    d_w1 = x.T @ d_z
    new = [w - learning_rate * g for w, g in
           zip((w1, gamma, beta, w2, b), (d_w1, d_gamma, d_beta, d_w2, d_b))]
    return loss, new, mean, var


def test_one_sgd_step_matches_float64_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 5)).astype(np.float32)
    y = rng.integers(3, size=24)
    # One full batch, plain SGD, no dropout: a step the reference can follow exactly.
    config = MLPEvalConfig(epochs=1, batch_size=24, learning_rates=(0.5,), momentum=0.0,
                           nesterov=False, schedule="constant", hidden_dim=7, dropout=0.0)
    # The initial weights are a function of the seed: a fresh trainer shows them.
    initial = _MLPTrainer(5, 3, 0.5, 1, config)
    weights = [v.numpy() for v in initial.variables]
    assert [w.shape for w in weights] == [(5, 7), (7,), (7,), (7, 3), (3,)]
    loss, expected, mean, var = _reference_step(x, y, weights, 0.5, 3)

    trained = train_mlp_classifier(x, y, 3, 0.5, config)
    assert trained.epoch_losses[0] == pytest.approx(loss, rel=1e-5)
    got = (trained.hidden_kernel, trained.gamma, trained.beta, trained.output_kernel,
           trained.output_bias)
    for value, reference in zip(got, expected):
        np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-6)
    # Moving statistics: PyTorch's momentum, from (0, 1); Keras keeps the biased variance.
    np.testing.assert_allclose(trained.moving_mean, 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(trained.moving_variance, 0.9 + 0.1 * var, rtol=1e-4)


def test_inference_logits_are_keras_layers_in_inference_mode():
    rng = np.random.default_rng(1)
    d, h, c = 6, 9, 4
    classifier = MLPClassifier(
        hidden_kernel=rng.normal(size=(d, h)).astype(np.float32),
        gamma=rng.uniform(0.5, 2, h).astype(np.float32),
        beta=rng.normal(size=h).astype(np.float32),
        moving_mean=rng.normal(size=h).astype(np.float32),
        moving_variance=rng.uniform(0.2, 3, h).astype(np.float32),
        epsilon=BATCH_NORM_EPSILON, output_kernel=rng.normal(size=(h, c)).astype(np.float32),
        output_bias=rng.normal(size=c).astype(np.float32), learning_rate=0.1,
        diverged=False, epoch_losses=())
    x = rng.normal(size=(40, d)).astype(np.float32)
    hidden = keras.layers.Dense(h, use_bias=False)
    norm = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON)
    output = keras.layers.Dense(c)
    hidden.build((None, d))
    norm.build((None, h))
    output.build((None, h))
    hidden.set_weights([classifier.hidden_kernel])
    norm.set_weights([classifier.gamma, classifier.beta, classifier.moving_mean,
                      classifier.moving_variance])
    output.set_weights([classifier.output_kernel, classifier.output_bias])
    # Dropout is the identity at inference.
    expected = output(tf.nn.relu(norm(hidden(x), training=False))).numpy()
    np.testing.assert_allclose(classifier.logits(x, chunk_size=16), expected, rtol=1e-5,
                               atol=1e-5)
    assert classifier.feature_dim == d
    np.testing.assert_array_equal(classifier.predict(x), expected.argmax(axis=1))


def test_dropout_keeps_a_seeded_fraction_and_rescales():
    ones = tf.ones([200, 50])
    out = _dropout(ones, 0.25, tf.constant([7, 3], tf.int64)).numpy()
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}
    assert abs(np.mean(out > 0) - 0.75) < 0.02
    np.testing.assert_array_equal(out, _dropout(ones, 0.25, tf.constant([7, 3], tf.int64)))
    assert not np.array_equal(out, _dropout(ones, 0.25, tf.constant([7, 4], tf.int64)))
    assert _dropout(ones, 0.0, None) is ones


def _xor(n, seed):
    """Four Gaussian clusters at (+-1, +-1); the class is the XOR of the two signs, so no
    line separates the classes."""
    rng = np.random.default_rng(seed)
    centres = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]], np.float32)
    which = rng.integers(4, size=n)
    x = centres[which] + 0.25 * rng.standard_normal((n, 2)).astype(np.float32)
    return x, (which >= 2).astype(np.int64)


def test_mlp_learns_xor_where_a_linear_probe_stays_at_chance(caplog):
    caplog.set_level(logging.INFO, logger="nac_tf")
    (x, y), (x_test, y_test) = _xor(400, 0), _xor(200, 1)
    mlp = mlp_evaluation(x, y, x_test, y_test, 2,
                         MLPEvalConfig(epochs=20, batch_size=64, learning_rates=(0.1,)),
                         progress=True)
    assert "MLP evaluation (400 examples): learning rate 0.1, 20 epochs" in caplog.messages
    linear = linear_evaluation(x, y, x_test, y_test, 2,
                               LinearEvalConfig(epochs=20, batch_size=64,
                                                learning_rates=(0.1,)))
    assert mlp.top1 >= 0.95
    assert linear.top1 <= 0.65
    assert isinstance(mlp, MLPEvalResult) and isinstance(mlp.classifier, MLPClassifier)
    # The authors' architecture by default.
    assert mlp.classifier.hidden_kernel.shape == (2, 1024)
    assert mlp.config["hidden_dim"] == 1024 and mlp.config["dropout"] == 0.2


def test_rate_search_is_deterministic_given_the_seed_and_json_ready():
    (x, y), (x_test, y_test) = _xor(120, 2), _xor(60, 3)
    config = MLPEvalConfig(epochs=3, batch_size=32, learning_rates=(0.01, 1.0),
                           hidden_dim=16)
    first = mlp_evaluation(x, y, x_test, y_test, 2, config)
    again = mlp_evaluation(x, y, x_test, y_test, 2, config)
    assert first.to_dict() == again.to_dict()
    for name in ("hidden_kernel", "gamma", "moving_variance", "output_kernel"):
        np.testing.assert_array_equal(getattr(first.classifier, name),
                                      getattr(again.classifier, name))
    assert set(first.validation_top1) == {0.01, 1.0}
    assert first.learning_rate in (0.01, 1.0) and first.num_validation == 12
    report = json.loads(json.dumps(first.to_dict()))
    assert report["config"]["learning_rates"] == [0.01, 1.0]
    assert report["feature_dim"] == 2
    other = mlp_evaluation(x, y, x_test, y_test, 2, MLPEvalConfig(
        epochs=3, batch_size=32, learning_rates=(0.01, 1.0), hidden_dim=16, seed=1))
    assert not np.array_equal(other.classifier.hidden_kernel, first.classifier.hidden_kernel)


def test_augmented_image_path_trains_the_mlp_deterministically():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    projection = tf.constant(rng.normal(size=(8 * 8 * 3, 6)), tf.float32)

    def encode(batch):  # a frozen "encoder": a fixed random projection of the pixels
        return tf.matmul(tf.reshape(batch, [-1, 8 * 8 * 3]), projection)

    config = MLPEvalConfig(epochs=1, batch_size=16, learning_rates=(0.1,), hidden_dim=8,
                           augment=True)
    run = lambda: mlp_evaluation_from_images(  # noqa: E731
        encode, images, labels, images[:10], labels[:10], 2, config)
    result = run()
    assert 0.0 <= result.top1 <= 1.0 and result.feature_dim == 6
    assert result.config["augment"] is True
    np.testing.assert_array_equal(result.classifier.hidden_kernel,
                                  run().classifier.hidden_kernel)


_X = np.zeros((10, 4), np.float32)
_Y = np.arange(10) % 3


@pytest.mark.parametrize("call, name", [
    (lambda: MLPEvalConfig(hidden_dim=0), "hidden_dim"),
    (lambda: MLPEvalConfig(hidden_dim=2.5), "hidden_dim"),
    (lambda: MLPEvalConfig(dropout=1.0), "dropout"),
    (lambda: MLPEvalConfig(dropout=-0.1), "dropout"),
    (lambda: MLPEvalConfig(dropout=True), "dropout"),
    (lambda: MLPEvalConfig(learning_rates=()), "learning_rates"),
    (lambda: MLPEvalConfig(epochs=0), "epochs"),
    (lambda: mlp_evaluation(_X, _Y, _X, _Y, 3, LinearEvalConfig()), "MLPEvalConfig"),
    (lambda: linear_evaluation(_X, _Y, _X, _Y, 3, MLPEvalConfig()), "LinearEvalConfig"),
    (lambda: mlp_evaluation(_X, _Y, _X, _Y, 3, MLPEvalConfig(augment=True)),
     "mlp_evaluation_from_images"),
    (lambda: mlp_evaluation(_X, _Y[:9], _X, _Y, 3), "train_labels"),
    (lambda: mlp_evaluation(_X, _Y, _X[:, :3], _Y, 3), "test_features"),
    (lambda: train_mlp_classifier(_X, _Y, 3, 0.0), "learning_rate"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()
