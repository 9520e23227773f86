"""The shared two-view machinery every method builds on.

A method sees a batch of K images as two augmented views. `TwoViewMethod.train_step` runs the
encoder on both views, asks the subclass for its loss (`view_pair_loss`), takes one optimizer
step and lets the subclass update its own state afterwards (`after_optimizer_step`: EMA
networks, queues). Row layout everywhere: rows 0..K-1 are the first views, rows K..2K-1 the
second views, so row i's partner is row (i + K) mod 2K (the convention of
`nac_tf.objectives`). With augment_on="device" the input element is not yet the views:
`input_views` finishes them inside the step (`view_stage`).

Distribution: the step runs inside `strategy.run`, and R replicas compute exactly what one
device computes on the same global batch of K images (tests/test_distribute.py):
- replica r holds global images r*k..(r+1)*k-1 (k = K / R; the convention of
  `nac_tf.distribute`), as rows [view1 of its images; view2 of them];
- each replica's loss is the mean over its own rows divided by R, because Keras' optimizer
  sums the replicas' gradients (sum_r mean_r / R is the global mean: equal local batches);
- negatives are the codes of the whole global batch, all-gathered with gradients to their
  owners; queues receive the whole global batch in the single-device row order;
- the channel noise of a row is a function of its global row (`flip_signs`);
- BatchNorm statistics are global with synchronized BatchNorm (`batch_norm="sync"`), local
  otherwise; `per_view_batch_norm` runs every network once per view.
"""
import dataclasses

from typing import Any, Dict, NamedTuple, Optional

import keras
import tensorflow as tf

from nac_tf import distribute
from nac_tf.code_statistics import activation_code_statistics
from nac_tf.methods.registry import MOMENTUM, QUEUE_INIT_SCALE, QUEUE_SIZE
from nac_tf.models import ProjectionHead, clone_encoder, clone_head


# Flip masks compare integers u ~ U{0, ..., 2^24 - 1} with p * 2^24 (see `flip_signs`).
_MASK_RESOLUTION = 2 ** 24


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """What every method shares: the heads' shape, the BatchNorm mode and the seed. A
    method's own hyperparameters (NAC's flip probability, a queue's size, a temperature) are
    keyword arguments of its class, declared in `nac_tf.methods.registry`."""

    code_dim: int = 128
    head_hidden_dim: int = 2048
    head_batch_norm: bool = False
    head_scale_by_sqrt_dim: bool = True
    synchronized_batch_norm: bool = False
    per_view_batch_norm: bool = False
    seed: int = 0
    head_init: str = "keras"


def loss_precision(x):
    """`x` in the precision losses are computed in: float32 for 16-bit network outputs (mixed
    precision), otherwise unchanged, so float64 networks keep float64 losses (the parity
    harness, benchmarks/authors_parity.py, runs both frameworks in float64)."""
    if keras.backend.standardize_dtype(x.dtype) in ("float32", "float64"):
        return x
    return keras.ops.cast(x, "float32")


