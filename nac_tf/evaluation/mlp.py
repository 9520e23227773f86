"""MLP evaluation of a frozen encoder (docs/protocols.md section 2; AMDIM paper Sec. 4).

AMDIM reports, beside linear evaluation, "MLP evaluation": a classifier with one hidden
layer on the frozen features. The classifier is the authors' (their `MLPClassifier` with
1024 hidden units and dropout 0.2, in the authors' code, Philip-Bachman/amdim-public):

    dropout(p) -> Dense(hidden_dim, no bias) -> BatchNorm -> ReLU -> dropout(p) -> Dense(C)

on the representation h (encoder frozen, inference-mode BatchNorm, projection head removed).

It is trained and scored by the linear probe's protocol and machinery
(`nac_tf.evaluation.linear`): SGD with Nesterov momentum 0.9, cosine decay to 0, 100
epochs of 256-example mini-batches in the seeded epoch orders, the learning rate chosen on a
seeded, stratified validation split and retrained on the whole training set, top-1 on the
test set, the same optional pad-and-crop + flip augmentation.

Where this differs from the authors' code, and why:
- Optimiser: the authors train with Adam (betas 0.8 / 0.999, L2 weight decay 1e-5) at one
  fixed rate (their training script's 2e-4) divided by 5 at epochs 80 and 110 of 120
  (CIFAR, STL10). A fixed rate tuned for their encoders says nothing about ours; searching
  it on held-out data, with the linear probe's optimiser and schedule, makes the MLP number
  differ from the linear one in the classifier alone.
- Candidate rates {0.01, 0.1, 1}, not the linear probe's {0.01, 0.1, 1, 10}: the output
  layer sees BatchNorm-normalised ReLUs whatever the scale of h (the first layer's output is
  normalised too), so the small-feature scales that make the linear probe need rate 10 do
  not arise here; the rate 10 would only cost a fit.
- Loss: plain softmax cross-entropy, the linear probe's; the authors soft-clip the logits
  to +-10 with tanh and add 1e-3 mean(logits^2).
- Training images: unaugmented features, or the probe's pad-and-crop + flip (`augment`);
  the authors' classifiers see their self-supervised augmentation.
- Initialisation: Keras' Glorot-uniform kernels and zero bias (the authors: PyTorch's
  defaults), seeded by `config.seed`, the same for every candidate rate. BatchNorm momentum
  0.9 and epsilon 1e-5, PyTorch's as the authors' (and nac_tf's encoders'); its moving
  variance averages the biased batch variance (Keras), PyTorch's the unbiased one.
- Dropout: inverted dropout from stateless draws indexed by (seed, optimizer step, layer),
  so a fit depends on `config.seed` only, as the linear probe's.
- Scoring: inference mode (no dropout, BatchNorm moving statistics), computed in NumPy from
  the trained weights (`MLPClassifier`).
"""
import dataclasses
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from nac_tf.evaluation.probe import (DROPOUT_STREAM, INIT_STREAM, Predictions, Probe,
                                     ProbeConfig, ProbeResult, ProbeTrainer,
                                     check_positive_int, evaluation, random_stream,
                                     train_classifier)
from nac_tf.evaluation.probe_images import evaluation_from_images

# PyTorch's BatchNorm1d defaults (momentum 0.1 there is 1 - 0.9 here), as the authors'.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class MLPEvalConfig(ProbeConfig):
    """Settings of the MLP-evaluation protocol (defaults: docs/protocols.md section 2).

    The `ProbeConfig` fields (epochs, rates, validation split, ...) with the MLP's own
    candidate rates, plus hidden_dim (hidden units) and dropout (the rate of both dropout
    layers, in [0, 1)).
    """

    learning_rates: Tuple[float, ...] = (0.01, 0.1, 1.0)
    hidden_dim: int = 1024
    dropout: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        check_positive_int("hidden_dim", self.hidden_dim)
        if isinstance(self.dropout, bool) or not isinstance(
                self.dropout, (int, float, np.integer, np.floating)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1); received {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))


@dataclasses.dataclass(frozen=True)
class MLPClassifier(Predictions):
    """A trained MLP classifier in inference mode (NumPy float32):

    logits = relu(BN(features @ hidden_kernel)) @ output_kernel + output_bias, with
    BN(x) = (x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta.
    """

    hidden_kernel: np.ndarray  # [D, H]
    gamma: np.ndarray  # [H]
    beta: np.ndarray  # [H]
    moving_mean: np.ndarray  # [H]
    moving_variance: np.ndarray  # [H]
    epsilon: float
    output_kernel: np.ndarray  # [H, C]
    output_bias: np.ndarray  # [C]
    learning_rate: float
    diverged: bool  # the training loss became non-finite; training stopped there
    epoch_losses: Tuple[float, ...]  # mean training cross-entropy of each epoch run
    eval_top1: Optional[float] = None  # accuracy on (eval_features, eval_labels), if given

    def _chunk_logits(self, features):
        # BatchNorm folded into one scale and shift of the hidden pre-activations.
        scale = self.gamma / np.sqrt(self.moving_variance + np.float32(self.epsilon))
        shift = self.beta - self.moving_mean * scale
        hidden = np.maximum(features @ self.hidden_kernel * scale + shift, np.float32(0.0))
        return hidden @ self.output_kernel + self.output_bias

    @property
    def feature_dim(self):
        return int(self.hidden_kernel.shape[0])


