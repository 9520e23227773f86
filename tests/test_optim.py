"""LARS against a float64 NumPy implementation of its update rule; the schedule against its
closed form; exclusion by variable path; tf.function, MirroredStrategy, checkpoints, configs.
"""
import copy
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.config import LARS_RULES
from nac_tf.optim import (LARS, AdamL2, WarmupCosineSchedule, WarmupStepSchedule,
                          lars_rule_arguments, scaled_learning_rate)

# float32 Keras vs float64 NumPy after several steps: relative 1e-6, plus an absolute floor
# for entries that are (nearly) zero, far below the per-step updates (>= 1e-3, checked).
RTOL, ATOL = 1e-6, 1e-7


def _reference_schedule(step, peak, total, warmup):
    """Warm-up + cosine learning rate, float64, from the formula in the task statement."""
    if step >= total:
        return 0.0
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _reference_lars(weights, grads_per_step, lrs, decay_flags, adapt_flags, momentum,
                    weight_decay, eta, nesterov):
    """Plain float64 LARS with coupled weight decay, written from the update rule."""
    w = [x.astype(np.float64) for x in weights]
    v = [np.zeros_like(x) for x in w]
    for grads, lr in zip(grads_per_step, lrs):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            if decay_flags[i]:
                g = g + weight_decay * w[i]
            scaled_lr = lr
            if adapt_flags[i]:
                w_norm, g_norm = np.linalg.norm(w[i]), np.linalg.norm(g)
                scaled_lr = lr * (eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0)
            v[i] = momentum * v[i] + scaled_lr * g
            w[i] = w[i] - (momentum * v[i] + scaled_lr * g if nesterov else v[i])
    return w


def _variable(path, value):
    """A keras.Variable whose path is exactly `path` ("scope/.../leaf")."""
    *scopes, leaf = path.split("/")

    def create(remaining):
        if not remaining:
            return keras.Variable(value.astype(np.float32), name=leaf)
        with keras.name_scope(remaining[0]):
            return create(remaining[1:])

    variable = create(scopes)
    assert variable.path == path
    return variable


# path, initial value kind, gradient is zero, default decay/adapt flag, flag under CUSTOM.
_CASES = [
    ("net/dense/kernel", "normal", False, True, True),
    ("net/dense/bias", "normal", False, False, False),
    ("net/stem_bn/gamma", "ones", False, False, True),
    ("net/stem_bn/beta", "zeros", False, False, True),
    ("net/zero_init/kernel", "zeros", False, True, True),  # zero-initialised: must train
    ("net/unused/kernel", "normal", True, True, True),  # zero gradient, decay still acts
    ("net/unused/bias", "normal", True, False, False),  # zero gradient, excluded: frozen
    ("vgg16_bn/subnet/kernel", "normal", False, True, True),  # "bn" only in longer words
]
# Custom exclusion: only biases lose weight decay; every variable gets the trust ratio.
_CUSTOM = dict(exclude_from_weight_decay=r"(^|/)bias$", exclude_from_layer_adaptation=[])
_SHAPES = [(5, 4), (4,), (4,), (4,), (4, 3), (4, 2), (2,), (3, 3)]


def _initial_values(rng):
    values = []
    for (_, kind, *_), shape in zip(_CASES, _SHAPES):
        values.append({"normal": rng.normal(size=shape), "ones": np.ones(shape),
                       "zeros": np.zeros(shape)}[kind].astype(np.float32))
    return values


