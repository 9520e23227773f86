"""MirroredStrategy over two logical CPUs computes what one device computes on the global batch.

The claim (nac_tf.methods.base): with synchronized BatchNorm, R replicas give the single-device
loss, gradients, optimizer steps, momentum networks and queue on the same global batch of K
images, when replica r holds global images r*k..(r+1)*k-1 (the convention of
nac_tf.distribute). Every test uses the session's one MirroredStrategy (tests/conftest.py).

Tolerance: RTOL = 1e-5, relative to each tensor's largest entry (near-zero entries are judged
on their tensor's scale). The two runs sum the same terms in different orders (all-reduced
BatchNorm sums and gradients, sync BN's E[x^2] - E[x]^2 against tf.nn.moments' two passes),
so they agree to rounding, not bit for bit. Gradient and weight comparisons run the layers in
float64 (see `float64_policy` for why float32 ReLU networks cannot be compared this way);
the objectives stay float32. Observed: losses and gradients within 2e-7, weights after two
LARS steps within 3e-7, logged scalars within 1.5e-6.
"""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf import distribute
from nac_tf.config import ConfigError
from nac_tf.data import pipeline, sources, views
from test_methods import build_test_method
from nac_tf.models import ProjectionHead, build_encoder, clone_encoder, clone_head
from nac_tf.optim import LARS

IMAGE_SHAPE = (8, 8, 3)
K = 8                     # global batch (images)
REPLICAS = 2
LOCAL = K // REPLICAS     # images per replica
QUEUE = 3 * 2 * K         # three steps of keys: after two steps the pointer is at 2 * 2K
RTOL = 1e-5


def assert_close(actual, expected, name="", rtol=RTOL):
    """|actual - expected| <= rtol * max|expected| elementwise (scale-relative tolerance)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, name
    scale = max(np.abs(expected).max(), 1e-30)
    error = np.abs(actual - expected).max() / scale
    assert error <= rtol, f"{name}: relative error {error:.3g} > {rtol:g}"


def _method(name, synchronized, **changes):
    """A compiled method (LARS); built in the current strategy's scope by the caller."""
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, synchronized_batch_norm=synchronized)
    method = build_test_method(
        name, encoder, code_dim=16, head_hidden_dim=32, head_batch_norm=True, flip_prob=0.2,
        queue_size=QUEUE, momentum=0.9, temperature=0.5, seed=3,
        synchronized_batch_norm=synchronized, **changes)
    method.build_networks(IMAGE_SHAPE)
    method.compile(optimizer=LARS(0.5))
    method.optimizer.build(method.optimized_variables)
    return method


def _pair(name, strategy, distributed_bn="sync", **changes):
    """(one-device method, two-replica method) with identical weights, queue included.

    The one-device run uses plain BatchNorm (what the trainer builds for one replica); the
    two-replica run synchronized BatchNorm ("sync") or local statistics ("per_replica").
    """
    single = _method(name, synchronized=False, **changes)
    with strategy.scope():
        replicated = _method(name, synchronized=distributed_bn == "sync", **changes)
    replicated.set_weights(single.get_weights())
    return single, replicated


def _views(seed):
    rng = np.random.default_rng(seed)
    views = rng.uniform(size=(2, K) + IMAGE_SHAPE).astype(np.float32)
    views[:, LOCAL:] += 0.5  # the replicas' halves have different batch statistics
    return views[0], views[1]


def _distribute(strategy, view1, view2):
    """Replica r gets global images r*LOCAL..(r+1)*LOCAL-1 (the documented convention)."""
    def local(context):
        r = context.replica_id_in_sync_group
        return (tf.constant(view1[r * LOCAL:(r + 1) * LOCAL]),
                tf.constant(view2[r * LOCAL:(r + 1) * LOCAL]))
    return strategy.experimental_distribute_values_from_function(local)


def _local(strategy, value):
    return [np.asarray(v) for v in strategy.experimental_local_results(value)]


def _variable_components(strategy, variable):
    """Every replica's copy of a (mirrored) Keras variable."""
    return _local(strategy, variable.value)


