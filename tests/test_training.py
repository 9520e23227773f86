"""End to end: the entry point, the run directory, resume, refusal of changed flags."""
import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.config import ConfigError, PretrainConfig
from nac_tf.precision import resolve_precision
from nac_tf.training import CPU_XLA_WARNING, pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(tmp_path, **changes):
    fields = dict(method="nac", dataset="digits", image_size=8, encoder="small_cnn",
                  batch_size=32, train_steps=6, learning_rate=0.5, warmup_epochs=0.2,
                  code_dim=16, head_hidden_dim=32, crop_area_min=0.5, flip=False,
                  jitter_prob=0.0, grayscale_prob=0.0, knn_k=10, checkpoint_every_steps=3,
                  log_every_steps=2, model_dir=str(tmp_path / "run"), queue_size=128,
                  # The augmented linear probe runs the encoder every epoch: 2 epochs keep
                  # these runs short (100 take ~60 s here).
                  linear_eval_epochs=2)
    fields.update(changes)
    return PretrainConfig(**fields)


@pytest.mark.parametrize("method", ["nac", "nac_mq", "simclr", "moco_v2"])
def test_pretrain_writes_the_run_directory(tmp_path, request, method):
    if method == "nac":
        # The session's shared run (tests/conftest.py), evaluated in full.
        run = request.getfixturevalue("tiny_run")
        config, results = run.config, run.results
    else:
        # The final evaluation's kNN, not its probes: they see every method through the
        # same export module and are checked on the NAC run (here and test_summaries.py).
        config = _tiny(tmp_path, method=method, linear_eval_epochs=0)
        results = pretrain(config)
    run = config.model_dir
    assert results["steps"] == 6
    assert 0.0 <= results["knn_top1"] <= 1.0 and 0.0 <= results["random_init_knn_top1"] <= 1.0
    with open(os.path.join(run, "results.json")) as f:
        assert json.load(f) == results
    with open(os.path.join(run, "flags.json")) as f:
        assert json.load(f)["method"] == method
    assert tf.train.latest_checkpoint(os.path.join(run, "checkpoints")).endswith("-6")
    assert os.listdir(os.path.join(run, "tensorboard"))
    for key in ("loss", "distinct_code_fraction", "mean_hamming_distance", "bit_balance"):
        assert np.isfinite(results["final_metrics"][key])
    if method.startswith("nac"):
        assert np.isfinite(results["final_metrics"]["mi_bound"])


