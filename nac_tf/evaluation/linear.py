"""Linear evaluation of a frozen encoder (docs/protocols.md section 2; paper Sec. 4).

Protocol: the encoder is frozen (inference-mode BatchNorm) and its projection head removed;
a linear classifier (Dense with bias) on the representation h is trained with SGD, Nesterov
momentum 0.9, 100 epochs and no regularisation. The learning rate is chosen from
{0.01, 0.1, 1, 10} by top-1 accuracy on a validation split held out (seeded, stratified)
from the training set; the chosen rate is then retrained on the full training set and top-1
accuracy on the test set is reported.

Choices this module makes (all in `LinearEvalConfig`). The MLP probe of
`nac_tf.evaluation.mlp` shares every one but the zero initialisation (`ProbeConfig`), and
this module's machinery: feature extraction, epoch orders, augmentation, the rate search,
the result object (`_Probe` names what differs).
- Learning-rate schedule: cosine decay to 0 over all training steps by default (SimCLR's
  linear-evaluation schedule; it makes the final weights insensitive to the last
  mini-batches), or "constant".
- Mini-batches of 256, reshuffled every epoch (seeded); the last, smaller batch is kept so
  every example is seen once per epoch.
- Weights and bias start at zero: the problem is convex, so the initialisation is not a
  source of variance and the result depends on the seed only through the data order.
- Ties between candidate rates go to the smaller rate; a rate whose loss becomes non-finite
  is recorded as diverged and scores 0 on validation.
- With a single candidate rate there is nothing to choose: no validation split is held out
  and the rate is trained on the full training set directly.
- Optional train-time augmentation (`augment=True`, images only): the standard CIFAR recipe,
  4-pixel zero padding + random crop back to size + horizontal flip with probability 1/2.
  Test and validation images are never augmented.
"""
import dataclasses
import math
from typing import Dict, Optional, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from nac_tf.data.pipeline import evaluation_images
from nac_tf.data.splits import stratified_split

SCHEDULES = ("cosine", "constant")
# Pixels of zero padding of the CIFAR pad-and-crop augmentation (He et al., 2016).
CROP_PADDING = 4