# --------------------------------------------------------------------------- building blocks
def test_all_gather_gradient_sends_each_replica_its_rows_summed(two_replica_strategy):
    strategy = two_replica_strategy
    x = np.arange(REPLICAS * 2 * 3, dtype=np.float32).reshape(REPLICAS, 2, 3)
    weights = np.random.default_rng(0).normal(size=(REPLICAS, REPLICAS * 2, 3)).astype(
        np.float32)

    def replica_fn(x_local, w_local):
        with tf.GradientTape() as tape:
            tape.watch(x_local)
            gathered = distribute.gather_across_replicas(x_local)
            # A different loss on each replica: sum(w_r * gathered^2)
            loss = tf.reduce_sum(w_local * gathered ** 2)
        return gathered, tape.gradient(loss, x_local)

    values = strategy.experimental_distribute_values_from_function(
        lambda c: (tf.constant(x[c.replica_id_in_sync_group]),
                   tf.constant(weights[c.replica_id_in_sync_group])))
    gathered, grads = strategy.run(tf.function(replica_fn), args=values)
    for g in _local(strategy, gathered):
        np.testing.assert_array_equal(g, x.reshape(-1, 3))
    # d/dx_r of sum_s loss_s = 2 x_r * (sum_s w_s)[rows of r]
    summed = weights.sum(axis=0).reshape(REPLICAS, 2, 3)
    for r, g in enumerate(_local(strategy, grads)):
        np.testing.assert_allclose(g, 2 * x[r] * summed[r], rtol=1e-6)


