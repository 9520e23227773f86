"""Bad data and numerics: a non-finite loss stops the run and keeps the last good checkpoint;
corrupt images are skipped and counted or stop the run (--on_corrupt); broken .npz archives
and unreadable images stop the CLI with exit code 2 and one line naming the file."""
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.config import ConfigError
from nac_tf.data import flickr25k
from nac_tf.training import NonFiniteLossError, pretrain

from test_training import _tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkpoint_steps(model_dir):
    directory = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name.split("-")[1].split(".")[0]) for name in os.listdir(directory)
                  if name.startswith("ckpt-") and name.endswith(".index"))


# ============================================================================ numerics
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # LARS moves every weight by lr x 0.001 of its norm: lr 1e30 (after a warm-up step at
    # lr 0) sends the weights to ~1e27 and the inference network's softplus to inf.
    config = _tiny(tmp_path, learning_rate=1e30, train_steps=20, checkpoint_every_steps=1,
                   keep_checkpoints=50, evaluate=False)
    with pytest.raises(NonFiniteLossError) as error:
        pretrain(config, log=lambda *_: None)
    message = str(error.value)
    stopped = int(message.split(" at step ")[1].split(";")[0]) if " at step " in message \
        else int(message.split(" by step ")[1].split(" ")[0])
    steps = _checkpoint_steps(config.model_dir)
    assert steps, "a good checkpoint was written before the loss became non-finite"
    last_good = steps[-1]
    assert last_good < stopped and steps == list(range(1, last_good + 1))
    assert f"the last good checkpoint is {config.model_dir}/checkpoints/ckpt-{last_good}" \
        in message
    assert "Lower learning_rate" in message
    reader = tf.train.load_checkpoint(os.path.join(config.model_dir, "checkpoints",
                                                   f"ckpt-{last_good}"))
    for name, _ in tf.train.list_variables(os.path.join(config.model_dir, "checkpoints",
                                                        f"ckpt-{last_good}")):
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name
    assert not os.path.exists(os.path.join(config.model_dir, "results.json"))


