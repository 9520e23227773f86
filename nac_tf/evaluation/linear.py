"""Linear evaluation of a frozen encoder (docs/protocols.md section 2; paper Sec. 4).

Protocol: the encoder is frozen (inference-mode BatchNorm) and its projection head removed;
a linear classifier (Dense with bias) on the representation h is trained with SGD, Nesterov
momentum 0.9, 100 epochs and no regularisation. The learning rate is chosen from
{0.01, 0.1, 1, 10} by top-1 accuracy on a validation split held out (seeded, stratified)
from the training set; the chosen rate is then retrained on the full training set and top-1
accuracy on the test set is reported.

Choices this module makes (all in `LinearEvalConfig`). The MLP probe of
`nac_tf.evaluation.mlp` shares every one but the zero initialisation (`ProbeConfig`), and
the machinery of `nac_tf.evaluation.probe` and `probe_images`: feature extraction, epoch
orders, augmentation, the rate search, the result object (`Probe` names what differs).
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
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from nac_tf.evaluation.probe import (Predictions, Probe, ProbeConfig, ProbeResult,
                                     ProbeTrainer, evaluation, train_classifier)
from nac_tf.evaluation.probe_images import evaluation_from_images


@dataclasses.dataclass(frozen=True)
class LinearEvalConfig(ProbeConfig):
    """Settings of the linear-evaluation protocol (defaults: docs/protocols.md section 2);
    the fields are `ProbeConfig`'s."""


@dataclasses.dataclass(frozen=True)
class LinearClassifier(Predictions):
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
class LinearEvalResult(ProbeResult):
    """The result of `linear_evaluation` (its classifier a `LinearClassifier`)."""


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


class _LinearTrainer(ProbeTrainer):
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


_LINEAR = Probe("Linear evaluation", LinearEvalConfig, _LinearTrainer, LinearEvalResult,
                "linear_evaluation_from_images")


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
    return train_classifier(_LINEAR, train_features, train_labels, num_classes,
                            learning_rate, config, eval_features, eval_labels, progress)


def linear_evaluation(train_features, train_labels, test_features, test_labels, num_classes,
                      config=None, progress=False):
    """The linear-evaluation protocol (docs/protocols.md section 2) on precomputed features.

    Every candidate rate in `config.learning_rates` is trained on the training set minus a
    seeded, stratified validation split and scored on that split; the best rate (ties to
    the smaller rate) is retrained on the full training set and scored on the test set.
    Returns a `LinearEvalResult`. Augmentation needs images: use
    `linear_evaluation_from_images` when `config.augment` is True.
    """
    return evaluation(_LINEAR, train_features, train_labels, test_features, test_labels,
                      num_classes, config, progress)


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
    return evaluation_from_images(_LINEAR, encode_fn, train_images, train_labels,
                                  test_images, test_labels, num_classes, config, image_size,
                                  batch_size_encode, progress)


