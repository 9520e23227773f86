"""SavedModel export: signatures, equality with the Keras model, input checks, nac-export."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.config import ConfigError, PretrainConfig
from nac_tf.errors import write_problem
from nac_tf.data.pipeline import make_eval_dataset
from nac_tf.export import (IMAGE_FORMAT, METADATA_FILE, export_saved_model,
                           load_exported_model, pack_bits, read_export_metadata)
from nac_tf.methods.from_config import method_from_config
from nac_tf.run_directory import (INPUT_STATISTICS_FILE, check_export_dir,
                                  prepare_run_directory, restore_pretrained_method)

from test_bad_input import _error_lines, _run_concurrently, unprivileged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = [sys.executable, "-m", "nac_tf.cli.export"]  # nac-export
IMAGE_SIZE = 8
CODE_DIM = 16
# Subprocesses do not get the conftest: set the backend and quiet TensorFlow explicitly.
SUBPROCESS_ENV = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
# Hash bits are compared only where the pre-activation is farther than this from 0: the
# SavedModel's graph optimiser may fuse ops and change a by a few ulps, which could flip
# the sign of an a that is (numerically) zero.
SAFE_MARGIN = 1e-4


def _tiny_config(tmp_path, method="nac", train_steps=3):
    """A pretraining run of a few seconds: small CNN on 8x8 digits, no evaluation."""
    return PretrainConfig(
        method=method, dataset="digits", image_size=IMAGE_SIZE, encoder="small_cnn",
        batch_size=32, train_steps=train_steps, learning_rate=0.5, warmup_epochs=0.2,
        code_dim=CODE_DIM, head_hidden_dim=32, crop_area_min=0.5, flip=False,
        jitter_prob=0.0, grayscale_prob=0.0, checkpoint_every_steps=train_steps,
        log_every_steps=train_steps, queue_size=128, evaluate=False,
        model_dir=str(tmp_path / f"run_{method}"))


def _perturbed_run(tmp_path, method, **changes):
    """A run directory whose checkpoint holds random weights, without training (cheap).

    Every variable is moved by its own noise, so the momentum copies differ from the online
    networks and BatchNorm has non-trivial moving statistics: exporting the wrong networks,
    or BatchNorm in training mode, would change the outputs. `changes`: fields of the
    run's config (a second run needs its own model_dir).
    """
    config = _tiny_config(tmp_path, method).replace(**changes)
    prepare_run_directory(config)
    statistics = {"image_size": IMAGE_SIZE, "mean": [0.3, 0.4, 0.5], "std": [0.2, 0.3, 0.4]}
    with open(os.path.join(config.model_dir, INPUT_STATISTICS_FILE), "w") as f:
        json.dump(statistics, f)
    model = method_from_config(config, statistics)
    rng = np.random.default_rng(3)
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        if not np.issubdtype(value.dtype, np.floating):
            continue
        if "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, value.shape).astype(value.dtype))
        else:
            variable.assign(value + rng.normal(0, 0.1, value.shape).astype(value.dtype))
    tf.train.Checkpoint(method=model).save(os.path.join(config.model_dir, "checkpoints", "ckpt"))
    return config.model_dir


def _images(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _keras_outputs(method, images):
    """(h, a) of the Keras networks on make_eval_dataset's preprocessing, inference mode."""
    features, pre_activations = [], []
    for batch, _ in make_eval_dataset(images, np.zeros(len(images), np.int64), 64,
                                      image_size=IMAGE_SIZE):
        h = method.encoder(batch, training=False)
        features.append(h.numpy())
        pre_activations.append(method.projection_head(h, training=False).numpy())
    return np.concatenate(features), np.concatenate(pre_activations)


