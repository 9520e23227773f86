"""The methods' train_step: losses, channel noise, momentum networks, queue, checkpoints.

Tiny networks (small CNN on 8x8 images) keep every test to a few seconds.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.data import views
from nac_tf.methods import MethodConfig, build_method, hyperparameters_of
from nac_tf.models import build_encoder
from nac_tf.objectives import nac_loss
from nac_tf.optim import LARS

IMAGE_SHAPE = (8, 8, 3)
K = 8


def build_test_method(name, encoder, **settings):
    """build_method with `settings` split into the shared MethodConfig and the method's own
    hyperparameters (those of other methods are left out), as the trainer splits a
    PretrainConfig."""
    shared = {key: settings.pop(key) for key in list(settings)
              if key in MethodConfig.__dataclass_fields__}
    return build_method(name, encoder, MethodConfig(**shared),
                        **hyperparameters_of(name, settings))


def _method(name, **changes):
    fields = dict(code_dim=16, head_hidden_dim=32, flip_prob=0.2, queue_size=4 * K,
                  momentum=0.9, temperature=0.5, seed=3)
    fields.update(changes)
    encoder = build_encoder("small_cnn", IMAGE_SHAPE)
    method = build_test_method(name, encoder, **fields)
    method.build_networks(IMAGE_SHAPE)
    method.compile(optimizer=LARS(0.1))
    method.optimizer.build(method.optimized_variables)
    return method


def _views(seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.uniform(size=(K,) + IMAGE_SHAPE), tf.float32),
            tf.constant(rng.uniform(size=(K,) + IMAGE_SHAPE), tf.float32))


@pytest.mark.parametrize("name", ["nac", "nac_mq", "simclr", "moco_v2"])
def test_train_step_updates_online_weights_and_logs(name):
    method = _method(name)
    before = [v.numpy().copy() for v in method.optimized_variables]
    logs = tf.function(method.train_step)(_views())
    assert np.isfinite(float(logs["loss"]))
    for key in ("distinct_code_fraction", "mean_hamming_distance", "bit_balance"):
        assert 0.0 <= float(logs[key]) <= 1.0
    if name.startswith("nac"):
        assert np.isfinite(float(logs["mi_bound"]))
    moved = [not np.allclose(b, v.numpy()) for b, v in zip(before, method.optimized_variables)]
    assert sum(moved) > len(moved) // 2
    assert int(method.optimizer.iterations.numpy()) == 1


def test_momentum_copies_are_not_optimized():
    method = _method("nac_mq")
    optimized = {id(v) for v in method.optimized_variables}
    momentum = method.momentum_variables()
    assert momentum and not any(id(v) in optimized for v in momentum)
    # The online inference network is optimized (by its likelihood term).
    assert any("inference_network" in v.path and not v.path.startswith("momentum")
               for v in method.optimized_variables)


def test_nac_step_loss_matches_objective_with_the_same_noise():
    method = _method("nac")
    view1, view2 = _views()
    # Recompute the step's loss outside train_step with the mask the step draws at step 0.
    h = method.encoder(tf.concat([view1, view2], 0), training=True)
    a = method.projection_head(h, training=True)
    r = method.inference_network(h, training=True)
    signs = method.flip_signs(tf.shape(a), method.flip_prob)
    expected = float(nac_loss(tf.tanh(a), r, signs, 0.2))
    logs = method.train_step((view1, view2))
    np.testing.assert_allclose(float(logs["loss"]), expected, rtol=1e-5)


def test_flip_signs_are_fresh_each_step_and_have_probability_p():
    method = _method("nac", flip_prob=0.2)
    first = method.flip_signs((2000, 16), method.flip_prob).numpy()
    assert set(np.unique(first)) == {-1.0, 1.0}
    # 32000 draws: the standard error of the flip rate is 0.0022; allow 5 of them.
    assert abs(np.mean(first == -1.0) - 0.2) < 0.011
    again = method.flip_signs((2000, 16), method.flip_prob).numpy()
    np.testing.assert_array_equal(first, again)  # same step: same mask (reproducible)
    method.optimizer.iterations.assign(1)
    assert np.mean(method.flip_signs((2000, 16), method.flip_prob).numpy() != first) > 0.2


def test_nac_mq_ema_and_queue_after_one_step():
    method = _method("nac_mq", momentum=0.9)
    view1, view2 = _views()
    pairs = method._momentum.pairs()
    old_copy = [c.numpy().copy() for _, c in pairs]
    both = tf.concat([view1, view2], 0)
    # Keys are computed with the momentum weights before the step.
    h_hat = method.momentum_encoder(both, training=True)
    expected_keys = np.tanh(method.momentum_projection_head(h_hat, training=True).numpy())
    method.train_step((view1, view2))
    for (online, copy), old in zip(pairs, old_copy):
        np.testing.assert_allclose(copy.numpy(), 0.9 * old + 0.1 * online.numpy(),
                                   rtol=1e-5, atol=1e-6)
    queue = method.queue.numpy()
    np.testing.assert_allclose(queue[:2 * K], expected_keys, rtol=1e-4, atol=1e-5)
    assert int(method.queue_pointer.numpy()) == 2 * K
    method.train_step(_views(1))
    method.train_step(_views(2))
    assert int(method.queue_pointer.numpy()) == (6 * K) % (4 * K)  # ring buffer wraps


def _np_nac_mq_code_loss(codes, momentum_logits, signs, p, samples_per_row, l2_weight):
    """Eq. 20 negated, float64, written per row: samples_per_row[i] are row i's denominator
    codes."""
    n = codes.shape[0]
    beta = 0.5 * np.log((1 - p) / p)
    total = 0.0
    for i in range(n):
        noisy = signs[i] * codes[i]
        r = momentum_logits[(i + n // 2) % n]
        positive = 0.5 * np.sum(noisy * r - np.logaddexp(0, -r) - np.logaddexp(0, r))
        scores = beta * samples_per_row[i] @ noisy
        lse = scores.max() + np.log(np.sum(np.exp(scores - scores.max())))
        total += -positive + lse + l2_weight * np.sum(codes[i] ** 2)
    return total / n


@pytest.mark.parametrize("mode", ["batch_in_queue", "positive_key", "queue_only"])
def test_nac_mq_denominator_modes_match_float64_reference(mode):
    """The three NAC-MQ denominators (the authors' CIFAR and ImageNet codes, Eq. 20 literally)
    against a NumPy reference; float32 step vs float64 reference, rtol 1e-5."""
    method = _method("nac_mq", mq_negatives=mode, flip_prob=0.3, l2_weight=0.1)
    # A non-zero pointer: the current keys must land there, not at the start.
    method.queue_pointer.assign(2 * K)
    view1, view2 = _views(4)
    both = tf.concat([view1, view2], 0)
    codes = np.tanh(method.projection_head(method.encoder(both, training=True),
                                           training=True).numpy().astype(np.float64))
    h_hat = method.momentum_encoder(both, training=True)
    keys = np.tanh(method.momentum_projection_head(h_hat, training=True).numpy()
                   .astype(np.float64))
    momentum_logits = method.momentum_inference_network(h_hat, training=True).numpy()
    signs = method.flip_signs(tf.shape(codes), method.flip_prob).numpy().astype(np.float64)
    queue = method.queue.numpy().astype(np.float64)
    n = 2 * K
    if mode == "batch_in_queue":
        stored = queue.copy()
        stored[2 * K:4 * K] = keys
        samples = [stored] * n
    elif mode == "positive_key":
        samples = [np.vstack([keys[(i + K) % n][None], queue]) for i in range(n)]
    else:
        samples = [queue] * n
    expected = _np_nac_mq_code_loss(codes, momentum_logits.astype(np.float64), signs, 0.3,
                                    samples, 0.1)
    logs = method.train_step((view1, view2))
    np.testing.assert_allclose(float(logs["code_loss"]), expected, rtol=1e-5)
    # Whatever the denominator, the queue afterwards holds this step's keys at the pointer.
    np.testing.assert_allclose(method.queue.numpy()[2 * K:4 * K], keys, rtol=1e-4, atol=1e-5)


def test_nac_mq_authors_cifar_options_in_float64():
    """mq_beta="divide" and mq_inference_weight=2 (the authors' CIFAR NAC-MQ) on float64
    networks: the step's loss against a float64 reference, the denominator z~.v / beta over
    the queue holding this step's keys, plus twice the online inference likelihood."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        method = _method("nac_mq", flip_prob=0.3, l2_weight=0.1, mq_beta="divide",
                         mq_inference_weight=2.0)
        view1, view2 = (tf.cast(view, tf.float64) for view in _views(5))
        both = tf.concat([view1, view2], 0)
        h = method.encoder(both, training=True)
        codes = np.tanh(method.projection_head(h, training=True).numpy())
        logits = method.inference_network(h, training=True).numpy()
        h_hat = method.momentum_encoder(both, training=True)
        keys = np.tanh(method.momentum_projection_head(h_hat, training=True).numpy())
        momentum_logits = method.momentum_inference_network(h_hat, training=True).numpy()
        signs = method.flip_signs(tf.shape(codes), 0.3).numpy().astype(np.float64)
        stored = method.queue.numpy().copy()
        stored[:2 * K] = keys
        logs = method.train_step((view1, view2))
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    assert logs["loss"].dtype == tf.float64
    n, beta = 2 * K, 0.5 * np.log(0.7 / 0.3)
    # Dividing by beta is scoring with 1 / beta in the Eq. 20 reference.
    code_loss = _np_nac_mq_code_loss(codes, momentum_logits, signs, 0.3,
                                     [stored / beta ** 2] * n, 0.1)
    likelihood = 0.0
    for i in range(n):
        r = logits[(i + K) % n]
        likelihood -= 0.5 * np.sum(signs[i] * codes[i] * r - np.logaddexp(0, -r)
                                   - np.logaddexp(0, r)) / n
    np.testing.assert_allclose(float(logs["loss"]), code_loss + 2.0 * likelihood, rtol=1e-10)


def test_queue_starts_as_small_gaussian_noise():
    method = _method("nac_mq", queue_size=400 * K)
    queue = method.queue.numpy()
    # The authors' 1e-3 * randn: 3200 x 16 draws, sample std within 2 % of 1e-3.
    assert abs(queue.std() - 1e-3) < 2e-5 and abs(queue.mean()) < 5e-5


def test_momentum_copies_start_equal_to_online():
    method = _method("moco_v2")
    for online, copy in method._momentum.pairs():
        np.testing.assert_array_equal(online.numpy(), copy.numpy())


def test_checkpoint_round_trip_restores_queue_momentum_and_optimizer(tmp_path):
    method = _method("nac_mq")
    step = tf.function(method.train_step)
    step(_views(0))
    step(_views(1))
    checkpoint = tf.train.Checkpoint(method=method, optimizer=method.optimizer)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    saved = [v.numpy().copy() for v in method.weights]
    saved_iterations = int(method.optimizer.iterations.numpy())

    restored = _method("nac_mq")
    tf.train.Checkpoint(method=restored, optimizer=restored.optimizer).restore(
        path).assert_existing_objects_matched()
    assert int(restored.optimizer.iterations.numpy()) == saved_iterations
    assert len(restored.weights) == len(saved)
    for v, value in zip(restored.weights, saved):
        np.testing.assert_array_equal(v.numpy(), value, err_msg=v.path)
    # Momentum slots of LARS came back too: the next step is identical.
    logs_a = method.train_step(_views(5))
    logs_b = restored.train_step(_views(5))
    np.testing.assert_allclose(float(logs_a["loss"]), float(logs_b["loss"]), rtol=1e-6)


def _host_and_device_methods(name):
    """(method fed views, method finishing them from CropPairs), identical weights, and the
    augmenter (the ImageNet recipe: jitter, grayscale and blur all run)."""
    host, device = _method(name), _method(name)
    device.set_weights(host.get_weights())
    augmenter = views.ViewPairAugmenter(views.imagenet_recipe(IMAGE_SHAPE[0]), seed=5)
    device.view_stage = augmenter.colour_pair
    return host, device, augmenter


def _images(seed):
    return np.random.default_rng(seed).integers(0, 256, (K, 11, 11, 3), dtype=np.uint8)


def test_device_augmentation_step_equals_the_host_step():
    """augment_on="device": the step finishes the views from the input's crops and draws
    (TwoViewMethod.input_views) and then trains exactly as on the host's views: same logs,
    weights, queue and optimizer state, bit for bit (float32, CPU)."""
    host, device, augmenter = _host_and_device_methods("nac_mq")
    host_step, device_step = tf.function(host.train_step), tf.function(device.train_step)
    for batch in range(2):
        images = _images(batch)
        host_logs = host_step(augmenter(images, batch_index=batch))
        device_logs = device_step(augmenter.crop_pair(images, batch))
        assert host_logs.keys() == device_logs.keys()
        for key, value in host_logs.items():
            assert float(device_logs[key]) == float(value), key
    for expected, actual in zip(host.weights + host.optimizer.variables,
                                device.weights + device.optimizer.variables):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy(), err_msg=actual.path)