def write_into_queue(queue, pointer, keys):
    """`queue` [M, D] with rows pointer..pointer + n - 1 replaced by `keys` [n, D].

    The queue is a ring of whole global batches (M is a multiple of n, checked by the
    config), so a write never wraps around its end.
    """
    return tf.tensor_scatter_nd_update(
        queue, (pointer + tf.range(tf.shape(keys)[0]))[:, None], keys)


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
    """Base class: encoder + two-view train_step; subclasses add heads and a loss.

    A subclass's own constructor arguments are its hyperparameters, declared with its
    registry line (`nac_tf.methods.registry`), which are also the PretrainConfig fields the
    trainer passes to it (`nac_tf.methods.hyperparameters_of`); it checks them with their
    declarations' `check`.
    """

    # True for a method without projection head whose objective scores the features h
    # themselves (AMDIM): its hash codes are sgn(h) (`nac_tf.export`).
    CODES_FROM_FEATURES = False

    def __init__(self, encoder, config: MethodConfig, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.method_config = config
        # augment_on="device": the function that makes a step's (view1, view2) from its input
        # element (see `input_views`); None: the elements are the views.
        self.view_stage = None

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
        """A projection head or inference network (the same MLP shape, paper Sec. 3.5)."""
        c = self.method_config
        return ProjectionHead(
            hidden_dim=c.head_hidden_dim, output_dim=c.code_dim, use_batch_norm=c.head_batch_norm,
            scale_by_sqrt_dim=c.head_scale_by_sqrt_dim,
            synchronized_batch_norm=c.synchronized_batch_norm, initializer=c.head_init,
            name=name)

    def momentum_copy(self, online, name):
        """A new network with `online`'s architecture and separate variables."""
        if isinstance(online, ProjectionHead):
            return clone_head(online, name=name)
        return clone_encoder(online, name=name)

    # ----------------------------------------------------------------- shared pieces
    def forward_views(self, forward, view1, view2):
        """`forward` applied to both views; rows of every output are [view1 rows; view2 rows].

        `forward` maps images [n, ...] to a nest of row-aligned tensors [n, ...]. By default
        it runs once on [view1; view2], so every BatchNorm inside normalises over both views
        together. With `per_view_batch_norm` (the authors' PyTorch behaviour, which calls the
        whole model once per view) it runs once per view, so each view gets its own batch
        statistics, in the encoder and in the heads alike. Whether statistics span the local
        or the global batch is the BatchNorm layers' `synchronized` setting; momentum
        networks go through here too, so they always follow the online networks' mode.
        """
        if self.method_config.per_view_batch_norm:
            return tf.nest.map_structure(
                lambda first, second: keras.ops.concatenate([first, second], axis=0),
                forward(view1), forward(view2))
        return forward(keras.ops.concatenate([view1, view2], axis=0))

    def step_seed(self):
        """The stateless seed [2] (run seed, optimizer step) of this step's per-row draws:
        fresh every step, the same on every replica, again after a resume (step 0 before the
        optimizer exists)."""
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations, tf.int32) if optimizer is not None else tf.constant(0)
        return tf.stack([tf.constant(self.method_config.seed, tf.int32), step])

    def flip_signs(self, shape, flip_prob):
        """Channel noise m in {-1, +1}, P(m = -1) = `flip_prob`, for this replica's rows at
        this step.

        `shape` is this replica's [2k, D]. The mask is a function of the GLOBAL row: the
        [2K, D] mask of the whole global batch, in the single-device layout, is drawn from
        the stateless seed (seed, optimizer step) and the replica keeps its own rows
        (`distribute.replica_view_pair_rows`). So R replicas use exactly the masks one device
        uses on the same global batch; masks are fresh every step (the authors' choice),
        independent across rows, and reproducible after a resume with no extra random state.
        The global mask is tiny (2K x D), so every replica drawing all of it costs nothing.
        """
        shape = tf.convert_to_tensor(shape, tf.int32)
        replicas = distribute.num_replicas_in_context()
        global_shape = tf.concat([shape[:1] * replicas, shape[1:]], axis=0)
        seed = self.step_seed()
        # Integers, not floats: Philox gives the same bits with and without XLA, but the
        # float conversion differs between TensorFlow's CPU/GPU kernels and XLA, so float
        # uniforms would make jit_compile=True draw other masks. u ~ U{0..2^24-1} and
        # P(u < round(p 2^24)) is p to within 2^-25.
        uniform = tf.random.stateless_uniform(
            global_shape, seed=seed, minval=0, maxval=_MASK_RESOLUTION, dtype=tf.int32,
            alg="philox")
        flip = uniform < int(round(flip_prob * _MASK_RESOLUTION))
        return distribute.replica_view_pair_rows(tf.where(flip, -1.0, 1.0))

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

    def input_views(self, data):
        """(view1, view2) of one step's input element `data`.

        By default the element holds the views: (view1, view2, ...). With a `view_stage`
        (augment_on="device": `ViewPairAugmenter.colour_pair`), the element is what the input
        pipeline left undone, e.g. a CropPair, and the stage finishes the views here, inside
        the replica's step and so on its device. Each replica finishes its own rows: their
        random parameters travel with them. The stage computes in float32 whatever the
        dtype policy (plain TensorFlow ops; the encoder casts its input), before the
        gradient tape starts.
        """
        if self.view_stage is None:
            return data[0], data[1]
        with tf.name_scope("view_stage"):
            view1, view2 = self.view_stage(data)
        return view1, view2

    def compute_gradients(self, data):
        """(PairLoss, gradients, variables) of this replica's share of one step.

        The differentiated loss is the replica's mean divided by the number of replicas R:
        Keras' optimizer SUMS the replicas' gradients before the update, and
        sum_r mean_r / R is the mean over the global batch (every replica holds the same
        number of rows), so the update is the gradient of the global-batch loss. With a
        LossScaleOptimizer (float16) the loss is also multiplied by the loss scale, which
        `apply_gradients` divides out again.
        """
        view1, view2 = self.input_views(data)
        with tf.GradientTape() as tape:
            out = self.view_pair_loss(view1, view2, training=True)
            scaled_loss = out.loss / tf.cast(distribute.num_replicas_in_context(),
                                             out.loss.dtype)
            # Identity unless the optimizer is a LossScaleOptimizer.
            scaled_loss = self.optimizer.scale_loss(scaled_loss)
        variables = self.optimized_variables
        return out, tape.gradient(scaled_loss, variables), variables

    def train_step(self, data):
        out, gradients, variables = self.compute_gradients(data)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # It skips non-finite steps, judging each replica's LOCAL gradients: make the
            # verdict global (see distribute.agree_on_finite_gradients).
            gradients = distribute.agree_on_finite_gradients(gradients)
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
    and return the momentum keys to enqueue as `state["keys"]` from `view_pair_loss` (or,
    already gathered with `global_keys`, as `state["global_keys"]`). After
    each optimizer step the copies move by EMA and the keys of the whole global batch (both
    views) are written into the ring buffer, oldest first (MoCo convention).
    """

    def __init__(self, encoder, config, *, queue_size=QUEUE_SIZE.default,
                 momentum=MOMENTUM.default, queue_init_scale=QUEUE_INIT_SCALE.default,
                 **kwargs):
        super().__init__(encoder, config, **kwargs)
        self.queue_size = int(QUEUE_SIZE.check(queue_size))
        self.momentum = MOMENTUM.check(momentum)
        self.queue_init_scale = QUEUE_INIT_SCALE.check(queue_init_scale)

    def queue_initializer(self, seed):
        """Initial queue entries: small Gaussian noise N(0, queue_init_scale^2), as the
        authors' code initialises its queues (scale 1e-3), seeded from the run's seed so that
        two runs of one command (and a killed run and its resume) start from the same queue.
        NAC scores them as near-zero codes; MoCo normalises them (the scale cancels)."""
        return keras.initializers.RandomNormal(stddev=self.queue_init_scale,
                                               seed=seed)

    def global_keys(self, keys):
        """This step's momentum keys of the whole global batch, single-device row order."""
        return tf.cast(distribute.gather_view_pairs(tf.stop_gradient(keys)), self.queue.dtype)

    def init_momentum(self, online_networks):
        c = self.method_config
        copies = [self.momentum_copy(net, f"momentum_{net.name}") for net in online_networks]
        self.momentum_networks = copies
        self._momentum = MomentumNetworks(online_networks, copies, self.momentum)
        self.queue = self.add_weight(
            shape=(self.queue_size, c.code_dim), initializer=self.queue_initializer(c.seed),
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
        # The queue receives the whole global batch in the single-device order [first-view
        # keys of all K images; second-view keys], so its contents and pointer do not depend
        # on the number of replicas.
        keys = state.get("global_keys")
        if keys is None:
            keys = self.global_keys(state["keys"])
        pointer = tf.convert_to_tensor(self.queue_pointer)
        new_queue = write_into_queue(tf.convert_to_tensor(self.queue), pointer, keys)
        new_pointer = (pointer + tf.shape(keys)[0]) % self.queue_size
        distribute.assign_variables([self.queue, self.queue_pointer], [new_queue, new_pointer])
