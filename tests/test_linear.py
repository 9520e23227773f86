"""Linear evaluation (docs/protocols.md section 2): the SGD-Nesterov training core against a float64
NumPy reference, the learning-rate search, the stratified split, input checks and the
augmented image path."""
import json
import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.data.splits import stratified_split
from nac_tf.evaluation.linear import (LinearEvalConfig, linear_evaluation,
                                      linear_evaluation_from_images, train_linear_classifier)
from nac_tf.evaluation.probe import epoch_orders, select_rate
from nac_tf.evaluation.probe_images import pad_crop_flip


def _reference_sgd(x, y, num_classes, learning_rate, config):
    """Float64 mini-batch SGD on mean softmax cross-entropy, zero init, written from the
    definitions: Keras' SGD (keras/src/optimizers/sgd.py, update_step) does
        m <- momentum * m - lr_t * g
        w <- w + momentum * m - lr_t * g      (nesterov; otherwise w <- w + m)
    with lr_t the schedule at the optimizer's iteration count t = 0, 1, ... (Keras'
    CosineDecay: lr * 0.5 * (1 + cos(pi * min(t, T) / T)), T = all steps)."""
    x = np.asarray(x, np.float64)
    n, dim = x.shape
    kernel, bias = np.zeros((dim, num_classes)), np.zeros(num_classes)
    moments = [np.zeros_like(kernel), np.zeros_like(bias)]
    steps_per_epoch = -(-n // config.batch_size)
    total = config.epochs * steps_per_epoch
    t, epoch_losses = 0, []
    for order in epoch_orders(n, config.epochs, config.seed):
        loss_sum = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * config.batch_size:(s + 1) * config.batch_size]
            logits = x[idx] @ kernel + bias
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            loss_sum -= np.log(probs[np.arange(idx.size), y[idx]]).sum()
            probs[np.arange(idx.size), y[idx]] -= 1.0  # d loss / d logits, times batch size
            grads = [x[idx].T @ probs / idx.size, probs.mean(axis=0)]
            if config.schedule == "cosine":
                rate = learning_rate * 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
            else:
                rate = learning_rate
            for param, moment, grad in zip((kernel, bias), moments, grads):
                moment *= config.momentum
                moment -= rate * grad
                if config.nesterov:
                    param += config.momentum * moment - rate * grad
                else:
                    param += moment
            t += 1
        epoch_losses.append(loss_sum / n)
    return kernel, bias, np.array(epoch_losses)


@pytest.mark.parametrize("batch_size, epochs, schedule, nesterov", [
    (30, 5, "constant", True),   # full batch: 5 plain steps
    (30, 5, "cosine", True),
    (7, 2, "cosine", True),      # mini-batches with a smaller last batch, reshuffled
    (7, 2, "constant", False),   # classical momentum as well
])
def test_updates_match_float64_numpy_reference(batch_size, epochs, schedule, nesterov):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=30)
    config = LinearEvalConfig(epochs=epochs, batch_size=batch_size, schedule=schedule,
                              nesterov=nesterov, seed=3)
    got = train_linear_classifier(x, y, 3, 0.5, config)
    kernel, bias, losses = _reference_sgd(x, y, 3, 0.5, config)
    # float32 training against a float64 reference over <= 10 steps: rtol 1e-5, and an
    # atol of 1e-6 for entries that are (nearly) zero.
    np.testing.assert_allclose(got.kernel, kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.bias, bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.epoch_losses, losses, rtol=1e-5)
    assert not got.diverged and got.learning_rate == 0.5


def _blobs(rng, num_classes, per_class, dim=32, scale=6.0, centers=None):
    centers = rng.normal(size=(num_classes, dim)) * scale if centers is None else centers
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centers[labels] + rng.normal(size=(labels.size, dim))
    return features.astype(np.float32), labels, centers


