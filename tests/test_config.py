"""Configuration validation: every bad value stops with one message naming the field; the
choice lists live in nac_tf.config and agree with what implements them."""
import glob
import os
import subprocess
import sys

import pytest
from absl import flags

from nac_tf.config import ConfigError, PretrainConfig, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _valid(tmp_path, **changes):
    base = PretrainConfig(dataset="digits", encoder="small_cnn", model_dir=str(tmp_path),
                          batch_size=64, queue_size=1280)
    return base.replace(**changes)


def test_defaults_with_model_dir_are_valid(tmp_path):
    validate_config(_valid(tmp_path))


@pytest.mark.parametrize("changes, flag, words", [
    ({"flip_prob": 0.5}, "flip_prob", "(0.0, 0.5)"),
    ({"flip_prob": 0.0}, "flip_prob", "(0.0, 0.5)"),
    ({"flip_prob": -0.1}, "flip_prob", "(0.0, 0.5)"),
    ({"method": "byol"}, "method", "nac, nac_mq, simclr, moco_v2"),
    ({"dataset": "svhn"}, "dataset", "digits"),
    ({"encoder": "resnet101"}, "encoder", "resnet50"),
    ({"stem": "tiny"}, "stem", "cifar"),
    ({"batch_norm": "group"}, "batch_norm", "per_view"),
    ({"strategy": "gpu"}, "strategy", "mirrored"),
    ({"precision": "float16"}, "precision", "mixed_float16"),
    ({"learning_rate_scaling": "cubic"}, "learning_rate_scaling", "sqrt"),
    ({"batch_size": 0}, "batch_size", "positive"),
    ({"code_dim": 100}, "code_dim", "multiple of 8"),
    ({"learning_rate": 0.0}, "learning_rate", "range"),
    ({"momentum": 1.0}, "momentum", "range"),
    ({"temperature": 0.0}, "temperature", "range"),
    ({"jitter_prob": 1.5}, "jitter_prob", "range"),
    ({"model_dir": ""}, "model_dir", "required"),
    ({"dataset": "npz"}, "data_dir", "needs a data_dir"),
    ({"dataset": "image_folder", "data_dir": "/no/such/dir"}, "data_dir", "does not exist"),
    ({"dataset": "imagenet2012"}, "data_dir", "manual"),
    ({"method": "nac_mq", "queue_size": 1000}, "queue_size", "multiple of 2 x batch_size"),
    ({"method": "moco_v2", "queue_size": 0}, "queue_size", "positive"),
    ({"on_corrupt": "ignore"}, "on_corrupt", "skip, raise"),
    ({"lars_rule": "lamb"}, "lars_rule", "simclr, all, authors"),
    ({"head_init": "xavier"}, "head_init", "keras, pytorch"),
    ({"mq_negatives": "batch"}, "mq_negatives", "batch_in_queue, positive_key, queue_only"),
    ({"augment_on": "gpu"}, "augment_on", "host, device"),
    ({"optimizer": "sgd"}, "optimizer", "lars, adam"),
    ({"lr_schedule": "cosine"}, "lr_schedule", "warmup_cosine, warmup_step"),
    ({"lr_decay_fractions": "0.5,x"}, "lr_decay_fractions", "comma-separated"),
    ({"lr_decay_fractions": "0.5,1.0"}, "lr_decay_fractions", "in (0, 1)"),
    ({"lr_decay_fractions": "0.8,0.5"}, "lr_decay_fractions", "increase"),
    ({"lr_decay_factor": 0.0}, "lr_decay_factor", "range"),
    ({"adam_beta1": 1.0}, "adam_beta1", "range"),
    ({"adam_beta2": -0.5}, "adam_beta2", "range"),
    ({"method": "amdim"}, "encoder", "has no AMDIM feature maps"),
    ({"amdim_clip_value": 0.0}, "amdim_clip_value", "range"),
    ({"amdim_regularization_weight": -1e-3}, "amdim_regularization_weight", "range"),
    ({"amdim_mixture_components": -1}, "amdim_mixture_components", "range"),
    ({"amdim_mixture_entropy_weight": 0.0}, "amdim_mixture_entropy_weight", "range"),
    ({"augmentation": "autoaugment"}, "augmentation", "simclr, amdim"),
    ({"augmentation": "amdim", "flip": False}, "flip", "does not apply to"),
    ({"augmentation": "amdim", "crop_area_min": 0.2}, "crop_area_min", "does not apply to"),
    ({"queue_init_scale": 0.0}, "queue_init_scale", "range"),
    ({"eval_every_steps": -1}, "eval_every_steps", ">= 0"),
    ({"mlp_eval_epochs": -1}, "mlp_eval_epochs", ">= 0"),
    ({"eval_num_queries": 0}, "eval_num_queries", "positive"),
    ({"eval_num_queries": -5}, "eval_num_queries", "positive"),
])
def test_bad_values_name_the_field(tmp_path, changes, flag, words):
    with pytest.raises(ConfigError) as error:
        validate_config(_valid(tmp_path, **changes))
    assert error.value.field == flag
    assert str(error.value).startswith(f"{flag}: ")
    assert words in error.value.reason
    # Library messages speak of fields; only the command line turns them into --flags.
    assert "--" not in str(error.value)