# Independent random streams derived from `config.seed`, so changing e.g. the number of
# epochs does not change the validation split. The MLP probe adds its initialisation and
# dropout streams.
_SPLIT_STREAM, _ORDER_STREAM, _AUGMENT_STREAM = 0, 1, 2
_INIT_STREAM, _DROPOUT_STREAM = 3, 4


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Settings every probe on a frozen encoder shares (the linear probe's
    `LinearEvalConfig`, the MLP probe's `nac_tf.evaluation.mlp.MLPEvalConfig`).

    validation_fraction: a float in (0, 1) is the held-out fraction of the training set; an
    int >= 1 is the number of held-out examples.
    """

    epochs: int = 100
    batch_size: int = 256
    learning_rates: Tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    momentum: float = 0.9
    nesterov: bool = True
    validation_fraction: Union[float, int] = 0.1
    schedule: str = "cosine"
    seed: int = 0
    augment: bool = False

    def __post_init__(self):
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("batch_size", self.batch_size)
        rates = self.learning_rates
        if isinstance(rates, (str, bytes)) or not hasattr(rates, "__iter__"):
            raise ValueError(f"learning_rates must be a non-empty sequence of positive "
                             f"finite numbers; received {rates!r}")
        rates = tuple(rates)
        if not rates:
            raise ValueError("learning_rates must be a non-empty sequence of positive finite "
                             "numbers; received an empty sequence")
        for rate in rates:
            if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer,
                                                               np.floating)) \
                    or not math.isfinite(rate) or rate <= 0:
                raise ValueError(f"learning_rates must hold positive finite numbers; "
                                 f"received {rate!r} in {rates!r}")
        rates = tuple(float(rate) for rate in rates)
        if len(set(rates)) != len(rates):
            raise ValueError(f"learning_rates must not repeat a rate; received {rates!r}")
        object.__setattr__(self, "learning_rates", rates)
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) \
                or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be a number in [0, 1); received "
                             f"{self.momentum!r}")
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"nesterov must be True or False; received {self.nesterov!r}")
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer,
                                                                   np.floating)):
            raise ValueError(f"validation_fraction must be a float in (0, 1) or an int >= 1; "
                             f"received {fraction!r}")
        if isinstance(fraction, (int, np.integer)):
            if fraction < 1:
                raise ValueError(f"validation_fraction must be a float in (0, 1) or an int "
                                 f">= 1; received {fraction!r}")
        elif not 0.0 < fraction < 1.0:
            raise ValueError(f"validation_fraction must be a float in (0, 1) or an int >= 1; "
                             f"received {fraction!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; received "
                             f"{self.schedule!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer; received {self.seed!r}")
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment must be True or False; received {self.augment!r}")

    def to_dict(self):
        """JSON-ready dict of every field."""
        out = dataclasses.asdict(self)
        out["learning_rates"] = list(self.learning_rates)
        return out


@dataclasses.dataclass(frozen=True)
class LinearEvalConfig(ProbeConfig):
    """Settings of the linear-evaluation protocol (defaults: docs/protocols.md section 2);
    the fields are `ProbeConfig`'s."""


class _Predictions:
    """logits / predict / accuracy of a trained classifier from the logits of one chunk of
    features, `_chunk_logits(features [n, D]) -> [n, C]` (NumPy float32)."""

    def logits(self, features, chunk_size=8192):
        """[N, C] float32 logits, computed in chunks to bound memory."""
        features = np.asarray(features, np.float32)
        # range(0, max(N, 1)): an empty input still gives one (empty) chunk, [0, C].
        return np.concatenate([self._chunk_logits(features[start:start + chunk_size])
                               for start in range(0, max(features.shape[0], 1), chunk_size)])

    def predict(self, features):
        """Predicted class ids [N]; -1 where the logits are not finite (always wrong).

        Ties go to the smaller class id (np.argmax), so predictions are deterministic.
        """
        logits = self.logits(features)
        predictions = np.argmax(logits, axis=1).astype(np.int64)
        predictions[~np.all(np.isfinite(logits), axis=1)] = -1
        return predictions

    def accuracy(self, features, labels):
        """Top-1 accuracy in [0, 1]."""
        labels = np.asarray(labels)
        if labels.shape[0] == 0:
            raise ValueError("labels is empty: accuracy of an empty set is undefined")
        return float(np.mean(self.predict(features) == labels))


@dataclasses.dataclass(frozen=True)
class LinearClassifier(_Predictions):
    """A trained linear classifier: logits = features @ kernel + bias (NumPy float32)."""

    kernel: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]
    learning_rate: float
    diverged: bool  # the training loss became non-finite; training stopped there
    epoch_losses: Tuple[float, ...]  # mean training cross-entropy of each epoch run
    eval_top1: Optional[float] = None  # accuracy on (eval_features, eval_labels), if given

    def _chunk_logits(self, features):
        return features @ self.kernel + self.bias

    @property
    def feature_dim(self):
        return int(self.kernel.shape[0])


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Everything a JSON report of one probe's evaluation needs (see `to_dict`)."""

    top1: float  # test accuracy in [0, 1] of the classifier retrained on the full train set
    learning_rate: float  # the chosen rate
    validation_top1: Dict[float, float]  # per candidate rate; empty with a single rate
    diverged: Tuple[float, ...]  # candidate rates whose training loss became non-finite
    num_train: int  # examples the final classifier was trained on (the full training set)
    num_validation: int  # held out for the rate search (0 with a single candidate rate)
    num_test: int
    num_classes: int
    feature_dim: int
    config: dict
    # LinearClassifier, or the MLP probe's MLPClassifier.
    classifier: Optional[_Predictions] = dataclasses.field(default=None, repr=False)

    def to_dict(self):
        """JSON-ready dict (rates as string keys, without the classifier's arrays)."""
        return {
            "top1": self.top1,
            "learning_rate": self.learning_rate,
            "validation_top1": {repr(rate): top1 for rate, top1 in
                                self.validation_top1.items()},
            "diverged": list(self.diverged),
            "num_train": self.num_train,
            "num_validation": self.num_validation,
            "num_test": self.num_test,
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
            "config": dict(self.config),
        }


