"""The hashing datasets: the CIFAR-10 retrieval split and FLICKR-25K, their sources'
multi-label and retrieval arrays, `load_source` dispatch and flag validation.

CIFAR-10 runs on synthetic labels and, when present, on the shared archive
(../shared/data/cifar10.npz; its LZMA load is cached as .npy in the temp directory).
FLICKR-25K runs on a small synthetic archive in the original MIRFLICKR-25000 layout.
"""
import functools
import os
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.config import ConfigError, PretrainConfig, validate_config
from nac_tf.data import catalog, flickr25k, sources, splits, tfds_sources

SHARED_DATA = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared", "data")
CIFAR10_NPZ = os.path.join(SHARED_DATA, "cifar10.npz")


def _assert_split_is_a_protocol_split(query_ids, database_ids, train_ids, all_ids):
    """Queries and database partition `all_ids`; training images come from the database."""
    assert len(np.intersect1d(query_ids, database_ids)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([query_ids, database_ids])),
                                  np.sort(all_ids))
    assert np.isin(train_ids, database_ids).all()
    assert len(np.unique(train_ids)) == len(train_ids)


# ============================================================================ splits
def test_class_balanced_split_on_synthetic_labels():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 6000))
    split = splits.class_balanced_retrieval_split(labels, seed=0)
    assert (len(split.query), len(split.database), len(split.train)) == (10000, 50000, 5000)
    np.testing.assert_array_equal(np.bincount(labels[split.query]), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(labels[split.train]), [500] * 10)
    _assert_split_is_a_protocol_split(split.query, split.database, split.train,
                                      np.arange(60000))
    again = splits.class_balanced_retrieval_split(labels, seed=0)
    np.testing.assert_array_equal(split.query, again.query)
    np.testing.assert_array_equal(split.train, again.train)
    other = splits.class_balanced_retrieval_split(labels, seed=1)
    assert not np.array_equal(split.query, other.query)
    assert not np.array_equal(split.train, other.train)


def test_random_split_sizes_determinism_and_errors():
    split = splits.random_retrieval_split(100, num_queries=20, num_train=30, seed=3)
    assert (len(split.query), len(split.database), len(split.train)) == (20, 80, 30)
    _assert_split_is_a_protocol_split(split.query, split.database, split.train, np.arange(100))
    again = splits.random_retrieval_split(100, 20, 30, seed=3)
    np.testing.assert_array_equal(split.train, again.train)
    assert not np.array_equal(split.query,
                              splits.random_retrieval_split(100, 20, 30, 4).query)
    with pytest.raises(ValueError, match="20 queries \\+ 90 training"):
        splits.random_retrieval_split(100, 20, 90)
    with pytest.raises(ValueError, match="num_queries"):
        splits.random_retrieval_split(100, 0, 10)


def test_contiguous_order_and_in_place_permutation():
    split = splits.RetrievalSplit(query=np.array([1, 4]), database=np.array([0, 2, 5]),
                                          train=np.array([5]))
    order = splits.contiguous_order(split, 7)
    np.testing.assert_array_equal(order, [1, 4, 5, 0, 2, 3, 6])  # query | train | db | unused
    with pytest.raises(ValueError, match="disjoint"):
        splits.contiguous_order(split.__class__(np.array([0]), np.array([0, 1]),
                                                        np.array([1])), 2)
    rows = np.random.default_rng(0).integers(0, 256, (500, 3, 2), dtype=np.uint8)
    permutation = np.random.default_rng(1).permutation(500)
    expected = rows[permutation]
    sources._permute_rows_in_place(rows, permutation)
    np.testing.assert_array_equal(rows, expected)
    with pytest.raises(ValueError, match="permutation"):
        sources._permute_rows_in_place(rows, np.zeros(500, np.int64))


# ============================================================================ sources
def test_array_source_accepts_multi_hot_labels():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    multi_hot = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], np.int32)
    source = sources.ArrayImageSource("m", images, multi_hot, images[:2], multi_hot[:2])
    assert source.multi_label and source.num_classes == 3 and source.retrieval is None
    assert source.train_labels.dtype == np.int64
    _, label = next(iter(source.train_dataset()))
    assert label.shape == (3,) and label.dtype == tf.int64
    single = sources.ArrayImageSource("s", images, np.array([0, 2, 1, 0]), images[:1], [1])
    assert not single.multi_label and single.num_classes == 3 and single.retrieval is None
    with pytest.raises(ValueError, match="must be 0 or 1"):
        sources.ArrayImageSource("m", images, multi_hot * 2, images[:2], multi_hot[:2])
    with pytest.raises(ValueError, match="same kind"):
        sources.ArrayImageSource("m", images, multi_hot, images[:2], np.array([0, 1]))
    with pytest.raises(ValueError, match="columns"):
        sources.ArrayImageSource("m", images, multi_hot, images[:2], multi_hot[:2, :2])
    with pytest.raises(ValueError, match=r"\[4\] or multi-hot"):
        sources.ArrayImageSource("m", images, np.zeros((4, 2, 2), np.int64), images[:1], [0])


