"""One `EncoderSpec` per encoder f (images -> representation h); the table `ENCODER_SPECS`.

Adding an encoder: its builder in `nac_tf.models.<family>` and one record here; its name
then appears in `nac_tf.config.ENCODERS`, the accepted values of the encoder setting and
`nac_tf.models.build_encoder`. Importing this module imports no TensorFlow.
"""
import dataclasses
from typing import Optional, Tuple

from nac_tf import specs

# resnet: `nac_tf.models.resnet` (CIFAR or ImageNet stem, zero_init_residual); vgg:
# `nac_tf.models.vgg`; small_cnn: `nac_tf.models.small_cnn`; amdim: `nac_tf.models.amdim`,
# whose 5x5 and 7x7 feature maps method="amdim" scores (AMDIM paper Sec. 3.6).
FAMILIES = ("resnet", "vgg", "small_cnn", "amdim")

# keras.applications.vgg16.preprocess_input ("caffe" mode) on 0..255 RGB pixels x: the
# channels reversed to BGR, then the ImageNet mean (B, G, R) = (103.939, 116.779, 123.68)
# subtracted, no scaling. nac_tf encoders take [0, 1] pixels p = x / 255 and normalise them
# as (p - mean) / std, so the same map is mean = the RGB means / 255, std = 1 / 255, followed
# by the channel reversal (`nac_tf.models.vgg.ReverseChannels`). These are the vgg16
# encoder's input statistics whatever the dataset, recorded with the run and in exports like
# any dataset's.
VGG16_MEAN = (123.68 / 255.0, 116.779 / 255.0, 103.939 / 255.0)
VGG16_STD = (1.0 / 255.0,) * 3


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """What nac_tf knows about encoder `name` without building it.

    family: one of FAMILIES; it decides which settings apply (`uses_zero_init_residual`,
      `has_amdim_feature_maps`; the stem setting changes only the ResNets, the other
      builders accept and ignore it).
    builder: "module:function" of the builder, called as
      builder(input_shape, *, stem, mean, std, synchronized_batch_norm, batch_norm_momentum,
      name[, zero_init_residual]) -> keras.Model images [N, H, W, C] -> h [N, F] (F, the
      width, is the built model's `output_shape[-1]`).
    input_statistics: (mean, std) of [0, 1] pixels fixed by the weights the encoder is made
      to load; None: the dataset's statistics apply (`nac_tf.data.catalog`).
    """

    name: str
    family: str
    builder: str
    input_statistics: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} is not one of {', '.join(FAMILIES)}")

    @property
    def uses_zero_init_residual(self):
        """Whether the builder takes zero_init_residual (each residual branch's last
        BatchNorm starting at gamma = 0)."""
        return self.family == "resnet"

    @property
    def has_amdim_feature_maps(self):
        """Whether method="amdim" can score the encoder's 5x5 and 7x7 feature maps."""
        return self.family == "amdim"


ENCODER_SPECS = (
    EncoderSpec("resnet18", "resnet", "nac_tf.models.resnet:resnet18"),
    EncoderSpec("resnet34", "resnet", "nac_tf.models.resnet:resnet34"),
    EncoderSpec("resnet50", "resnet", "nac_tf.models.resnet:resnet50"),
    EncoderSpec("resnet_tiny", "resnet", "nac_tf.models.resnet:resnet_tiny"),
    EncoderSpec("vgg16_bn", "vgg", "nac_tf.models.vgg:vgg16_bn"),
    # keras.applications' VGG16 (no BatchNorm), its inputs fixed for its ImageNet weights.
    EncoderSpec("vgg16", "vgg", "nac_tf.models.vgg:vgg16",
                input_statistics=(VGG16_MEAN, VGG16_STD)),
    EncoderSpec("small_cnn", "small_cnn", "nac_tf.models.small_cnn:small_cnn"),
    EncoderSpec("amdim_small", "amdim", "nac_tf.models.amdim:amdim_small"),
    EncoderSpec("amdim_large", "amdim", "nac_tf.models.amdim:amdim_large"),
    EncoderSpec("amdim_xs", "amdim", "nac_tf.models.amdim:amdim_xs"),
)
ENCODERS = tuple(spec.name for spec in ENCODER_SPECS)


def names_where(predicate):
    """The encoder names whose spec satisfies `predicate`, in table order."""
    return specs.names_where(ENCODER_SPECS, predicate)


def encoder_spec(name):
    """The EncoderSpec of `name`; ValueError naming the accepted values otherwise."""
    return specs.spec_named(ENCODER_SPECS, name, f"encoder={name!r} is not a known encoder; "
                            f"accepted values: {', '.join(ENCODERS)}")
