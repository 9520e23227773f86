"""The machinery every probe on a frozen encoder shares (docs/protocols.md section 2): the
settings (`ProbeConfig`), input checks, the seeded validation split and epoch orders, the
SGD trainer (`ProbeTrainer`), the learning-rate search and final fit (`evaluation`), the
image path with its CIFAR pad-and-crop + flip augmentation (`evaluation_from_images`) and
the result (`ProbeResult`).

A probe (`Probe`) names what differs: its config class, its trainer (the layers) and its
result class. The linear probe (`nac_tf.evaluation.linear`) and the MLP probe
(`nac_tf.evaluation.mlp`) are two such descriptions.
"""
import dataclasses
import logging
import math
from typing import Dict, Optional, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from nac_tf.data.splits import stratified_split

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant")

# Independent random streams derived from `config.seed`, so changing e.g. the number of
# epochs does not change the validation split. The MLP probe adds its initialisation and
# dropout streams.
_SPLIT_STREAM, _ORDER_STREAM, AUGMENT_STREAM = 0, 1, 2
INIT_STREAM, DROPOUT_STREAM = 3, 4


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
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
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


class Predictions:
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
    classifier: Optional[Predictions] = dataclasses.field(default=None, repr=False)

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


# ---------------------------------------------------------------------------------------
# Input checks and the validation split.


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; received {value!r}")


def check_features(name, features):
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array; received shape "
                         f"{features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contains non-finite values")
    return features


def check_labels(name, labels, num_examples, num_classes, features_name):
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


def check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; received {num_classes!r}")
    return int(num_classes)


def check_config(config, probe):
    if config is None:
        return probe.config_class()
    if type(config) is not probe.config_class:
        raise ValueError(f"config must be of type {probe.config_class.__name__}; received "
                         f"{type(config).__name__}")
    return config


def random_stream(seed, stream):
    """A NumPy Generator of stream `stream` of `seed` (independent of the other streams)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def epoch_orders(num_examples, epochs, seed):
    """The seeded order of the rows in each epoch: int32 [epochs, num_examples].

    Both training paths use it, and every candidate learning rate sees the same order, so
    rates are compared on the same mini-batch sequence.
    """
    rng = random_stream(seed, _ORDER_STREAM)
    return np.stack([rng.permutation(num_examples) for _ in range(epochs)]).astype(np.int32)


# ---------------------------------------------------------------------------------------
# The training core.


class ProbeTrainer:
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


@dataclasses.dataclass(frozen=True)
class Probe:
    """What distinguishes one probe in the shared protocol below."""

    title: str  # progress lines: "<title> (...): learning rate ..."
    config_class: type
    trainer_class: type  # (feature_dim, num_classes, rate, total_steps, config)
    result_class: type
    from_images: str  # the function that takes images, named in errors


def progress_bar(progress, epochs, learning_rate, what, probe):
    if not progress:
        return None
    logger.info("%s (%s): learning rate %g, %d epochs", probe.title, what, learning_rate, epochs)
    return keras.utils.Progbar(epochs, unit_name="epoch")


def train_classifier(probe, train_features, train_labels, num_classes, learning_rate,
                     config, eval_features, eval_labels, progress):
    """`train_linear_classifier` for any probe (`probe.trainer_class`)."""
    config = check_config(config, probe)
    num_classes = check_num_classes(num_classes)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float,
                                                                         np.integer,
                                                                         np.floating)) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a positive finite number; received "
                         f"{learning_rate!r}")
    features = check_features("train_features", train_features)
    labels = check_labels("train_labels", train_labels, features.shape[0], num_classes,
                          "train_features")
    if (eval_features is None) != (eval_labels is None):
        raise ValueError("eval_features and eval_labels must be given together")
    if eval_features is not None:
        eval_features = check_features("eval_features", eval_features)
        if eval_features.shape[1] != features.shape[1]:
            raise ValueError(f"eval_features has {eval_features.shape[1]} columns but "
                             f"train_features has {features.shape[1]}")
        eval_labels = check_labels("eval_labels", eval_labels, eval_features.shape[0],
                                   num_classes, "eval_features")
    n = features.shape[0]
    steps_per_epoch = -(-n // config.batch_size)
    trainer = probe.trainer_class(features.shape[1], num_classes, learning_rate,
                                  config.epochs * steps_per_epoch, config)
    features_t = tf.convert_to_tensor(features)
    labels_t = tf.convert_to_tensor(labels.astype(np.int32))
    orders = epoch_orders(n, config.epochs, config.seed)
    bar = progress_bar(progress, config.epochs, learning_rate, f"{n} examples", probe)
    losses, diverged = run_epochs(
        lambda epoch: float(trainer.epoch(features_t, labels_t,
                                          tf.convert_to_tensor(orders[epoch]))),
        config.epochs, bar)
    return trainer.classifier(learning_rate, diverged, losses, eval_features, eval_labels)


def run_epochs(epoch_loss, epochs, bar):
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


def select_rate(validation_top1):
    """The best validation accuracy; ties to the smaller rate."""
    return min(validation_top1, key=lambda rate: (-validation_top1[rate], rate))


def evaluation(probe, train_features, train_labels, test_features, test_labels, num_classes,
               config, progress):
    """`linear_evaluation` for any probe."""
    config = check_config(config, probe)
    if config.augment:
        raise ValueError(f"config.augment=True needs images, not features: use "
                         f"{probe.from_images}")
    num_classes = check_num_classes(num_classes)
    train_features = check_features("train_features", train_features)
    train_labels = check_labels("train_labels", train_labels, train_features.shape[0],
                                num_classes, "train_features")
    test_features = check_features("test_features", test_features)
    test_labels = check_labels("test_labels", test_labels, test_features.shape[0],
                               num_classes, "test_features")
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"test_features has {test_features.shape[1]} columns but "
                         f"train_features has {train_features.shape[1]}")

    def train(features, labels, rate, eval_features=None, eval_labels=None):
        return train_classifier(probe, features, labels, num_classes, rate, config,
                                eval_features, eval_labels, progress)

    return rate_search_and_fit(probe, train, train_features, train_labels, test_features,
                               test_labels, num_classes, config)


def rate_search_and_fit(probe, train, train_inputs, train_labels, test_features, test_labels,
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
        chosen = select_rate(validation_top1)
    final = train(train_inputs, train_labels, chosen, test_features, test_labels)
    if final.diverged and chosen not in diverged:
        diverged.append(chosen)
    return probe.result_class(
        top1=float(final.eval_top1), learning_rate=float(chosen),
        validation_top1=validation_top1, diverged=tuple(diverged),
        num_train=int(len(train_labels)), num_validation=num_validation,
        num_test=int(len(test_labels)), num_classes=num_classes,
        feature_dim=final.feature_dim, config=config.to_dict(), classifier=final)