@dataclasses.dataclass(frozen=True)
class LinearEvalResult(ProbeResult):
    """The result of `linear_evaluation` (its classifier a `LinearClassifier`)."""


# ---------------------------------------------------------------------------------------
# Input checks and the validation split.


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; received {value!r}")


def _check_features(name, features):
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array; received shape "
                         f"{features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contains non-finite values")
    return features


def _check_labels(name, labels, num_examples, num_classes, features_name):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class ids; received shape "
                         f"{labels.shape}")
    if labels.shape[0] != num_examples:
        raise ValueError(f"{name} has {labels.shape[0]} entries but {features_name} has "
                         f"{num_examples} rows")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"{name} must hold integer class ids; received dtype "
                             f"{labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, num_classes={num_classes}); received "
                         f"values in [{labels.min()}, {labels.max()}]")
    return labels


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; received {num_classes!r}")
    return int(num_classes)


def _check_config(config, probe):
    if config is None:
        return probe.config_class()
    if type(config) is not probe.config_class:
        raise ValueError(f"config must be of type {probe.config_class.__name__}; received "
                         f"{type(config).__name__}")
    return config


def _rng(seed, stream):
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def epoch_orders(num_examples, epochs, seed):
    """The seeded order of the rows in each epoch: int32 [epochs, num_examples].

    Both training paths use it, and every candidate learning rate sees the same order, so
    rates are compared on the same mini-batch sequence.
    """
    rng = _rng(seed, _ORDER_STREAM)
    return np.stack([rng.permutation(num_examples) for _ in range(epochs)]).astype(np.int32)


# ---------------------------------------------------------------------------------------
# The training core.


@tf.custom_gradient
def _linear(features, kernel, bias):
    """features @ kernel + bias, with a gradient cheaper on CPU than MatMul's default.

    TensorFlow's MatMul gradient forms d kernel = x^T dy with transpose_a on the tall
    [B, D] batch, which Eigen runs several times slower than (dy^T x)^T; this is the same
    value, computed the fast way (2-3x faster epochs on 2048-d features). The encoder is
    frozen, so no gradient is returned for the features.
    """

    def gradient(upstream):
        kernel_gradient = tf.transpose(tf.matmul(upstream, features, transpose_a=True))
        return None, kernel_gradient, tf.reduce_sum(upstream, axis=0)

    return tf.matmul(features, kernel) + bias, gradient


class _ProbeTrainer:
    """A probe's weights + Keras SGD and the compiled epoch loop for one learning rate.

    A subclass builds its layers, passes their trainable variables here and defines
    `_train_logits(features)` (training mode: dropout, batch statistics) and
    `_classifier(...)` (the trained weights as NumPy, evaluated without TensorFlow).
    """

    def __init__(self, variables, learning_rate, total_steps, config):
        if config.schedule == "cosine":
            rate = keras.optimizers.schedules.CosineDecay(float(learning_rate),
                                                          decay_steps=max(total_steps, 1))
        else:
            rate = float(learning_rate)
        # No weight decay: the protocols train their classifiers without it.
        self.optimizer = keras.optimizers.SGD(learning_rate=rate, momentum=config.momentum,
                                              nesterov=config.nesterov)
        self.variables = list(variables)
        # Variables must exist before the tf.functions below are traced.
        self.optimizer.build(self.variables)
        self.batch_size = config.batch_size
        self.epoch = tf.function(self._epoch, reduce_retracing=True)

    def _train_logits(self, features):
        raise NotImplementedError

    def _step(self, features, labels):
        """One SGD update on a mini-batch; returns the batch's summed cross-entropy."""
        with tf.GradientTape() as tape:
            logits = self._train_logits(features)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                    logits=logits)
            loss = tf.reduce_mean(losses)
        gradients = tape.gradient(loss, self.variables)
        self.optimizer.apply(gradients, self.variables)
        return tf.reduce_sum(losses)

    def _epoch(self, features, labels, order):
        """A whole epoch in one graph (no per-step Python overhead on CPU).

        `order` is this epoch's permutation of the rows; the last batch may be smaller.
        Returns the mean training cross-entropy of the epoch.
        """
        n = tf.shape(order)[0]
        steps = (n + self.batch_size - 1) // self.batch_size
        total = tf.constant(0.0, tf.float32)
        for i in tf.range(steps):
            batch = order[i * self.batch_size:tf.minimum((i + 1) * self.batch_size, n)]
            total += self._step(tf.gather(features, batch), tf.gather(labels, batch))
        return total / tf.cast(n, tf.float32)

    def classifier(self, learning_rate, diverged, epoch_losses, eval_features, eval_labels):
        result = self._classifier(float(learning_rate), diverged, tuple(epoch_losses))
        if eval_features is not None:
            result = dataclasses.replace(result,
                                         eval_top1=result.accuracy(eval_features, eval_labels))
        return result

    def _classifier(self, learning_rate, diverged, epoch_losses):
        raise NotImplementedError


