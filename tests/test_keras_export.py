"""The Keras model of an export (nac_tf/keras_export.py, `nac-export --keras`): built-in layers
only, loadable without nac_tf, the SavedModel's features and codes, the documented
fine-tuning example run as written, and the command's bad inputs."""
import errno
import os
import re
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest

from nac_tf.cli.export import validate_flags
from nac_tf.config import ConfigError
from nac_tf.data.catalog import load_source
from nac_tf.export import ExportedModel, load_exported_model
from nac_tf.keras_export import (builtin_encoder, keras_encoder_model, keras_model_of_export,
                                 save_keras_model)
from nac_tf.models import ProjectionHead, build_encoder
from nac_tf.models.amdim import ChannelZeroPadding, ReflectionPadding2D
from nac_tf.run_directory import SAVED_MODEL_DIR

from test_bad_input import _error_lines, _run_concurrently
from test_export import SAFE_MARGIN, SUBPROCESS_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = [sys.executable, "-m", "nac_tf.cli.export"]  # nac-export
# Where the documented example loads the model from, relative to its working directory.
DOCUMENTED_PATH = os.path.join("runs", "quickstart", "encoder.keras")


def _documented_example():
    """The python block of docs/serving.md's section on the Keras model."""
    with open(os.path.join(REPO, "docs", "serving.md")) as f:
        section = f.read().split("\n# A Keras model of the encoder\n", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert f'keras.saving.load_model("{DOCUMENTED_PATH}")' in code
    return code


def _layers(model):
    """Every layer of `model`, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def _assert_builtin(model):
    custom = [f"{layer.name} ({type(layer).__module__})" for layer in _layers(model)
              if not type(layer).__module__.startswith("keras.src.")
              or isinstance(layer, keras.layers.Lambda)]
    assert not custom, custom


@pytest.fixture(scope="module")
def keras_file(tiny_run, tmp_path_factory):
    """(path, stdout) of `tiny_run` exported by `nac-export --keras` alone."""
    path = str(tmp_path_factory.mktemp("keras_export") / "encoder.keras")
    result = subprocess.run([*EXPORT, f"--model_dir={tiny_run.model_dir}", f"--keras={path}"],
                            cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return path, result.stdout


def test_command_writes_the_keras_file_alone_and_describes_it(keras_file, tiny_run):
    path, stdout = keras_file
    config = tiny_run.config
    checkpoint = os.path.join(tiny_run.model_dir, "checkpoints", f"ckpt-{config.train_steps}")
    assert (f"Exported nac from {checkpoint} as a Keras model (training image size "
            f"{config.image_size}, {config.code_dim}-bit codes)") in stdout, stdout
    assert (f"Keras model (input images: uint8 [N, H, W, 3], any H x W): codes float32 "
            f"[None, {config.code_dim}], features float32 [None, 128]") in stdout, stdout
    assert f"Keras model path: {path}" in stdout
    assert "without nac_tf" in stdout
    assert "Export path:" not in stdout  # --keras alone writes no SavedModel


# Run with nac_tf not importable: loads the .keras file as a user without nac_tf would,
# writes its outputs for the test's images, then runs the documented example in its working
# directory (where DOCUMENTED_PATH is the exported file).
_NO_NAC_TF_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["nac_tf"] = None  # `import nac_tf` raises ImportError from here on
    try:
        import nac_tf
    except ImportError:
        pass
    else:
        sys.exit("nac_tf is importable")
    import keras
    import numpy as np

    model_path, inputs, outputs, example = sys.argv[1:]
    model = keras.saving.load_model(model_path)
    results = {}
    for key, images in np.load(inputs).items():
        for name, value in model.predict(images, verbose=0).items():
            results[f"{key}/{name}"] = value
    np.savez(outputs, **results)

    namespace = {}
    exec(compile(open(example).read(), "docs/serving.md", "exec"), namespace)
    history = namespace["classifier"].history.history
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0]), history
""")


