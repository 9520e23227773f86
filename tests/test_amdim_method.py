"""AMDIM as a method of the two-view trainer (nac_tf.methods.amdim): its step, its source
locations, two replicas against one device, the trainer and its command line (train, resume,
evaluate), the SavedModel export.

The smallest AMDIM encoder, amdim_xs, on 32 px images (the architecture's 5x5 and 7x7 maps
need 32 px inputs), batches of 4-8 images and 1-4 steps keep every test to seconds.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.cli.train import config_from_args
from nac_tf.data.pipeline import make_eval_dataset
from nac_tf.export import export_saved_model, load_exported_model
from nac_tf.methods import MethodConfig, build_method
from nac_tf.models import build_encoder
from nac_tf.objectives import amdim_loss
from nac_tf.optim import LARS, AdamL2
from nac_tf.run_directory import restore_pretrained_method
from nac_tf.recipes import learning_rate_schedule
from nac_tf.training import pretrain

from test_distribute import K, LOCAL, _distribute, _local, _variable_components, assert_close
from test_resume import _checkpoint_values

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (32, 32, 3)
TASKS = ("nce_1t5", "nce_1t7", "nce_5t5", "score_regulariser")


def _method(synchronized=False, seed=3, optimizer=None, per_view=False, **hyperparameters):
    keras.utils.set_random_seed(seed)  # the initial weights too
    encoder = build_encoder("amdim_xs", IMAGE_SHAPE, synchronized_batch_norm=synchronized)
    method = build_method("amdim", encoder, MethodConfig(
        seed=seed, synchronized_batch_norm=synchronized, per_view_batch_norm=per_view),
        **hyperparameters)
    method.build_networks(IMAGE_SHAPE)
    # The authors' Adam (lr 2e-4; at 1e-3 the first steps overshoot on 4 images).
    method.compile(optimizer=optimizer or AdamL2(2e-4, beta_1=0.8, weight_decay=1e-5))
    method.optimizer.build(method.optimized_variables)
    return method


def _views(seed, images=4):
    rng = np.random.default_rng(seed)
    views = rng.uniform(size=(2, images) + IMAGE_SHAPE).astype(np.float32)
    views[:, images // 2:] += 0.5  # the halves (replicas) have different batch statistics
    return views[0], views[1]


def test_step_is_amdim_loss_and_it_decreases_on_a_fixed_batch():
    method = _method()
    view1, view2 = (tf.constant(v) for v in _views(0))
    # Every network is optimized once: encoder, phi_5, phi_7 (the feature-map model shares
    # the encoder's variables).
    paths = [v.path for v in method.optimized_variables]
    assert len(paths) == len(set(paths)) == len({id(v) for v in method.optimized_variables})
    for prefix in ("encoder/", "embedding_5/", "embedding_7/"):
        assert any(p.startswith(prefix) for p in paths), prefix

    # The step's loss is amdim_loss of the networks' outputs at the locations it draws.
    both = tf.concat([view1, view2], 0)
    f1, f5, f7 = method.feature_maps(both, training=True)
    f5, f7 = method.embedding_5(f5, training=True), method.embedding_7(f7, training=True)
    locations = method.source_locations(8, 25)
    expected, _ = amdim_loss(f1, f5, f7, locations, regularization_weight=4e-2,
                             clip_value=20.0)
    before = [v.numpy().copy() for v in method.optimized_variables]
    # Eager steps (the trainer's graph step runs in the command-line test below).
    logs = [{k: float(v) for k, v in method.train_step((view1, view2)).items()}
            for _ in range(4)]
    np.testing.assert_allclose(logs[0]["loss"], float(expected), rtol=1e-5)
    for key in TASKS + ("distinct_code_fraction", "bit_balance"):
        assert np.isfinite(logs[-1][key]), key
    assert logs[0]["loss"] == pytest.approx(
        logs[0]["nce_1t5"] + logs[0]["nce_1t7"] + logs[0]["nce_5t5"]
        + 4e-2 * logs[0]["score_regulariser"], rel=1e-5)
    # Four Adam steps on one batch lower the loss (observed: 12.4 -> 11.2; the 5->5 sources
    # are drawn afresh every step, so the batch's loss is not a fixed function).
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.5, [entry["loss"] for entry in logs]
    moved = [not np.allclose(b, v.numpy()) for b, v in zip(before, method.optimized_variables)]
    assert all(moved), [p for p, m in zip(paths, moved) if not m]
    # The representation is f_1.
    np.testing.assert_allclose(method(view1).numpy(), method.encoder(view1).numpy(), rtol=1e-6)


def test_source_locations_are_uniform_fresh_every_step_and_reproducible():
    method = _method()
    first = method.source_locations(4000, 25).numpy()
    assert first.dtype == np.int32 and first.min() == 0 and first.max() == 24
    # 4000 draws over 25 cells (160 expected each, sd 12.5): every cell within 5 sd.
    assert np.abs(np.bincount(first, minlength=25) - 160).max() < 63
    np.testing.assert_array_equal(method.source_locations(4000, 25).numpy(), first)
    method.optimizer.iterations.assign(1)
    assert np.mean(method.source_locations(4000, 25).numpy() != first) > 0.9
    # Another seed, other locations.
    assert np.mean(_method(seed=4).source_locations(4000, 25).numpy() != first) > 0.9
    # XLA draws the same integers (a step compiled with jit_compile sees the same sources).
    compiled = tf.function(lambda: method.source_locations(4000, 25), jit_compile=True)
    np.testing.assert_array_equal(compiled().numpy(), method.source_locations(4000, 25).numpy())


def test_mixture_components_train_m_k_and_log_the_entropy():
    """With k = 2 mixture components (and per-view BatchNorm: the networks run once per
    view), m_k is trained through the 1->7 task and the posterior's entropy is logged."""
    method = _method(amdim_mixture_components=2, amdim_mixture_entropy_weight=0.5,
                     per_view=True)
    out, gradients, variables = method.compute_gradients(tuple(tf.constant(v)
                                                               for v in _views(1)))
    assert np.isfinite(float(out.loss))
    assert 0.0 < float(out.metrics["mixture_entropy"]) <= np.log(2) + 1e-6
    mixture = [g for g, v in zip(gradients, variables) if v.path.startswith("mixture/")]
    assert len(mixture) == 4 and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in mixture)


