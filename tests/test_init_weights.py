"""Pretrained initialisation: the vgg16 encoder against keras.applications' VGG16, and
init_weights (nac_tf/models/weights_file.py) in both Keras weights-file formats.

Weights files are written here from a randomly initialised
`keras.applications.VGG16(include_top=False, weights=None)` at 32 x 32 (these machines
cannot download the ImageNet file, whose layout the legacy writer below reproduces), so the
whole file runs in seconds.
"""
import h5py
import keras
import numpy as np
import pytest

from nac_tf.config import ConfigError, PretrainConfig, validate_config
from nac_tf.models import build_encoder, encoder_input_statistics, load_encoder_weights
from nac_tf.models.vgg import VGG16_MEAN, VGG16_STD

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def keras_vgg16():
    keras.utils.set_random_seed(123)
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=SHAPE)


def weight_layers(model):
    return [layer for layer in model.layers if layer.weights]


def write_legacy_h5(model, path, extra_layers=()):
    """`model`'s weights in the Keras 2 HDF5 layout of keras.applications' downloads (as
    keras' legacy_h5_format reads it): the root attribute layer_names, one group per layer
    with the attribute weight_names (empty for layers without weights) and one dataset per
    name, here the names of the VGG16 notop file ("block1_conv1_W_1:0", "..._b_1:0").
    `extra_layers`: (name, arrays) written as further layers."""
    layers = [(layer.name, [w.numpy() for w in layer.weights]) for layer in model.layers]
    layers += list(extra_layers)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode("utf8") for name, _ in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.5"
        for name, arrays in layers:
            group = f.create_group(name)
            names = [f"{name}_{suffix}_1:0" for suffix in ("W", "b", "c", "d")[:len(arrays)]]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for weight_name, array in zip(names, arrays):
                group.create_dataset(weight_name, data=array)
    return path


@pytest.fixture(scope="module")
def weights_files(keras_vgg16, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    keras3 = str(folder / "vgg16.weights.h5")
    keras_vgg16.save_weights(keras3)
    legacy = write_legacy_h5(keras_vgg16, str(folder / "vgg16_notop.h5"))
    return {"keras3": keras3, "legacy_h5": legacy}


# ------------------------------------------------------------------ the vgg16 encoder
def test_vgg16_has_the_layers_and_weight_shapes_of_keras_applications(keras_vgg16):
    encoder = build_encoder("vgg16", SHAPE)
    ours = [(l.name, [tuple(w.shape) for w in l.weights]) for l in weight_layers(encoder)]
    theirs = [(l.name, [tuple(w.shape) for w in l.weights]) for l in weight_layers(keras_vgg16)]
    assert ours == theirs and len(ours) == 13
    # Every keras layer after the input, in order; nac_tf adds only weightless layers (input
    # normalisation, channel reversal) and the average pool.
    names = [l.name for l in encoder.layers]
    assert [n for n in names if n in {l.name for l in keras_vgg16.layers}] == \
        [l.name for l in keras_vgg16.layers[1:]]
    assert set(names) - {l.name for l in keras_vgg16.layers} == {
        "images", "input_normalization", "rgb_to_bgr", "avg_pool"}
    assert sum(int(np.prod(w.shape)) for w in encoder.weights) == 14_714_688
    assert not encoder.non_trainable_weights
    assert encoder.output.shape[-1] == 512


def test_vgg16_input_statistics_are_keras_preprocessing_and_fixed():
    assert encoder_input_statistics("vgg16") == (VGG16_MEAN, VGG16_STD)
    assert encoder_input_statistics("vgg16_bn") is None
    # Read back from input_statistics.json (lists): accepted; other statistics: refused.
    build_encoder("vgg16", (8, 8, 3), mean=list(VGG16_MEAN), std=list(VGG16_STD))
    with pytest.raises(ValueError, match="mean=.*preprocess_input"):
        build_encoder("vgg16", SHAPE, mean=[0.485, 0.456, 0.406], std=list(VGG16_STD))
    with pytest.raises(ValueError, match="std="):
        build_encoder("vgg16", SHAPE, std=[0.229, 0.224, 0.225])
    with pytest.raises(ValueError, match="3 channels"):
        build_encoder("vgg16", (32, 32, 1))


# ------------------------------------------------------------------ init_weights
@pytest.mark.parametrize("file_format", ["keras3", "legacy_h5"])
def test_init_weights_loads_every_layer_bit_for_bit(keras_vgg16, weights_files, file_format):
    encoder = build_encoder("vgg16", SHAPE)
    loaded = load_encoder_weights(encoder, weights_files[file_format])
    assert loaded.file_format == file_format
    assert loaded.loaded_layers == tuple(l.name for l in weight_layers(keras_vgg16))
    assert loaded.unused_layers == ()
    for layer in weight_layers(keras_vgg16):
        for theirs, ours in zip(layer.weights, encoder.get_layer(layer.name).weights):
            assert ours.numpy().dtype == np.float32
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), layer.name)


def test_legacy_variants_nested_weight_names_and_whole_model_files(keras_vgg16, tmp_path):
    # Later Keras 2 files name weights by path ("block1_conv1/kernel:0", nested HDF5
    # groups), and model.save() keeps the weights under the group model_weights.
    path = str(tmp_path / "model.h5")
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights")
        root.attrs["layer_names"] = [l.name.encode("utf8") for l in keras_vgg16.layers]
        for layer in keras_vgg16.layers:
            group = root.create_group(layer.name)
            names = [f"{layer.name}/{leaf}:0" for leaf in ("kernel", "bias")][
                :len(layer.weights)]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for name, weight in zip(names, layer.weights):
                group.create_dataset(name, data=weight.numpy())
    encoder = build_encoder("vgg16", SHAPE)
    assert load_encoder_weights(encoder, path).file_format == "legacy_h5"
    for layer in weight_layers(keras_vgg16):
        for theirs, ours in zip(layer.weights, encoder.get_layer(layer.name).weights):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), layer.name)


