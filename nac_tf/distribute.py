"""tf.distribute plumbing: strategy selection, the two cross-replica operations the
methods need (gathering negatives, assigning EMA / queue state from inside a replica), and
what a multi-worker run's lost worker looks like (`worker_lost_error`), and this process's
place in a multi-worker run (`worker_role`, `stop_agreement`).

Everything here also works without a strategy (the default strategy), so the methods call
these functions unconditionally.
"""
import dataclasses
import os
import re

import keras
import tensorflow as tf

from nac_tf.config import STRATEGIES, ConfigError


def make_strategy(name, tpu_address=""):
    """The tf.distribute strategy `name` (one of `nac_tf.config.STRATEGIES`).

    `auto` picks MirroredStrategy when several GPUs are visible, a single-device strategy
    otherwise. `tpu` connects to `tpu_address` (empty: the TPU VM's local TPU) and runs
    `initialize_tpu_system` before building the strategy, as TPUStrategy requires.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is not one of {', '.join(STRATEGIES)}")
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
            raise ConfigError("strategy", "multi_worker needs the TF_CONFIG environment "
                              "variable describing the cluster and this worker's task")
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.OpError, ValueError) as error:
        # Without a TPU, TensorFlow answers with a long NotFoundError about an unregistered
        # ConfigureDistributedTPU kernel; say what is wrong in the settings' terms instead.
        where = f"tpu={tpu_address!r}" if tpu_address else "this machine (tpu empty: local)"
        raise ConfigError("strategy", f"tpu: no TPU reachable at {where} "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:160]})"
                          ) from error
    return tf.distribute.TPUStrategy(resolver)


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster: chief (writes the run directory) or not."""

    is_chief: bool = True
    task_id: int = 0
    num_workers: int = 1


def worker_role(strategy):
    """The WorkerRole of this process under `strategy` (the chief unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return WorkerRole()
    cluster = resolver.cluster_spec().as_dict()
    num_workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    # should_checkpoint is TensorFlow's own notion of the chief (task "chief", or worker 0
    # of a cluster without one).
    return WorkerRole(is_chief=bool(strategy.extended.should_checkpoint),
                      task_id=int(resolver.task_id or 0), num_workers=max(num_workers, 1))


def stop_agreement(strategy, role):
    """`agree(flag)`: `flag` OR-ed over all workers with one scalar all-reduce, so that every
    worker stops at the same step when one of them is asked to (a lone worker stopping would
    leave the others waiting in their next collective)."""
    if role.num_workers == 1:
        return bool

    @tf.function
    def votes(flag):
        per_replica = strategy.run(lambda value: value, args=(flag,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return lambda flag: float(votes(tf.constant(1.0 if flag else 0.0))) > 0


class WorkerLostError(RuntimeError):
    """A worker of a multi-worker run stopped (killed, crashed, preempted) or cannot be
    reached. TensorFlow then aborts the collectives of every worker, so none can go on; the
    same command on every worker resumes from `.checkpoint` (None: the run starts over).
    `.tasks`: the lost tasks TensorFlow's error names, e.g. ["/job:worker/replica:0/task:1"]."""

    def __init__(self, message, tasks, checkpoint):
        super().__init__(message)
        self.tasks = tasks
        self.checkpoint = checkpoint


# What a worker's loss raises in the others (TensorFlow 2.21, SIGKILL of the chief or of
# another worker during start-up, a step, a checkpoint save; tests/test_multi_worker.py): an
# UnavailableError, its collectives aborted, naming the lost task in one of two ways:
#   after missed heartbeats (~10 s), from the coordination service on the chief:
#     "The following tasks are unhealthy (stopped sending heartbeats):
#     /job:worker/replica:0/task:1"
#   from a failed call to it (a collective's RecvBuf or CompleteInstance, a heartbeat to the
#   chief's coordination service):
#     "Additional GRPC error information from remote target /job:worker/replica:0/task:0 ..."
_TASK = r"/job:([\w-]+)/replica:\d+/task:(\d+)"
_UNHEALTHY = re.compile(r"stopped sending heartbeats\):((?:\s*" + _TASK + ")+)")
_REMOTE = re.compile(r"remote target (" + _TASK + ")")
_ABORTED = "Collective ops is aborted"


def lost_tasks(message):
    """The tasks a TensorFlow error `message` says were lost, in order, without repeats."""
    found = [task for match in _UNHEALTHY.finditer(message) for task in match.group(1).split()]
    found += [match.group(1) for match in _REMOTE.finditer(message)]
    return list(dict.fromkeys(found))


