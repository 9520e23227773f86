"""AMDIM's mixture network m_k (AMDIM Sec. 3.7): one antecedent feature -> k mixture features.

"A fully-connected network with a single ReLU hidden layer and a residual connection between
f_1 and each mixture feature f_1^i": f_1^i = f_1 + W_2,i relu(W_1 f_1 + b_1) + b_2,i. The
objective that scores the components is `nac_tf.objectives.amdim_mixture_nce_loss`. The
authors' released code has no mixture model, so the widths and the initialisation are
nac_tf's choice.
"""
import keras


@keras.saving.register_keras_serializable(package="nac_tf")
class MixtureFeatures(keras.layers.Layer):
    """f_1 [..., D] -> [..., k, D]: Dense(hidden_dim) -> ReLU -> Dense(k * D), plus f_1 each.

    The k components share the hidden layer and differ by their block of the output layer. It
    keeps Keras' default initialisation (Glorot kernel, zero bias): a zero output layer would
    start every component at f_1 with identical gradients (the posterior q of Eq. 7 then
    weighs them equally), and they would never separate.
    Sublayers: "hidden_dense", "output_dense" under the layer's name.
    """

    def __init__(self, num_components, hidden_dim, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        for argument, value in (("num_components", num_components), ("hidden_dim", hidden_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be a positive integer; got {value!r}")
        self.num_components = num_components
        self.hidden_dim = hidden_dim
        self.hidden_dense = keras.layers.Dense(hidden_dim, name="hidden_dense")
        self.output_dense = None  # its width k * D needs the input width D

    def build(self, input_shape):
        width = input_shape[-1]
        if width is None:
            raise ValueError(f"the feature width (last axis) of the input of MixtureFeatures "
                             f"must be known; got input shape {tuple(input_shape)}")
        # Built here, inside the layer's name scope, so every variable exists before the
        # first call (paths "<name>/hidden_dense/kernel", ...), as ProjectionHead does.
        self.output_dense = keras.layers.Dense(self.num_components * width, name="output_dense")
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_dim,)
        self.hidden_dense.build(input_shape)
        self.output_dense.build(hidden_shape)

    def call(self, f1):
        width = f1.shape[-1]
        residuals = self.output_dense(keras.ops.relu(self.hidden_dense(f1)))
        leading = tuple(keras.ops.shape(f1)[:-1])
        residuals = keras.ops.reshape(residuals, leading + (self.num_components, width))
        return keras.ops.expand_dims(f1, -2) + residuals

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_components, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(num_components=self.num_components, hidden_dim=self.hidden_dim)
        return config