@pytest.mark.parametrize("use_tf_function", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@pytest.mark.parametrize("exclusions", ["default", "custom"])
def test_matches_float64_numpy_reference(exclusions, nesterov, use_tf_function):
    rng = np.random.default_rng(0)
    initial = _initial_values(rng)
    variables = [_variable(case[0], value) for case, value in zip(_CASES, initial)]
    peak, total, warmup, steps = 0.5, 8, 2, 6
    hyper = dict(momentum=0.9, weight_decay=0.05, trust_coefficient=0.02)
    optimizer = LARS(WarmupCosineSchedule(peak, total, warmup), nesterov=nesterov,
                     **hyper, **(_CUSTOM if exclusions == "custom" else {}))
    flags = [case[3] if exclusions == "default" else case[4] for case in _CASES]
    decay_flags = flags
    adapt_flags = flags if exclusions == "default" else [True] * len(_CASES)
    assert [optimizer.uses_weight_decay(v) for v in variables] == decay_flags
    assert [optimizer.uses_layer_adaptation(v) for v in variables] == adapt_flags

    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables))

    if use_tf_function:
        apply = tf.function(apply)
    grads_per_step = []
    for _ in range(steps):
        grads = [np.zeros(s, np.float32) if case[2] else
                 rng.normal(size=s).astype(np.float32) for case, s in zip(_CASES, _SHAPES)]
        grads_per_step.append(grads)
        apply([tf.constant(g) for g in grads])

    lrs = [_reference_schedule(s, peak, total, warmup) for s in range(steps)]
    expected = _reference_lars(initial, grads_per_step, lrs, decay_flags, adapt_flags,
                               nesterov=nesterov, eta=hyper["trust_coefficient"],
                               momentum=hyper["momentum"], weight_decay=hyper["weight_decay"])
    assert int(optimizer.iterations.numpy()) == steps
    for variable, start, want, case in zip(variables, initial, expected, _CASES):
        np.testing.assert_allclose(variable.numpy(), want, rtol=RTOL, atol=ATOL,
                                   err_msg=variable.path)
        moved = np.abs(want - start).max()
        if case[0] == "net/unused/bias":  # no gradient and no decay: exactly frozen
            np.testing.assert_array_equal(variable.numpy(), start)
        else:  # the comparison above is meaningful: updates dwarf the tolerance
            assert moved > 1e-3, (case[0], moved)
    assert np.abs(variables[4].numpy()).min() > 0, "zero-initialised kernel must train"


def test_float64_variables_keep_float64_hyperparameters():
    """In float64 the update is the float64 rule to rounding: the Python hyperparameters are
    not rounded through float32 on the way (1e-3 would be 4.7e-8 off)."""
    rng = np.random.default_rng(3)
    start = rng.normal(size=(6, 5))
    variable = keras.Variable(start, dtype="float64", name="kernel")
    optimizer = LARS(3.0, momentum=0.9, weight_decay=1e-6, trust_coefficient=1e-3)
    grads = [[rng.normal(size=(6, 5))] for _ in range(3)]
    for (g,) in grads:
        optimizer.apply_gradients([(tf.constant(g), variable)])
    (want,) = _reference_lars([start], grads, [3.0] * 3, [True], [True], momentum=0.9,
                              weight_decay=1e-6, eta=1e-3, nesterov=False)
    np.testing.assert_allclose(variable.numpy(), want, rtol=1e-14, atol=0)
    assert np.abs(want - start).max() > 1e-3


@pytest.mark.parametrize("rule", LARS_RULES)
def test_lars_rules_match_float64_reference(rule):
    """The three rules of --lars_rule against the NumPy rule: simclr excludes BatchNorm
    parameters and biases; all adapts and decays everything; authors also freezes
    zero-norm variables (trust ratio eta ||w|| / ||g|| = 0), the NAC authors' LARS."""
    rng = np.random.default_rng(1)
    initial = _initial_values(rng)
    variables = [_variable(case[0], value) for case, value in zip(_CASES, initial)]
    hyper = dict(momentum=0.9, weight_decay=0.05, trust_coefficient=0.02)
    optimizer = LARS(0.5, **hyper, **lars_rule_arguments(rule))
    flags = [case[3] for case in _CASES] if rule == "simclr" else [True] * len(_CASES)
    grads_per_step = [[np.zeros(s, np.float32) if case[2] else
                       rng.normal(size=s).astype(np.float32)
                       for case, s in zip(_CASES, _SHAPES)] for _ in range(4)]
    for grads in grads_per_step:
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    expected = _reference_lars(initial, grads_per_step, [0.5] * 4, flags, flags,
                               nesterov=False, eta=hyper["trust_coefficient"],
                               momentum=hyper["momentum"], weight_decay=hyper["weight_decay"])
    for variable, start, want, case in zip(variables, initial, expected, _CASES):
        if rule == "authors" and not np.any(start):
            # Zero-initialised: the authors' trust ratio is 0 for ever.
            np.testing.assert_array_equal(variable.numpy(), start, err_msg=case[0])
        else:
            np.testing.assert_allclose(variable.numpy(), want, rtol=RTOL, atol=ATOL,
                                       err_msg=case[0])
    assert rule == "authors" or np.abs(variables[3].numpy()).max() > 0  # beta trains