@pytest.fixture
def float64_layers():
    """Layers in float64 for one test, as tests/test_distribute.py's float64_policy (why:
    there); the method's losses stay float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy(previous)


def test_two_replicas_equal_one_device(two_replica_strategy, float64_layers):
    """Loss, gradients, logs and the weights after one step: two replicas (synchronized
    BatchNorm, targets all-gathered with their gradients, locations of the global rows)
    compute what one device computes on the global batch of K images.

    The step is LARS's, as in tests/test_distribute.py: the losses are float32 (networks
    float64), so gradients agree to ~1e-7 of their largest entry, and Adam divides every
    entry by its own magnitude, which turns that rounding into percents on entries of
    ~1e-9. AdamL2 under two replicas is tests/test_optim.py's."""
    strategy = two_replica_strategy
    single = _method(optimizer=LARS(0.5))
    with strategy.scope():
        replicated = _method(synchronized=True, optimizer=LARS(0.5))
    replicated.set_weights(single.get_weights())
    view1, view2 = _views(0, images=K)

    expected = single.source_locations(2 * K, 25).numpy()
    drawn = strategy.run(tf.function(lambda: replicated.source_locations(2 * LOCAL, 25)))
    for r, rows in enumerate(_local(strategy, drawn)):
        np.testing.assert_array_equal(rows, np.concatenate([
            expected[r * LOCAL:(r + 1) * LOCAL], expected[K + r * LOCAL:K + (r + 1) * LOCAL]]))

    out, gradients, _ = single.compute_gradients((tf.constant(view1), tf.constant(view2)))

    def replica_gradients(data):
        out, gradients, _ = replicated.compute_gradients(data)
        return out.loss, gradients

    losses, replica_grads = strategy.run(replica_gradients,
                                         args=(_distribute(strategy, view1, view2),))
    assert_close(np.mean(_local(strategy, losses)), float(out.loss), "loss")
    largest = max(float(np.abs(g.numpy()).max()) for g in gradients)
    trained = 0
    for variable, expected_gradient, gradient in zip(single.optimized_variables, gradients,
                                                     replica_grads):
        summed = np.sum(_local(strategy, gradient), axis=0)
        if np.abs(expected_gradient.numpy()).max() < 1e-10 * largest:
            # Zero but for rounding (a bias right before a BatchNorm): zero in both runs.
            assert np.abs(summed).max() < 1e-10 * largest, variable.path
            continue
        trained += 1
        assert_close(summed, expected_gradient.numpy(), "gradient of " + variable.path)
    assert trained > len(gradients) // 2

    logs = single.train_step((tf.constant(view1), tf.constant(view2)))
    replica_logs = strategy.run(replicated.train_step,
                                args=(_distribute(strategy, view1, view2),))
    for key, value in logs.items():
        assert_close(np.mean(_local(strategy, replica_logs[key])), float(value), key)
    for expected_variable, variable in zip(single.weights + single.optimizer.variables,
                                           replicated.weights + replicated.optimizer.variables):
        expected_value = expected_variable.numpy()
        for component in _variable_components(strategy, variable):
            if np.abs(expected_value).max() < 1e-12:
                # A zero-initialised variable with a zero gradient (a bias before a
                # BatchNorm) holds rounding noise: judged absolutely.
                assert np.abs(component - expected_value).max() < 1e-12, variable.path
            else:
                assert_close(component, expected_value, variable.path)