class _LinearTrainer(_ProbeTrainer):
    """The linear probe: one Dense layer with bias, zero-initialised."""

    def __init__(self, feature_dim, num_classes, learning_rate, total_steps, config):
        # Zero init: convex problem, so no initialisation variance (see the module doc).
        self.layer = keras.layers.Dense(num_classes, use_bias=True,
                                        kernel_initializer="zeros", bias_initializer="zeros",
                                        dtype="float32")
        self.layer.build((None, feature_dim))
        super().__init__(self.layer.trainable_variables, learning_rate, total_steps, config)

    def _train_logits(self, features):
        # The Dense layer holds the weights; `_linear` is its call with a faster gradient.
        return _linear(features, self.layer.kernel, self.layer.bias)

    def _classifier(self, learning_rate, diverged, epoch_losses):
        kernel, bias = (np.array(v.numpy(), np.float32) for v in self.layer.trainable_variables)
        return LinearClassifier(kernel, bias, learning_rate, diverged, epoch_losses)


@dataclasses.dataclass(frozen=True)
class _Probe:
    """What distinguishes one probe in the shared protocol below."""

    title: str  # progress lines: "<title> (...): learning rate ..."
    config_class: type
    trainer_class: type  # (feature_dim, num_classes, rate, total_steps, config)
    result_class: type
    from_images: str  # the function that takes images, named in errors


_LINEAR = _Probe("Linear evaluation", LinearEvalConfig, _LinearTrainer, LinearEvalResult,
                 "linear_evaluation_from_images")


def _progbar(progress, epochs, learning_rate, what, probe):
    if not progress:
        return None
    print(f"{probe.title} ({what}): learning rate {learning_rate:g}, {epochs} epochs")
    return keras.utils.Progbar(epochs, unit_name="epoch")


def train_linear_classifier(train_features, train_labels, num_classes, learning_rate,
                            config=None, eval_features=None, eval_labels=None, progress=False):
    """Train the linear classifier of docs/protocols.md section 2 on precomputed features.

    SGD with `config.momentum` (Nesterov per `config.nesterov`, Keras' formulation), mean
    softmax cross-entropy, `config.epochs` epochs of `config.batch_size` mini-batches in a
    seeded order reshuffled every epoch, `config.schedule` learning rate. Deterministic
    given `config.seed`. Returns a `LinearClassifier` (NumPy kernel and bias), with
    `eval_top1` filled in when eval_features / eval_labels are given. Training stops early
    (diverged=True) when the epoch loss becomes non-finite.
    """
    return _train_classifier(_LINEAR, train_features, train_labels, num_classes,
                             learning_rate, config, eval_features, eval_labels, progress)


