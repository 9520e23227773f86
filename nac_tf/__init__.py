"""nac_tf: Neural Activation Coding (Park, Lee, Kim, Blei, ICML 2021) in TensorFlow / Keras 3."""

__version__ = "0.1.0"