@dataclasses.dataclass(frozen=True)
class MLPEvalResult(ProbeResult):
    """The result of `mlp_evaluation` (its classifier an `MLPClassifier`)."""


def _dropout(x, rate, seed):
    """Inverted dropout of rate `rate` from stateless draws of `seed` ([2] int64)."""
    if rate == 0.0:
        return x
    keep = tf.random.stateless_uniform(tf.shape(x), seed) >= rate
    return tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))


class _MLPTrainer(ProbeTrainer):
    """The MLP probe's layers: Dense (no bias), BatchNorm, Dense; dropout before each
    Dense."""

    def __init__(self, feature_dim, num_classes, learning_rate, total_steps, config):
        init = random_stream(config.seed, INIT_STREAM).integers(2 ** 31 - 1, size=2)
        self.dropout = config.dropout
        self.dropout_seed = int(random_stream(config.seed, DROPOUT_STREAM).integers(2 ** 31 - 1))
        self.hidden = keras.layers.Dense(
            config.hidden_dim, use_bias=False,
            kernel_initializer=keras.initializers.GlorotUniform(seed=int(init[0])),
            dtype="float32")
        self.norm = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM,
                                                    epsilon=BATCH_NORM_EPSILON,
                                                    dtype="float32")
        self.output_layer = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=int(init[1])),
            bias_initializer="zeros", dtype="float32")
        self.hidden.build((None, feature_dim))
        self.norm.build((None, config.hidden_dim))
        self.output_layer.build((None, config.hidden_dim))
        super().__init__(self.hidden.trainable_variables + self.norm.trainable_variables
                         + self.output_layer.trainable_variables, learning_rate, total_steps,
                         config)

    def _dropout_seed(self, layer):
        # (seed, 2 * step + layer): every step and each of the two layers its own mask.
        step = tf.cast(self.optimizer.iterations, tf.int64)
        return tf.stack([tf.constant(self.dropout_seed, tf.int64), 2 * step + layer])

    def _train_logits(self, features):
        x = _dropout(features, self.dropout, self._dropout_seed(0))
        # Training mode: batch statistics, and the moving statistics are updated.
        x = tf.nn.relu(self.norm(self.hidden(x), training=True))
        x = _dropout(x, self.dropout, self._dropout_seed(1))
        return self.output_layer(x)

    def _classifier(self, learning_rate, diverged, epoch_losses):
        def numpy(variable):
            return np.array(variable.numpy(), np.float32)

        return MLPClassifier(
            hidden_kernel=numpy(self.hidden.kernel), gamma=numpy(self.norm.gamma),
            beta=numpy(self.norm.beta), moving_mean=numpy(self.norm.moving_mean),
            moving_variance=numpy(self.norm.moving_variance), epsilon=self.norm.epsilon,
            output_kernel=numpy(self.output_layer.kernel),
            output_bias=numpy(self.output_layer.bias), learning_rate=learning_rate,
            diverged=diverged, epoch_losses=epoch_losses)


_MLP = Probe("MLP evaluation", MLPEvalConfig, _MLPTrainer, MLPEvalResult,
             "mlp_evaluation_from_images")


def train_mlp_classifier(train_features, train_labels, num_classes, learning_rate,
                         config=None, eval_features=None, eval_labels=None, progress=False):
    """Train the MLP classifier of docs/protocols.md section 2 on precomputed features.

    As `nac_tf.evaluation.linear.train_linear_classifier` (SGD, epochs, seeded orders,
    schedule, early stop on a non-finite loss), with the MLP of `config` (an
    `MLPEvalConfig`). Deterministic given `config.seed`. Returns an `MLPClassifier`.
    """
    return train_classifier(_MLP, train_features, train_labels, num_classes, learning_rate,
                            config, eval_features, eval_labels, progress)


def mlp_evaluation(train_features, train_labels, test_features, test_labels, num_classes,
                   config=None, progress=False):
    """The MLP-evaluation protocol (docs/protocols.md section 2) on precomputed features.

    The linear protocol's rate search and final fit (`linear_evaluation`) with the MLP
    classifier; returns an `MLPEvalResult`. With `config.augment`, use
    `mlp_evaluation_from_images`.
    """
    return evaluation(_MLP, train_features, train_labels, test_features, test_labels,
                      num_classes, config, progress)


def mlp_evaluation_from_images(encode_fn, train_images, train_labels, test_images,
                               test_labels, num_classes, config=None, image_size=None,
                               batch_size_encode=None, progress=False):
    """The MLP-evaluation protocol from uint8 images: as
    `nac_tf.evaluation.linear.linear_evaluation_from_images` (encode_fn, resizing,
    augmentation through the encoder) with the MLP classifier."""
    return evaluation_from_images(_MLP, encode_fn, train_images, train_labels, test_images,
                                  test_labels, num_classes, config, image_size,
                                  batch_size_encode, progress)