def test_npz_data_dir_must_be_a_file(tmp_path):
    with pytest.raises(ConfigError, match="needs a .npz file"):
        validate_config(_valid(tmp_path, dataset="npz", data_dir=str(tmp_path)))


def test_batch_must_split_over_replicas(tmp_path):
    validate_config(_valid(tmp_path, batch_size=64), num_replicas=2)
    with pytest.raises(ConfigError, match="divisible by the 2 replicas") as error:
        validate_config(_valid(tmp_path, batch_size=63), num_replicas=2)
    assert error.value.field == "batch_size"


def test_config_imports_neither_tensorflow_nor_keras():
    code = ("import sys, nac_tf.config; "
            "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_choice_lists_agree_with_what_implements_them(tmp_path):
    from nac_tf import config, distribute, models, optim
    from nac_tf.data import catalog

    for rule in config.LARS_RULES:
        assert set(optim.lars_rule_arguments(rule)) == {"exclude_from_weight_decay",
                                                      "freeze_zero_norm"}
    for scaling in config.LR_SCALINGS:
        assert optim.scaled_learning_rate(1.0, 256, scaling) > 0
    for initializer in config.HEAD_INITIALIZERS:
        models.ProjectionHead(hidden_dim=4, output_dim=8, initializer=initializer)
    for stem in config.ENCODER_STEMS:
        models.build_encoder("resnet_tiny", (8, 8, 3), stem=stem)
    from nac_tf import recipes as builders
    from nac_tf.data import views

    augmenter = views.ViewPairAugmenter(views.cifar_recipe(8), seed=0)
    stages = {mode: builders.input_augmentation(_valid(tmp_path, augment_on=mode), augmenter)
              for mode in config.AUGMENT_ON}
    assert stages == {"host": augmenter, "device": augmenter.crop_pair}
    recipes = {name: builders.augmentation_config(_valid(tmp_path, augmentation=name), 32)
               for name in config.AUGMENTATIONS}
    assert recipes == {"simclr": views.cifar_recipe(32), "amdim": views.amdim_recipe(32)}
    optimizers = {name: type(builders.make_optimizer(_valid(tmp_path, optimizer=name), 0.1))
                  for name in config.OPTIMIZERS}
    assert optimizers == {"lars": optim.LARS, "adam": optim.AdamL2}
    schedules = {name: type(builders.learning_rate_schedule(
        _valid(tmp_path, lr_schedule=name, lr_decay_fractions="0.5"), 0.1, 10, 2))
        for name in config.LR_SCHEDULES}
    assert schedules == {"warmup_cosine": optim.WarmupCosineSchedule,
                         "warmup_step": optim.WarmupStepSchedule}
    assert distribute.make_strategy("one_device") is not None
    with pytest.raises(ValueError, match="not one of"):
        distribute.make_strategy("gpu_cluster")
    with pytest.raises(ValueError, match="not one of"):
        catalog.load_source("svhn")


CONFIG_NAMES = sorted(os.path.basename(path)[:-len(".flags")]
                      for path in glob.glob(os.path.join(REPO, "configs", "*.flags")))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_parses_and_validates(name, tmp_path):
    from nac_tf.cli.train import config_from_args

    config = config_from_args([f"--config={name}", f"--model_dir={tmp_path}",
                               f"--data_dir={tmp_path}"])
    if config.dataset in ("npz",):
        pytest.fail(f"{name} uses an npz archive; configs should name real datasets")
    if config.dataset == "digits":
        config = config.replace(data_dir="")
    validate_config(config)
    with open(os.path.join(REPO, "configs", f"{name}.flags")) as f:
        header = f.read().split("\n--", 1)[0]
    assert f"nac-train --config={name}" in header, "header states the command"
    assert "%" in header, "header states the paper's result it targets"


def test_robustness_flags_reach_the_config(tmp_path):
    import nac_tf.cli.train as entry

    values = flags.FlagValues()
    entry.define_flags(values)
    values(["prog", "--on_corrupt=raise", "--deterministic", f"--model_dir={tmp_path}"])
    config = entry.config_from_flags(values)
    assert config.on_corrupt == "raise" and config.deterministic
    defaults = PretrainConfig()
    assert defaults.on_corrupt == "skip" and not defaults.deterministic
