"""Preparing TFDS datasets (nac_tf.data.tfds_prepare): TFDS's real CIFAR-10 builder prepares a
tiny CIFAR-10 archive, and a dataset that can be neither found nor downloaded is one line.

No test reaches the network: the proxy variables point at a closed local port, so a request
fails at once whether or not the machine is online."""
import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from nac_tf.data import catalog, sources, tfds_sources
from nac_tf.specs.datasets import dataset_spec

tfds = pytest.importorskip("tensorflow_datasets")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there
CLASS_NAMES = tuple(f"class_{k}" for k in range(10))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, CLOSED_PROXY)


def _cifar_binary_archive(seed=0, per_batch=2, num_test=3):
    """(archive bytes, train (images, labels), test (images, labels)): CIFAR-10's binary
    version in miniature, as TFDS's builder reads it: cifar-10-batches-bin/ holding
    data_batch_1..5.bin and test_batch.bin (rows of one label byte and 3 072 pixel bytes,
    channel-major) and batches.meta.txt (one class name a line)."""
    rng = np.random.default_rng(seed)
    splits = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name, count in [(f"data_batch_{k}.bin", per_batch) for k in range(1, 6)] + [
                ("test_batch.bin", num_test)]:
            images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, count).astype(np.uint8)
            rows = np.concatenate([labels[:, None],
                                   images.transpose(0, 3, 1, 2).reshape(count, -1)], axis=1)
            add(name, rows.tobytes())
            split = "test" if name.startswith("test") else "train"
            splits.setdefault(split, []).append((images, labels))
        add("batches.meta.txt", ("\n".join(CLASS_NAMES) + "\n\n").encode())
    train, test = ((np.concatenate([i for i, _ in splits[s]]),
                    np.concatenate([l for _, l in splits[s]])) for s in ("train", "test"))
    return buffer.getvalue(), train, test


def _as_multiset(images, labels):
    """Examples as sorted bytes: TFDS writes a split in its own (hashed) order."""
    return sorted(image.tobytes() + bytes([label]) for image, label in zip(images, labels))


def test_source_file_names_are_tfds_own():
    (url_info,) = tfds.builder("cifar10", data_dir="/nonexistent").url_infos.values()
    assert dataset_spec("cifar10").tfds_source_files == (url_info.filename,)
    instructions = tfds.builder("imagenet2012", data_dir="/nonexistent") \
        .MANUAL_DOWNLOAD_INSTRUCTIONS
    assert all(name in instructions for name in dataset_spec("imagenet2012").tfds_source_files)


def test_tfds_prepares_cifar10_from_an_earlier_download(tmp_path):
    """The real builder's download_and_prepare: TFDS finds the archive in its download cache
    (downloads/cifar10/<name from URL and registered checksum>, a .INFO file beside it),
    which it trusts without hashing it again; so the tiny archive stands in for the real one
    without touching TFDS's checksum registry. Extraction, reading the batches and the class
    names, and writing the prepared dataset are TFDS's own."""
    from tensorflow_datasets.core.download import resource

    archive, (x_train, y_train), (x_test, y_test) = _cifar_binary_archive()
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    ((url, url_info),) = builder.url_infos.items()
    cached = tmp_path / "downloads" / "cifar10" / resource.get_dl_fname(url, url_info.checksum)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(archive)
    resource.write_info_file(url=url, path=cached, dataset_name="cifar10",
                             original_fname=url_info.filename, url_info=url_info)

    source = catalog.load_source("cifar10", data_dir=str(tmp_path))

    assert isinstance(source, sources.ArrayImageSource)
    assert (source.num_train, source.num_test, source.num_classes) == (10, 3, 10)
    assert source.class_names == CLASS_NAMES
    assert source.train_images.dtype == np.uint8 and source.train_labels.dtype == np.int64
    assert _as_multiset(source.train_images, source.train_labels) == _as_multiset(x_train,
                                                                                  y_train)
    assert _as_multiset(source.test_images, source.test_labels) == _as_multiset(x_test, y_test)
    assert (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").is_file()
    # Prepared: read again without the archive.
    cached.unlink()
    again = catalog.load_source("cifar10", data_dir=str(tmp_path))
    assert _as_multiset(again.test_images, again.test_labels) == _as_multiset(x_test, y_test)


def _one_line(error_info):
    message = str(error_info.value)
    assert "\n" not in message
    return message


def test_cifar10_neither_prepared_nor_downloadable_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        catalog.load_source("cifar10", data_dir=str(tmp_path))
    message = _one_line(error)
    assert message.startswith(f"dataset 'cifar10' is not prepared in data_dir '{tmp_path}' "
                              "and could not be downloaded from https://")
    assert "(ProxyError: [Errno 111] Connection refused)" in message
    assert "put cifar-10-binary.tar.gz in data_dir" in message
    assert "cifar10/3.0.2/" in message and "dataset='npz'" in message
    # cifar10_hashing reads CIFAR-10 the same way, and takes the .npz as its data_dir.
    with pytest.raises(FileNotFoundError) as error:
        catalog.load_source("cifar10_hashing", data_dir=str(tmp_path))
    message = _one_line(error)
    assert "could not be downloaded" in message and "dataset='npz'" not in message
    assert message.endswith("or use data_dir = an .npz archive with keys x_train, y_train, "
                            "x_test, y_test")
    assert not (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").exists()


def test_a_cifar10_archive_that_is_not_tfds_is_one_line(tmp_path):
    """TFDS takes data_dir/cifar-10-binary.tar.gz as the download, and checks it against the
    checksum it registered for the real one."""
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(_cifar_binary_archive()[0])
    with pytest.raises(ValueError) as error:
        catalog.load_source("cifar10", data_dir=str(tmp_path))
    message = _one_line(error)
    assert f"cifar-10-binary.tar.gz in {tmp_path} is not what TFDS registered" in message
    (tmp_path / "cifar-10-binary.tar.gz").unlink()
    (tmp_path / "archive").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; dataset 'cifar10' takes a TFDS data"):
        tfds_sources.load_tfds_source("cifar10", data_dir=str(tmp_path / "archive"))


def test_imagenet_without_its_tars_is_one_line(tmp_path):
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as error:
        catalog.load_source("imagenet2012", data_dir=str(tmp_path))
    message = _one_line(error)
    assert message.startswith("dataset 'imagenet2012' is not prepared in data_dir")
    assert f"{tmp_path}' lacks ILSVRC2012_img_val.tar (TFDS cannot download" in message
    assert "ILSVRC2012_img_train.tar," not in message  # only what is missing


@pytest.mark.slow
def test_train_command_prints_the_one_line(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "nac_tf.train", "--config=cifar10_nac", f"--data_dir={empty}",
         "--train_steps=1", f"--model_dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: --data_dir: dataset 'cifar10' is not prepared")
    assert "could not be downloaded" in errors[0]
    assert "Traceback" not in result.stderr
