"""CIFAR-10 and ImageNet-2012 through TensorFlow Datasets, and the CIFAR-10 retrieval split
(dataset="cifar10_hashing") built from CIFAR-10's arrays.

A TFDS dataset not prepared in its data directory yet is prepared first
(`nac_tf.data.tfds_prepare`): from its source files (`nac_tf.specs.datasets`, the
`tfds_source_files` of its spec) when the manual directory holds them, else by TFDS's
download.
"""
import os

import numpy as np
import tensorflow as tf

from nac_tf.data.sources import (
    ArrayImageSource, StreamImageSource, as_labels, as_rgb, check_positive_int, load_npz_source,
    path_missing, resize_square, retrieval_source)
from nac_tf.data.splits import class_balanced_retrieval_split
from nac_tf.specs.datasets import NPZ_KEYS, dataset_spec, names_where

# The TFDS datasets: those whose spec lists the files TFDS prepares them from.
TFDS_DATASETS = names_where(lambda spec: spec.tfds_source_files)


def load_tfds_source(name, data_dir=None, manual_dir=None, image_size=None, instead=None):
    """CIFAR-10 or ImageNet-2012 through TensorFlow Datasets.

    data_dir: TFDS's data directory (None: its default), where the prepared dataset is read,
      or written first: from its source files when `manual_dir` holds them, else by TFDS's
      download (`tfds_prepare.ensure_prepared`, which raises FileNotFoundError / ValueError
      of one line when neither works, offering `instead` as another way).
    cifar10: materialised as arrays at its native 32×32 (`image_size` is ignored: the
      augmenter and the evaluation pipeline resize).
    imagenet2012: streamed and decoded lazily; training images keep their own size (the
      views crop them at their resolution), test images are resized to `image_size`²
      (default 224). TFDS cannot download ImageNet: `manual_dir` must hold its source files.
      Its test split is the 50 000-image validation set.
    """
    import tensorflow_datasets as tfds

    from nac_tf.data import tfds_prepare

    if name not in TFDS_DATASETS:
        raise ValueError(f"`name` must be one of {', '.join(TFDS_DATASETS)}; received {name!r}")
    if data_dir and os.path.isfile(data_dir):
        files = " and ".join(dataset_spec(name).tfds_source_files)
        raise ValueError(f"data_dir={data_dir!r} is a file; dataset {name!r} takes a TFDS data "
                         f"directory, or one holding {files}")
    builder = tfds.builder(name, data_dir=data_dir)
    tfds_prepare.ensure_prepared(builder, manual_dir=manual_dir, instead=instead)
    label_feature = builder.info.features["label"]
    if name == "cifar10":
        (x_train, y_train), (x_test, y_test) = (
            _materialise(builder.as_dataset(split=split, as_supervised=True))
            for split in ("train", "test"))
        return ArrayImageSource("cifar10", x_train, y_train, x_test, y_test,
                                num_classes=label_feature.num_classes,
                                class_names=label_feature.names)

    image_size = check_positive_int("image_size", image_size or 224)

    def make_dataset(split, input_context=None):
        # TFDS shards by file, so each input pipeline decodes only its own images.
        dataset = builder.as_dataset(
            split=split, as_supervised=True, shuffle_files=split == "train",
            read_config=tfds.ReadConfig(input_context=input_context))
        if split == "train":
            # Whole images: the views' crop reads the file's own pixels (resizing them to a
            # square first would stretch them, and cost the host twice the crop's time).
            return dataset.map(lambda image, label: (image, tf.cast(label, tf.int64)))
        return dataset.map(
            lambda image, label: (resize_square(image, image_size), tf.cast(label, tf.int64)),
            num_parallel_calls=tf.data.AUTOTUNE)

    return StreamImageSource(
        "imagenet2012", lambda input_context=None: make_dataset("train", input_context),
        lambda: make_dataset("validation"),
        num_train=_split_size(builder, "train"), num_test=_split_size(builder, "validation"),
        num_classes=label_feature.num_classes, image_shape=(image_size, image_size, 3),
        class_names=label_feature.names, uniform_size=False)


