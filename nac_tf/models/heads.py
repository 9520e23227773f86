"""Projection head g and inference network phi: the same one-hidden-layer MLP (paper Sec. 3.5).

g maps the representation h to the pre-activation a (code c = sgn(a), Eq. 3; relaxation
z = tanh(a), Sec. 3.4 / Eq. 19); phi maps h to the logits r_d = log(q_d / (1 - q_d)) of the
mean-field variational distribution Q_phi (Eq. 13-15). Both are built from this one class.
"""
import math

import keras

from nac_tf.config import HEAD_INITIALIZERS
from nac_tf.models.layers import BATCH_NORM_EPSILON, DEFAULT_BATCH_NORM_MOMENTUM




def _use_pytorch_linear_init(dense, fan_in):
    """Sets `dense` (not yet built) to torch.nn.Linear's default initialisation.

    PyTorch draws the kernel with kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) (VarianceScaling with scale 1/3, fan_in, uniform gives the same limit
    sqrt(3 * scale / fan_in)), and the bias from the same interval.
    """
    limit = 1.0 / math.sqrt(fan_in)
    dense.kernel_initializer = keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
    dense.bias_initializer = keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="nac_tf")
class ProjectionHead(keras.layers.Layer):
    """Dense(hidden_dim) [-> BN] -> ReLU -> Dense(output_dim) [-> / sqrt(output_dim)].

    Returns the pre-activation (a for the head, r for the inference network); the caller
    applies tanh / sigmoid.

    `scale_by_sqrt_dim` (default True) divides the output by sqrt(output_dim), as the
    authors' released code does for both networks before tanh / sigmoid (not stated in the
    paper; docs/method.md section 1). With D = 128 it keeps a and r in the non-saturated range
    of tanh / sigmoid at initialisation, and keeps z_i . z_k in the denominator of Eq. 19 O(1).

    `use_batch_norm` adds BatchNorm after the hidden Dense (whose bias is then dropped, BN's
    beta replaces it); the authors' CIFAR heads have none, hence the default False.

    `initializer`: "keras" (default) uses Keras' Dense defaults (Glorot-uniform kernel, zero
    bias); "pytorch" draws kernel and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the
    authors' torch.nn.Linear heads. Keras' is the default because it gave more diverse codes
    and better retrieval in the digits ablation of benchmarks/code_capacity.py (results/).
    The choice matters beyond scale: a zero bias has zero norm, which LARS's trust ratio
    treats specially (see `nac_tf.optim`).
    Sublayers: "hidden_dense", "hidden_bn", "output_dense" under the head's name.
    """

    def __init__(self, hidden_dim, output_dim=128, use_batch_norm=False, scale_by_sqrt_dim=True,
                 synchronized_batch_norm=False, initializer="keras", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        for argument, value in (("hidden_dim", hidden_dim), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be a positive integer; got {value!r}")
        if initializer not in HEAD_INITIALIZERS:
            raise ValueError(f"initializer must be one of {', '.join(HEAD_INITIALIZERS)}; got "
                             f"{initializer!r}")
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.use_batch_norm = bool(use_batch_norm)
        self.scale_by_sqrt_dim = bool(scale_by_sqrt_dim)
        self.synchronized_batch_norm = bool(synchronized_batch_norm)
        self.initializer = initializer
        self.hidden_dense = keras.layers.Dense(
            hidden_dim, use_bias=not self.use_batch_norm, name="hidden_dense")
        self.hidden_bn = None
        if self.use_batch_norm:
            self.hidden_bn = keras.layers.BatchNormalization(
                momentum=DEFAULT_BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                synchronized=self.synchronized_batch_norm, name="hidden_bn")
        self.output_dense = keras.layers.Dense(output_dim, name="output_dense")

    def build(self, input_shape):
        # Building the sublayers here (inside the head's name scope) creates every variable
        # up front, with paths "<head name>/hidden_dense/kernel", ..., so a momentum copy can
        # be built and have its weights set before its first call.
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_dim,)
        if self.initializer == "pytorch":
            _use_pytorch_linear_init(self.hidden_dense, input_shape[-1])
            _use_pytorch_linear_init(self.output_dense, self.hidden_dim)
        self.hidden_dense.build(input_shape)
        if self.hidden_bn is not None:
            self.hidden_bn.build(hidden_shape)
        self.output_dense.build(hidden_shape)

    def call(self, h, training=None):
        x = self.hidden_dense(h)
        if self.hidden_bn is not None:
            x = self.hidden_bn(x, training=training)
        x = self.output_dense(keras.ops.relu(x))
        if self.scale_by_sqrt_dim:
            x = x / math.sqrt(self.output_dim)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, output_dim=self.output_dim,
                      use_batch_norm=self.use_batch_norm,
                      scale_by_sqrt_dim=self.scale_by_sqrt_dim,
                      synchronized_batch_norm=self.synchronized_batch_norm,
                      initializer=self.initializer)
        return config