def test_amdim_step_schedule_of_the_cifar_config(tmp_path):
    """configs/cifar10_amdim.flags: Adam and the authors' schedule, 500 warm-up updates and
    x0.2 at epochs 250 and 280 of 300 (steps 62 500 and 70 000 at 250 steps per epoch)."""
    config = config_from_args(["--config=cifar10_amdim", f"--model_dir={tmp_path}"])
    schedule = learning_rate_schedule(config, 2e-4, 300 * 250, 2 * 250)
    assert schedule.decay_steps == (62500, 70000) and schedule.warmup_steps == 500
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (250, 500, 62499, 62500, 70000)],
        [1e-4, 2e-4, 2e-4, 4e-5, 8e-6], rtol=1e-6)


# ----------------------------------------------------------------------------- the trainer
def _interrupted_copy(reference, run, step):
    """`run`: the run directory `reference` as a run killed right after its checkpoint of
    `step` leaves it (flags, input statistics, the checkpoints up to `step`)."""
    os.makedirs(os.path.join(run, "checkpoints"))
    for name in ("flags.json", "input_statistics.json"):
        shutil.copy(os.path.join(reference, name), run)
    prefix = os.path.join(reference, "checkpoints", f"ckpt-{step}")
    for path in glob.glob(prefix + ".*"):
        shutil.copy(path, os.path.join(run, "checkpoints"))
    tf.train.CheckpointManager(tf.train.Checkpoint(), os.path.join(run, "checkpoints"),
                               max_to_keep=3)  # a manager over the copied directory ...
    with open(os.path.join(run, "checkpoints", "checkpoint"), "w") as f:
        # ... and its state file naming the copied checkpoint as the latest.
        f.write(f'model_checkpoint_path: "ckpt-{step}"\n'
                f'all_model_checkpoint_paths: "ckpt-{step}"\n')