def _train_classifier(probe, train_features, train_labels, num_classes, learning_rate,
                      config, eval_features, eval_labels, progress):
    """`train_linear_classifier` for any probe (`probe.trainer_class`)."""
    config = _check_config(config, probe)
    num_classes = _check_num_classes(num_classes)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float,
                                                                         np.integer,
                                                                         np.floating)) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a positive finite number; received "
                         f"{learning_rate!r}")
    features = _check_features("train_features", train_features)
    labels = _check_labels("train_labels", train_labels, features.shape[0], num_classes,
                           "train_features")
    if (eval_features is None) != (eval_labels is None):
        raise ValueError("eval_features and eval_labels must be given together")
    if eval_features is not None:
        eval_features = _check_features("eval_features", eval_features)
        if eval_features.shape[1] != features.shape[1]:
            raise ValueError(f"eval_features has {eval_features.shape[1]} columns but "
                             f"train_features has {features.shape[1]}")
        eval_labels = _check_labels("eval_labels", eval_labels, eval_features.shape[0],
                                    num_classes, "eval_features")
    n = features.shape[0]
    steps_per_epoch = -(-n // config.batch_size)
    trainer = probe.trainer_class(features.shape[1], num_classes, learning_rate,
                                  config.epochs * steps_per_epoch, config)
    features_t = tf.convert_to_tensor(features)
    labels_t = tf.convert_to_tensor(labels.astype(np.int32))
    orders = epoch_orders(n, config.epochs, config.seed)
    bar = _progbar(progress, config.epochs, learning_rate, f"{n} examples", probe)
    losses, diverged = _run_epochs(
        lambda epoch: float(trainer.epoch(features_t, labels_t,
                                          tf.convert_to_tensor(orders[epoch]))),
        config.epochs, bar)
    return trainer.classifier(learning_rate, diverged, losses, eval_features, eval_labels)


def _run_epochs(epoch_loss, epochs, bar):
    """Calls `epoch_loss(epoch)` for every epoch, stopping at the first non-finite loss;
    returns (losses, diverged)."""
    losses = []
    for epoch in range(epochs):
        loss = epoch_loss(epoch)
        losses.append(loss)
        if bar is not None:
            bar.update(epoch + 1, values=[("loss", loss)])
        if not math.isfinite(loss):
            return losses, True
    return losses, False


def _select_rate(validation_top1):
    """The best validation accuracy; ties to the smaller rate."""
    return min(validation_top1, key=lambda rate: (-validation_top1[rate], rate))


def linear_evaluation(train_features, train_labels, test_features, test_labels, num_classes,
                      config=None, progress=False):
    """The linear-evaluation protocol (docs/protocols.md section 2) on precomputed features.

    Every candidate rate in `config.learning_rates` is trained on the training set minus a
    seeded, stratified validation split and scored on that split; the best rate (ties to
    the smaller rate) is retrained on the full training set and scored on the test set.
    Returns a `LinearEvalResult`. Augmentation needs images: use
    `linear_evaluation_from_images` when `config.augment` is True.
    """
    return _evaluation(_LINEAR, train_features, train_labels, test_features, test_labels,
                       num_classes, config, progress)


def _evaluation(probe, train_features, train_labels, test_features, test_labels, num_classes,
                config, progress):
    """`linear_evaluation` for any probe."""
    config = _check_config(config, probe)
    if config.augment:
        raise ValueError(f"config.augment=True needs images, not features: use "
                         f"{probe.from_images}")
    num_classes = _check_num_classes(num_classes)
    train_features = _check_features("train_features", train_features)
    train_labels = _check_labels("train_labels", train_labels, train_features.shape[0],
                                 num_classes, "train_features")
    test_features = _check_features("test_features", test_features)
    test_labels = _check_labels("test_labels", test_labels, test_features.shape[0],
                                num_classes, "test_features")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"test_features has {test_features.shape[1]} columns but "
                         f"train_features has {train_features.shape[1]}")

    def train(features, labels, rate, eval_features=None, eval_labels=None):
        return _train_classifier(probe, features, labels, num_classes, rate, config,
                                 eval_features, eval_labels, progress)

    return _protocol(probe, train, train_features, train_labels, test_features, test_labels,
                     num_classes, config)


