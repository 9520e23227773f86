"""Fresh copies of encoders and heads, e.g. the momentum (EMA) networks of NAC-MQ / MoCo.

A copy has the same architecture and the same number and order of weights as the original
(so `copy.set_weights(original.get_weights())` or zip(original.weights, copy.weights) work)
but its own variables, which are freshly initialised, not copied.
"""
import keras

from nac_tf.models.heads import ProjectionHead
from nac_tf.models.layers import check_model_name


def clone_encoder(encoder, name=None):
    """A new functional encoder like `encoder`, named `name` (default: the same name).

    The copy's variable paths start with its own name ("momentum_encoder/stem_conv/kernel"),
    so the two networks stay distinguishable by path.
    """
    name = name or encoder.name
    check_model_name(name)
    with keras.name_scope(name):
        clone = keras.models.clone_model(encoder)
    clone.name = name
    return clone


def clone_head(head, name=None):
    """A new ProjectionHead with `head`'s configuration, built on the same input shape."""
    if not isinstance(head, ProjectionHead):
        raise ValueError(f"head must be a ProjectionHead; got {type(head).__name__}")
    config = head.get_config()
    config["name"] = name or head.name
    clone = ProjectionHead.from_config(config)
    if head.built:
        clone.build_from_config(head.get_build_config())
    return clone