def test_device_augmentation_under_xla_and_mixed_precision():
    """The view stage inside an XLA-compiled step (jit_compile, TPUs) compiles, and under
    mixed_bfloat16 the step still receives float32 views. XLA rounds the colour stages
    differently in the last bits (tests/test_data.py), so the loss agrees to rounding
    (observed: equal)."""
    host, device, augmenter = _host_and_device_methods("nac")
    images = _images(0)
    expected = float(tf.function(host.train_step)(augmenter(images, batch_index=0))["loss"])
    logs = tf.function(device.train_step, jit_compile=True)(augmenter.crop_pair(images, 0))
    assert abs(float(logs["loss"]) - expected) <= 1e-4 * max(abs(expected), 1.0)
    seen = []
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = _method("nac")
        mixed.view_stage = augmenter.colour_pair
        view_pair_loss = mixed.view_pair_loss

        def spy(view1, view2, training):
            seen.append((view1.dtype, view2.dtype))
            return view_pair_loss(view1, view2, training)

        mixed.view_pair_loss = spy
        assert np.isfinite(float(mixed.train_step(augmenter.crop_pair(images, 0))["loss"]))
    finally:
        keras.config.set_dtype_policy(previous)
    assert seen == [(tf.float32, tf.float32)]


def test_methods_check_their_own_hyperparameters_naming_them():
    def build(name, **hyperparameters):
        return build_method(name, build_encoder("small_cnn", IMAGE_SHAPE),
                            MethodConfig(code_dim=16, head_hidden_dim=32), **hyperparameters)

    assert build("nac", flip_prob=0.3).flip_prob == 0.3
    with pytest.raises(ValueError, match=r"flip_prob: 0.6 is outside the accepted range"):
        build("nac", flip_prob=0.6)
    with pytest.raises(ValueError, match=r"temperature: 0.0 is outside"):
        build("simclr", temperature=0.0)
    with pytest.raises(ValueError, match=r"momentum: 1.0 is outside"):
        build("moco_v2", momentum=1.0, queue_size=4 * K)
    with pytest.raises(ValueError, match="mq_negatives: 'all' is not one of: batch_in_queue"):
        build("nac_mq", mq_negatives="all", queue_size=4 * K)
    # Another method's hyperparameter is refused, not ignored.
    with pytest.raises(TypeError, match=r"'simclr' takes the hyperparameters temperature; "
                                        r"not flip_prob"):
        build("simclr", flip_prob=0.1)
    assert hyperparameters_of("moco_v2", {"temperature": 0.2, "flip_prob": 0.1}) == \
        {"temperature": 0.2}
