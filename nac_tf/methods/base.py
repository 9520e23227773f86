"""The shared two-view machinery every method builds on.

A method sees a batch of K images as two augmented views. `TwoViewMethod.train_step` runs the
encoder on both views, asks the subclass for its loss (`view_pair_loss`), takes one optimizer
step and lets the subclass update its own state afterwards (`after_optimizer_step`: EMA
networks, queues). Row layout everywhere: rows 0..K-1 are the first views, rows K..2K-1 the
second views, so row i's partner is row (i + K) mod 2K (the convention of
`nac_tf.objectives`).

Distribution: the step runs inside `strategy.run`. Each replica's loss is the mean over its own
rows; it is divided by the number of replicas before differentiation because Keras' optimizer
sums gradients across replicas. Negatives are gathered across replicas by the subclasses.
"""
import dataclasses

from typing import Any, Dict, NamedTuple, Optional

import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.code_statistics import activation_code_statistics
from nac_tf.models import ProjectionHead, clone_encoder, clone_head


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """The settings a method needs (a subset of PretrainConfig, kept free of run details)."""

    code_dim: int = 128
    head_hidden_dim: int = 2048
    head_batch_norm: bool = False
    head_scale_by_sqrt_dim: bool = True
    synchronized_batch_norm: bool = False
    per_view_batch_norm: bool = False
    flip_prob: float = 0.1
    queue_size: int = 50000
    momentum: float = 0.99
    l2_weight: float = 0.1
    temperature: float = 0.5
    seed: int = 0


def binary_codes(pre_activations):
    """c = sgn(a) in {-1, +1} (a = 0 counts as -1, bit 0), without gradient."""
    return tf.where(tf.stop_gradient(pre_activations) > 0, 1.0, -1.0)


class PairLoss(NamedTuple):
    """What a method's loss hands back to the shared train_step.

    loss: mean over this replica's rows (float32 scalar).
    metrics: extra scalars to log (for example the MI bound).
    code_pre_activations: projection-head outputs a of the first views, for the
        activation-code statistics; None for methods without codes.
    state: tensors `after_optimizer_step` needs (for example momentum keys to enqueue).
    """

    loss: Any
    metrics: Dict[str, Any]
    code_pre_activations: Optional[Any] = None
    state: Optional[Dict[str, Any]] = None


class TwoViewMethod(keras.Model):
    """Base class: encoder + two-view train_step; subclasses add heads and a loss."""

    def __init__(self, encoder, config: MethodConfig, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.method_config = config

    # ----------------------------------------------------------------- subclass hooks
    def view_pair_loss(self, view1, view2, training) -> PairLoss:
        """The method's objective on one replica's local batch of view pairs."""
        raise NotImplementedError

    def after_optimizer_step(self, state):
        """Updates non-gradient state after the optimizer step (EMA networks, queues)."""
        del state  # nothing to update in the base class

    def build_networks(self, image_shape):
        """Creates every variable by running the networks once on a dummy batch.

        Needed before restoring a checkpoint or building the optimizer. Subclasses with
        momentum copies extend it to initialise the copies to the online weights.
        """
        self.view_pair_loss(tf.zeros((2,) + tuple(image_shape)), tf.zeros((2,) + tuple(image_shape)),
                            training=False)

    def make_head(self, name):
        """A projection head or inference network (same MLP shape, DESIGN.md section 1)."""
        c = self.method_config
        return ProjectionHead(
            hidden_dim=c.head_hidden_dim, output_dim=c.code_dim, use_batch_norm=c.head_batch_norm,
            scale_by_sqrt_dim=c.head_scale_by_sqrt_dim,
            synchronized_batch_norm=c.synchronized_batch_norm, name=name)

    def momentum_copy(self, online, name):
        """A new network with `online`'s architecture and separate variables."""
        if isinstance(online, ProjectionHead):
            return clone_head(online, name=name)
        return clone_encoder(online, name=name)

    # ----------------------------------------------------------------- shared pieces
    def encode_views(self, view1, view2, training):
        """Representations h of both views, stacked as [h(view1); h(view2)].

        One forward pass over the concatenated views normalises BatchNorm over both views
        together; with `per_view_batch_norm` (the authors' PyTorch behaviour) each view gets
        its own pass and so its own batch statistics.
        """
        if self.method_config.per_view_batch_norm:
            return keras.ops.concatenate(
                [self.encoder(view1, training=training), self.encoder(view2, training=training)],
                axis=0)
        return self.encoder(keras.ops.concatenate([view1, view2], axis=0), training=training)

    def flip_signs(self, shape):
        """Fresh channel noise m in {-1, +1} with P(m = -1) = p, for this replica and step.

        The seed is (seed + replica id, optimizer step): new masks every step, distinct on
        every replica, and reproducible after a resume without any extra random state.
        """
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations, tf.int32) if optimizer is not None else tf.constant(0)
        seed = tf.stack([self.method_config.seed + distribute.replica_id(), step])
        uniform = tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)
        flip = uniform < self.method_config.flip_prob
        return tf.where(flip, -1.0, 1.0)

    @property
    def optimized_variables(self):
        """The variables the optimizer updates: trainable ones minus momentum copies."""
        excluded = {id(v) for v in self.momentum_variables()}
        return [v for v in self.trainable_variables if id(v) not in excluded]

    def momentum_variables(self):
        """Variables updated by EMA instead of gradients (none in the base class)."""
        return []

    def call(self, images, training=False):
        """The representation h used downstream (linear evaluation, retrieval)."""
        return self.encoder(images, training=training)

    def train_step(self, data):
        view1, view2 = data[0], data[1]
        with tf.GradientTape() as tape:
            out = self.view_pair_loss(view1, view2, training=True)
            # Keras' optimizer SUMs gradients over replicas: scale so the update is the
            # gradient of the global-batch mean.
            scaled_loss = out.loss / tf.cast(distribute.num_replicas(), out.loss.dtype)
            # Loss scaling for float16 (identity unless the optimizer is a LossScaleOptimizer).
            scaled_loss = self.optimizer.scale_loss(scaled_loss)
        variables = self.optimized_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.after_optimizer_step(out.state or {})

        logs = {"loss": out.loss}
        logs.update(out.metrics)
        if out.code_pre_activations is not None:
            # Statistics over the global batch of first views: one codeword per image.
            codes = distribute.gather_across_replicas(tf.stop_gradient(out.code_pre_activations))
            logs.update(activation_code_statistics(codes))
        return logs