def _id_images(count, offset=0):
    """Tiny 2x2 images whose first three bytes spell their index (base 256)."""
    ids = np.arange(offset, offset + count)
    images = np.zeros((count, 2, 2, 3), np.uint8)
    images[:, 0, 0] = np.stack([ids // 65536, ids // 256 % 256, ids % 256], axis=1)
    return images


def _image_ids(images):
    pixels = images[:, 0, 0].astype(np.int64)
    return pixels[:, 0] * 65536 + pixels[:, 1] * 256 + pixels[:, 2]


def _synthetic_cifar(per_class_train=500, per_class_test=100):
    rng = np.random.default_rng(0)
    y_train = rng.permutation(np.repeat(np.arange(10), per_class_train))
    y_test = rng.permutation(np.repeat(np.arange(10), per_class_test))
    return (_id_images(len(y_train)), y_train, _id_images(len(y_test), len(y_train)), y_test)


def test_cifar10_hashing_source_on_synthetic_arrays():
    x_train, y_train, x_test, y_test = _synthetic_cifar()
    source = tfds_sources.cifar10_hashing_source(x_train, y_train, x_test, y_test, seed=0,
                                            queries_per_class=100, train_per_class=50)
    retrieval = source.retrieval
    assert (source.num_train, source.num_test, source.num_classes) == (500, 1000, 10)
    assert (retrieval.num_queries, retrieval.num_database, retrieval.num_train) == (1000, 5000,
                                                                                    500)
    assert not source.multi_label and not retrieval.multi_label
    # Pixels and labels follow their images through the reordering (ids = pool rows).
    pool_labels = np.concatenate([y_train, y_test])
    np.testing.assert_array_equal(_image_ids(retrieval.query_images), retrieval.query_ids)
    np.testing.assert_array_equal(_image_ids(retrieval.database_images), retrieval.database_ids)
    np.testing.assert_array_equal(retrieval.query_labels, pool_labels[retrieval.query_ids])
    np.testing.assert_array_equal(retrieval.database_labels,
                                  pool_labels[retrieval.database_ids])
    _assert_split_is_a_protocol_split(retrieval.query_ids, retrieval.database_ids,
                                      retrieval.train_ids, np.arange(6000))
    # The source's splits are views of the retrieval arrays: nothing is stored twice.
    assert np.shares_memory(source.train_images, retrieval.database_images)
    np.testing.assert_array_equal(source.train_images,
                                  retrieval.database_images[:retrieval.num_train])
    np.testing.assert_array_equal(source.train_labels,
                                  retrieval.database_labels[:retrieval.num_train])
    assert np.shares_memory(source.test_images, retrieval.query_images)
    np.testing.assert_array_equal(source.test_labels, retrieval.query_labels)


def _cached_cifar10_arrays():
    """The shared archive's arrays, decompressed once and cached as .npy in the temp dir."""
    stat = os.stat(CIFAR10_NPZ)
    cache = os.path.join(tempfile.gettempdir(),
                         f"nac_tf_test_cifar10_{stat.st_size}_{int(stat.st_mtime)}")
    keys = ("x_train", "y_train", "x_test", "y_test")
    if not all(os.path.exists(os.path.join(cache, f"{key}.npy")) for key in keys):
        os.makedirs(cache, exist_ok=True)
        with np.load(CIFAR10_NPZ) as archive:
            for key in keys:
                partial = os.path.join(cache, f"{key}.{os.getpid()}.tmp.npy")
                np.save(partial, archive[key])
                os.replace(partial, os.path.join(cache, f"{key}.npy"))  # atomic: no torn reads
    return tuple(np.load(os.path.join(cache, f"{key}.npy")) for key in keys)


@pytest.fixture(scope="module")
def real_cifar10():
    if not os.path.exists(CIFAR10_NPZ):
        pytest.skip("shared/data/cifar10.npz not present")
    return _cached_cifar10_arrays()


def test_cifar10_hashing_split_on_the_real_archive(real_cifar10):
    x_train, y_train, x_test, y_test = real_cifar10
    source = tfds_sources.cifar10_hashing_source(x_train, y_train, x_test, y_test, seed=0)
    retrieval = source.retrieval
    assert (retrieval.num_queries, retrieval.num_database, source.num_train) == (10000, 50000,
                                                                                5000)
    assert (source.num_test, source.image_shape) == (10000, (32, 32, 3))
    np.testing.assert_array_equal(np.bincount(retrieval.query_labels), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(source.train_labels), [500] * 10)
    np.testing.assert_array_equal(np.bincount(retrieval.database_labels), [5000] * 10)
    _assert_split_is_a_protocol_split(retrieval.query_ids, retrieval.database_ids,
                                      retrieval.train_ids, np.arange(60000))
    pool_images = np.concatenate([x_train, x_test])
    pool_labels = np.concatenate([y_train, y_test])
    sample = np.random.default_rng(0).choice(10000, 200, replace=False)
    np.testing.assert_array_equal(retrieval.query_images[sample],
                                  pool_images[retrieval.query_ids[sample]])
    np.testing.assert_array_equal(source.train_images[sample[sample < 5000]],
                                  pool_images[retrieval.train_ids[sample[sample < 5000]]])
    np.testing.assert_array_equal(retrieval.database_labels, pool_labels[retrieval.database_ids])

    again = tfds_sources.cifar10_hashing_source(x_train, y_train, x_test, y_test, seed=0).retrieval
    np.testing.assert_array_equal(retrieval.query_ids, again.query_ids)
    np.testing.assert_array_equal(retrieval.database_ids, again.database_ids)
    other = tfds_sources.cifar10_hashing_source(x_train, y_train, x_test, y_test, seed=1).retrieval
    assert not np.array_equal(retrieval.query_ids, other.query_ids)
    assert not np.array_equal(retrieval.train_ids, other.train_ids)


# ============================================================================ FLICKR-25K
NUM_IMAGES = 60
UNLABELED = (5, 17, 33, 41, 58)
CORRUPT = 23
GRAYSCALE = 7


def _color(n):
    return np.array([(4 * n) % 256, 255 - (4 * n) % 256, (37 * n) % 256], np.uint8)


def _write_flickr_archive(root):
    """A 60-image archive in the MIRFLICKR-25000 layout; returns {n: multi-hot labels}."""
    rng = np.random.default_rng(0)
    image_dir = os.path.join(root, flickr25k.IMAGE_DIR)
    annotation_dir = os.path.join(root, flickr25k.ANNOTATION_DIR)
    os.makedirs(os.path.join(image_dir, "meta"))  # the real archive has subfolders too
    os.makedirs(annotation_dir)
    for n in range(1, NUM_IMAGES + 1):
        path = os.path.join(image_dir, f"im{n}.jpg")
        if n == CORRUPT:
            with open(path, "wb") as f:
                f.write(b"not a jpeg")
            continue
        shape = (10 + n % 5, 14 - n % 3)
        if n == GRAYSCALE:
            image = np.full(shape + (1,), 128, np.uint8)
        else:
            image = np.broadcast_to(_color(n), shape + (3,))
        with open(path, "wb") as f:
            f.write(tf.io.encode_jpeg(tf.constant(image), quality=95).numpy())
    with open(os.path.join(image_dir, "license.txt"), "w") as f:
        f.write("not an image")
    labels = {}
    for n in range(1, NUM_IMAGES + 1):
        row = np.zeros(24, np.int64)
        if n not in UNLABELED:
            row[rng.choice(24, size=rng.integers(1, 4), replace=False)] = 1
        labels[n] = row
    for column, label in enumerate(flickr25k.FLICKR25K_LABELS):
        numbers = [n for n in labels if labels[n][column]]
        with open(os.path.join(annotation_dir, f"{label}.txt"), "w", newline="") as f:
            f.write("".join(f"{n}\r\n" if n % 2 else f"{n}\n" for n in numbers))
    # Files to ignore: "relevant" labels that would label the unlabeled images, and README.
    for relevant in ("dog_r1.txt", "people_r1.txt"):
        with open(os.path.join(annotation_dir, relevant), "w") as f:
            f.write("\n".join(str(n) for n in UNLABELED) + "\n")
    with open(os.path.join(annotation_dir, "README.txt"), "w") as f:
        f.write("MIRFLICKR-25000 annotations\n")
    return labels


@pytest.fixture(scope="module")
def flickr_archive(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("flickr") / "mirflickr_root")
    return root, _write_flickr_archive(root)


def _load_small(root, **kwargs):
    kwargs = {"image_size": 8, "num_queries": 10, "num_train": 20, "seed": 0, **kwargs}
    return flickr25k.load_flickr25k_source(root, **kwargs)


def test_flickr25k_labels_split_and_skips(flickr_archive):
    root, labels = flickr_archive
    source = _load_small(root)
    retrieval = source.retrieval
    assert source.name == "flickr25k" and source.multi_label and retrieval.multi_label
    assert source.num_classes == 24 and source.class_names == flickr25k.FLICKR25K_LABELS
    assert source.image_shape == (8, 8, 3) and source.train_images.dtype == np.uint8
    assert source.num_skipped == 1 and retrieval.num_dropped == len(UNLABELED)
    assert (retrieval.num_queries, retrieval.num_database, retrieval.num_train) == (10, 44, 20)
    assert (source.num_train, source.num_test) == (20, 10)
    kept = [n for n in range(1, NUM_IMAGES + 1) if n not in UNLABELED and n != CORRUPT]
    _assert_split_is_a_protocol_split(retrieval.query_ids, retrieval.database_ids,
                                      retrieval.train_ids, kept)
    # Labels are those written (the _r1 files ignored); images are the right photos.
    for images, label_rows, ids in ((retrieval.query_images, retrieval.query_labels,
                                     retrieval.query_ids),
                                    (retrieval.database_images, retrieval.database_labels,
                                     retrieval.database_ids)):
        np.testing.assert_array_equal(label_rows, np.stack([labels[n] for n in ids]))
        for image, n in zip(images, ids):
            expected = np.full(3, 128) if n == GRAYSCALE else _color(n).astype(int)
            assert np.abs(image.reshape(-1, 3).mean(axis=0) - expected).max() < 6, n
    np.testing.assert_array_equal(source.train_labels,
                                  retrieval.database_labels[:retrieval.num_train])
    np.testing.assert_array_equal(source.test_images, retrieval.query_images)
    assert np.shares_memory(source.train_images, retrieval.database_images)

    again = _load_small(root).retrieval
    np.testing.assert_array_equal(again.query_ids, retrieval.query_ids)
    np.testing.assert_array_equal(again.train_ids, retrieval.train_ids)
    assert not np.array_equal(_load_small(root, seed=1).retrieval.query_ids, retrieval.query_ids)


def test_flickr25k_can_keep_unlabeled_images(flickr_archive):
    root, _ = flickr_archive
    retrieval = _load_small(root, drop_unlabeled=False).retrieval
    assert retrieval.num_dropped == 0
    assert retrieval.num_queries + retrieval.num_database == NUM_IMAGES - 1
    ids = np.concatenate([retrieval.query_ids, retrieval.database_ids])
    label_rows = np.concatenate([retrieval.query_labels, retrieval.database_labels])
    np.testing.assert_array_equal(np.sort(ids[label_rows.sum(axis=1) == 0]), UNLABELED)


def test_flickr25k_raise_mode_names_the_corrupt_file(flickr_archive):
    root, _ = flickr_archive
    with pytest.raises(ValueError, match=f"im{CORRUPT}\\.jpg"):
        _load_small(root, on_corrupt="raise")
    with pytest.raises(ValueError, match="on_corrupt"):
        _load_small(root, on_corrupt="ignore")


def test_flickr25k_layout_errors_name_path_and_layout(flickr_archive, tmp_path):
    root, _ = flickr_archive
    broken = str(tmp_path / "copy")
    shutil.copytree(root, broken)
    os.remove(os.path.join(broken, flickr25k.ANNOTATION_DIR, "sky.txt"))
    with pytest.raises(FileNotFoundError, match="sky.txt"):
        _load_small(broken)
    shutil.rmtree(os.path.join(broken, flickr25k.ANNOTATION_DIR))
    with pytest.raises(FileNotFoundError,
                       match=f"{flickr25k.ANNOTATION_DIR}.*expected <data_dir>/mirflickr/"):
        _load_small(broken)
    shutil.rmtree(os.path.join(broken, flickr25k.IMAGE_DIR))
    with pytest.raises(FileNotFoundError, match="no image folder .*mirflickr"):
        _load_small(broken)

    unknown = str(tmp_path / "unknown")
    shutil.copytree(root, unknown)
    with open(os.path.join(unknown, flickr25k.ANNOTATION_DIR, "tree.txt"), "a") as f:
        f.write("999\n")
    with pytest.raises(ValueError, match="tree.txt lists image 999.*im999.jpg"):
        _load_small(unknown)
    with pytest.raises(ValueError, match="50 queries \\+ 20 training"):
        _load_small(root, num_queries=50)


# ============================================================================ dispatch
def test_load_source_dispatches_flickr25k(flickr_archive, monkeypatch):
    root, _ = flickr_archive
    small = functools.partial(flickr25k.load_flickr25k_source, num_queries=10, num_train=20)
    monkeypatch.setattr(flickr25k, "load_flickr25k_source", small)
    source = catalog.load_source("flickr25k", data_dir=root, seed=0)
    assert source.image_shape == (224, 224, 3)  # the flickr25k spec's image_size
    assert source.retrieval.num_queries == 10 and source.multi_label
    assert catalog.load_source("flickr25k", data_dir=root, image_size=8).image_shape == (8, 8, 3)
    with pytest.raises(ValueError, match="dataset='flickr25k' needs a data_dir"):
        catalog.load_source("flickr25k")
    with pytest.raises(FileNotFoundError, match="data_dir="):
        catalog.load_source("flickr25k", data_dir=root + "_missing")


def test_load_source_dispatches_cifar10_hashing(tmp_path, monkeypatch):
    x_train, y_train, x_test, y_test = _synthetic_cifar(per_class_train=1300,
                                                        per_class_test=200)
    path = str(tmp_path / "cifar.npz")
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    source = catalog.load_source("cifar10_hashing", data_dir=path, seed=0)
    assert (source.num_train, source.num_test, source.retrieval.num_database) == (5000, 10000,
                                                                                 5000)
    # Without an .npz, CIFAR-10 comes from TFDS (data_dir: its data directory).
    calls = []

    def fake_tfds(name, data_dir=None, **kwargs):
        calls.append((name, data_dir))
        return sources.ArrayImageSource("cifar10", x_train, y_train, x_test, y_test)

    monkeypatch.setattr(tfds_sources, "load_tfds_source", fake_tfds)
    assert catalog.load_source("cifar10_hashing", data_dir=str(tmp_path)).num_test == 10000
    assert catalog.load_source("cifar10_hashing").num_train == 5000
    assert calls == [("cifar10", str(tmp_path)), ("cifar10", None)]
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match=r"\.npz"):
        catalog.load_source("cifar10_hashing", data_dir=str(text))
    with pytest.raises(FileNotFoundError, match="data_dir="):
        catalog.load_source("cifar10_hashing", data_dir=str(tmp_path / "absent.npz"))


def test_hashing_datasets_normalise_like_the_datasets_they_come_from():
    assert catalog.dataset_statistics("cifar10_hashing") == catalog.dataset_statistics("cifar10")
    assert catalog.dataset_statistics("flickr25k") == catalog.dataset_statistics("imagenet2012")


# ============================================================================ flags
def _config(tmp_path, **changes):
    return PretrainConfig(encoder="vgg16_bn", model_dir=str(tmp_path), **changes)


def test_flag_validation_of_the_hashing_datasets(tmp_path):
    validate_config(_config(tmp_path, dataset="cifar10_hashing"))
    validate_config(_config(tmp_path, dataset="cifar10_hashing", data_dir=str(tmp_path)))
    archive = tmp_path / "cifar10.npz"
    archive.write_bytes(b"")
    validate_config(_config(tmp_path, dataset="cifar10_hashing", data_dir=str(archive)))
    validate_config(_config(tmp_path, dataset="flickr25k", data_dir=str(tmp_path)))
    text = tmp_path / "cifar10.txt"
    text.write_text("x")
    for changes, words in (
            ({"dataset": "cifar10_hashing", "data_dir": str(text)}, "not .npz"),
            ({"dataset": "flickr25k"}, "mirflickr25k_annotations_v080"),
            ({"dataset": "flickr25k", "data_dir": str(text)}, "not a directory"),
            ({"dataset": "flickr25k", "data_dir": str(tmp_path / "no")}, "does not exist"),
            ({"dataset": "cifar10_hashing", "data_dir": str(tmp_path / "no.npz")},
             "does not exist")):
        with pytest.raises(ConfigError, match=words) as error:
            validate_config(_config(tmp_path, **changes))
        assert error.value.field == "data_dir" and str(error.value).startswith("data_dir: ")
    with pytest.raises(ConfigError, match="cifar10_hashing, flickr25k"):
        validate_config(_config(tmp_path, dataset="flickr"))