def test_lars_rule_names_are_checked():
    with pytest.raises(ValueError, match="simclr, all, authors"):
        lars_rule_arguments("lamb")


def test_default_exclusions_on_real_keras_layers():
    """Ground truth by layer type: normalisation parameters and biases are excluded."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Conv2D(3, 1, name="subnet_conv")(x)
    x = keras.layers.BatchNormalization()(x)  # Keras' default name "batch_normalization_<k>"
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.Dense(4, name="bn_projection")(x)
    x = keras.layers.Dense(4, use_bias=False, name="gamma")(x)  # a kernel called by "gamma"
    model = keras.Model(inputs, x, name="encoder")
    norm_types = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    optimizer = LARS(0.1)
    checked = 0
    for layer in model.layers:
        for variable in layer.trainable_variables:
            excluded = isinstance(layer, norm_types) or variable.name == "bias"
            assert optimizer.uses_weight_decay(variable) is not excluded, variable.path
            assert optimizer.uses_layer_adaptation(variable) is not excluded, variable.path
            checked += 1
    assert checked == len(model.trainable_variables) == 12


def test_exclusion_is_by_path_not_short_name():
    encoder_kernel = _variable("encoder/dense/kernel", np.ones((2, 2)))
    head_kernel = _variable("head/dense/kernel", np.ones((2, 2)))
    assert encoder_kernel.name == head_kernel.name == "kernel"
    by_prefix = LARS(0.1, exclude_from_weight_decay=r"^head/")  # one string = one pattern
    assert by_prefix.uses_weight_decay(encoder_kernel)
    assert not by_prefix.uses_weight_decay(head_kernel)
    assert not by_prefix.uses_layer_adaptation(head_kernel)  # None: same as weight decay

    default = LARS(0.1)
    # The holding layer's name decides even when the leaf looks like any other kernel...
    assert not default.uses_weight_decay(_variable("net/stem_bn/kernel", np.ones(2)))
    assert not default.uses_weight_decay(_variable("net/bn/kernel", np.ones(2)))
    assert not default.uses_weight_decay(_variable("net/block0_bn2/kernel", np.ones(2)))
    assert not default.uses_weight_decay(
        _variable("net/batch_normalization_3/kernel", np.ones(2)))
    # ...but "bn" inside a longer word, or in an outer scope, does not exclude.
    for path in ["net/subnet/kernel", "net/bnorm_proj/kernel", "net/bn_proj/kernel",
                 "vgg16_bn/conv1/kernel", "net/gamma/kernel", "net/bias_proj/kernel",
                 "net/dense/gamma_kernel", "net/dense/biases"]:
        assert default.uses_weight_decay(_variable(path, np.ones(2))), path
    nothing = LARS(0.1, exclude_from_weight_decay=None)
    assert nothing.uses_weight_decay(_variable("net/stem_bn/gamma", np.ones(2)))
    no_decay = LARS(0.1, weight_decay=0.0)
    assert not no_decay.uses_weight_decay(encoder_kernel)


_OPTIMIZERS = {
    "lars": lambda: LARS(WarmupCosineSchedule(0.3, 10, 1), weight_decay=1e-2,
                         trust_coefficient=0.05),
    "adam_l2": lambda: AdamL2(WarmupStepSchedule(0.05, 10, 1, [3]), beta_1=0.8,
                              weight_decay=1e-2),
}


@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_mirrored_strategy_equals_single_device(two_replica_strategy, name):
    """Two replicas with half the batch each and loss / num_replicas (Keras all-reduces the
    gradients by SUM) must give the single-device full-batch result."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    initial = [rng.normal(size=s).astype(np.float32) for s in [(5, 6), (6,), (6, 3), (3,)]]

    def run(strategy):
        with strategy.scope():
            model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, name="d1"),
                                      keras.layers.ReLU(), keras.layers.Dense(3, name="d2")],
                                     name="net")
            model.set_weights(initial)
            optimizer = _OPTIMIZERS[name]()
            optimizer.build(model.trainable_variables)

        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(xb) - yb) ** 2) / strategy.num_replicas_in_sync
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))

        iterator = iter(strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)))

        @tf.function
        def step():
            strategy.run(replica_step, args=next(iterator))

        for _ in range(4):
            step()
        return model, optimizer

    single, _ = run(tf.distribute.get_strategy())
    mirrored, optimizer = run(two_replica_strategy)
    for a, b, start in zip(single.trainable_variables, mirrored.trainable_variables, initial):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
        assert np.abs(a.numpy() - start).max() > 1e-3, a.path
    slots = optimizer.momentums if name == "lars" else \
        optimizer.first_moments + optimizer.second_moments
    for slot in slots:  # the per-device slot copies stay in sync
        first, second = slot.value.values
        np.testing.assert_array_equal(first.numpy(), second.numpy())
        assert np.abs(first.numpy()).max() > 0


