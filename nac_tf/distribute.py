"""tf.distribute plumbing: strategy selection and the two cross-replica operations the
methods need (gathering negatives, assigning EMA / queue state from inside a replica).

Everything here also works without a strategy (the default strategy), so the methods call
these functions unconditionally.
"""
import os

import keras
import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def make_strategy(name, tpu_address=""):
    """Returns the tf.distribute strategy for the `--strategy` flag.

    `auto` picks MirroredStrategy when several GPUs are visible, a single-device strategy
    otherwise. `tpu` connects to `tpu_address` (empty: the TPU VM's local TPU) and runs
    `initialize_tpu_system` before building the strategy, as TPUStrategy requires.
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name!r} is not one of {', '.join(STRATEGIES)}")
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "describing the cluster and this worker's task")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "local")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def num_replicas():
    """Replicas taking part in the current step (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_id():
    """This replica's index as an int32 tensor (0 outside any strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int32)
    return tf.cast(context.replica_id_in_sync_group, tf.int32)


def gather_across_replicas(tensor):
    """Concatenates `tensor` along axis 0 over all replicas, in replica order.

    The gradient flows back to every replica's own slice (ReplicaContext.all_gather sums the
    upstream gradients across replicas and slices), so negatives gathered here train the
    encoder of the replica that produced them, as on a single device.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    return context.all_gather(tensor, axis=0)


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def assign_variables(variables, values):
    """Assigns `values` to `variables` from inside a replica (or with no strategy).

    Every replica must pass the same values (EMA of mirrored weights, a queue filled with
    gathered codes). A mirrored variable cannot be assigned from replica context without an
    aggregation mode, so, like Keras' own optimizer, hop to the cross-replica context with a
    merge call and update each variable's copies there.
    """
    pairs = [(_tf_variable(v), x) for v, x in zip(variables, values)]

    def merge_fn(strategy, pairs):
        for variable, value in pairs:
            strategy.extended.update(
                variable, lambda var, val: var.assign(val), args=(value,), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        merge_fn, tf.distribute.get_strategy(), pairs)