def test_view_pair_layouts_round_trip(two_replica_strategy):
    """gather_view_pairs gives the one-device layout; replica_view_pair_rows inverts it."""
    strategy = two_replica_strategy
    global_rows = np.arange(2 * K, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    # One device: rows [view1 of images 0..K-1; view2 of images 0..K-1] = row numbers 0..2K-1.

    def local(context):
        r = context.replica_id_in_sync_group
        rows = np.concatenate([global_rows[r * LOCAL:(r + 1) * LOCAL],
                               global_rows[K + r * LOCAL:K + (r + 1) * LOCAL]])
        return tf.constant(rows)

    values = strategy.experimental_distribute_values_from_function(local)

    def replica_fn(rows):
        return (distribute.gather_view_pairs(rows),
                distribute.replica_view_pair_rows(tf.constant(global_rows)), rows)

    gathered, cut, rows = strategy.run(tf.function(replica_fn), args=(values,))
    for g in _local(strategy, gathered):
        np.testing.assert_array_equal(g, global_rows)
    for c, expected in zip(_local(strategy, cut), _local(strategy, rows)):
        np.testing.assert_array_equal(c, expected)


def test_flip_masks_are_a_function_of_the_global_row(two_replica_strategy):
    strategy = two_replica_strategy
    single, replicated = _pair("nac", strategy)
    shape = (2 * K, 16)
    expected = single.flip_signs(shape, single.flip_prob).numpy()
    masks = strategy.run(tf.function(
        lambda: replicated.flip_signs((2 * LOCAL, 16), replicated.flip_prob)))
    for r, mask in enumerate(_local(strategy, masks)):
        np.testing.assert_array_equal(mask[:LOCAL], expected[r * LOCAL:(r + 1) * LOCAL])
        np.testing.assert_array_equal(mask[LOCAL:], expected[K + r * LOCAL:K + (r + 1) * LOCAL])


# --------------------------------------------------------------------------- equivalence
@pytest.fixture
def float64_policy():
    """Layers compute in float64 for the test, then the previous policy comes back.

    Why: the gradient of a ReLU network jumps where a pre-activation crosses 0. In float32
    the two runs differ by rounding (~1e-6 absolute after a few layers), and one
    pre-activation in ~1e5 lies that close to 0: it then has opposite signs in the two runs,
    its unit's upstream gradient is dropped on one side only, and a gradient differs by
    percents (observed: 1 random initialisation in ~15 moved a BN beta gradient by 9%),
    although both runs are right to rounding. In float64 the rounding is 1e-16 and such a
    flip does not occur; the methods still cast codes and losses to float32, so the
    objectives, the noise and the queue run exactly as in float32 training.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy(previous)


def _single_gradients(method, view1, view2):
    out, gradients, _ = method.compute_gradients((tf.constant(view1), tf.constant(view2)))
    return float(out.loss), [g.numpy() for g in gradients]


def _replicated_gradients(strategy, method, view1, view2):
    def replica_fn(data):
        out, gradients, _ = method.compute_gradients(data)
        return out.loss, gradients

    # Eager strategy.run (fast to start for tiny networks); train steps below use tf.function.
    losses, gradients = strategy.run(replica_fn, args=(_distribute(strategy, view1, view2),))
    # The optimizer sums the replicas' gradients; the logged loss is the replicas' mean.
    return (float(np.mean(_local(strategy, losses))),
            [np.sum(_local(strategy, g), axis=0) for g in gradients])


def _train_single(method, batches):
    return [{k: float(v) for k, v in method.train_step(
        (tf.constant(view1), tf.constant(view2))).items()} for view1, view2 in batches]


def _train_replicated(strategy, method, batches, graph):
    """strategy.run(train_step), logs averaged; `graph`: inside a tf.function, the trainer's
    path (tracing a two-replica step takes seconds, so only one method pays for it)."""
    def step(data):
        logs = strategy.run(method.train_step, args=(data,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in logs.items()}

    if graph:
        step = tf.function(step)

    return [{k: float(v) for k, v in step(_distribute(strategy, *batch)).items()}
            for batch in batches]


def _assert_same_scalar(actual, expected, name):
    # Logged scalars are O(1-10); the MI bounds are differences of terms of ~20, so their
    # rounding is judged on a scale of at least 1.
    assert abs(actual - expected) <= RTOL * max(abs(expected), 1.0), (name, actual, expected)


# NAC-MQ runs its replicated steps as the trainer does, in a tf.function (graph ordering of
# the optimizer, EMA and queue updates); the others eagerly, which is much faster to start.
@pytest.mark.parametrize("name, graph", [("nac", False), ("nac_mq", True), ("simclr", False),
                                         ("moco_v2", False)])
def test_two_replicas_with_sync_batch_norm_equal_one_device(name, graph, two_replica_strategy,
                                                            float64_policy):
    strategy = two_replica_strategy
    single, replicated = _pair(name, strategy)
    view1, view2 = _views(0)

    # Loss and gradients of one step (the gradients the optimizer receives).
    loss, gradients = _single_gradients(single, view1, view2)
    replicated_loss, replicated_gradients = _replicated_gradients(
        strategy, replicated, view1, view2)
    _assert_same_scalar(replicated_loss, loss, "loss")
    for variable, actual, expected in zip(single.optimized_variables, replicated_gradients,
                                          gradients):
        assert np.abs(expected).max() > 0, variable.path  # every variable is trained
        assert_close(actual, expected, "gradient of " + variable.path)

    # Two LARS steps: logs, then every weight of the method (online and momentum networks,
    # BatchNorm moving statistics, queue, queue pointer) and of the optimizer (iterations,
    # momentum slots), on every replica.
    initial_queue = single.queue.numpy().copy() if hasattr(single, "queue") else None
    batches = [_views(1), _views(2)]
    logs = _train_single(single, batches)
    replicated_logs = _train_replicated(strategy, replicated, batches, graph)
    for step_logs, replicated_step_logs in zip(logs, replicated_logs):
        assert step_logs.keys() == replicated_step_logs.keys()
        for key in step_logs:
            _assert_same_scalar(replicated_step_logs[key], step_logs[key], key)
    for expected, variable in zip(single.weights, replicated.weights):
        assert expected.path == variable.path
        for component in _variable_components(strategy, variable):
            assert_close(component, expected.numpy(), variable.path)
    for expected, variable in zip(single.optimizer.variables, replicated.optimizer.variables):
        for component in _variable_components(strategy, variable):
            assert_close(component, expected.numpy(), variable.path)
    if initial_queue is not None:
        # The momentum networks normalise over the global batch too (their BN moving
        # statistics matched above; their layers say so).
        momentum_bn = [layer for network in replicated.momentum_networks
                       for layer in _batch_norm_layers(network)]
        assert momentum_bn and all(layer.synchronized for layer in momentum_bn)
        # Two steps of 2K keys each were written at the front, in the one-device order
        # (the queue equals the one-device queue, checked above); the rest is untouched.
        assert int(replicated.queue_pointer.numpy()) == 2 * 2 * K
        queue = replicated.queue.numpy()
        assert np.abs(queue[:4 * K] - initial_queue[:4 * K]).min(axis=1).max() > 0
        np.testing.assert_array_equal(queue[4 * K:], initial_queue[4 * K:])


@pytest.mark.parametrize("mode", ["positive_key", "queue_only"])
def test_other_nac_mq_denominators_equal_one_device(mode, two_replica_strategy, float64_policy):
    """The NAC-MQ denominators besides the default (covered above): loss and gradients of
    one step over two replicas equal one device on the global batch."""
    _assert_same_first_step(*_pair("nac_mq", two_replica_strategy, mq_negatives=mode),
                            two_replica_strategy)


def _assert_same_first_step(single, replicated, strategy):
    """Loss and gradients of one step: two replicas == one device on the global batch."""
    view1, view2 = _views(0)
    loss, gradients = _single_gradients(single, view1, view2)
    replicated_loss, replicated_gradients = _replicated_gradients(
        strategy, replicated, view1, view2)
    _assert_same_scalar(replicated_loss, loss, "loss")
    for variable, actual, expected in zip(single.optimized_variables, replicated_gradients,
                                          gradients):
        assert_close(actual, expected, "gradient of " + variable.path)


def _batch_norm_layers(network):
    return [layer for layer in network._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)]


def test_per_view_with_sync_batch_norm_equals_one_device(two_replica_strategy, float64_policy):
    """Per-view passes compose with global statistics: each view normalised over the global
    batch of that view, on both replicas, as one device does per view."""
    strategy = two_replica_strategy
    single, replicated = _pair("nac_mq", strategy, per_view_batch_norm=True)
    _assert_same_first_step(single, replicated, strategy)
    for expected, variable in zip(single.weights, replicated.weights):
        if "moving_" in variable.path:  # two updates per step, from the global views
            for component in _variable_components(strategy, variable):
                assert_close(component, expected.numpy(), variable.path)


def test_float32_losses_agree(two_replica_strategy):
    """In float32 too the step's loss agrees to rounding (values are continuous)."""
    strategy = two_replica_strategy
    single, replicated = _pair("nac_mq", strategy)
    view1, view2 = _views(0)
    loss, _ = _single_gradients(single, view1, view2)
    replicated_loss, _ = _replicated_gradients(strategy, replicated, view1, view2)
    _assert_same_scalar(replicated_loss, loss, "loss")


def test_per_replica_batch_norm_uses_local_statistics(two_replica_strategy):
    """per_replica BN is a different computation: each replica normalises with its half."""
    strategy = two_replica_strategy
    single, replicated = _pair("nac", strategy, distributed_bn="per_replica")
    view1, view2 = _views(0)
    loss, _ = _single_gradients(single, view1, view2)
    replicated_loss, _ = _replicated_gradients(strategy, replicated, view1, view2)
    assert abs(replicated_loss - loss) > 1e-3

    def first_bn_mean(method):
        return next(v for v in method.encoder.weights if v.path.endswith("conv1_bn/moving_mean"))

    expected = first_bn_mean(single).numpy()
    components = _variable_components(strategy, first_bn_mean(replicated))
    # Each replica's copy moved towards the mean of its own half of the batch (the halves
    # differ, see _views); with equal halves the two local means average to the global one.
    assert np.abs(components[0] - components[1]).max() > 1e-2
    np.testing.assert_allclose((components[0] + components[1]) / 2, expected, atol=1e-6)


def test_two_replicas_finish_their_own_views_on_device(two_replica_strategy):
    """augment_on="device" over two replicas: each replica finishes the views of its own
    rows from its CropPair (its share of the global batch, its own draws), so two steps
    give what the two-replica run on host-made views gives: logs and every weight bit for
    bit (float32)."""
    strategy = two_replica_strategy
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * K, 11, 11, 3), dtype=np.uint8)
    labels = np.zeros(4 * K, np.int64)
    source = sources.ArrayImageSource("random", images, labels, images[:2], labels[:2])
    augmenter = views.ViewPairAugmenter(views.imagenet_recipe(IMAGE_SHAPE[0]), seed=1)
    with strategy.scope():
        methods = [_method("nac_mq", synchronized=True) for _ in range(2)]
    methods[1].set_weights(methods[0].get_weights())
    methods[1].view_stage = augmenter.colour_pair
    results = []
    for method, augmentation in zip(methods, (augmenter, augmenter.crop_pair)):
        dataset = strategy.distribute_datasets_from_function(
            lambda context: pipeline.make_pretrain_dataset(source, augmentation, K, context,
                                                           seed=0))
        iterator = iter(dataset)

        @tf.function
        def step():
            logs = strategy.run(method.train_step, args=(next(iterator),))
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                    for k, v in logs.items()}

        results.append((method, [{k: float(v) for k, v in step().items()} for _ in range(2)]))
    (host, host_logs), (device, device_logs) = results
    assert device_logs == host_logs
    for expected, variable in zip(host.weights + host.optimizer.variables,
                                  device.weights + device.optimizer.variables):
        for expected_component, component in zip(_variable_components(strategy, expected),
                                                 _variable_components(strategy, variable)):
            np.testing.assert_array_equal(component, expected_component, err_msg=variable.path)


