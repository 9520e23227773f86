"""The method registry (nac_tf.methods.registry): a method registered from outside the package,
with one hyperparameter, gets its flag and help, a PretrainConfig field, its run-defining
field and its range check from its declaration alone; conflicting declarations are refused."""
import dataclasses

import keras
import numpy as np
import pytest
from absl import flags

from nac_tf import config
from nac_tf.cli.train import config_from_flags, define_flags
from nac_tf.config import PretrainConfig, validate_config
from nac_tf.methods import (METHOD_CLASSES, MethodConfig, build_method, hyperparameters_of,
                            register_method, unregister_method)
from nac_tf.methods.base import PairLoss, TwoViewMethod
from nac_tf.models import build_encoder
from nac_tf.settings import FIXED, ConfigError, Setting, unit_interval

TOY_WEIGHT = Setting("toy_weight", 0.5, "Weight of the toy method's view-distance loss.",
                     interval=unit_interval(low_open=True), run=FIXED)


class ToyMethod(TwoViewMethod):
    """toy_weight x the mean squared distance between the two views' representations."""

    def __init__(self, encoder, method_config, *, toy_weight=TOY_WEIGHT.default, **kwargs):
        super().__init__(encoder, method_config, **kwargs)
        self.toy_weight = TOY_WEIGHT.check(toy_weight)

    def view_pair_loss(self, view1, view2, training):
        h = self.forward_views(lambda images: self.encoder(images, training=training),
                               view1, view2)
        first, second = keras.ops.split(keras.ops.cast(h, "float32"), 2)
        return PairLoss(self.toy_weight * keras.ops.mean(keras.ops.square(first - second)), {})


@pytest.fixture
def toy():
    register_method("toy", ToyMethod, (TOY_WEIGHT,))
    yield
    unregister_method("toy")


def _field_names():
    return {field.name for field in dataclasses.fields(PretrainConfig)}


def test_a_registered_method_gets_its_flag_help_field_and_run_defining_field(toy, tmp_path):
    values = flags.FlagValues()
    define_flags(values)
    assert values["toy_weight"].default == 0.5
    assert values["toy_weight"].help == "Weight of the toy method's view-distance loss."
    assert "moco_v2, amdim or toy" in values["method"].help
    assert "toy" in config.METHODS and METHOD_CLASSES["toy"] is ToyMethod
    assert "toy_weight" in config.FIXED_RUN_FIELDS and "toy_weight" in config.RUN_DEFINING_FIELDS

    values(["nac-train", "--method=toy", "--toy_weight=0.25", "--dataset=digits",
            "--encoder=small_cnn", f"--model_dir={tmp_path}"])
    run = config_from_flags(values)
    assert run.toy_weight == 0.25 and run.to_dict()["toy_weight"] == 0.25
    assert hyperparameters_of("toy", run) == {"toy_weight": 0.25}
    validate_config(run)
    with pytest.raises(ConfigError) as error:
        validate_config(run.replace(toy_weight=1.5))
    assert str(error.value) == "toy_weight: 1.5 is outside the accepted range (0.0, 1.0]"


def test_the_method_checks_its_hyperparameter_with_the_declaration(toy):
    def build(**hyperparameters):
        return build_method("toy", build_encoder("small_cnn", (8, 8, 3)),
                            MethodConfig(code_dim=16, head_hidden_dim=32), **hyperparameters)

    method = build(toy_weight=0.3)
    assert isinstance(method, ToyMethod) and method.toy_weight == 0.3
    views = np.random.default_rng(0).uniform(size=(2, 4, 8, 8, 3)).astype("float32")
    assert np.isfinite(float(method.view_pair_loss(*views, training=False).loss))
    with pytest.raises(ConfigError, match=r"toy_weight: 0.0 is outside the accepted range"):
        build(toy_weight=0.0)
    with pytest.raises(TypeError, match="'toy' takes the hyperparameters toy_weight; not "
                                        "flip_prob"):
        build(flip_prob=0.1)


def test_unregistering_removes_the_field_and_the_flag():
    register_method("toy", ToyMethod, (TOY_WEIGHT,))
    made_before = PretrainConfig()
    unregister_method("toy")
    assert "toy_weight" not in _field_names() and "toy" not in config.METHODS
    assert "toy_weight" not in config.RUN_DEFINING_FIELDS
    values = flags.FlagValues()
    define_flags(values)
    assert "toy_weight" not in values
    with pytest.raises(TypeError, match="no setting toy_weight"):
        PretrainConfig(toy_weight=0.5)
    assert made_before == PretrainConfig()


def test_conflicting_declarations_are_refused_and_change_nothing():
    fields, methods = _field_names(), config.METHODS
    other_temperature = Setting("temperature", 0.1, "Another temperature.", run=FIXED)
    with pytest.raises(ValueError, match="'temperature' is declared twice, differently"):
        register_method("toy", ToyMethod, (other_temperature,))
    with pytest.raises(ValueError, match="'seed' is declared twice, differently"):
        register_method("toy", ToyMethod, (Setting("seed", 1, "A seed of its own."),))
    with pytest.raises(ValueError, match="'replace' would hide PretrainConfig.replace"):
        register_method("toy", ToyMethod, (Setting("replace", 1, "A clash."),))
    with pytest.raises(ValueError, match="'nac' is registered already"):
        register_method("nac", ToyMethod, ())
    assert _field_names() == fields and config.METHODS == methods
    # The same declaration twice is one setting: the queue's, shared by NAC-MQ and MoCo-v2.
    register_method("toy", ToyMethod, (config.method_settings()["queue_size"],))
    try:
        assert _field_names() == fields and config.PretrainConfig(method="toy").uses_queue
    finally:
        unregister_method("toy")


def test_a_config_without_a_hyperparameter_is_an_error_not_a_default():
    class Settings:
        method = "nac"

    with pytest.raises(AttributeError, match="flip_prob"):
        hyperparameters_of("nac", Settings())