def load_cifar10_source(data_dir=None):
    """dataset="cifar10": `load_tfds_source("cifar10")` with `data_dir` its TFDS data
    directory (None: TFDS's default), which may hold CIFAR-10's source file."""
    return load_tfds_source(
        "cifar10", data_dir=data_dir or None, manual_dir=data_dir or None,
        instead=f"dataset='npz' with data_dir = {dataset_spec('npz').data_dir_needs}")


def load_imagenet_source(data_dir, image_size=None):
    """dataset="imagenet2012": `load_tfds_source("imagenet2012")` with `data_dir` the TFDS
    manual directory holding its source files (the prepared files are written there too)."""
    return load_tfds_source("imagenet2012", data_dir=data_dir, manual_dir=data_dir,
                            image_size=image_size)


def cifar10_hashing_source(x_train, y_train, x_test, y_test, seed=0, queries_per_class=1000,
                           train_per_class=500, class_names=None):
    """The CIFAR-10 retrieval split (docs/protocols.md section 2, paper Table 3) from
    CIFAR-10's arrays.

    Pools train + test (60 000, ids in that order), draws `queries_per_class` queries per
    class (seeded); the rest is the database, and `train_per_class` images per class of the
    database are the pretraining set. The source's train split holds those 5 000, its test
    split the 10 000 queries; `.retrieval` the queries and the 50 000-image database.
    """
    pool_images = np.concatenate([as_rgb(x_train), as_rgb(x_test)])  # a fresh array: ours
    pool_labels = np.concatenate([as_labels(y_train, len(x_train), "y_train"),
                                  as_labels(y_test, len(x_test), "y_test")])
    if pool_labels.ndim != 1:
        raise ValueError("CIFAR-10 labels must be class ids [N]")
    split = class_balanced_retrieval_split(pool_labels, queries_per_class, train_per_class,
                                           seed=seed)
    return retrieval_source("cifar10_hashing", pool_images, pool_labels, split,
                            num_classes=10, class_names=class_names)


def load_cifar10_hashing_source(data_dir=None, seed=0, queries_per_class=1000,
                                train_per_class=500):
    """`cifar10_hashing_source` on CIFAR-10 read from `data_dir`: an .npz archive with
    x_train, y_train, x_test, y_test (a local copy of the archive, for machines without
    internet; if its test images were JPEG-degraded, the pooling spreads them over
    queries and database alike), or else a TFDS data directory as for `load_tfds_source`
    (None: TFDS's default), which may hold CIFAR-10's source file instead."""
    if data_dir and path_missing(data_dir):
        raise FileNotFoundError(f"data_dir={data_dir!r} does not exist; dataset "
                                "'cifar10_hashing' takes an optional .npz archive or TFDS "
                                "data directory")
    if data_dir and os.path.isfile(data_dir):
        if not data_dir.endswith(".npz"):
            raise ValueError(f"data_dir={data_dir!r}: dataset 'cifar10_hashing' takes an .npz "
                             f"archive with keys {', '.join(NPZ_KEYS)} or a TFDS data directory")
        cifar = load_npz_source(data_dir)
    else:
        cifar = load_tfds_source(
            "cifar10", data_dir=data_dir or None, manual_dir=data_dir or None,
            instead=f"data_dir = an .npz archive with keys {', '.join(NPZ_KEYS)}")
    return cifar10_hashing_source(cifar.train_images, cifar.train_labels, cifar.test_images,
                                  cifar.test_labels, seed=seed,
                                  queries_per_class=queries_per_class,
                                  train_per_class=train_per_class,
                                  class_names=cifar.class_names)


def _materialise(dataset, chunk=4096):
    """(images, labels) NumPy arrays of a dataset of (image, label) pairs."""
    # In chunks rather than as_dataset(batch_size=-1): that one sizes its single batch
    # from the split metadata, which may be missing.
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(chunk).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    return np.concatenate(images), np.concatenate(labels)


def _split_size(builder, split):
    """Examples in a TFDS split; from the dataset itself when the metadata lacks splits
    (as under tfds.testing.mock_data)."""
    if split in builder.info.splits:
        return builder.info.splits[split].num_examples
    return int(builder.as_dataset(split=split).cardinality())