@pytest.mark.slow
def test_augmenting_on_device_trains_the_host_run(tmp_path, caplog):
    """augment_on="device" (colour stages in the step, every stage of the ImageNet recipe
    on) ends with the host run's metrics and checkpointed weights, bit for bit on CPU; the
    same run directory resumes with either setting, which is not run-defining."""
    recipe = dict(flip=True, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5,
                  crop_area_min=0.2, train_steps=3, evaluate=False)
    runs = {}
    for mode in ("host", "device"):
        config = _tiny(tmp_path, augment_on=mode, model_dir=str(tmp_path / mode), **recipe)
        results = pretrain(config)
        checkpoint = tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints"))
        runs[mode] = (results["final_metrics"], {
            name: tf.train.load_variable(checkpoint, name)
            for name, _ in tf.train.list_variables(checkpoint)})
    (host_metrics, host_weights), (device_metrics, device_weights) = runs["host"], runs["device"]
    assert device_metrics == host_metrics
    assert device_weights.keys() == host_weights.keys()
    for name, value in host_weights.items():
        np.testing.assert_array_equal(device_weights[name], value, err_msg=name)
    # The host run's directory accepts augment_on="device" (no allow_flag_changes needed):
    # extended by 2 steps, it resumes.
    caplog.set_level(logging.INFO, logger="nac_tf")
    results = pretrain(_tiny(tmp_path, augment_on="device", model_dir=str(tmp_path / "host"),
                             allow_flag_changes=True, **dict(recipe, train_steps=5)))
    assert results["steps"] == 5 and any("Resumed from" in m for m in caplog.messages)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nac_tf.train", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _clis_at_once(*arg_lists):
    """(exit code, stderr) of `python -m nac_tf.train ARGS` for each of `arg_lists`, run
    concurrently (each starts TensorFlow, mostly single-threaded Python)."""
    processes = [subprocess.Popen([sys.executable, "-m", "nac_tf.train", *args], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for args in arg_lists]
    results = []
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=300)
            results.append((process.returncode, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def test_cli_rejects_bad_flags_before_building_anything(tmp_path):
    quickstart, model_dir = "--flagfile=configs/quickstart.flags", f"--model_dir={tmp_path}"
    flip_prob, encoder, augment_on = _clis_at_once(
        [quickstart, "--flip_prob=0.7", model_dir], [quickstart, "--encoder=resnet9", model_dir],
        [quickstart, "--augment_on=gpu", model_dir])
    assert flip_prob[0] == 2
    assert "--flip_prob: 0.7 is outside the accepted range (0.0, 0.5)" in flip_prob[1]
    assert encoder[0] == 2 and "--encoder: 'resnet9' is not one of" in encoder[1]
    assert augment_on[0] == 2
    assert "error: --augment_on: 'gpu' is not one of: host, device" in augment_on[1]
    assert not os.listdir(tmp_path)  # nothing written


def test_final_linear_probe_trains_on_augmented_images(tmp_path, monkeypatch):
    # The linear-evaluation protocol: the classifier trains on pad-and-crop + flipped
    # training images (nac_tf.evaluation.linear, as nac-linear-eval --augment).
    from nac_tf.evaluation import probe_images
    from nac_tf.evaluation.pretraining import evaluation_config

    config = _tiny(tmp_path, train_steps=2, linear_eval_epochs=1)
    assert config.linear_eval_augment and evaluation_config(config).linear.augment
    assert not evaluation_config(config.replace(linear_eval_augment=False)).linear.augment
    fits, crops = [], []
    train_augmented, pad_crop_flip = probe_images.train_augmented, probe_images.pad_crop_flip

    def spy_fit(encode, images, labels, num_classes, rate, linear_config, *args, **kwargs):
        fits.append((linear_config.augment, len(images)))
        return train_augmented(encode, images, labels, num_classes, rate, linear_config,
                               *args, **kwargs)

    def spy_crop(images, seed):
        crops.append(images.shape)
        return pad_crop_flip(images, seed)

    monkeypatch.setattr(probe_images, "train_augmented", spy_fit)
    monkeypatch.setattr(probe_images, "pad_crop_flip", spy_crop)
    results = pretrain(config)
    # Random initialisation and pretrained networks: 4 candidate rates + the final fit each.
    assert len(fits) == 10 and all(augment for augment, _ in fits)
    assert max(size for _, size in fits) == results["num_train"]
    assert crops  # traced into the augmented input pipeline
    for prefix in ("", "random_init_"):
        assert results[prefix + "linear"]["config"]["augment"] is True
        assert 0.0 <= results[prefix + "linear_top1"] <= 1.0


def test_xla_on_a_cpu_only_machine_trains_and_warns_that_it_is_slower(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nac_tf")
    results = pretrain(_tiny(tmp_path, jit_compile=True, train_steps=2, evaluate=False))
    assert results["steps"] == 2
    assert CPU_XLA_WARNING in caplog.messages


def test_precision_auto_trains_in_what_it_picks_and_keeps_auto_in_the_run(tmp_path, caplog):
    previous = keras.config.dtype_policy()
    caplog.set_level(logging.INFO, logger="nac_tf")
    try:
        config = _tiny(tmp_path, precision="auto", train_steps=2, evaluate=False)
        results = pretrain(config)
        picked = keras.config.dtype_policy().name
    finally:
        keras.config.set_dtype_policy(previous)
    assert results["steps"] == 2
    expected, reason = resolve_precision("auto")
    assert picked == expected
    assert f"precision auto: {expected} ({reason})" in caplog.messages
    with open(os.path.join(config.model_dir, "flags.json")) as f:
        assert json.load(f)["precision"] == "auto"  # the same command resumes the run


@pytest.mark.slow
def test_init_weights_starts_a_new_run_from_the_file_and_a_resume_from_its_checkpoint(
        tmp_path, caplog):
    from nac_tf.run_directory import read_json, restore_pretrained_method
    from nac_tf.models.vgg import VGG16_MEAN, VGG16_STD

    keras.utils.set_random_seed(5)
    pretrained = keras.applications.VGG16(include_top=False, weights=None,
                                          input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    pretrained.save_weights(path)
    # NAC-MQ: the momentum encoder must start from the file's weights too. A tiny learning
    # rate keeps the 2 steps' updates far below the distance to any random initialisation.
    config = _tiny(tmp_path, method="nac_mq", encoder="vgg16", image_size=32, batch_size=8,
                   queue_size=32, train_steps=2, learning_rate=1e-6, evaluate=False,
                   init_weights=path)
    caplog.set_level(logging.INFO, logger="nac_tf")
    results = pretrain(config)
    assert any(line.startswith(f"initialised the encoder from init_weights={path!r}")
               for line in caplog.messages)
    assert results["init_weights"] == path
    with open(os.path.join(config.model_dir, "flags.json")) as f:
        assert json.load(f)["init_weights"] == path
    # The vgg16 encoder's inputs are keras' VGG16 preprocessing, whatever the dataset.
    statistics = read_json(os.path.join(config.model_dir, "input_statistics.json"))
    assert (statistics["mean"], statistics["std"]) == (list(VGG16_MEAN), list(VGG16_STD))
    _, method = restore_pretrained_method(config.model_dir)
    for encoder in (method.encoder, method.momentum_encoder):
        for layer in pretrained.layers[1:]:
            for theirs, ours in zip(layer.weights, encoder.get_layer(layer.name).weights):
                np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-4)
    # The exported SavedModel on uint8 images computes keras' VGG16 (with the run's weights)
    # on preprocess_input of the same images, then the average pool.
    from nac_tf.export import export_saved_model, load_exported_model

    export_dir = export_saved_model(config.model_dir, str(tmp_path / "export"))
    for layer in pretrained.layers[1:]:
        layer.set_weights([w.numpy() for w in method.encoder.get_layer(layer.name).weights])
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    expected = keras.ops.mean(pretrained(keras.applications.vgg16.preprocess_input(
        pixels.astype(np.float32))), axis=(1, 2))
    np.testing.assert_allclose(load_exported_model(export_dir).features(pixels),
                               np.asarray(expected), rtol=1e-4, atol=1e-5)
    # A resume restores its checkpoint and does not read the file (gone by now).
    os.remove(path)
    caplog.clear()
    resumed = pretrain(config.replace(train_steps=3, allow_flag_changes=True))
    assert resumed["steps"] == 3
    assert any(line.startswith("Resumed from") for line in caplog.messages)
    assert not any(line.startswith("initialised the encoder") for line in caplog.messages)
    # A new run needs the file: refused before anything is written.
    fresh = config.replace(model_dir=str(tmp_path / "fresh"))
    with pytest.raises(ConfigError, match="init_weights: .* does not exist"):
        pretrain(fresh)
    assert not os.path.exists(fresh.model_dir)


def test_init_weights_flag_and_the_flickr25k_config(tmp_path):
    from nac_tf.cli.train import config_from_args
    from nac_tf.config import validate_config

    path = str(tmp_path / "vgg16_notop.h5")
    config = config_from_args(["--config=quickstart", f"--init_weights={path}"])
    assert config.init_weights == path
    # The paper's FLICKR-25K setting: keras.applications' VGG16 with its ImageNet weights.
    flickr = config_from_args(["--config=flickr25k_hashing_vgg16", f"--data_dir={tmp_path}",
                               f"--model_dir={tmp_path / 'run'}"])
    assert flickr.encoder == "vgg16" and flickr.image_size == 224
    assert flickr.init_weights == \
        "~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    validate_config(flickr)
    # A new run whose file is missing: the flag error, exit code 2, nothing written.
    run = tmp_path / "cli_run"
    result = _cli("--config=quickstart", "--encoder=vgg16", f"--init_weights={path}",
                  f"--model_dir={run}")
    assert result.returncode == 2, result.stderr
    assert f"error: --init_weights: {path!r} does not exist" in result.stderr
    assert not run.exists()



def test_mlp_eval_epochs_turns_on_the_final_mlp_probe(tmp_path):
    # AMDIM's MLP evaluation beside the linear probe: off by default, on with
    # mlp_eval_epochs (the command line's --mlp_eval_epochs), following linear_eval_augment.
    # tests/test_summaries.py trains a run with it and checks results.json.
    from nac_tf.cli.train import config_from_args
    from nac_tf.evaluation.pretraining import evaluation_config

    assert PretrainConfig().mlp_eval_epochs == 0
    assert evaluation_config(_tiny(tmp_path)).mlp is None
    assert config_from_args(["--config=quickstart", "--mlp_eval_epochs=3"]).mlp_eval_epochs == 3
    mlp = evaluation_config(_tiny(tmp_path, mlp_eval_epochs=2)).mlp
    assert (mlp.epochs, mlp.seed, mlp.augment, mlp.hidden_dim, mlp.dropout) == \
        (2, 0, True, 1024, 0.2)
    assert not evaluation_config(_tiny(tmp_path, mlp_eval_epochs=2,
                                       linear_eval_augment=False)).mlp.augment