def test_loss_scale_optimizer_wrapping_matches_plain_lars():
    """Mixed precision wraps LARS in LossScaleOptimizer; the update must be the same."""
    rng = np.random.default_rng(2)
    start = rng.normal(size=(4, 3)).astype(np.float32)
    grad = rng.normal(size=(4, 3)).astype(np.float32)
    plain_var = _variable("plain/dense/kernel", start)
    scaled_var = _variable("scaled/dense/kernel", start)
    plain = LARS(0.2, trust_coefficient=0.05)
    wrapped = keras.optimizers.LossScaleOptimizer(LARS(0.2, trust_coefficient=0.05))
    wrapped.build([scaled_var])
    for _ in range(2):
        plain.apply_gradients([(tf.constant(grad), plain_var)])
        scale = float(wrapped.dynamic_scale.numpy())  # a power of two: exact scaling
        wrapped.apply_gradients([(tf.constant(grad * scale), scaled_var)])
    np.testing.assert_allclose(scaled_var.numpy(), plain_var.numpy(), rtol=1e-6)
    assert np.abs(plain_var.numpy() - start).max() > 1e-3


def test_checkpoint_round_trip_of_momentum_slots(tmp_path):
    rng = np.random.default_rng(3)
    values = _initial_values(rng)

    def make():
        variables = [_variable(case[0], value) for case, value in zip(_CASES, values)]
        optimizer = LARS(WarmupCosineSchedule(0.5, 10, 1), trust_coefficient=0.05)
        optimizer.build(variables)
        return variables, optimizer

    grads = [tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in values]
    variables, optimizer = make()
    assert {id(m) for m in optimizer.momentums} <= {id(v) for v in optimizer.variables}
    for _ in range(3):
        optimizer.apply_gradients(zip(grads, variables))
    path = tf.train.Checkpoint(variables=variables, optimizer=optimizer).save(
        str(tmp_path / "ckpt"))
    slots = [m.numpy().copy() for m in optimizer.momentums]
    assert all(np.abs(s).max() > 0 for s in slots)

    other_variables, other = make()
    tf.train.Checkpoint(variables=other_variables, optimizer=other).restore(
        path).assert_consumed()
    assert int(other.iterations.numpy()) == 3
    for restored, saved in zip(other.momentums, slots):
        np.testing.assert_array_equal(restored.numpy(), saved)
    # One more identical step: restored momentum (not zeros) drives the same update.
    optimizer.apply_gradients(zip(grads, variables))
    other.apply_gradients(zip(grads, other_variables))
    for a, b in zip(variables, other_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_get_config_round_trip():
    optimizer = LARS(WarmupCosineSchedule(1.5, 100, 10), momentum=0.8, weight_decay=1e-4,
                     trust_coefficient=2e-3, eps=1e-9, nesterov=True,
                     exclude_from_weight_decay=["x"], clipnorm=1.0)
    config = optimizer.get_config()
    clone = LARS.from_config(copy.deepcopy(config))  # Keras' from_config edits its argument
    assert clone.get_config() == config
    assert (clone.momentum, clone.lars_weight_decay, clone.trust_coefficient, clone.eps,
            clone.nesterov, clone.clipnorm) == (0.8, 1e-4, 2e-3, 1e-9, True, 1.0)
    assert clone.weight_decay is None  # Keras' decoupled decay stays off
    assert clone.weight_decay_exclusions == clone.layer_adaptation_exclusions == ("x",)
    assert config["learning_rate"]["config"] == {"peak_learning_rate": 1.5,
                                                 "total_steps": 100, "warmup_steps": 10}
    # Through Keras' generic (de)serialisation, as Keras model saving does.
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, LARS) and restored.get_config() == config
    plain = LARS(3)  # an int learning rate is accepted
    assert LARS.from_config(plain.get_config()).get_config() == plain.get_config()