# ============================================================================ corrupt images
def _write_image_folder(root, per_class=12):
    """Two classes of small PNGs, plus one corrupt JPEG and one truncated PNG."""
    rng = np.random.default_rng(0)
    for class_id, name in enumerate(("cats", "dogs")):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            image = rng.integers(0, 128, (10, 10, 3), dtype=np.uint8) + 127 * class_id
            with open(os.path.join(root, name, f"{i}.png"), "wb") as f:
                f.write(tf.io.encode_png(image).numpy())
    with open(os.path.join(root, "dogs", "broken.jpg"), "wb") as f:
        f.write(b"this is not a jpeg")
    png = tf.io.encode_png(np.zeros((10, 10, 3), np.uint8)).numpy()
    with open(os.path.join(root, "cats", "truncated.png"), "wb") as f:
        f.write(png[:len(png) // 2])
    return root


def test_corrupt_image_folder_files_are_skipped_and_counted(tmp_path):
    root = _write_image_folder(str(tmp_path / "folder"))
    messages = []
    config = _tiny(tmp_path, dataset="image_folder", data_dir=root, batch_size=8,
                   train_steps=2, evaluate=False)
    results = pretrain(config, log=messages.append)
    assert results["num_skipped_images"] == 2
    with open(os.path.join(config.model_dir, "results.json")) as f:
        assert json.load(f)["num_skipped_images"] == 2
    assert any(m.startswith("2 image file(s) in") and "on_corrupt='skip'" in m
               for m in messages)
    with pytest.raises(ConfigError) as error:
        pretrain(config.replace(on_corrupt="raise", model_dir=str(tmp_path / "raise")),
                 log=lambda *_: None)
    assert error.value.field == "data_dir"
    assert "cannot decode image" in str(error.value)
    assert "broken.jpg" in str(error.value) or "truncated.png" in str(error.value)


def _write_flickr(root, count=40, corrupt=(5,)):
    """A tiny MIRFLICKR-25000 layout: `count` images, every image labelled."""
    image_dir = os.path.join(root, flickr25k.IMAGE_DIR)
    annotation_dir = os.path.join(root, flickr25k.ANNOTATION_DIR)
    os.makedirs(image_dir)
    os.makedirs(annotation_dir)
    for n in range(1, count + 1):
        with open(os.path.join(image_dir, f"im{n}.jpg"), "wb") as f:
            f.write(b"not a jpeg" if n in corrupt else tf.io.encode_jpeg(
                np.full((12, 12, 3), 5 * n, np.uint8)).numpy())
    for column, label in enumerate(flickr25k.FLICKR25K_LABELS):
        with open(os.path.join(annotation_dir, f"{label}.txt"), "w") as f:
            f.write("".join(f"{n}\n" for n in range(1, count + 1) if n % 24 == column))
    return root


def test_corrupt_flickr25k_images_are_skipped_and_counted(tmp_path, monkeypatch):
    root = _write_flickr(str(tmp_path / "flickr"))
    # The protocol's 2 000 queries and 5 000 training images do not fit 40 images.
    monkeypatch.setattr(flickr25k, "load_flickr25k_source", functools.partial(
        flickr25k.load_flickr25k_source, num_queries=4, num_train=24))
    config = _tiny(tmp_path, dataset="flickr25k", data_dir=root, batch_size=8,
                   train_steps=1, evaluate=False)
    results = pretrain(config, log=lambda *_: None)
    assert results["num_skipped_images"] == 1
    with pytest.raises(ConfigError, match=r"data_dir: cannot decode image .*im5\.jpg"):
        pretrain(config.replace(on_corrupt="raise", model_dir=str(tmp_path / "raise")),
                 log=lambda *_: None)


# ============================================================================ the CLI
def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_cli_stops_bad_data_and_non_finite_loss_with_one_clear_line(tmp_path):
    images = np.zeros((40, 8, 8), np.uint8)
    labels = np.zeros(40, np.int64)
    missing = _write_npz(tmp_path / "missing.npz", x_train=images, y_train=labels,
                         x_test=images)
    misshapen = _write_npz(tmp_path / "misshapen.npz", x_train=images[:, :, :, None, None],
                           y_train=labels, x_test=images, y_test=labels)
    folder = _write_image_folder(str(tmp_path / "folder"))
    base = ["--method=nac", "--encoder=small_cnn", "--image_size=8", "--batch_size=8",
            "--train_steps=20", "--code_dim=16", "--head_hidden_dim=32", "--evaluate=false",
            "--flip=false", "--jitter_prob=0", "--grayscale_prob=0"]
    runs = {
        "missing": ["--dataset=npz", f"--data_dir={missing}"],
        "misshapen": ["--dataset=npz", f"--data_dir={misshapen}"],
        "corrupt": ["--dataset=image_folder", f"--data_dir={folder}", "--on_corrupt=raise"],
        "nan": ["--dataset=digits", "--learning_rate=1e30", "--warmup_epochs=0.2",
                "--checkpoint_every_steps=1"],
    }
    processes = {name: subprocess.Popen(
        [sys.executable, "-m", "nac_tf.train", *base, *extra,
         f"--model_dir={tmp_path / name}"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for name, extra in runs.items()}
    results = {}
    try:
        for name, process in processes.items():
            _, stderr = process.communicate(timeout=240)
            results[name] = (process.returncode, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, (code, stderr) in results.items():
        assert "Traceback" not in stderr, (name, stderr)
    code, stderr = results["missing"]
    assert code == 2
    assert (f"error: --data_dir: {missing}: missing key(s) y_test; expected keys x_train, "
            "y_train, x_test, y_test (found: x_train, y_train, x_test)") in stderr
    code, stderr = results["misshapen"]
    assert code == 2
    assert (f"error: --data_dir: {misshapen}: key x_train has shape (40, 8, 8, 1, 1); "
            "expected [N, H, W] or [N, H, W, C] with C = 1 or 3") in stderr
    code, stderr = results["corrupt"]
    assert code == 2 and "error: --data_dir: cannot decode image " in stderr
    code, stderr = results["nan"]
    assert code == 1, stderr
    assert ("error: loss is nan at step" in stderr
            or "error: the weights became non-finite" in stderr), stderr
    assert "the last good checkpoint is" in stderr