class MomentumNetworks:
    """EMA copies of online networks (MoCo-style momentum networks), Eq. 20.

    The copies have the online architecture and separate variables; `copy_online_weights`
    initialises them to the online weights and `update` applies v <- m v + (1 - m) w to the
    weights that are trainable online. The copies stay `trainable` (a frozen Keras
    BatchNormalization would switch to inference mode) but are left out of the optimizer's
    variables; their BatchNorm moving statistics are not averaged, they run in training mode
    and keep their own, as in MoCo.
    """

    def __init__(self, online, momentum_copies, decay):
        self.online = list(online)
        self.copies = list(momentum_copies)
        self.decay = decay

    def pairs(self):
        """(online, copy) pairs of the trainable online weights."""
        pairs = []
        for online, copy in zip(self.online, self.copies):
            if len(online.weights) != len(copy.weights):
                raise ValueError(f"momentum copy of {online.name!r} does not mirror it: "
                                 f"{len(online.weights)} vs {len(copy.weights)} weights")
            pairs.extend((w, v) for w, v in zip(online.weights, copy.weights) if w.trainable)
        return pairs

    def variables(self):
        return [v for copy in self.copies for v in copy.weights]

    def copy_online_weights(self):
        for online, copy in self.pairs():
            copy.assign(online)

    def update(self):
        pairs = self.pairs()
        decay = self.decay
        new_values = [decay * copy + (1.0 - decay) * online for online, copy in pairs]
        distribute.assign_variables([copy for _, copy in pairs], new_values)


class MomentumQueueMethod(TwoViewMethod):
    """Base for methods with momentum networks and a queue of momentum keys (NAC-MQ, MoCo).

    Subclasses create their online networks, then call `init_momentum(online_networks)`,
    and return the momentum keys to enqueue as `state["keys"]` from `view_pair_loss`. After
    each optimizer step the copies move by EMA and the keys of the whole global batch (both
    views) are written into the ring buffer, oldest first (MoCo convention).
    """

    queue_initializer = "random_normal"

    def init_momentum(self, online_networks):
        c = self.method_config
        copies = [self.momentum_copy(net, f"momentum_{net.name}") for net in online_networks]
        self.momentum_networks = copies
        self._momentum = MomentumNetworks(online_networks, copies, c.momentum)
        self.queue = self.add_weight(
            shape=(c.queue_size, c.code_dim), initializer=self.queue_initializer,
            trainable=False, name="queue")
        self.queue_pointer = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="queue_pointer")
        return copies

    def momentum_variables(self):
        return self._momentum.variables()

    def build_networks(self, image_shape):
        super().build_networks(image_shape)
        self._momentum.copy_online_weights()

    def after_optimizer_step(self, state):
        self._momentum.update()
        keys = distribute.gather_across_replicas(tf.stop_gradient(state["keys"]))
        keys = tf.cast(keys, self.queue.dtype)
        pointer = tf.convert_to_tensor(self.queue_pointer)
        # The queue size is a multiple of the rows enqueued per step (validated in config),
        # so a write never wraps around the end of the buffer.
        new_queue = tf.tensor_scatter_nd_update(
            tf.convert_to_tensor(self.queue),
            (pointer + tf.range(tf.shape(keys)[0]))[:, None], keys)
        new_pointer = (pointer + tf.shape(keys)[0]) % self.method_config.queue_size
        distribute.assign_variables([self.queue, self.queue_pointer], [new_queue, new_pointer])