def _batch_norm_statistics(*networks):
    return [v.numpy() for network in networks for v in network.weights if "moving_" in v.path]


def _reference_copy(network, name):
    copy = (clone_head if isinstance(network, ProjectionHead) else clone_encoder)(
        network, name=name)
    copy.set_weights(network.get_weights())
    return copy


def test_per_view_batch_norm_runs_online_and_momentum_networks_once_per_view():
    """The whole model (encoder and BN heads) runs once per view, momentum copies too."""
    method = _method("nac_mq", synchronized=False, per_view_batch_norm=True)
    view1, view2 = (tf.constant(v) for v in _views(0))
    networks = {
        "online": (method.encoder, method.projection_head),
        "momentum": (method.momentum_encoder, method.momentum_projection_head)}
    references = {kind: tuple(_reference_copy(n, f"reference_{n.name}") for n in pair)
                  for kind, pair in networks.items()}

    out = method.view_pair_loss(view1, view2, training=True)

    def per_view(encoder, head):
        return tf.concat([head(encoder(view, training=True), training=True)
                          for view in (view1, view2)], axis=0)

    expected_keys = np.tanh(per_view(*references["momentum"]).numpy())
    np.testing.assert_allclose(out.state["keys"].numpy(), expected_keys, rtol=1e-5, atol=1e-6)
    expected_codes = per_view(*references["online"]).numpy()
    np.testing.assert_allclose(out.code_pre_activations.numpy(), expected_codes[:K],
                               rtol=1e-5, atol=1e-6)
    # Two passes also mean two moving-average updates with each view's statistics.
    for kind in networks:
        for actual, expected in zip(_batch_norm_statistics(*networks[kind]),
                                    _batch_norm_statistics(*references[kind])):
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    # ... which is not what one joint pass computes.
    encoder, head = (_reference_copy(n, f"joint_{n.name}") for n in networks["online"])
    joint = head(encoder(tf.concat([view1, view2], 0), training=True), training=True)
    assert np.abs(joint.numpy()[:K] - expected_codes[:K]).max() > 1e-3


def test_strategies_that_cannot_start_here_fail_naming_the_flag(monkeypatch):
    """No TPU on the test machines: --strategy=tpu must fail fast with a message in the
    flags' terms (not TensorFlow's unregistered-kernel error); multi_worker needs TF_CONFIG.

    The TPU attempt runs in a subprocess: connecting to a cluster changes the process's
    eager context, which the other tests share.
    """
    check = ("from nac_tf.config import ConfigError\n"
             "from nac_tf.distribute import make_strategy\n"
             "try:\n    make_strategy('tpu')\n"
             "except ConfigError as error:\n    print('CONFIG_ERROR', error)\n")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=120, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "CONFIG_ERROR strategy: tpu: no TPU reachable" in result.stdout, result.stderr
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"strategy: multi_worker needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")