def _protocol(probe, train, train_inputs, train_labels, test_features, test_labels,
              num_classes, config, validation_features=None):
    """The rate search and the final fit, shared by the feature and image paths.

    `train(inputs, labels, rate, eval_features, eval_labels)` trains one classifier;
    `validation_features(indices)` gives un-augmented features of train_inputs[indices]
    (the identity on precomputed features).
    """
    validation_top1, diverged = {}, []
    num_validation = 0
    if len(config.learning_rates) == 1:
        chosen = config.learning_rates[0]
    else:
        fit_idx, val_idx = stratified_split(train_labels, config.validation_fraction,
                                            config.seed, _SPLIT_STREAM, "validation_fraction")
        num_validation = int(val_idx.size)
        val_features = (train_inputs[val_idx] if validation_features is None
                        else validation_features(val_idx))
        fit_inputs, fit_labels = train_inputs[fit_idx], train_labels[fit_idx]
        for rate in config.learning_rates:
            candidate = train(fit_inputs, fit_labels, rate, val_features, train_labels[val_idx])
            # A diverged rate's predictions are all -1, so it scores 0 here.
            validation_top1[rate] = candidate.eval_top1
            if candidate.diverged:
                diverged.append(rate)
        chosen = _select_rate(validation_top1)
    final = train(train_inputs, train_labels, chosen, test_features, test_labels)
    if final.diverged and chosen not in diverged:
        diverged.append(chosen)
    return probe.result_class(
        top1=float(final.eval_top1), learning_rate=float(chosen),
        validation_top1=validation_top1, diverged=tuple(diverged),
        num_train=int(len(train_labels)), num_validation=num_validation,
        num_test=int(len(test_labels)), num_classes=num_classes,
        feature_dim=final.feature_dim, config=config.to_dict(), classifier=final)


# ---------------------------------------------------------------------------------------
# The image path: encode once, or augment and encode every epoch.


def _check_images(name, images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be a non-empty uint8 array [N, H, W, 3]; received "
                         f"shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8; received {images.dtype}")
    return images


def pad_crop_flip(images, seed):
    """The CIFAR linear-evaluation augmentation on a float batch [B, H, W, C].

    Zero-pad CROP_PADDING pixels on each side, crop a random H x W window (offsets uniform
    in [0, 2 * CROP_PADDING]), flip horizontally with probability 1/2; per image,
    stateless in `seed` (shape [2] int) so a run is reproducible whatever the pipeline's
    parallelism.
    """
    batch = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [CROP_PADDING] * 2, [CROP_PADDING] * 2, [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], seed, minval=0,
                                          maxval=2 * CROP_PADDING + 1, dtype=tf.int32)
    flip = tf.random.stateless_uniform([batch], seed + 1) < 0.5
    # Gather rows then columns per image: a vectorised random crop (no per-image map_fn).
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    cols = tf.where(flip[:, None], tf.reverse(cols, axis=[1]), cols)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)