def test_separable_blobs_are_classified_perfectly():
    rng = np.random.default_rng(0)
    x, y, centers = _blobs(rng, 4, 60)
    xt, yt, _ = _blobs(rng, 4, 25, centers=centers)
    result = linear_evaluation(x, y, xt, yt, 4,
                               LinearEvalConfig(epochs=10, batch_size=32,
                                                learning_rates=(0.1, 1.0)))
    assert result.top1 == 1.0
    assert result.classifier.accuracy(x, y) == 1.0


def test_random_labels_stay_near_chance_on_test():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 64)).astype(np.float32)
    y = rng.integers(0, 4, size=400)
    xt = rng.normal(size=(2000, 64)).astype(np.float32)
    yt = rng.integers(0, 4, size=2000)
    result = linear_evaluation(x, y, xt, yt, 4,
                               LinearEvalConfig(epochs=20, batch_size=64,
                                                learning_rates=(0.1, 1.0)))
    assert result.classifier.accuracy(x, y) > 0.4  # it fits some training noise ...
    assert abs(result.top1 - 0.25) < 0.05  # ... and learns nothing that transfers


def _correlated_noise(rng, n):
    """Two classes separated only along x1 - x2, with large shared noise z in both
    coordinates: the class-mean direction, which a few tiny steps from zero find, is
    nearly useless; a well-trained linear classifier is perfect."""
    y = rng.integers(0, 2, size=n)
    z = rng.normal(size=n) * 5.0
    x = np.stack([(2 * y - 1) * 0.5 + z, z], axis=1)
    return x.astype(np.float32), y


def test_rate_search_picks_best_validation_rate_and_retrains_on_full_train_set():
    rng = np.random.default_rng(0)
    x, y = _correlated_noise(rng, 400)
    xt, yt = _correlated_noise(rng, 400)
    config = LinearEvalConfig(epochs=5, batch_size=50, learning_rates=(0.001, 0.1),
                              validation_fraction=0.1, seed=4)
    result = linear_evaluation(x, y, xt, yt, 2, config)
    assert result.validation_top1[0.001] < 0.8  # the tiny rate underfits in 5 epochs
    assert result.validation_top1[0.1] == 1.0
    assert result.learning_rate == 0.1
    assert result.top1 > 0.99
    assert (result.num_train, result.num_validation, result.num_test) == (400, 40, 400)
    # Candidates train on the rest of the train set and score on the held-out split ...
    fit, val = stratified_split(y, 0.1, seed=4)
    for rate in config.learning_rates:
        candidate = train_linear_classifier(x[fit], y[fit], 2, rate, config, x[val], y[val])
        assert candidate.eval_top1 == result.validation_top1[rate]
    # ... and the chosen rate is retrained on all 400 training examples.
    final = train_linear_classifier(x, y, 2, 0.1, config)
    np.testing.assert_array_equal(result.classifier.kernel, final.kernel)
    np.testing.assert_array_equal(result.classifier.bias, final.bias)


def test_ties_go_to_the_smaller_rate():
    assert select_rate({1.0: 0.9, 0.1: 0.9, 10.0: 0.5}) == 0.1
    assert select_rate({10.0: 0.7, 0.01: 0.6}) == 10.0
    rng = np.random.default_rng(0)
    x, y, centers = _blobs(rng, 3, 30)
    xt, yt, _ = _blobs(rng, 3, 10, centers=centers)
    # Both rates separate the blobs perfectly; the order in the config does not matter.
    result = linear_evaluation(x, y, xt, yt, 3,
                               LinearEvalConfig(epochs=3, batch_size=30,
                                                learning_rates=(1.0, 0.1)))
    assert result.validation_top1 == {1.0: 1.0, 0.1: 1.0}
    assert result.learning_rate == 0.1


def test_single_rate_skips_the_search_and_diverged_rates_score_zero():
    rng = np.random.default_rng(0)
    x, y = _correlated_noise(rng, 200)
    single = linear_evaluation(x, y, x[:50], y[:50], 2,
                               LinearEvalConfig(epochs=2, learning_rates=(0.1,)))
    assert single.num_validation == 0 and single.validation_top1 == {}
    assert single.num_train == 200 and single.learning_rate == 0.1
    # A rate so large that the logits overflow: recorded as diverged, never chosen.
    result = linear_evaluation(x, y, x[:50], y[:50], 2,
                               LinearEvalConfig(epochs=2, batch_size=50,
                                                learning_rates=(0.1, 1e37)))
    assert result.diverged == (1e37,)
    assert result.validation_top1[1e37] == 0.0
    assert result.learning_rate == 0.1