def _assert_matches_keras(outputs, h, a):
    """features/codes within 1e-5; hash codes bit-exact on rows with no a near 0."""
    np.testing.assert_allclose(outputs["features"], h, rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs["codes"], np.tanh(a), rtol=0, atol=1e-5)
    safe = np.all(np.abs(a) > SAFE_MARGIN, axis=1)
    assert safe.mean() >= 0.75, "too few rows with every |a| > 1e-4 to compare hash codes"
    assert outputs["hash_codes"].dtype == np.uint8
    assert outputs["hash_codes"].shape == (len(a), CODE_DIM // 8)
    np.testing.assert_array_equal(outputs["hash_codes"][safe],
                                  np.packbits(a[safe] > 0, axis=1))


@pytest.fixture(scope="module")
def nac_export(tiny_run, tiny_export):
    """(run directory, export directory) of the session's tiny NAC run, exported by
    nac-export (tests/conftest.py)."""
    assert (tiny_run.config.image_size, tiny_run.config.code_dim) == (IMAGE_SIZE, CODE_DIM)
    return tiny_run.model_dir, tiny_export.path


def test_command_prints_the_signatures_and_the_export_path(nac_export, tiny_export):
    _, export_dir = nac_export
    for line in ("features: features float32 [None, 128]",
                 "serving_default: features float32 [None, 128]",
                 f"hash_codes: hash_codes uint8 [None, {CODE_DIM // 8}]",
                 f"codes: codes float32 [None, {CODE_DIM}]",
                 f"Export path: {export_dir}"):
        assert line in tiny_export.stdout, tiny_export.stdout


_RELOAD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    export_dir, inputs, outputs = sys.argv[1:]
    model = tf.saved_model.load(export_dir)
    arrays = dict(np.load(inputs))
    results = {}
    for key, images in arrays.items():
        for name in ("features", "hash_codes", "codes"):
            # Through the signature, as a server would call it.
            out = model.signatures[name](images=tf.constant(images))
            results[f"{key}/{name}"] = out[name].numpy()
        results[f"{key}/serving_default"] = model.signatures["serving_default"](
            images=tf.constant(images))["features"].numpy()
    results["image_size"] = model.image_size.numpy()
    results["code_dim"] = model.code_dim.numpy()
    results["method"] = model.method.numpy()
    results["input_mean"] = model.input_mean.numpy()
    np.savez(outputs, **results)
""")


def test_reloaded_in_a_fresh_process_matches_the_keras_model(nac_export, tmp_path):
    run, export_dir = nac_export
    same_size = _images(0, (48, IMAGE_SIZE, IMAGE_SIZE, 3))
    other_size = _images(1, (10, 13, 11, 3))  # resized inside the SavedModel
    inputs, outputs = str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")
    np.savez(inputs, same=same_size, other=other_size)
    result = subprocess.run([sys.executable, "-c", _RELOAD_SCRIPT, export_dir, inputs, outputs],
                            cwd=str(tmp_path), env=SUBPROCESS_ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = dict(np.load(outputs))

    _, method = restore_pretrained_method(run)
    for key, images in (("same", same_size), ("other", other_size)):
        h, a = _keras_outputs(method, images)
        got = {name: reloaded[f"{key}/{name}"] for name in ("features", "hash_codes", "codes")}
        _assert_matches_keras(got, h, a)
        np.testing.assert_array_equal(reloaded[f"{key}/serving_default"], got["features"])
    assert int(reloaded["image_size"]) == IMAGE_SIZE
    assert int(reloaded["code_dim"]) == CODE_DIM
    assert reloaded["method"] == b"nac"
    assert reloaded["input_mean"].shape == (3,)


def test_metadata_asset_describes_the_export(nac_export):
    run, export_dir = nac_export
    metadata = read_export_metadata(export_dir)
    assert os.path.isfile(os.path.join(export_dir, "assets", METADATA_FILE))
    assert metadata["method"] == "nac" and metadata["image_size"] == IMAGE_SIZE
    assert metadata["code_dim"] == CODE_DIM and metadata["hash_code_bytes"] == CODE_DIM // 8
    assert metadata["feature_dim"] == 128
    assert metadata["checkpoint"].endswith("ckpt-6")
    assert len(metadata["input_statistics"]["mean"]) == 3


def _saved_model_cli():
    # The console script installed with TensorFlow, beside this interpreter if not on PATH.
    beside = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    found = shutil.which("saved_model_cli") or (beside if os.path.exists(beside) else None)
    if found is None:
        pytest.skip("saved_model_cli is not installed")
    return found


def test_saved_model_cli_lists_the_signatures(nac_export):
    _, export_dir = nac_export
    result = subprocess.run([_saved_model_cli(), "show", "--dir", export_dir, "--all"],
                            env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("features", "serving_default", "hash_codes", "codes"):
        assert f"signature_def['{name}']" in result.stdout
    assert "DT_UINT8" in result.stdout and "(-1, -1, -1, 3)" in result.stdout


_WRONG_IMAGES = {
    "float32": np.zeros((2, 8, 8, 3), np.float32),
    "rank 3": np.zeros((8, 8, 3), np.uint8),
    "1 channel": np.zeros((2, 8, 8, 1), np.uint8),
    "empty": np.zeros((2, 0, 8, 3), np.uint8),
}


@pytest.mark.parametrize("problem", list(_WRONG_IMAGES))
def test_wrong_images_give_a_clear_error(nac_export, problem):
    images = _WRONG_IMAGES[problem]
    _, export_dir = nac_export
    model = load_exported_model(export_dir)
    if problem != "empty":
        # The Python wrapper refuses before calling TensorFlow (which would silently cast
        # a NumPy float array to uint8).
        with pytest.raises(ValueError, match=r"images must be uint8 \[N, H, W, 3\]; got"):
            model.features(images)
    # A signature call, as TF Serving makes it: the dtype is checked by the signature, the
    # shape by the assertion inside the graph.
    if problem == "float32":
        expected = "expected to be a uint8 tensor but is a float tensor"
    else:
        expected = re.escape(IMAGE_FORMAT + "; received shape") if problem != "empty" \
            else re.escape(IMAGE_FORMAT + " with H, W > 0")
    for name in ("features", "hash_codes", "codes"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
            model.module.signatures[name](images=tf.constant(images))


def test_pack_bits_equals_numpy_packbits():
    bits = np.random.default_rng(0).integers(0, 2, (5, 13)).astype(bool)  # partial last byte
    np.testing.assert_array_equal(pack_bits(tf.constant(bits)).numpy(),
                                  np.packbits(bits, axis=1))


@pytest.mark.parametrize("method", ["nac_mq", "simclr"])
def test_other_methods_export_their_online_networks(tmp_path, method):
    run = _perturbed_run(tmp_path, method)
    export_dir = export_saved_model(run, str(tmp_path / "export"))
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(run, export_dir)
    # Only the online encoder and projection head: no momentum copies, queue or phi.
    names = [name for name, _ in tf.train.list_variables(
        os.path.join(export_dir, "variables", "variables"))]
    assert not any(word in name for name in names
                   for word in ("momentum", "queue", "inference_network"))
    model = load_exported_model(export_dir)
    assert model.metadata["method"] == method
    images = _images(2, (32, IMAGE_SIZE, IMAGE_SIZE, 3))
    _, keras_method = restore_pretrained_method(run)
    h, a = _keras_outputs(keras_method, images)
    outputs = {"features": model.features(images), "codes": model.codes(images),
               "hash_codes": model.hash_codes(images)}
    _assert_matches_keras(outputs, h, a)


def test_command_refuses_a_missing_model_dir(tmp_path):
    missing = str(tmp_path / "no_such_run")
    result = subprocess.run([*EXPORT, f"--model_dir={missing}"], cwd=REPO,
                            env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: --model_dir: '{missing}' is not a directory" in result.stderr
    result = subprocess.run(EXPORT, cwd=REPO, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "error: --model_dir: is required" in result.stderr
    assert not os.path.exists(missing)


# ----------------------------------------------------------------------------- bad flags
# Runs `python ARGS...` with the size of any file it writes limited to LIMIT bytes: a real
# write failure in the middle of the export, as a full disk gives (SIGXFSZ ignored, so the
# write fails with EFBIG instead of killing the process).
_FILE_SIZE_LIMIT = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.executable, [sys.executable] + sys.argv[2:])
"""


def _leftovers(directory):
    """The staging directories of exports (.export-*) left in `directory`."""
    return [name for name in os.listdir(directory) if name.startswith(".export-")]


def test_export_refuses_a_checkpoint_that_does_not_fit_the_run(tmp_path):
    run = _perturbed_run(tmp_path, "nac")
    wider = _perturbed_run(tmp_path, "nac", code_dim=2 * CODE_DIM,
                           model_dir=str(tmp_path / "wider"))
    foreign = tf.train.Checkpoint(x=tf.Variable(1.0)).save(str(tmp_path / "foreign" / "ckpt"))
    damaged = str(tmp_path / "damaged" / "ckpt-1")
    shutil.copytree(os.path.join(run, "checkpoints"), os.path.dirname(damaged))
    data = damaged + ".data-00000-of-00001"
    os.truncate(data, os.path.getsize(data) // 2)
    cases = {
        os.path.join(wider, "checkpoints", "ckpt-1"): "does not match the run in model_dir",
        # Holds no method at all: the partial restore raises nothing, and would export
        # randomly initialised networks.
        foreign: "does not match the run in model_dir",
        damaged: "cannot be read",
    }
    for checkpoint, words in cases.items():
        with pytest.raises(ConfigError) as error:
            export_saved_model(run, str(tmp_path / "export"), checkpoint=checkpoint)
        assert error.value.field == "checkpoint"
        reason = error.value.reason
        assert reason.startswith(f"{checkpoint!r} {words}"), reason
        assert "\n" not in reason and len(reason) < 500, reason
    assert not os.path.exists(tmp_path / "export") and not _leftovers(tmp_path)


def test_export_dir_that_cannot_be_written_is_refused_up_front(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    for export_dir in (file / "sub", file / "a" / "b"):
        with pytest.raises(ConfigError) as error:
            check_export_dir(str(export_dir))
        assert error.value.field == "export_dir"
        assert error.value.reason == (f"cannot write {str(export_dir)!r} (Not a directory: "
                                      f"{str(file)!r})")
    assert write_problem(str(tmp_path / "new" / "deeper" / "saved_model")) is None


def test_command_gives_one_line_for_another_runs_checkpoint_and_unwritable_export(tmp_path):
    run = _perturbed_run(tmp_path, "nac")
    wider = _perturbed_run(tmp_path, "nac", code_dim=2 * CODE_DIM,
                           model_dir=str(tmp_path / "wider"))
    other_checkpoint = os.path.join(wider, "checkpoints", "ckpt-1")
    file = tmp_path / "file"
    file.write_text("")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    full = tmp_path / "full"
    full.mkdir()
    export = ["-m", "nac_tf.cli.export", f"--model_dir={run}"]
    before_tensorflow = ["-X", "importtime", *export]  # lists every module imported
    commands = {
        "other run": [sys.executable, *export, f"--checkpoint={other_checkpoint}",
                      f"--export_dir={tmp_path / 'export'}"],
        "under a file": [sys.executable, *before_tensorflow, f"--export_dir={file / 'sub'}"],
        "read-only": unprivileged([*before_tensorflow, f"--export_dir={read_only / 'sub'}"]),
        "disk full": [sys.executable, "-c", _FILE_SIZE_LIMIT, "16384", *export,
                      f"--export_dir={full / 'saved_model'}"],
    }
    expected = {
        "other run": f"error: --checkpoint: {other_checkpoint!r} does not match the run in "
                     f"model_dir {run!r} (Received incompatible tensor with shape",
        "under a file": f"error: --export_dir: cannot write {str(file / 'sub')!r} (Not a "
                        f"directory: {str(file)!r})",
        "read-only": f"error: --export_dir: cannot write {str(read_only / 'sub')!r} "
                     f"(Permission denied: {str(read_only)!r})",
        "disk full": f"error: --export_dir: cannot write {str(full / 'saved_model')!r} (File "
                     "too large)",
    }
    results = _run_concurrently(commands, timeout=300, env=SUBPROCESS_ENV)
    for name, (code, stderr) in results.items():
        assert code == 2 and "Traceback" not in stderr, (name, stderr[-3000:])
        errors = _error_lines(stderr)
        assert len(errors) == 1 and errors[0].startswith(expected[name]), (name, errors)
    for name in ("under a file", "read-only"):  # refused before TensorFlow was imported
        assert not any(line.rstrip().endswith("| tensorflow")
                       for line in results[name][1].splitlines()), name
    assert not os.path.exists(tmp_path / "export")
    assert os.listdir(read_only) == [] and os.listdir(full) == []  # no half-written export


# ----------------------------------------------------------------------------- TF Serving
def _serving_page():
    with open(os.path.join(REPO, "docs", "serving.md")) as f:
        return f.read()


def _rest_predict(model, body):
    """The answer of TensorFlow Serving's REST predict API to `body` (a parsed JSON request)
    for the SavedModel `model` (tf.saved_model.load), by the rules of its documentation:
    the signature `signature_name` (default serving_default); "instances" (row format, here
    one input: the list of examples) or "inputs" (columnar: the whole tensor), converted
    to the input's dtype; the answer {"predictions": ...} or {"outputs": ...}, without the
    output's name when there is a single output."""
    signature = model.signatures[body.get("signature_name", "serving_default")]
    (name, spec), = signature.structured_input_signature[1].items()
    assert ("instances" in body) != ("inputs" in body), "exactly one of instances, inputs"
    values = np.asarray(body["instances"] if "instances" in body else body["inputs"])
    # JSON numbers into a uint8 tensor: integers within 0..255.
    assert values.dtype.kind == "i" and values.min() >= 0 and values.max() <= 255
    outputs = signature(**{name: tf.constant(values.astype(spec.dtype.as_numpy_dtype))})
    (output,) = outputs.values()  # a single named output: its name is left out
    key = "predictions" if "instances" in body else "outputs"
    return json.loads(json.dumps({key: output.numpy().tolist()}))


def _quickstart_code_dim():
    with open(os.path.join(REPO, "configs", "quickstart.flags")) as f:
        return int(re.search(r"^--code_dim=(\d+)$", f.read(), re.MULTILINE).group(1))


def test_documented_tf_serving_requests_get_the_documented_answers(nac_export):
    _, export_dir = nac_export
    section = _serving_page()
    # The model name and version directory of the docker command, and the export it mounts
    # (nac-export puts saved_model.pb at the top of the export directory).
    model_name = re.search(r"-e MODEL_NAME=(\w+)", section).group(1)
    assert re.search(rf"--mount type=bind,source=\"\$\(pwd\)/runs/quickstart/saved_model\","
                     rf"target=/models/{model_name}/\d+ ", section)
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
    requests = {}
    for name, body in re.findall(r"curl -X POST http://localhost:8501/v1/models/(\w+):predict "
                                 r"-d '(.+?)'", section):
        assert name == model_name
        body = json.loads(body)
        requests[body["signature_name"]] = body
    assert sorted(requests) == ["features", "hash_codes"]
    model = tf.saved_model.load(export_dir)
    exported = load_exported_model(export_dir)

    # Hash codes, row format: {"predictions": one list of D/8 ints per image}.
    images = np.asarray(requests["hash_codes"]["instances"], np.uint8)
    assert images.shape[0] == 2 and images.shape[-1] == 3
    answer = _rest_predict(model, requests["hash_codes"])
    assert list(answer) == ["predictions"]
    assert answer["predictions"] == exported.hash_codes(images).tolist()
    for row in answer["predictions"]:
        assert len(row) == CODE_DIM // 8 and all(type(v) is int and 0 <= v <= 255 for v in row)
    # ... and np.unpackbits gives the bits 1[a > 0] back (where a is clearly nonzero).
    codes = exported.codes(images)
    bits = np.unpackbits(np.array(answer["predictions"], np.uint8), axis=1)
    clear = np.abs(codes) > SAFE_MARGIN
    np.testing.assert_array_equal(bits[clear], (codes > 0)[clear])
    # The answer shown in docs/serving.md has that structure, for the quickstart's code size.
    (documented,) = [json.loads(block) for block in
                     re.findall(r"```json\n(.+?)\n```", section, re.DOTALL)]
    assert list(documented) == ["predictions"] and len(documented["predictions"]) == 2
    for row in documented["predictions"]:
        assert len(row) == _quickstart_code_dim() // 8
        assert all(type(v) is int and 0 <= v <= 255 for v in row)

    # Features, columnar format: {"outputs": one list of F floats per image}.
    images = np.asarray(requests["features"]["inputs"], np.uint8)
    answer = _rest_predict(model, requests["features"])
    assert list(answer) == ["outputs"] and np.shape(answer["outputs"]) == (1, 128)
    np.testing.assert_allclose(answer["outputs"], exported.features(images), rtol=0,
                               atol=1e-6)
