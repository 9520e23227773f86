"""Bad data and numerics: a non-finite loss stops the run and keeps the last good checkpoint;
corrupt images are skipped and counted or stop the run (--on_corrupt); broken, empty or
unreadable .npz archives, unreadable folders and unreadable images stop the CLI with exit
code 2 and one line naming the file (and the key of an archive, or the OS's reason).

Root reads every file whatever its mode, and the tests run as root: permission cases run
their command through `unprivileged`, which drops the capabilities that let root bypass file
permissions (a real permission check, no mocking). Dropping to another user is not an
option here: the interpreter lives under /root (mode 0700)."""
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.config import ConfigError
from nac_tf.errors import read_problem
from nac_tf.data import flickr25k
from nac_tf.data.sources import ArrayImageSource, load_npz_source
from nac_tf.training import NonFiniteLossError, pretrain

from test_training import _tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs `python ARGS...` without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (prctl
# PR_CAPBSET_DROP, then exec: a root process keeps only its bounding set's capabilities
# across exec), so even root meets file permissions.
_DROP_FILE_OVERRIDES = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.prctl(24, capability, 0, 0, 0):  # PR_CAPBSET_DROP
        sys.exit("cannot drop capability %d: %s" % (capability,
                                                    os.strerror(ctypes.get_errno())))
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


@functools.lru_cache(maxsize=None)
def _file_permission_problem():
    """Why `unprivileged` cannot work here, or None: a mode-000 file must be unreadable."""
    with tempfile.NamedTemporaryFile() as file:
        os.chmod(file.name, 0)
        probe = subprocess.run(
            [sys.executable, "-c", _DROP_FILE_OVERRIDES, "-c", f"open({file.name!r})"],
            capture_output=True, text=True, timeout=60)
    if probe.returncode != 0 and "PermissionError" in probe.stderr:
        return None
    return f"file permissions do not apply to a child process: {probe.stderr[-500:]}"


def unprivileged(args):
    """The command `python *args`, run so that file permissions apply to it (root drops
    its overrides first, `_DROP_FILE_OVERRIDES`); skips the test where that fails."""
    if os.geteuid() != 0:
        return [sys.executable, *args]
    problem = _file_permission_problem()
    if problem:
        pytest.skip(problem)
    return [sys.executable, "-c", _DROP_FILE_OVERRIDES, *args]


def _run_concurrently(commands, timeout=240, **kwargs):
    """{name: (exit code, stderr)} of the commands {name: argv}, run at once."""
    processes = {name: subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, **kwargs)
                 for name, command in commands.items()}
    results = {}
    try:
        for name, process in processes.items():
            _, stderr = process.communicate(timeout=timeout)
            results[name] = (process.returncode, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


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
        pretrain(config)
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


def test_corrupt_image_folder_files_are_skipped_and_counted(tmp_path, caplog):
    root = _write_image_folder(str(tmp_path / "folder"))
    caplog.set_level(logging.INFO, logger="nac_tf")
    config = _tiny(tmp_path, dataset="image_folder", data_dir=root, batch_size=8,
                   train_steps=2, evaluate=False)
    results = pretrain(config)
    assert results["num_skipped_images"] == 2
    with open(os.path.join(config.model_dir, "results.json")) as f:
        assert json.load(f)["num_skipped_images"] == 2
    assert any(m.startswith("2 image file(s) in") and "on_corrupt='skip'" in m
               for m in caplog.messages)
    with pytest.raises(ConfigError) as error:
        pretrain(config.replace(on_corrupt="raise", model_dir=str(tmp_path / "raise")))
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
    results = pretrain(config)
    assert results["num_skipped_images"] == 1
    with pytest.raises(ConfigError, match=r"data_dir: cannot decode image .*im5\.jpg"):
        pretrain(config.replace(on_corrupt="raise", model_dir=str(tmp_path / "raise")))


# ============================================================================ the CLI
def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.slow
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
    results = _run_concurrently({
        name: [sys.executable, "-m", "nac_tf.train", *base, *extra,
               f"--model_dir={tmp_path / name}"] for name, extra in runs.items()})
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


# ============================================================================ bad archives
def test_npz_loader_names_the_key_that_holds_no_images_or_a_bad_label(tmp_path):
    images = np.zeros((6, 8, 8), np.uint8)
    labels = np.arange(6) % 2
    good = dict(x_train=images, y_train=labels, x_test=images, y_test=labels)
    cases = {
        "x_train holds no images": dict(good, x_train=images[:0], y_train=labels[:0]),
        # Every evaluation scores x_test: an empty one would fail after the training.
        "x_test holds no images": dict(good, x_test=images[:0], y_test=labels[:0]),
        "y_train holds class id -1; class ids must be >= 0": dict(
            good, y_train=np.where(labels == 1, -1, 0)),
        "y_test holds class id 2, but key class_names names 2 classes (ids 0..1)": dict(
            good, y_test=labels * 2, class_names=np.array(["cat", "dog"])),
    }
    for expected, arrays in cases.items():
        path = _write_npz(tmp_path / "archive.npz", **arrays)
        with pytest.raises(ValueError) as error:
            load_npz_source(path)
        assert str(error.value).startswith(f"{path}: key {expected}"), str(error.value)
    with pytest.raises(ValueError, match=r"^cannot read '.*' \(Is a directory\)$"):
        load_npz_source(str(tmp_path))
    # The trainer reports the archive, not the batch size that an empty split cannot fill.
    path = _write_npz(tmp_path / "empty.npz", **cases["x_train holds no images"])
    with pytest.raises(ConfigError) as error:
        pretrain(_tiny(tmp_path, dataset="npz", data_dir=path))
    assert error.value.field == "data_dir" and "key x_train holds no images" in str(error.value)
    # Class ids of a source with a given class count must be below it.
    with pytest.raises(ValueError, match=r"^test_labels holds class id 3; with num_classes=2 "
                                         r"class ids must be < 2$"):
        ArrayImageSource("s", images, labels, images, labels + 2, num_classes=2)


def test_read_problem_says_why_a_path_cannot_be_read(tmp_path):
    file = tmp_path / "file"
    file.write_bytes(b"")
    assert read_problem(str(file)) is None and read_problem(str(tmp_path)) is None
    assert read_problem(str(tmp_path / "none")) == f"{str(tmp_path / 'none')!r} does not exist"
    # Below a regular file: there, but not a directory (root meets this one too).
    below = str(file / "x.npz")
    assert read_problem(below) == f"cannot read {below!r} (Not a directory)"


def test_cli_says_which_file_it_cannot_read_and_why(tmp_path):
    images = np.zeros((16, 8, 8), np.uint8)
    labels = np.arange(16) % 2
    arrays = dict(x_train=images, y_train=labels, x_test=images, y_test=labels)
    locked = _write_npz(tmp_path / "locked.npz", **arrays)
    os.chmod(locked, 0)
    os.makedirs(tmp_path / "hidden")
    hidden = _write_npz(tmp_path / "hidden" / "in.npz", **arrays)
    os.chmod(tmp_path / "hidden", 0o600)  # listable, but no file in it can be opened
    folder = _write_image_folder(str(tmp_path / "folder"))
    os.chmod(os.path.join(folder, "dogs"), 0)
    flickr = _write_flickr(str(tmp_path / "flickr"), corrupt=())
    animals = os.path.join(flickr, flickr25k.ANNOTATION_DIR, "animals.txt")
    os.chmod(animals, 0)
    base = ["-m", "nac_tf.train", "--method=nac", "--encoder=small_cnn", "--image_size=8",
            "--batch_size=8", "--train_steps=1", "--code_dim=16", "--head_hidden_dim=32",
            "--evaluate=false", "--flip=false", "--jitter_prob=0", "--grayscale_prob=0"]
    runs = {
        "locked": (["--dataset=npz", f"--data_dir={locked}"], f"{locked!r}"),
        "hidden": (["--dataset=npz", f"--data_dir={hidden}"], f"{hidden!r}"),
        "folder": (["--dataset=image_folder", f"--data_dir={folder}"],
                   repr(os.path.join(folder, "dogs"))),
        "flickr": (["--dataset=flickr25k", f"--data_dir={flickr}"], repr(animals)),
    }
    results = _run_concurrently({
        name: unprivileged([*base, *extra, f"--model_dir={tmp_path / ('run_' + name)}"])
        for name, (extra, _) in runs.items()})
    for name, (_, path) in runs.items():
        code, stderr = results[name]
        assert code == 2 and "Traceback" not in stderr, (name, stderr[-3000:])
        assert _error_lines(stderr) == [f"error: --data_dir: cannot read {path} "
                                        "(Permission denied)"], (name, stderr[-3000:])
    # The up-front checks stop these two before anything is written (the other two fail
    # while loading, after the trainer has written flags.json).
    assert not os.path.exists(tmp_path / "run_locked")
    assert not os.path.exists(tmp_path / "run_hidden")