def test_deterministic_given_the_seed_and_json_ready():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=120)
    config = LinearEvalConfig(epochs=3, batch_size=16, learning_rates=(0.1, 1.0), seed=7)
    first = linear_evaluation(x, y, x[:40], y[:40], 3, config)
    second = linear_evaluation(x, y, x[:40], y[:40], 3, config)
    np.testing.assert_array_equal(first.classifier.kernel, second.classifier.kernel)
    np.testing.assert_array_equal(first.classifier.bias, second.classifier.bias)
    assert first.to_dict() == second.to_dict()
    report = json.loads(json.dumps(first.to_dict()))
    assert report["config"]["learning_rates"] == [0.1, 1.0]
    assert set(report["validation_top1"]) == {"0.1", "1.0"}
    assert 0.0 <= report["top1"] <= 1.0
    other = linear_evaluation(x, y, x[:40], y[:40], 3,
                              LinearEvalConfig(epochs=3, batch_size=16,
                                               learning_rates=(0.1, 1.0), seed=8))
    assert not np.array_equal(first.classifier.kernel, other.classifier.kernel)


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [50, 30, 20]))
    fit, val = stratified_split(labels, 0.1, seed=0)
    assert np.intersect1d(fit, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([fit, val])), np.arange(100))
    np.testing.assert_array_equal(np.bincount(labels[val]), [5, 3, 2])
    _, val_again = stratified_split(labels, 0.1, seed=0)
    np.testing.assert_array_equal(val, val_again)
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=1)[1])
    # An explicit count: 7 held out, each class within one of its proportional share.
    _, val = stratified_split(labels, 7, seed=0)
    assert val.size == 7
    share = 7 * np.array([50, 30, 20]) / 100
    assert np.all(np.abs(np.bincount(labels[val], minlength=3) - share) < 1)
    with pytest.raises(ValueError, match="held_out=100 holds out 100 of 100"):
        stratified_split(labels, 100, seed=0)


_X = np.zeros((10, 4), np.float32)
_Y = np.arange(10) % 3