def worker_lost_error(error, checkpoint):
    """The WorkerLostError for `error`, raised in a multi-worker run, when it says that a
    worker was lost (None for any other error); `checkpoint`: the run's latest checkpoint,
    which the same commands resume from."""
    if not isinstance(error, tf.errors.UnavailableError):
        return None
    message = str(error)
    tasks = lost_tasks(message)
    if not tasks and _ABORTED not in message:
        return None  # e.g. an unavailable storage service: no worker was lost
    names = ", ".join("{} {} ({})".format(*re.fullmatch(_TASK, task).groups(), task)
                      for task in tasks) or "a worker (TensorFlow's error names none)"
    resume = (f"resumes from checkpoint {checkpoint}" if checkpoint
              else "starts the run over (no checkpoint was written yet)")
    return WorkerLostError(
        f"lost {names} of the multi-worker run: it stopped or cannot be reached, so every "
        f"worker stops. Rerunning the same command on every worker {resume}",
        tasks, checkpoint)


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

    The gradient flows back to every replica's own slice: ReplicaContext.all_gather's
    gradient all-reduces (sums) the upstream gradients of every replica and hands each
    replica the rows it contributed (tested in tests/test_distribute.py). Replica r's
    loss L_r depends on the rows of replica s, so replica s receives sum_r dL_r/d(rows of s)
    and, once the optimizer sums the replicas' weight gradients, every row is trained by
    the gradient of the total loss, as on a single device.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    return context.all_gather(tensor, axis=0)


# Global batch convention (what makes a run on R replicas equal to one device):
#
#   replica r holds global images r*k .. (r+1)*k - 1 of the global batch of K = R*k images.
#
# `strategy.distribute_datasets_from_function` with one input pipeline per worker and a
# per-replica batch of k hands consecutive batches of one stream to the worker's replicas in
# replica order, so the global batch is the concatenation of the replicas' batches: exactly
# this convention (and the images one device would read with a batch of K from the same
# stream). Every replica stores its view pairs as [view1 of its k images; view2 of them]
# (2k rows), one device as [view1 of all K; view2 of all K] (2K rows). The two functions
# below convert between the layouts.


def gather_view_pairs(tensor):
    """The global [2K, ...] view-pair matrix in the single-device layout.

    `tensor` is this replica's [2k, ...] rows [view1 of its images; view2 of its images].
    Returns [view1 of all K images in global image order; view2 of all K images], the rows a
    single device would hold for the same global batch (queues must receive exactly those).
    The gradient, like `gather_across_replicas`', reaches each replica's own rows.
    """
    replicas = num_replicas_in_context()
    if replicas == 1:
        return tensor
    gathered = gather_across_replicas(tensor)  # [rep0 view1, rep0 view2, rep1 view1, ...]
    return _swap_leading_axes(gathered, replicas, 2)


def replica_view_pair_rows(global_tensor):
    """This replica's [2k, ...] rows of a global [2K, ...] matrix in single-device layout.

    The inverse of `gather_view_pairs`: rows [view1 of images r*k..(r+1)*k-1; view2 of the
    same images]. Used to cut a replica's share out of noise drawn for the whole global
    batch, so the noise of a global row does not depend on the number of replicas.
    """
    replicas = num_replicas_in_context()
    if replicas == 1:
        return global_tensor
    by_replica = _swap_leading_axes(global_tensor, 2, replicas)  # [rep0 v1, rep0 v2, ...]
    shape = tf.shape(global_tensor)
    rows = shape[0] // replicas
    by_replica = tf.reshape(by_replica, tf.concat([[replicas, rows], shape[1:]], 0))
    return tf.gather(by_replica, replica_id())


def _swap_leading_axes(tensor, outer, inner):
    """Rows grouped as [outer][inner][n] reordered as [inner][outer][n] (n = rows / both)."""
    shape = tf.shape(tensor)
    rest = shape[1:]
    blocks = tf.reshape(tensor, tf.concat([[outer, inner, -1], rest], 0))
    rank = len(tensor.shape)
    blocks = tf.transpose(blocks, [1, 0] + list(range(2, rank + 2)))
    return tf.reshape(blocks, tf.concat([[-1], rest], 0))


def num_replicas_in_context():
    """Replicas of the current replica context (1 outside a strategy or in cross-replica)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def all_replicas_true(flag):
    """Logical AND of a boolean scalar over all replicas (the flag itself on one replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return flag
    # float32: collectives of every strategy (NCCL, TPU) reduce it; counts stay exact.
    false_count = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                     tf.cast(tf.logical_not(flag), tf.float32))
    return tf.equal(false_count, 0.0)


def agree_on_finite_gradients(gradients):
    """Every replica's gradients made non-finite when any replica's are (for loss scaling).

    Keras' LossScaleOptimizer skips a step (and halves the loss scale) when the gradients it
    receives are not finite, but it receives each replica's LOCAL gradients and all-reduces
    them only afterwards. With merge calls (MirroredStrategy, MultiWorkerMirroredStrategy)
    it then uses the first local replica's verdict for all of them: an overflow on another
    replica is applied and turns the weights into NaN (tests/test_precision.py shows it).
    Without merge calls (XLA on GPUs) each replica branches on its own verdict, so replicas
    could run different collectives and hang. One all-reduced flag gives every replica the
    same verdict: skip iff some replica overflowed. Identity on one replica.
    """
    present = [g for g in gradients if g is not None]
    if num_replicas_in_context() == 1 or not present:
        return gradients
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in present]))
    finite = all_replicas_true(finite)
    return [None if g is None else tf.where(finite, g, tf.constant(float("nan"), g.dtype))
            for g in gradients]


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