@pytest.mark.parametrize("kwargs, argument", [
    ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
    ({"weight_decay": -1e-6}, "weight_decay"), ({"trust_coefficient": 0.0}, "trust_coefficient"),
    ({"eps": -1.0}, "eps"), ({"exclude_from_weight_decay": ["("]}, "exclude_from_weight_decay"),
    ({"exclude_from_layer_adaptation": [3]}, "exclude_from_layer_adaptation"),
])
def test_lars_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        LARS(0.1, **kwargs)


def test_schedule_closed_form_values():
    schedule = WarmupCosineSchedule(2.0, total_steps=110, warmup_steps=10)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 2.0, rtol=1e-6)  # warm-up end: peak
    np.testing.assert_allclose(float(schedule(60)), 1.0, rtol=1e-6)  # cosine midpoint
    np.testing.assert_allclose(float(schedule(35)), 1.0 + math.cos(math.pi / 4), rtol=1e-6)
    assert float(schedule(110)) == 0.0 and float(schedule(10_000)) == 0.0
    steps = np.arange(0, 130)
    got = keras.ops.convert_to_numpy(schedule(steps))
    want = [_reference_schedule(s, 2.0, 110, 10) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # Inside tf.function with the optimizer's int64 iteration variable.
    iteration = tf.Variable(35, dtype=tf.int64)
    np.testing.assert_allclose(float(tf.function(lambda: schedule(iteration))()),
                               1.0 + math.cos(math.pi / 4), rtol=1e-6)

    no_warmup = WarmupCosineSchedule(1.0, total_steps=4, warmup_steps=0)
    np.testing.assert_allclose([float(no_warmup(s)) for s in range(5)],
                               [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                0.5 - 0.5 * math.cos(math.pi / 4), 0.0], rtol=1e-6, atol=1e-7)
    only_warmup = WarmupCosineSchedule(1.0, total_steps=4, warmup_steps=4)
    np.testing.assert_allclose([float(only_warmup(s)) for s in range(6)],
                               [0.0, 0.25, 0.5, 0.75, 0.0, 0.0], rtol=1e-6)
    assert WarmupCosineSchedule.from_config(schedule.get_config()).get_config() \
        == schedule.get_config()


@pytest.mark.parametrize("args, argument", [
    ((0.0, 10, 0), "peak_learning_rate"), ((1.0, 0, 0), "total_steps"),
    ((1.0, 10, 11), "warmup_steps"), ((1.0, 10, -1), "warmup_steps"),
    ((1.0, 10.5, 1), "total_steps"),
])
def test_schedule_rejects_bad_arguments(args, argument):
    with pytest.raises(ValueError, match=argument):
        WarmupCosineSchedule(*args)


def test_scaled_learning_rate():
    assert scaled_learning_rate(0.3, 512, "linear") == pytest.approx(0.6, rel=1e-12)
    assert scaled_learning_rate(0.075, 512, "sqrt") == pytest.approx(1.6970563, rel=1e-7)
    assert scaled_learning_rate(3.0, 1000, "none") == 3.0
    with pytest.raises(ValueError, match=r"scaling='log'.*none, linear, sqrt"):
        scaled_learning_rate(1.0, 10, "log")
    with pytest.raises(ValueError, match="batch_size"):
        scaled_learning_rate(1.0, 0, "linear")


# ----------------------------------------------------------------------------- Adam (AMDIM)
def _reference_torch_adam(weights, grads_per_step, lrs, beta_1, beta_2, eps, weight_decay):
    """torch.optim.Adam's documented update (amsgrad off, maximize off), float64:
    g += wd * w; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), t = 1, 2, ..."""
    w = [x.astype(np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for i, g in enumerate(grads):
            g = g.astype(np.float64) + weight_decay * w[i]
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            m_hat = m[i] / (1 - beta_1 ** t)
            v_hat = v[i] / (1 - beta_2 ** t)
            w[i] = w[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


@pytest.mark.parametrize("use_tf_function", [False, True], ids=["eager", "tf_function"])
def test_adam_l2_matches_torch_adam_float64_reference(use_tf_function):
    """AdamL2 on the warm-up + step schedule equals torch's Adam with coupled weight decay,
    for gradients of order 1 and of order 1e-8 (where epsilon's place matters), BatchNorm
    and bias variables decayed like every other."""
    rng = np.random.default_rng(4)
    paths = ["net/dense/kernel", "net/dense/bias", "net/stem_bn/gamma", "net/tiny/kernel"]
    shapes = [(5, 4), (4,), (4,), (3, 3)]
    grad_scales = [1.0, 0.3, 1.0, 1e-8]
    initial = [rng.normal(size=s).astype(np.float32) for s in shapes]
    variables = [_variable(path, value) for path, value in zip(paths, initial)]
    hyper = dict(beta_1=0.8, beta_2=0.999, epsilon=1e-8, weight_decay=1e-5)
    schedule = WarmupStepSchedule(0.01, total_steps=6, warmup_steps=2, decay_steps=[4],
                                  decay_factor=0.2)
    optimizer = AdamL2(schedule, **hyper)

    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables))

    if use_tf_function:
        apply = tf.function(apply)
    grads_per_step = []
    for _ in range(6):
        grads = [(scale * rng.normal(size=s)).astype(np.float32)
                 for s, scale in zip(shapes, grad_scales)]
        grads_per_step.append(grads)
        apply([tf.constant(g) for g in grads])
    lrs = [0.0, 0.005, 0.01, 0.01, 0.002, 0.002]
    np.testing.assert_allclose([float(schedule(s)) for s in range(6)], lrs, rtol=1e-6)
    expected = _reference_torch_adam(
        initial, grads_per_step, lrs, hyper["beta_1"], hyper["beta_2"], hyper["epsilon"],
        hyper["weight_decay"])
    assert int(optimizer.iterations.numpy()) == 6
    for variable, start, want in zip(variables, initial, expected):
        # float32 against float64 over 6 steps; every weight moved by >= 1e-3 (checked), so
        # a wrong step (moments, bias correction, epsilon, decay) shows far above this.
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-5, atol=1e-6,
                                   err_msg=variable.path)
        assert np.abs(want - start).min() > 1e-3, variable.path
    # Keras' own Adam adds epsilon before the bias correction of v (torch's epsilon divided
    # by sqrt(1 - beta_2^t), 32x larger at t = 1): on the 1e-8 gradients its first step is
    # ~16x smaller than torch's (observed), which the reference above tells apart.
    keras_variable = keras.Variable(initial[3])
    keras_adam = keras.optimizers.Adam(0.01, beta_1=0.8, epsilon=1e-8)
    keras_adam.apply_gradients([(tf.constant(grads_per_step[1][3]), keras_variable)])
    torch_step = _reference_torch_adam([initial[3]], [[grads_per_step[1][3]]], [0.01], 0.8,
                                       0.999, 1e-8, 0.0)[0] - initial[3]
    keras_step = keras_variable.numpy() - initial[3]
    assert np.abs(keras_step).mean() < 0.5 * np.abs(torch_step).mean()


def test_adam_l2_checkpoint_and_config_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    start = rng.normal(size=(4, 3)).astype(np.float32)
    grad = tf.constant(rng.normal(size=(4, 3)).astype(np.float32))

    def make():
        variable = _variable("net/dense/kernel", start)
        optimizer = AdamL2(WarmupStepSchedule(0.1, 10, 1, [5]), beta_1=0.8, weight_decay=1e-3)
        optimizer.build([variable])
        return variable, optimizer

    variable, optimizer = make()
    for _ in range(3):
        optimizer.apply_gradients([(grad, variable)])
    path = tf.train.Checkpoint(v=variable, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    other_variable, other = make()
    tf.train.Checkpoint(v=other_variable, optimizer=other).restore(path).assert_consumed()
    optimizer.apply_gradients([(grad, variable)])
    other.apply_gradients([(grad, other_variable)])  # restored moments and step count
    np.testing.assert_array_equal(other_variable.numpy(), variable.numpy())
    config = optimizer.get_config()
    clone = AdamL2.from_config(copy.deepcopy(config))
    assert clone.get_config() == config and clone.weight_decay is None
    assert (clone.beta_1, clone.l2_weight_decay) == (0.8, 1e-3)
    assert config["learning_rate"]["config"]["decay_steps"] == [5]


def test_step_schedule_closed_form_values():
    schedule = WarmupStepSchedule(1.0, total_steps=100, warmup_steps=10,
                                  decay_steps=[50, 80], decay_factor=0.2)
    steps = np.arange(0, 120)
    want = [min(1.0, s / 10) * 0.2 ** (int(s >= 50) + int(s >= 80)) for s in steps]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(schedule(steps)), want, rtol=1e-6)
    iteration = tf.Variable(85, dtype=tf.int64)
    np.testing.assert_allclose(float(tf.function(lambda: schedule(iteration))()), 0.04,
                               rtol=1e-6)
    # A boundary inside the warm-up scales the warm-up; no warm-up starts at the peak.
    early = WarmupStepSchedule(1.0, 10, 4, [2], 0.5)
    np.testing.assert_allclose([float(early(s)) for s in range(6)],
                               [0.0, 0.25, 0.25, 0.375, 0.5, 0.5], rtol=1e-6)
    assert float(WarmupStepSchedule(2.0, 10, 0)(0)) == 2.0
    # Two boundaries on one step (fractions of a short run rounded together) decay twice.
    np.testing.assert_allclose(float(WarmupStepSchedule(1.0, 10, 0, [5, 5], 0.5)(5)), 0.25)
    assert WarmupStepSchedule.from_config(schedule.get_config()).get_config() == \
        schedule.get_config()


@pytest.mark.parametrize("kwargs, argument", [
    ({"beta_1": 1.0}, "beta_1"), ({"beta_2": -0.1}, "beta_2"), ({"epsilon": 0.0}, "epsilon"),
    ({"weight_decay": -1.0}, "weight_decay"),
])
def test_adam_l2_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        AdamL2(0.1, **kwargs)


@pytest.mark.parametrize("args, argument", [
    ((1.0, 10, 0, [0]), "decay_steps"), ((1.0, 10, 0, [11]), "decay_steps"),
    ((1.0, 10, 0, [6, 5]), "decay_steps"),
    ((1.0, 10, 0, [5], 0.0), "decay_factor"), ((1.0, 10, 0, [5], 1.5), "decay_factor"),
    ((1.0, 10, 11), "warmup_steps"), ((0.0, 10, 0), "peak_learning_rate"),
])
def test_step_schedule_rejects_bad_arguments(args, argument):
    with pytest.raises(ValueError, match=argument):
        WarmupStepSchedule(*args)