@pytest.mark.parametrize("call, name", [
    (lambda: linear_evaluation(_X, _Y[:9], _X, _Y, 3), "train_labels"),
    (lambda: linear_evaluation(_X, _Y, _X[:5], _Y, 3), "test_labels"),
    (lambda: linear_evaluation(_X, _Y + 1, _X, _Y, 3), "train_labels"),
    (lambda: linear_evaluation(_X, _Y, _X, _Y - 1, 3), "test_labels"),
    (lambda: linear_evaluation(_X, _Y, _X[:, :3], _Y, 3), "test_features"),
    (lambda: linear_evaluation(_X[0], _Y, _X, _Y, 3), "train_features"),
    (lambda: linear_evaluation(_X, _Y, _X, _Y, 1), "num_classes"),
    (lambda: linear_evaluation(_X, _Y, _X, _Y, 3, LinearEvalConfig(augment=True)), "augment"),
    (lambda: train_linear_classifier(_X, _Y, 3, -0.1), "learning_rate"),
    (lambda: train_linear_classifier(_X, _Y, 3, 0.1, eval_features=_X), "eval_labels"),
    (lambda: LinearEvalConfig(learning_rates=()), "learning_rates"),
    (lambda: LinearEvalConfig(learning_rates=(0.1, 0.0)), "learning_rates"),
    (lambda: LinearEvalConfig(learning_rates=(0.1, 0.1)), "learning_rates"),
    (lambda: LinearEvalConfig(epochs=0), "epochs"),
    (lambda: LinearEvalConfig(batch_size=0), "batch_size"),
    (lambda: LinearEvalConfig(momentum=1.0), "momentum"),
    (lambda: LinearEvalConfig(validation_fraction=1.5), "validation_fraction"),
    (lambda: LinearEvalConfig(validation_fraction=0), "validation_fraction"),
    (lambda: LinearEvalConfig(schedule="linear"), "schedule"),
    (lambda: LinearEvalConfig(seed=-1), "seed"),
    (lambda: LinearEvalConfig(nesterov=1), "nesterov"),
    (lambda: linear_evaluation_from_images(
        lambda images: images, np.zeros((4, 8, 8, 3), np.float32), _Y[:4],
        np.zeros((4, 8, 8, 3), np.uint8), _Y[:4], 3), "train_images"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_pad_crop_flip_is_a_shifted_possibly_mirrored_window_of_the_padded_image():
    rng = np.random.default_rng(0)
    images = rng.random((16, 6, 5, 3)).astype(np.float32)
    out = pad_crop_flip(tf.constant(images), tf.constant([3, 9], tf.int64)).numpy()
    assert out.shape == images.shape
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    flips = 0
    for image, crop in zip(padded, out):
        matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)
                   if np.array_equal(crop, (image[dy:dy + 6, dx:dx + 5])[:, ::-1]
                                     if flip else image[dy:dy + 6, dx:dx + 5])]
        assert matches, "output is not a crop of the zero-padded image"
        flips += matches[0][2]
    assert 0 < flips < 16
    again = pad_crop_flip(tf.constant(images), tf.constant([3, 9], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)


def _projection_encoder(size, dim=16):
    projection = tf.constant(np.random.default_rng(5).normal(size=(size * size * 3, dim)),
                             tf.float32)

    def encode(images):  # a frozen "encoder": a fixed random projection of the pixels
        return tf.matmul(tf.reshape(images, [-1, size * size * 3]), projection)

    return encode


def test_augmented_image_path_returns_a_valid_deterministic_result():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(60) % 3
    config = LinearEvalConfig(epochs=2, batch_size=16, learning_rates=(0.01, 0.1),
                              augment=True)
    # image_size 6 != 8: the images are resized before cropping and encoding.
    run = lambda: linear_evaluation_from_images(  # noqa: E731
        _projection_encoder(6), images, labels, images[:20], labels[:20], 3, config,
        image_size=6)
    result = run()
    assert 0.0 <= result.top1 <= 1.0
    assert result.learning_rate in config.learning_rates
    assert set(result.validation_top1) == set(config.learning_rates)
    assert (result.num_train, result.num_validation, result.num_test) == (60, 6, 20)
    assert result.feature_dim == 16 and result.config["augment"] is True
    np.testing.assert_array_equal(result.classifier.kernel, run().classifier.kernel)


def test_unaugmented_image_path_encodes_once_and_matches_the_feature_path():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(50, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(50) % 2
    config = LinearEvalConfig(epochs=3, batch_size=16, learning_rates=(0.1, 1.0))
    encode = _projection_encoder(4)
    result = linear_evaluation_from_images(encode, images, labels, images[:10], labels[:10],
                                           2, config)
    features = encode(tf.constant(images, tf.float32) / 255.0).numpy()
    expected = linear_evaluation(features, labels, features[:10], labels[:10], 2, config)
    assert result.learning_rate == expected.learning_rate
    assert result.top1 == expected.top1
    np.testing.assert_allclose(result.classifier.kernel, expected.classifier.kernel,
                               rtol=1e-4, atol=1e-5)


def test_progress_bar_reports_each_candidate_rate(caplog):
    caplog.set_level(logging.INFO, logger="nac_tf")
    rng = np.random.default_rng(0)
    x, y, _ = _blobs(rng, 2, 20, dim=4)
    linear_evaluation(x, y, x, y, 2, LinearEvalConfig(epochs=2, learning_rates=(0.1, 1.0)),
                      progress=True)
    assert "learning rate 0.1" in caplog.text and "learning rate 1," in caplog.text
