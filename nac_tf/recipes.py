"""The pieces of a pretraining run that a PretrainConfig and its data determine: the view
recipe, the learning-rate schedule and optimizer, the input statistics, the schedule's
length, and the compiled method with its input for `model.fit`.

`pretrain` (`nac_tf.training`) builds its run from these; `method_for_run(config, source)`
and `view_pair_dataset(config, source)` give the same method, optimizer and input pipeline
without a run directory, checkpoints, distribution or evaluation.
"""
import dataclasses
import logging

import keras

from nac_tf.config import DATASETS, ConfigError, PretrainConfig, validate_config
from nac_tf.data.catalog import dataset_statistics
from nac_tf.data.pipeline import make_pretrain_dataset, steps_per_epoch
from nac_tf.data.views import AugmentationConfig, ViewPairAugmenter, amdim_recipe
from nac_tf.methods.from_config import method_from_config
from nac_tf.models import encoder_input_statistics
from nac_tf.optim import (LARS, AdamL2, WarmupCosineSchedule, WarmupStepSchedule,
                          lars_rule_arguments, scaled_learning_rate)
from nac_tf.precision import resolve_precision

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the views
def augmentation_config(config: PretrainConfig, image_size):
    """The view recipe of `config.augmentation` at `image_size`: AMDIM's (`amdim_recipe`,
    the authors' CIFAR recipe up to 32 px) or the SimCLR family's, from the fields."""
    if config.augmentation == "amdim":
        return amdim_recipe(image_size)
    return AugmentationConfig(
        image_size=image_size, crop_area=(config.crop_area_min, 1.0), flip=config.flip,
        jitter_strength=config.jitter, jitter_prob=config.jitter_prob,
        grayscale_prob=config.grayscale_prob, blur_prob=config.blur_prob)


def view_augmenter(config: PretrainConfig, image_size):
    """The run's ViewPairAugmenter: `config`'s recipe at `image_size`, seeded by the run."""
    return ViewPairAugmenter(augmentation_config(config, image_size), seed=config.seed)


def input_augmentation(config: PretrainConfig, augmenter):
    """What the input pipeline makes of a batch (`make_pretrain_dataset`'s augmenter): the
    view pairs (augment_on="host"), or the crops with the random parameters of the later
    stages (device: `crop_pair`; `use_view_stage` gives the method the rest)."""
    return augmenter if config.augment_on == "host" else augmenter.crop_pair


def use_view_stage(config: PretrainConfig, method, augmenter):
    """augment_on="device": `method` finishes the views in its train step
    (`TwoViewMethod.input_views`); host: its input elements are the views."""
    method.view_stage = augmenter.colour_pair if config.augment_on == "device" else None


# ------------------------------------------------------------------- schedule and optimizer
def schedule_lengths(config: PretrainConfig, num_train):
    """(steps_per_epoch, total_steps, warmup_steps) for the global batch."""
    per_epoch = steps_per_epoch(num_train, config.batch_size)
    if per_epoch < 1:
        raise ConfigError("batch_size", f"{config.batch_size} is larger than the "
                          f"{num_train} training images of dataset={config.dataset!r}")
    total = config.train_steps or config.epochs * per_epoch
    warmup = min(total, int(round(config.warmup_epochs * per_epoch)))
    return per_epoch, total, warmup


def learning_rate_schedule(config: PretrainConfig, peak_lr, total_steps, warmup_steps):
    """The schedule of `config.lr_schedule` (LR_SCHEDULES): a linear warm-up over
    `warmup_steps`, then cosine decay to 0 at `total_steps` (warmup_cosine), or the peak
    multiplied by `lr_decay_factor` at each of `lr_decay_fractions` of `total_steps`
    (warmup_step, the AMDIM authors')."""
    if config.lr_schedule == "warmup_step":
        decay_steps = [max(1, int(round(f * total_steps)))
                       for f in config.lr_decay_fraction_values]
        return WarmupStepSchedule(peak_lr, total_steps, warmup_steps, decay_steps,
                                  config.lr_decay_factor)
    return WarmupCosineSchedule(peak_lr, total_steps, warmup_steps)


def make_optimizer(config: PretrainConfig, schedule):
    """The optimizer of `config.optimizer` (OPTIMIZERS) on `schedule`, both with coupled
    weight decay `config.weight_decay`: LARS (`config.lars_rule` and its hyperparameters) or
    torch's Adam (`AdamL2`, `adam_beta1`, `adam_beta2`, epsilon 1e-8)."""
    if config.optimizer == "adam":
        return AdamL2(schedule, beta_1=config.adam_beta1, beta_2=config.adam_beta2,
                      epsilon=1e-8, weight_decay=config.weight_decay)
    return LARS(schedule, momentum=config.lars_momentum, weight_decay=config.weight_decay,
                trust_coefficient=config.lars_trust_coefficient,
                **lars_rule_arguments(config.lars_rule))


