"""A method with every variable created, from a PretrainConfig and the run's input
statistics: what a run directory alone rebuilds (training, export, evaluation)."""
import logging

from nac_tf.config import PretrainConfig
from nac_tf.methods import MethodConfig, build_method, hyperparameters_of
from nac_tf.models import build_encoder, load_encoder_weights

logger = logging.getLogger(__name__)


def resolve_stem(config: PretrainConfig, image_size):
    """The ResNet stem of `config.stem` ("auto": cifar up to 64 px, imagenet above)."""
    if config.stem != "auto":
        return config.stem
    return "cifar" if image_size <= 64 else "imagenet"


def method_config(config: PretrainConfig, representation_dim, num_replicas):
    """The MethodConfig (settings every method shares) of `config`."""
    return MethodConfig(
        code_dim=config.code_dim,
        head_hidden_dim=config.head_hidden_dim or representation_dim,
        head_batch_norm=config.head_batch_norm,
        head_scale_by_sqrt_dim=config.head_scale_by_sqrt_dim,
        synchronized_batch_norm=config.batch_norm == "sync" and num_replicas > 1,
        per_view_batch_norm=config.batch_norm == "per_view",
        seed=config.seed, head_init=config.head_init)


def method_from_config(config: PretrainConfig, input_statistics, num_replicas=1,
                       load_init_weights=False):
    """The method of `config` (encoder, heads, momentum copies) with every variable created.

    `input_statistics` is the run's {"image_size", "mean", "std"} (`input_statistics.json`
    of the run directory): everything besides the configuration that fixes the
    architecture. Call inside the strategy's scope when training distributed.
    `load_init_weights`: a new run; the encoder's weights come from `config.init_weights`
    when it names a file (`nac_tf.models.weights_file`), before the momentum copies are
    made from the encoder, so they start from the same weights (logged). Without it (a
    resumed run, a run directory rebuilt for export or evaluation) the weights come from a
    checkpoint restored afterwards, and the file is not read.
    """
    image_size = int(input_statistics["image_size"])
    encoder = build_encoder(
        config.encoder, (image_size, image_size, 3), stem=resolve_stem(config, image_size),
        mean=input_statistics["mean"], std=input_statistics["std"],
        synchronized_batch_norm=config.batch_norm == "sync" and num_replicas > 1)
    if load_init_weights and config.init_weights:
        logger.info("%s", load_encoder_weights(encoder, config.init_weights).describe())
    method = build_method(
        config.method, encoder,
        method_config(config, int(encoder.output_shape[-1]), num_replicas),
        **hyperparameters_of(config.method, config))
    method.build_networks((image_size, image_size, 3))
    return method
