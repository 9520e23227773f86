"""Encoders by name (the names: `nac_tf.config.ENCODERS`)."""
from nac_tf.models.amdim import amdim_large, amdim_small, amdim_xs
from nac_tf.models.layers import DEFAULT_BATCH_NORM_MOMENTUM
from nac_tf.models.resnet import resnet18, resnet34, resnet50, resnet_tiny
from nac_tf.models.small_cnn import small_cnn
from nac_tf.models.vgg import VGG16_MEAN, VGG16_STD, vgg16, vgg16_bn

ENCODER_BUILDERS = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet_tiny": resnet_tiny,
    "vgg16_bn": vgg16_bn,
    "vgg16": vgg16,
    "small_cnn": small_cnn,
    "amdim_small": amdim_small,
    "amdim_large": amdim_large,
    "amdim_xs": amdim_xs,
}

# Width F of the representation h of each encoder (tested against the built models).
_OUTPUT_DIMS = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet_tiny": 128,
    "vgg16_bn": 512,
    "vgg16": 512,
    "small_cnn": 128,
    "amdim_small": 1024,
    "amdim_large": 2048,
    "amdim_xs": 256,
}
# Encoders whose inputs are fixed by the weights they are meant to load, not by the dataset:
# (mean, std) of [0, 1] pixels. The others normalise with the dataset's statistics.
_INPUT_STATISTICS = {
    "vgg16": (VGG16_MEAN, VGG16_STD),  # keras.applications.vgg16.preprocess_input
}
_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet_tiny")


def _check_encoder_name(name):
    if name not in ENCODER_BUILDERS:
        raise ValueError(f"encoder={name!r} is not a known encoder; accepted "
                         f"values: {', '.join(ENCODER_BUILDERS)}")


def build_encoder(name, input_shape, *, stem="cifar", mean=None, std=None,
                  synchronized_batch_norm=False,
                  batch_norm_momentum=DEFAULT_BATCH_NORM_MOMENTUM, zero_init_residual=False,
                  model_name=None):
    """The encoder `name` for images of `input_shape` (H, W, C): a keras.Model images -> h.

    `stem` ("cifar" or "imagenet") selects the ResNet stem; the other encoders accept and
    ignore it. `zero_init_residual` exists for ResNets only. `model_name` (default "encoder")
    names the model and prefixes its variable paths ("encoder/stage1_block0_bn1/gamma").
    See `nac_tf.models.resnet.build_resnet` for the other arguments.
    """
    _check_encoder_name(name)
    kwargs = dict(stem=stem, mean=mean, std=std,
                  synchronized_batch_norm=synchronized_batch_norm,
                  batch_norm_momentum=batch_norm_momentum, name=model_name or "encoder")
    if name in _RESNETS:
        kwargs["zero_init_residual"] = zero_init_residual
    elif zero_init_residual:
        raise ValueError(f"zero_init_residual=True applies to ResNet encoders "
                         f"({', '.join(_RESNETS)}), not to encoder={name!r}")
    return ENCODER_BUILDERS[name](tuple(input_shape), **kwargs)


def encoder_output_dim(name):
    """Width F of the representation h of encoder `name`."""
    _check_encoder_name(name)
    return _OUTPUT_DIMS[name]


def encoder_input_statistics(name):
    """(mean, std) that encoder `name` requires for its inputs, or None when the dataset's
    statistics apply (`nac_tf.data.catalog.dataset_statistics`)."""
    _check_encoder_name(name)
    return _INPUT_STATISTICS.get(name)
