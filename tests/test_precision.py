"""Mixed precision (bfloat16; float16 with loss scaling) and XLA for the methods' train_step.

Everything runs on CPU: TensorFlow 2.21's CPU kernels and XLA:CPU execute float16 and bfloat16
convolutions and matmuls, forward and backward (slowly, but these networks are tiny), so no
mode needs to be skipped here.

Tolerances are stated in terms of the compute dtype's unit roundoff u (half the spacing of
numbers near 1): bfloat16 keeps 8 significant bits, u = 2^-8 ~ 3.9e-3; float16 keeps 11,
u = 2^-11 ~ 4.9e-4. Losses are computed in float32 from head outputs that were rounded to
the compute dtype, so a loss is off by about u relative at most; observed (NAC, NAC-MQ,
3 seeds): bfloat16 <= 5e-5, float16 <= 5e-6 relative at the first step. The weight updates
of three LARS steps point in the float32 direction up to cos >= 1 - 10u (observed: bfloat16
>= 0.998, float16 >= 0.9998); the rest is rounding in the backward pass and ReLU units whose
sign differs between the precisions.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf import distribute
from test_methods import build_test_method
from nac_tf.models import build_encoder
from nac_tf.optim import LARS
from nac_tf.precision import cpu_flags, fastest_safe_precision, resolve_precision

IMAGE_SHAPE = (8, 8, 3)
K = 8
UNIT_ROUNDOFF = {"mixed_bfloat16": 2.0 ** -8, "mixed_float16": 2.0 ** -11}
COMPUTE_DTYPE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


@pytest.fixture
def dtype_policy():
    """Sets the global dtype policy for one test; the previous one comes back afterwards."""
    previous = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(previous)


def _method(name, loss_scale=False, **changes):
    """Like the trainer: LARS, wrapped in a LossScaleOptimizer for float16."""
    fields = dict(code_dim=16, head_hidden_dim=32, head_batch_norm=True, flip_prob=0.2,
                  queue_size=4 * K, momentum=0.9, temperature=0.5, seed=3)
    fields.update(changes)
    method = build_test_method(name, build_encoder("small_cnn", IMAGE_SHAPE), **fields)
    method.build_networks(IMAGE_SHAPE)
    optimizer = LARS(0.5)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    method.compile(optimizer=optimizer)
    method.optimizer.build(method.optimized_variables)
    return method


def _batch(seed):
    rng = np.random.default_rng(seed)
    return tuple(tf.constant(v) for v in rng.uniform(size=(2, K) + IMAGE_SHAPE).astype(
        np.float32))


# The objective functions each method calls, by the module it imported them into.
OBJECTIVES = {
    "nac": ("nac_tf.methods.nac", ("nac_loss", "nac_mutual_information_bound")),
    "nac_mq": ("nac_tf.methods.nac_mq", ("nac_mq_loss", "inference_likelihood_loss",
                                         "nac_mq_mutual_information_bound")),
    "simclr": ("nac_tf.methods.simclr", ("nt_xent_loss",)),
    "moco_v2": ("nac_tf.methods.moco", ("info_nce_loss",)),
}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("name", ["nac", "nac_mq", "simclr", "moco_v2"])
def test_objectives_see_float32_under_mixed_precision(name, policy, dtype_policy, monkeypatch):
    dtype_policy(policy)
    module, functions = OBJECTIVES[name]
    seen = []

    def recording(function):
        def wrapper(*args, **kwargs):
            floats = [a for a in list(args) + list(kwargs.values())
                      if hasattr(a, "dtype") and a.dtype.is_floating]
            result = function(*args, **kwargs)
            seen.append((function.__name__, [a.dtype for a in floats], result.dtype))
            return result
        return wrapper

    for function in functions:
        monkeypatch.setattr(f"{module}.{function}",
                            recording(getattr(__import__(module, fromlist=[function]),
                                              function)))
    method = _method(name)
    view1, view2 = _batch(0)
    # Mixed precision is really on: the networks compute in the low-precision dtype ...
    assert method.encoder(view1).dtype == COMPUTE_DTYPE[policy]
    out = method.view_pair_loss(view1, view2, training=True)
    # ... while every input and output of every objective, and every reduction, is float32.
    assert sorted({call[0] for call in seen}) == sorted(functions)
    for function, argument_dtypes, result_dtype in seen:
        assert argument_dtypes and all(d == tf.float32 for d in argument_dtypes), function
        assert result_dtype == tf.float32, function
    assert out.loss.dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in out.metrics.values())
    assert out.code_pre_activations.dtype == tf.float32
    if name in ("nac_mq", "moco_v2"):
        assert out.state["keys"].dtype == tf.float32 and method.queue.dtype == "float32"


def _update_cosine(before, method, reference):
    update = np.concatenate([(v.numpy() - b).ravel()
                             for v, b in zip(method.optimized_variables, before)])
    expected = np.concatenate([(v.numpy() - b).ravel()
                               for v, b in zip(reference.optimized_variables, before)])
    return update @ expected / np.linalg.norm(update) / np.linalg.norm(expected)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("name", ["nac", "nac_mq"])
def test_mixed_precision_training_stays_close_to_float32(name, policy, dtype_policy):
    u = UNIT_ROUNDOFF[policy]
    reference = _method(name)
    initial = reference.get_weights()
    before = [v.numpy() for v in reference.optimized_variables]
    batches = [_batch(seed) for seed in range(3)]
    expected = [float(reference.train_step(batch)["loss"]) for batch in batches]

    dtype_policy(policy)
    method = _method(name, loss_scale=policy == "mixed_float16")
    method.set_weights(initial)
    losses = [float(method.train_step(batch)["loss"]) for batch in batches]

    assert int(method.optimizer.iterations.numpy()) == 3  # no step was skipped
    np.testing.assert_allclose(losses[0], expected[0], rtol=u)
    assert _update_cosine(before, method, reference) >= 1.0 - 10 * u


# ----------------------------------------------------------------------------- loss scaling
def test_loss_scale_optimizer_unscales_exactly_in_the_custom_train_step():
    """train_step multiplies the loss by the scale (2^15) and apply_gradients divides the
    gradients by it: powers of two scale float32 exactly, so the steps equal plain LARS."""
    plain = _method("nac_mq")
    scaled = _method("nac_mq", loss_scale=True)
    scaled.set_weights(plain.get_weights())
    for seed in range(2):
        batch = _batch(seed)
        np.testing.assert_allclose(float(scaled.train_step(batch)["loss"]),
                                   float(plain.train_step(batch)["loss"]), rtol=1e-6)
    for expected, actual in zip(plain.weights, scaled.weights):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7,
                                   err_msg=actual.path)
    assert int(scaled.optimizer.iterations.numpy()) == 2
    assert float(scaled.optimizer.dynamic_scale.numpy()) == 2.0 ** 15  # grows after 2000


def test_loss_scale_optimizer_skips_a_step_with_non_finite_gradients(dtype_policy):
    dtype_policy("mixed_float16")
    method = _method("nac", loss_scale=True)
    # A scale this large overflows the scaled loss (float32 max ~3.4e38): inf/NaN gradients.
    method.optimizer.dynamic_scale.assign(1e38)
    before = [v.numpy() for v in method.optimized_variables]
    logs = method.train_step(_batch(0))
    assert np.isfinite(float(logs["loss"]))  # the forward pass itself was fine
    for value, variable in zip(before, method.optimized_variables):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert int(method.optimizer.iterations.numpy()) == 0  # not counted: same masks next time
    assert float(method.optimizer.dynamic_scale.numpy()) == pytest.approx(5e37)


def test_loss_scale_optimizer_skips_on_all_replicas_when_one_overflows(two_replica_strategy):
    """Only replica 1's gradient is non-finite. Keras alone applies the step (it asks
    replica 0) and the all-reduced update is NaN; agree_on_finite_gradients skips it."""
    strategy = two_replica_strategy
    results = {}
    for agree in (False, True):
        with strategy.scope():
            weight = keras.Variable(np.ones(3, np.float32), name="weight")
            optimizer = keras.optimizers.LossScaleOptimizer(LARS(0.1, weight_decay=0.0))
            optimizer.build([weight])

        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            gradient = tf.where(tf.equal(replica, 1), tf.constant([np.inf, 1.0, 1.0]),
                                tf.ones(3))
            gradients = [gradient]
            if agree:
                gradients = distribute.agree_on_finite_gradients(gradients)
            optimizer.apply_gradients(zip(gradients, [weight]))

        tf.function(lambda: strategy.run(replica_fn))()
        results[agree] = ([c.numpy() for c in strategy.experimental_local_results(weight.value)],
                          float(optimizer.dynamic_scale.numpy()))
    copies, scale = results[True]
    for copy in copies:
        np.testing.assert_array_equal(copy, np.ones(3))
    assert scale == 2.0 ** 14
    # What the helper prevents (Keras 3.15): the step is applied with a non-finite update.
    unguarded_copies, _ = results[False]
    assert not np.all(np.isfinite(unguarded_copies[0]))


# ----------------------------------------------------------------------------- XLA
def test_xla_train_step_matches_the_graph_step(dtype_policy):
    """tf.function(train_step, jit_compile=True) on CPU: same logs, weights, queue, momentum
    networks and optimizer state as the plain graph after two steps.

    float64 layers (the objectives stay float32): XLA fuses and reorders float arithmetic,
    and in float32 a ReLU pre-activation within rounding of 0 can take different signs in
    the two programs, which moves a gradient by percents (see tests/test_distribute.py); in
    float32 they agree to ~2e-6 when that does not happen. Observed here: <= 3e-7.
    The flip masks must be identical for this to hold: stateless FLOAT uniforms differ
    between XLA and TensorFlow's kernels, which is why `flip_signs` draws integers.
    """
    dtype_policy("float64")
    compiled = _method("nac_mq")
    plain = _method("nac_mq")
    plain.set_weights(compiled.get_weights())
    xla_step = tf.function(compiled.train_step, jit_compile=True)
    graph_step = tf.function(plain.train_step)
    for seed in range(2):
        batch = _batch(seed)
        xla_logs, graph_logs = xla_step(batch), graph_step(batch)
        for key, value in graph_logs.items():
            value = float(value)
            assert abs(float(xla_logs[key]) - value) <= 1e-5 * max(abs(value), 1.0), key
    for expected, actual in zip(plain.weights + plain.optimizer.variables,
                                compiled.weights + compiled.optimizer.variables):
        scale = max(np.abs(expected.numpy()).max(), 1e-30)
        assert np.abs(actual.numpy() - expected.numpy()).max() <= 1e-5 * scale, actual.path
    assert int(compiled.queue_pointer.numpy()) == 0  # 2 steps x 2K keys = the whole queue


# ----------------------------------------------------------------------- precision="auto"


@pytest.mark.parametrize("tpus, gpus, flags, expected", [
    (1, [], set(), "mixed_bfloat16"),
    (0, [(8, 0)], set(), "mixed_bfloat16"),
    (0, [(9, 0), (8, 6)], {"avx512_bf16"}, "mixed_bfloat16"),
    (0, [(7, 0)], set(), "mixed_float16"),
    (0, [(8, 6), (7, 5)], set(), "mixed_float16"),  # the oldest GPU decides
    (0, [(6, 1)], {"avx512_bf16"}, "float32"),  # the GPUs compute, not the CPU
    (0, [None], set(), "float32"),
    (0, [], {"avx512f", "avx512_bf16"}, "mixed_bfloat16"),
    (0, [], {"amx_bf16"}, "mixed_bfloat16"),
    (0, [], {"avx512f", "avx2", "fma"}, "float32"),
])
def test_auto_precision_picks_a_16_bit_policy_only_with_native_hardware(tpus, gpus, flags,
                                                                         expected):
    precision, reason = fastest_safe_precision(tpus, gpus, frozenset(flags))
    assert precision == expected and reason


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_auto_precision_sets_the_policy_it_logs(dtype_policy):
    """method_for_run with precision="auto" computes in what auto picks on this machine."""
    from nac_tf.config import PretrainConfig
    from nac_tf.data.catalog import load_source
    from nac_tf.recipes import method_for_run

    assert resolve_precision("mixed_float16") == ("mixed_float16", None)
    expected, reason = resolve_precision("auto")
    assert (expected, reason) == fastest_safe_precision(0, [], cpu_flags())  # CPU only here
    config = PretrainConfig(method="nac", dataset="digits", image_size=8, encoder="small_cnn",
                            code_dim=16, batch_size=8, train_steps=2, precision="auto")
    method = method_for_run(config, load_source("digits", image_size=8))
    assert keras.config.dtype_policy().name == expected
    assert method.encoder.compute_dtype == COMPUTE_DTYPE.get(expected, "float32")
    assert isinstance(method.optimizer, keras.optimizers.LossScaleOptimizer) == \
        (expected == "mixed_float16")