def test_loads_without_nac_tf_and_serves_the_saved_models_features_and_codes(
        keras_file, tiny_export, tiny_run, tmp_path):
    path, _ = keras_file
    size = tiny_run.config.image_size
    digits = load_source("digits", image_size=size).test_images[:64]
    images = {"same": digits,  # the training size: no resize
              "larger": np.repeat(np.repeat(digits, 2, axis=1), 2, axis=2),  # resized down
              "smaller": digits[:, 1:7, :, :]}  # 6 x 8: resized up along H
    inputs, outputs = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs, **images)
    example = tmp_path / "example.py"
    example.write_text(_documented_example())
    (tmp_path / DOCUMENTED_PATH).parent.mkdir(parents=True)
    os.symlink(path, tmp_path / DOCUMENTED_PATH)
    # cwd without nac_tf; nac_tf is installed (editable), hence the script's sys.modules.
    result = subprocess.run(
        [sys.executable, "-c", _NO_NAC_TF_SCRIPT, path, str(inputs), str(outputs),
         str(example)], cwd=str(tmp_path), env=SUBPROCESS_ENV, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = dict(np.load(outputs))

    exported = load_exported_model(tiny_export.path)
    for key, batch in images.items():
        features, codes = loaded[f"{key}/features"], loaded[f"{key}/codes"]
        assert features.dtype == codes.dtype == np.float32
        np.testing.assert_allclose(features, exported.features(batch), rtol=0, atol=1e-5)
        np.testing.assert_allclose(codes, exported.codes(batch), rtol=0, atol=1e-5)
        # Bit-exact hash codes on the rows with no code near 0 (see SAFE_MARGIN).
        safe = np.all(np.abs(codes) > SAFE_MARGIN, axis=1)
        assert safe.mean() >= 0.75, key
        np.testing.assert_array_equal(np.packbits(codes[safe] > 0, axis=1),
                                      exported.hash_codes(batch)[safe])
    with pytest.raises(ValueError, match="in memory"):
        keras_model_of_export(exported)  # a loaded SavedModel holds no Keras layers


def _randomised(model, rng):
    """`model` with random weights and BatchNorm moving statistics far from (0, 1), so that
    a wrongly copied weight or BatchNorm in training mode changes the outputs."""
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        elif "moving_mean" in variable.path or variable.path.endswith(("beta", "bias")):
            variable.assign(rng.normal(0.0, 0.3, shape).astype(np.float32))
        elif variable.path.endswith("gamma"):
            variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    return model


@pytest.mark.parametrize("encoder_name, head_batch_norm", [
    ("resnet_tiny", True), ("vgg16", False), ("small_cnn", None)])  # None: no head (AMDIM's way)
def test_builtin_layers_reproduce_the_encoder_and_head(encoder_name, head_batch_norm):
    rng = np.random.default_rng(0)
    size = 8
    encoder = _randomised(build_encoder(encoder_name, (size, size, 3)), rng)
    if encoder_name == "vgg16":  # no BatchNorm: keep h of order 1 on 0..255 pixels
        first = encoder.get_layer("block1_conv1").kernel
        first.assign(first.numpy() / 100.0)
    method = types.SimpleNamespace(name="test", encoder=encoder, projection_head=None,
                                   CODES_FROM_FEATURES=head_batch_norm is None)
    if head_batch_norm is not None:
        head = ProjectionHead(32, 16, use_batch_norm=head_batch_norm)
        head.build((None, encoder.output_shape[-1]))
        method.projection_head = _randomised(head, rng)
    exported = ExportedModel.from_method(method)  # what the SavedModel would serve
    # Both entry points: a method, or its ExportedModel in memory.
    model = keras_encoder_model(method) if head_batch_norm else keras_model_of_export(exported)
    _assert_builtin(model)
    for shape in ((3, size, size, 3), (2, 11, 6, 3)):  # the training size, and resized
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        outputs = model(images)  # called without `training`: inference mode
        features = exported.features(images)
        assert np.abs(features).max() > 0.1  # the comparison is not between zeros
        np.testing.assert_allclose(outputs["features"], features, rtol=0, atol=1e-5)
        np.testing.assert_allclose(outputs["codes"], exported.codes(images), rtol=0,
                                   atol=1e-5)


def test_amdim_paddings_become_builtin_layers():
    images = keras.Input((5, 6, 3))
    padded = ChannelZeroPadding(2)(ReflectionPadding2D(2)(images))
    model = builtin_encoder(keras.Model(images, padded))
    _assert_builtin(model)
    x = np.random.default_rng(1).normal(size=(2, 5, 6, 3)).astype(np.float32)
    expected = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 2)], mode="reflect")
    expected[..., 3:] = 0.0  # the channels are zero-padded, not reflected
    np.testing.assert_array_equal(model(x), expected)


def test_save_refuses_an_existing_file_and_leaves_nothing_behind_on_failure(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    path = str(tmp_path / "model.keras")
    assert save_keras_model(model, path) == path
    with pytest.raises(ConfigError, match="exists; set overwrite") as error:
        save_keras_model(model, path)
    assert error.value.field == "path"
    before = os.path.getmtime(path)

    def full_disk(filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filepath)

    model.save = full_disk
    with pytest.raises(ConfigError) as error:
        save_keras_model(model, path, overwrite=True)
    assert error.value.reason == f"cannot write {path!r} (No space left on device)"
    assert os.listdir(tmp_path) == ["model.keras"] and os.path.getmtime(path) == before
    del model.save
    save_keras_model(model, path, overwrite=True)
    keras.saving.load_model(path)


def test_flags_write_what_is_named(tiny_run, tmp_path):
    run = tiny_run.model_dir
    keras_path, export_dir = str(tmp_path / "e.keras"), str(tmp_path / "export")
    assert validate_flags(run, "", "", False)[1:3] == (
        os.path.join(run, SAVED_MODEL_DIR), None)
    assert validate_flags(run, "", "", False, keras=keras_path)[1:3] == (None, keras_path)
    assert validate_flags(run, export_dir, "", False, keras=keras_path)[1:3] == (
        export_dir, keras_path)
    with pytest.raises(ConfigError, match="is also --export_dir") as error:
        validate_flags(run, keras_path, "", False, keras=keras_path)
    assert error.value.field == "keras"


def test_bad_keras_paths_give_one_line_before_tensorflow(tiny_run, tmp_path):
    existing = tmp_path / "existing.keras"
    existing.write_text("")
    file = tmp_path / "file"
    file.write_text("")
    command = ["-X", "importtime", *EXPORT[1:], f"--model_dir={tiny_run.model_dir}"]
    cases = {
        "suffix": (str(tmp_path / "model.h5"),
                   "{path!r} does not end in .keras (the Keras 3 model file format)"),
        "existing": (str(existing), "{path!r} exists; set overwrite to replace it"),
        "unwritable": (str(file / "model.keras"),
                       f"cannot write {{path!r}} (Not a directory: {str(file)!r})"),
    }
    results = _run_concurrently(
        {name: [sys.executable, *command, f"--keras={path}"]
         for name, (path, _) in cases.items()}, timeout=120, env=SUBPROCESS_ENV)
    for name, (code, stderr) in results.items():
        path, words = cases[name]
        assert code == 2, (name, stderr[-2000:])
        assert _error_lines(stderr) == [f"error: --keras: {words.format(path=path)}"], name
        assert not any(line.rstrip().endswith("| tensorflow") for line in stderr.splitlines())
    assert existing.read_text() == ""