def _encode_all(encode, images, batch_size, image_size):
    """Un-augmented features of uint8 images, in order (float32 NumPy [N, D])."""
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).map(
        lambda batch: evaluation_images(batch, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    chunks = [np.asarray(encode(batch), np.float32)
              for batch in dataset.prefetch(tf.data.AUTOTUNE)]
    features = np.concatenate(chunks, axis=0)
    if features.ndim != 2:
        raise ValueError(f"encode_fn must return [B, D] features; received shape "
                         f"{features.shape[1:]} per example")
    return features


def _train_augmented(encode, images, labels, num_classes, learning_rate, config, image_size,
                     eval_features, eval_labels, progress, probe=_LINEAR):
    """`train_linear_classifier` (of `probe`) with the encoder in the loop: fresh crops
    every epoch."""
    n = images.shape[0]
    steps_per_epoch = -(-n // config.batch_size)
    trainer = probe.trainer_class(eval_features.shape[1], num_classes, learning_rate,
                                  config.epochs * steps_per_epoch, config)
    # The feature path's order; a global step index seeds the crops.
    orders = epoch_orders(n, config.epochs, config.seed)
    augment_seed = int(_rng(config.seed, _AUGMENT_STREAM).integers(2 ** 31 - 1))
    images_t = tf.convert_to_tensor(images)
    labels_t = tf.convert_to_tensor(labels.astype(np.int32))

    def load(step_index, batch_idx):
        seed = tf.stack([tf.constant(augment_seed, tf.int64), step_index])
        batch = evaluation_images(tf.gather(images_t, batch_idx), image_size)
        return pad_crop_flip(batch, seed), tf.gather(labels_t, batch_idx)

    # One pipeline over all epochs (batches never straddle two epochs), so prefetching
    # continues across epoch boundaries; deterministic map keeps the batch order.
    dataset = (tf.data.Dataset.from_tensor_slices(orders)
               .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order)
                         .batch(config.batch_size))
               .enumerate()
               .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(tf.data.AUTOTUNE))

    @tf.function(reduce_retracing=True)
    def step(batch_images, batch_labels):
        # The encoder is frozen: no gradient flows into it (the caller's closure runs it
        # with training=False, so BatchNorm uses its moving statistics).
        features = tf.stop_gradient(tf.cast(encode(batch_images), tf.float32))
        return trainer._step(features, batch_labels)

    bar = _progbar(progress, config.epochs, learning_rate, f"{n} augmented images", probe)
    batches = iter(dataset)

    def epoch_loss(epoch):
        total = tf.constant(0.0)
        for _ in range(steps_per_epoch):
            total += step(*next(batches))
        return float(total) / n

    losses, diverged = _run_epochs(epoch_loss, config.epochs, bar)
    return trainer.classifier(learning_rate, diverged, losses, eval_features, eval_labels)


def linear_evaluation_from_images(encode_fn, train_images, train_labels, test_images,
                                  test_labels, num_classes, config=None, image_size=None,
                                  batch_size_encode=None, progress=False):
    """The linear-evaluation protocol (docs/protocols.md section 2) from uint8 images.

    encode_fn(float32 images in [0, 1], [B, S, S, 3]) -> features [B, D]: the frozen
    encoder without its projection head, called by the caller's closure with
    training=False; it must be traceable by tf.function (a Keras model call is).
    Images are resized to `image_size`² (bilinear, anti-aliased) when that differs from
    their size. With config.augment False, every image is encoded once and
    `linear_evaluation` runs on the features. With config.augment True, training images
    get `pad_crop_flip` afresh every epoch and go through the encoder in the training
    loop; validation and test images are encoded once, un-augmented.
    """
    return _evaluation_from_images(_LINEAR, encode_fn, train_images, train_labels,
                                   test_images, test_labels, num_classes, config, image_size,
                                   batch_size_encode, progress)


def _evaluation_from_images(probe, encode_fn, train_images, train_labels, test_images,
                            test_labels, num_classes, config, image_size, batch_size_encode,
                            progress):
    """`linear_evaluation_from_images` for any probe."""
    config = _check_config(config, probe)
    num_classes = _check_num_classes(num_classes)
    if not callable(encode_fn):
        raise ValueError(f"encode_fn must be callable; received {type(encode_fn).__name__}")
    if image_size is not None:
        _check_positive_int("image_size", image_size)
    train_images = _check_images("train_images", train_images)
    test_images = _check_images("test_images", test_images)
    train_labels = _check_labels("train_labels", train_labels, train_images.shape[0],
                                 num_classes, "train_images")
    test_labels = _check_labels("test_labels", test_labels, test_images.shape[0],
                                num_classes, "test_images")
    encode_batch = batch_size_encode or config.batch_size
    _check_positive_int("batch_size_encode", encode_batch)
    encode = tf.function(encode_fn, reduce_retracing=True)
    test_features = _check_features("encoded test_images",
                                    _encode_all(encode, test_images, encode_batch,
                                                image_size))
    if not config.augment:
        train_features = _encode_all(encode, train_images, encode_batch, image_size)
        return _evaluation(probe, train_features, train_labels, test_features, test_labels,
                           num_classes, config, progress)

    def validation_features(indices):
        return _encode_all(encode, train_images[indices], encode_batch, image_size)

    def train(images, labels, rate, eval_features, eval_labels):
        return _train_augmented(encode, images, labels, num_classes, rate, config,
                                image_size, eval_features, eval_labels, progress, probe=probe)

    return _protocol(probe, train, train_images, train_labels, test_features, test_labels,
                     num_classes, config, validation_features)