@pytest.mark.slow
def test_command_line_resumes_evaluates_and_exports_f1(tmp_path):
    """`python -m nac_tf.train --method=amdim ...` on a run directory interrupted after its
    step-2 checkpoint resumes, ends with the weights of the uninterrupted run of the same
    command (run in this process), evaluates, and its export serves f_1 as the features and
    sgn(f_1) as the hash codes. (tests/test_resume.py kills real NAC runs; here the
    interrupted directory is the reference's up to step 2, which is what a kill leaves.)"""
    reference, run = str(tmp_path / "reference"), str(tmp_path / "run")
    # Digits upsampled to 32 px (the loader resizes to image_size).
    args = ["--method=amdim", "--encoder=amdim_xs", "--dataset=digits", "--image_size=32",
            "--batch_size=8", "--train_steps=4", "--checkpoint_every_steps=2",
            "--optimizer=adam", "--learning_rate=2e-4", "--adam_beta1=0.8",
            "--weight_decay=1e-5", "--warmup_epochs=0.01", "--lr_schedule=warmup_step",
            "--lr_decay_fractions=0.5", "--augmentation=amdim", "--knn_k=5",
            "--linear_eval_epochs=1",
            "--linear_eval_augment=false", "--log_every_steps=2"]
    config = config_from_args(args + [f"--model_dir={reference}"])
    pretrain(config.replace(evaluate=False))
    _interrupted_copy(reference, run, 2)

    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", "nac_tf.train", *args, f"--model_dir={run}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from {run}/checkpoints/ckpt-2 at step 2" in result.stdout
    with open(os.path.join(run, "results.json")) as f:
        results = json.load(f)
    assert results["method"] == "amdim" and results["steps"] == 4
    for key in ("knn_top1", "linear_top1", "map_all"):
        assert 0.0 <= results[key] <= 1.0, key
    for key in TASKS:
        assert np.isfinite(results["final_metrics"][key]), key

    resumed = _checkpoint_values(os.path.join(run, "checkpoints", "ckpt-4"))
    straight = _checkpoint_values(os.path.join(reference, "checkpoints", "ckpt-4"))
    assert resumed.keys() == straight.keys()
    names = " ".join(resumed)
    assert "embedding_5" in names and "optimizer/" in names and "input_position" in names
    for name, value in straight.items():
        # Same kernels in the same order: observed bit for bit; 1e-6 of a variable's scale
        # allows rounding, far below a step, a location draw or a moment gone astray.
        scale = float(np.abs(value).max()) if value.size else 0.0
        assert np.abs(resumed[name] - value).max() <= 1e-6 * scale, name

    export_dir = export_saved_model(run, str(tmp_path / "export"))
    model = load_exported_model(export_dir)
    _, method = restore_pretrained_method(run)
    width = int(method.encoder.output_shape[-1])
    assert model.metadata["codes_from"] == "features"
    assert model.metadata["feature_dim"] == model.metadata["code_dim"] == width
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    (batch, _), = make_eval_dataset(images, np.zeros(16, np.int64), 16, image_size=32)
    f1 = method.encoder(batch, training=False).numpy()
    np.testing.assert_allclose(model.features(images), f1, rtol=0, atol=1e-5)
    # Bits compared where |f_1| > 1e-4 (the SavedModel's graph may round an f_1 of ~0 to
    # the other sign), which is nearly all of them.
    bits = np.unpackbits(model.hash_codes(images), axis=1)[:, :width]
    safe = np.abs(f1) > 1e-4
    assert safe.mean() > 0.95
    np.testing.assert_array_equal(bits[safe], (f1 > 0)[safe])
    # The encoder alone: no phi_5 / phi_7 in the export.
    names = [name for name, _ in tf.train.list_variables(
        os.path.join(export_dir, "variables", "variables"))]
    assert not any("embedding" in name for name in names)


def test_losses_are_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        method = _method()
        view1, view2 = (tf.constant(v) for v in _views(0))
        assert method.encoder(view1).dtype == tf.bfloat16  # the networks compute in 16 bits
        out = method.view_pair_loss(view1, view2, training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert out.loss.dtype == tf.float32 and np.isfinite(float(out.loss))
    assert all(value.dtype == tf.float32 for value in out.metrics.values())
    assert out.code_pre_activations.dtype == tf.float32