def test_the_legacy_writer_is_the_layout_keras_reads(keras_vgg16, weights_files):
    # Keras' own legacy loader (order-based) reads the test's legacy file.
    copy = keras.applications.VGG16(include_top=False, weights=None, input_shape=SHAPE)
    copy.load_weights(weights_files["legacy_h5"])
    for theirs, ours in zip(keras_vgg16.weights, copy.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_vgg16_computes_keras_vgg16_on_preprocess_input(keras_vgg16, weights_files):
    encoder = build_encoder("vgg16", SHAPE)
    load_encoder_weights(encoder, weights_files["legacy_h5"])
    pixels = np.random.default_rng(0).integers(0, 256, (2,) + SHAPE).astype(np.uint8)
    ours = np.asarray(encoder(pixels.astype(np.float32) / 255.0, training=False))
    feature_map = keras_vgg16(
        keras.applications.vgg16.preprocess_input(pixels.astype(np.float32)), training=False)
    theirs = np.asarray(keras.ops.mean(feature_map, axis=(1, 2)))
    # float32 rounding of (p - m/255) / (1/255) against 255 p - m, through 13 layers:
    # observed |diff| ~1e-6 on outputs up to ~0.4.
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert np.abs(theirs).max() > 1e-2  # not trivially equal


def test_init_weights_round_trips_an_encoder_with_batch_norm(tmp_path):
    # vgg16_bn: BatchNorm moving statistics (non-trainable) come back in their order too.
    keras.utils.set_random_seed(7)
    source = build_encoder("vgg16_bn", SHAPE)
    for weight in source.weights:
        weight.assign(np.random.default_rng(len(weight.path)).normal(
            size=weight.shape).astype(np.float32))
    path = str(tmp_path / "vgg16_bn.weights.h5")
    source.save_weights(path)
    target = build_encoder("vgg16_bn", SHAPE)
    loaded = load_encoder_weights(target, path)
    assert len(loaded.loaded_layers) == 26  # 13 convolutions, 13 BatchNorms
    for ours, theirs in zip(target.weights, source.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_file_layers_the_encoder_lacks_are_reported_not_fatal(keras_vgg16, tmp_path):
    # E.g. VGG16 saved with its classifier: the encoder has no use for it.
    extra = [("predictions", [np.ones((512, 10), np.float32), np.zeros(10, np.float32)])]
    path = write_legacy_h5(keras_vgg16, str(tmp_path / "with_top.h5"), extra)
    encoder = build_encoder("vgg16", SHAPE)
    loaded = load_encoder_weights(encoder, path)
    assert loaded.unused_layers == ("predictions",)
    assert "predictions" in loaded.describe()
    np.testing.assert_array_equal(encoder.get_layer("block5_conv3").kernel,
                                  keras_vgg16.get_layer("block5_conv3").kernel)


def test_missing_layers_and_shape_mismatches_are_fatal_and_named(weights_files, tmp_path):
    path = weights_files["legacy_h5"]
    # vgg16_bn has BatchNorm layers a plain VGG16 file cannot fill.
    encoder = build_encoder("vgg16_bn", SHAPE)
    before = [w.numpy().copy() for w in encoder.weights]
    with pytest.raises(ConfigError) as error:
        load_encoder_weights(encoder, path)
    message = str(error.value)
    assert error.value.field == "init_weights" and path in message
    assert "missing in the file: block1_bn1, block1_bn2" in message
    # Nothing is assigned when something does not fit.
    for old, weight in zip(before, encoder.weights):
        np.testing.assert_array_equal(old, weight.numpy())

    gray = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 1))
    other = write_legacy_h5(gray, str(tmp_path / "gray.h5"),
                            [("fc1", [np.zeros((4, 4), np.float32)])])
    with pytest.raises(ConfigError) as error:
        load_encoder_weights(build_encoder("vgg16", SHAPE), other)
    message = str(error.value)
    assert other in message
    assert "block1_conv1 (encoder [(3, 3, 3, 64), (64,)], file [(3, 3, 1, 64), (64,)])" in \
        message
    assert "block1_conv2" not in message  # the layers that fit are not listed
    assert "layers of the file not in the encoder: fc1" in message


def test_unusable_files_name_init_weights(tmp_path):
    encoder = build_encoder("vgg16", (8, 8, 3))
    with pytest.raises(ConfigError, match="init_weights: .*absent.h5.* does not exist"):
        load_encoder_weights(encoder, str(tmp_path / "absent.h5"))
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ConfigError, match="init_weights: .*text.h5.* not an HDF5 file"):
        load_encoder_weights(encoder, str(text))
    empty = str(tmp_path / "empty.h5")
    h5py.File(empty, "w").close()
    with pytest.raises(ConfigError, match="init_weights: .*not a Keras weights file"):
        load_encoder_weights(encoder, empty)


def test_init_weights_setting_is_validated(tmp_path):
    config = PretrainConfig(dataset="digits", encoder="vgg16", model_dir=str(tmp_path))
    # Existence is checked when a new run loads the file, not here (resumes do not need it).
    validate_config(config.replace(init_weights=str(tmp_path / "later.weights.h5")))
    validate_config(config.replace(init_weights="~/vgg16_notop.h5"))
    with pytest.raises(ConfigError, match="init_weights: .*ckpt-10.*not a Keras HDF5"):
        validate_config(config.replace(init_weights=str(tmp_path / "ckpt-10")))