def compile_method(method, config: PretrainConfig, total_steps, warmup_steps,
                   jit_compile="auto"):
    """Compiles `method` with the run's optimizer; returns (optimizer, peak learning rate).

    `make_optimizer` (LARS by default) on `learning_rate_schedule` (by default a linear
    warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps`) from the scaled
    peak rate; wrapped in a LossScaleOptimizer for mixed_float16. The optimizer is built on
    the optimized variables only (not the momentum copies). `jit_compile` is Keras' (for
    `model.fit`; `pretrain` runs its own step, XLA per `config.jit_compile`). Call inside
    the strategy's scope when training distributed.
    """
    peak_lr = scaled_learning_rate(config.learning_rate, config.batch_size,
                                   config.learning_rate_scaling)
    optimizer = make_optimizer(config, learning_rate_schedule(config, peak_lr, total_steps,
                                                              warmup_steps))
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    method.compile(optimizer=optimizer, jit_compile=jit_compile)
    optimizer.build(method.optimized_variables)
    return optimizer, peak_lr


# ------------------------------------------------------------------------ run-level facts
def with_resolved_precision(config: PretrainConfig):
    """`config` with precision="auto" replaced by the precision it picks here (logged);
    sets Keras' global dtype policy for a mixed precision."""
    precision, reason = resolve_precision(config.precision)
    if reason is not None:
        logger.info("precision auto: %s (%s)", precision, reason)
    if precision != "float32":
        keras.config.set_dtype_policy(precision)
    return dataclasses.replace(config, precision=precision)


def run_image_size(config: PretrainConfig, source):
    """The run's image size: `config.image_size`, or (0) the size of `source`'s images.
    The dataset picks the input normalisation (published statistics for CIFAR-10 and
    ImageNet), so a source of another dataset than `config.dataset` is refused here, before
    it could silently be normalised with another dataset's values."""
    if source.name in DATASETS and source.name != config.dataset:
        raise ValueError(f"`source` holds {source.name!r} but config.dataset is "
                         f"{config.dataset!r}; set dataset={source.name!r} in the config")
    return config.image_size or source.image_shape[0]


def input_statistics_of(config: PretrainConfig, source, image_size):
    """The run's input statistics {"image_size", "mean", "std"} (input_statistics.json, the
    encoder's input normalisation, the export's metadata): the encoder's own when the
    weights it is made for fix them (vgg16: keras' VGG16 preprocessing), otherwise the
    dataset's (`dataset_statistics`)."""
    mean, std = (encoder_input_statistics(config.encoder)
                 or dataset_statistics(config.dataset, source))
    return {"image_size": image_size, "mean": list(mean), "std": list(std)}


# -------------------------------------------------------------------------- for model.fit
def method_for_run(config: PretrainConfig, source):
    """The method of `config` as a compiled keras.Model, for `model.fit` on
    `view_pair_dataset(config, source)`: what `pretrain` trains, without its run directory,
    checkpoints, distribution or evaluation (`nac_tf.method_for_run`).

    `source`: the training data (an ImageSource, e.g. `load_source("digits", image_size=8)`),
    which fixes the image size (`run_image_size`), the input normalisation
    (`input_statistics_of`), the encoder's initial weights (`config.init_weights`, when
    set) and, with `config.train_steps` or `config.epochs`, the learning-rate schedule of
    the optimizer (`compile_method`). As `pretrain`, it seeds Keras' global random state
    with `config.seed` and sets the global dtype policy for a mixed `config.precision`. The
    bare method around an encoder of your own is `nac_tf.methods.build_method`.
    """
    validate_config(config, require_model_dir=False)
    image_size = run_image_size(config, source)
    keras.utils.set_random_seed(config.seed)
    config = with_resolved_precision(config)
    statistics = input_statistics_of(config, source, image_size)
    _, total_steps, warmup_steps = schedule_lengths(config, source.num_train)
    method = method_from_config(config, statistics, load_init_weights=True)
    use_view_stage(config, method, view_augmenter(config, image_size))
    compile_method(method, config, total_steps, warmup_steps,
                   jit_compile=config.jit_compile)
    return method


def view_pair_dataset(config: PretrainConfig, source, start_batch=0):
    """Endless batches (view1, view2) of `config.batch_size` images of `source`, augmented
    by `config`'s recipe: `pretrain`'s input pipeline on one device (every batch a function
    of `config.seed` and its index), for `model.fit(..., steps_per_epoch=N)`. With
    augment_on="device" the batches are CropPairs, which `method_for_run(config, ...)`'s
    method turns into the same views in its step."""
    augmenter = view_augmenter(config, run_image_size(config, source))
    return make_pretrain_dataset(source, input_augmentation(config, augmenter),
                                 config.batch_size, seed=config.seed, start_batch=start_batch)
