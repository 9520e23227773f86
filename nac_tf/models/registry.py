"""Encoders by name: `build_encoder` builds the encoder an `nac_tf.specs.encoders.EncoderSpec`
describes (the names: `nac_tf.config.ENCODERS`)."""
from nac_tf.models.layers import DEFAULT_BATCH_NORM_MOMENTUM
from nac_tf.specs import resolve
from nac_tf.specs.encoders import encoder_spec, names_where


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
    spec = encoder_spec(name)
    kwargs = dict(stem=stem, mean=mean, std=std,
                  synchronized_batch_norm=synchronized_batch_norm,
                  batch_norm_momentum=batch_norm_momentum, name=model_name or "encoder")
    if spec.uses_zero_init_residual:
        kwargs["zero_init_residual"] = zero_init_residual
    elif zero_init_residual:
        accepted = names_where(lambda other: other.uses_zero_init_residual)
        raise ValueError(f"zero_init_residual=True applies to ResNet encoders "
                         f"({', '.join(accepted)}), not to encoder={name!r}")
    return resolve(spec.builder)(tuple(input_shape), **kwargs)


def encoder_input_statistics(name):
    """(mean, std) that encoder `name` requires for its inputs, or None when the dataset's
    statistics apply (`nac_tf.data.catalog.dataset_statistics`)."""
    return encoder_spec(name).input_statistics

