"""Encoders f (images -> representation h) and the MLP heads g and phi (paper Sec. 3.5).

What each encoder is (family, builder, width, input statistics) is its record in
`nac_tf.specs.encoders`, importable without TensorFlow; `build_encoder` builds it.

`MixtureFeatures` is AMDIM's mixture network m_k (AMDIM Sec. 3.7).

Every encoder is a functional keras.Model: float32 images in the network's input range
[N, H, W, C] -> h [N, F], the global-average-pooled last feature map (the AMDIM encoders,
`nac_tf.models.amdim`: their 1x1 map f1, flattened). Its first layer
optionally normalises each channel, (x - mean) / std, so preprocessing travels with the
model and exported SavedModels take raw pixels. Convolutions are He-normal initialised and
followed by BatchNorm (momentum 0.9 = PyTorch's 0.1, epsilon 1e-5) and ReLU; the exception
is `vgg16`, keras.applications' VGG16 without BatchNorm, whose input statistics are fixed
to keras' VGG16 preprocessing (`encoder_input_statistics`) so its ImageNet weights load
(`load_encoder_weights`, the `init_weights` setting; paper Sec. 4.3, Table 4), and the AMDIM
encoders, which follow the authors' unpadded layout, initialisation and optional BatchNorm
(AMDIM paper Sec. 3.6).

Variable path convention (LARS selects what to exclude from weight decay by path):
  * paths are "<model name>/<layer name>/<variable>", e.g.
    "encoder/stage1_block0_conv1/kernel", "encoder/stage1_block0_bn1/gamma",
    "projection_head/hidden_dense/kernel"; they are unique within a network, and a clone
    made with `clone_encoder(encoder, name="momentum_encoder")` gets its own prefix.
  * every BatchNormalization layer, and only those, is named "bn", "bn<k>" or "..._bn" /
    "..._bn<k>", so `BATCH_NORM_PATH_PATTERN` (anchored on the layer segment directly before
    the leaf name) selects exactly the BatchNorm variables; biases are the leaf "bias".
  * model names must not themselves end in "_bn<k>" or contain "batch_norm" (checked):
    they prefix every path, and a looser pattern such as r"_bn\\d*/" would then match all
    weights. Hence `vgg16_bn` names its model "vgg16" by default.
"""
from nac_tf.models.amdim import AMDIMEmbedding, amdim_feature_channels, amdim_feature_maps
from nac_tf.models.cloning import clone_encoder, clone_head
from nac_tf.models.heads import ProjectionHead
from nac_tf.models.layers import (
    BATCH_NORM_EPSILON, BATCH_NORM_PATH_PATTERN, DEFAULT_BATCH_NORM_MOMENTUM)
from nac_tf.models.mixture import MixtureFeatures
from nac_tf.models.registry import build_encoder, encoder_input_statistics
from nac_tf.models.weights_file import load_encoder_weights

__all__ = [
    "AMDIMEmbedding", "BATCH_NORM_EPSILON", "BATCH_NORM_PATH_PATTERN",
    "DEFAULT_BATCH_NORM_MOMENTUM", "amdim_feature_channels", "amdim_feature_maps",
    "MixtureFeatures", "ProjectionHead", "build_encoder", "clone_encoder",
    "clone_head", "encoder_input_statistics", "load_encoder_weights",
]
