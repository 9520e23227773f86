"""Image sources: `ImageSource` and its two kinds (arrays in memory, streamed), the
retrieval protocol's `RetrievalArrays`, and the loaders of data held as arrays in a file:
scikit-learn's digits and NumPy archives. The other loaders: `image_folder` (class
folders), `tfds_sources` (CIFAR-10, ImageNet and the CIFAR-10 retrieval split through TFDS),
`flickr25k`.

Every loader returns an `ImageSource`: a train and a test split of (uint8 RGB image
[H, W, 3], int64 label), the label being a class id, or a multi-hot vector [C] for
multi-label data (`source.multi_label`). Data that fits in memory (everything but ImageNet)
is held as NumPy arrays, which evaluation code reads directly; ImageNet is streamed from
TFDS and decoded lazily. `nac_tf.data.catalog.load_source` picks a loader by dataset name.

The hashing datasets also carry the retrieval protocol's query and database sets in
`source.retrieval` (a `RetrievalArrays`; None for every other dataset). Their train split
is the pretraining subset and their test split the queries.

Images of a source all have one size, so the augmenter can crop whole batches, except the
training images of streamed ImageNet (`uniform_size=False`), which keep the size of their
files: the input pipeline crops each at its own resolution, as the authors' torchvision
pipeline does, and only then batches the views. Loaders that resize (digits, image folders,
FLICKR-25K, ImageNet's test split) resize to a square `image_size` without cropping: every
pixel of the original stays in the frame and the aspect ratio is not kept.
"""
import dataclasses
import os
import zipfile
import zlib
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from nac_tf.data.splits import contiguous_order, stratified_split
from nac_tf.errors import cannot_read
from nac_tf.specs.datasets import NPZ_KEYS


# ----------------------------------------------------------------------------- sources
class ImageSource:
    """A labelled image dataset with a train and a test split.

    Attributes: `name`, `num_train`, `num_test`, `num_classes`, `image_shape` (H, W, 3),
    `class_names` (or None), `num_skipped` (unreadable files left out while loading),
    `multi_label` (labels are multi-hot [C] rather than class ids), `retrieval` (the
    retrieval protocol's `RetrievalArrays` for the hashing datasets, else None),
    `uniform_size` (False: training images come in their own sizes, and `image_shape` is
    the size of the test images and of the views).
    `train_dataset()` / `test_dataset()` give tf.data.Datasets of
    (uint8 image [H, W, 3], int64 label) in a fixed order (the pipeline shuffles).
    `train_dataset(input_context)` holds only that input pipeline's shard, cut as early as
    the source allows (before decoding, for streamed sources).
    """

    has_arrays = False
    retrieval = None
    multi_label = False
    uniform_size = True

    def __init__(self, name, num_train, num_test, num_classes, image_shape, class_names=None,
                 num_skipped=0):
        self.name = name
        self.num_train = int(num_train)
        self.num_test = int(num_test)
        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.class_names = None if class_names is None else tuple(class_names)
        self.num_skipped = int(num_skipped)

    def train_dataset(self, input_context: Optional[tf.distribute.InputContext] = None
                      ) -> tf.data.Dataset:
        raise NotImplementedError

    def test_dataset(self) -> tf.data.Dataset:
        raise NotImplementedError

    def __repr__(self):
        return (f"{type(self).__name__}(name={self.name!r}, num_train={self.num_train}, "
                f"num_test={self.num_test}, num_classes={self.num_classes}, "
                f"image_shape={self.image_shape})")


class ArrayImageSource(ImageSource):
    """A source held in memory: `train_images`, `test_images` uint8 [N, H, W, 3] and
    `train_labels`, `test_labels` int64, either class ids [N] or multi-hot {0, 1} [N, C]
    (both splits the same kind). Grayscale input ([N, H, W] or [N, H, W, 1]) is replicated
    to three channels. Arrays already uint8 RGB are kept as given (views stay views).
    `retrieval`: the retrieval protocol's arrays, for the hashing datasets."""

    has_arrays = True

    def __init__(self, name, train_images, train_labels, test_images, test_labels,
                 num_classes=None, class_names=None, num_skipped=0,
                 retrieval: Optional["RetrievalArrays"] = None):
        train_images, test_images = as_rgb(train_images), as_rgb(test_images)
        train_labels = as_labels(train_labels, len(train_images), "train_labels")
        test_labels = as_labels(test_labels, len(test_images), "test_labels")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise ValueError(f"train images are {train_images.shape[1:]} but test images are "
                             f"{test_images.shape[1:]}; a source has one image shape")
        num_classes = _labels_num_classes(num_classes, {"train_labels": train_labels,
                                                        "test_labels": test_labels})
        super().__init__(name, len(train_images), len(test_images), num_classes,
                         train_images.shape[1:], class_names, num_skipped)
        self.train_images, self.train_labels = train_images, train_labels
        self.test_images, self.test_labels = test_images, test_labels
        self.retrieval = retrieval

    @property
    def multi_label(self):
        return self.train_labels.ndim == 2

    def train_dataset(self, input_context=None):
        pipelines, pipeline_id = _shard_of(input_context)
        return tf.data.Dataset.from_tensor_slices(
            (self.train_images[pipeline_id::pipelines], self.train_labels[pipeline_id::pipelines]))

    def test_dataset(self):
        return tf.data.Dataset.from_tensor_slices((self.test_images, self.test_labels))


class StreamImageSource(ImageSource):
    """A source too large for memory: datasets are built on demand by the given functions
    (no arrays; `has_arrays` is False). `make_train_dataset(input_context)` must return
    the shard of that input context (all data for None). `uniform_size=False`: training
    images may differ in size (see the module docstring)."""

    def __init__(self, name, make_train_dataset: Callable[..., tf.data.Dataset],
                 make_test_dataset: Callable[[], tf.data.Dataset], num_train, num_test,
                 num_classes, image_shape, class_names=None, uniform_size=True):
        super().__init__(name, num_train, num_test, num_classes, image_shape, class_names)
        self.uniform_size = bool(uniform_size)
        self._make_train_dataset = make_train_dataset
        self._make_test_dataset = make_test_dataset

    def train_dataset(self, input_context=None):
        return self._make_train_dataset(input_context)

    def test_dataset(self):
        return self._make_test_dataset()


@dataclasses.dataclass(frozen=True, eq=False)
class RetrievalArrays:
    """The query and database sets of the hash-code retrieval protocol (docs/protocols.md
    section 2).

    query_images: uint8 [Q, H, W, 3]; query_labels: int64 class ids [Q] or multi-hot [Q, C].
    database_images, database_labels: the same for the M database items.
    query_ids, database_ids: int64, each item's identity in the original dataset (CIFAR-10:
      the index in official train-then-test order, 0..59 999; FLICKR-25K: n of im<n>.jpg).
    num_train: the database starts with the `num_train` pretraining images (the source's
      train split), so `database_images[:num_train]` is `source.train_images`.
    num_dropped: images the protocol left out before splitting (FLICKR-25K: no label).

    Memory: every image array here and the source's train / test images are views of one
    pooled array ordered [queries | training images | rest of the database]
    (`retrieval_source`), so no image is stored twice: CIFAR-10 is 60 000 × 3 072 B ≈ 184 MB,
    FLICKR-25K at 224² is 24 581 × 150 528 B ≈ 3.7 GB. Encode the database in slices
    (`database_images[i:i + batch]`) to keep it that way; fancy indexing copies.
    """

    query_images: np.ndarray
    query_labels: np.ndarray
    database_images: np.ndarray
    database_labels: np.ndarray
    query_ids: np.ndarray
    database_ids: np.ndarray
    num_train: int
    num_dropped: int = 0

    def __post_init__(self):
        for images, labels, ids, what in (
                (self.query_images, self.query_labels, self.query_ids, "query"),
                (self.database_images, self.database_labels, self.database_ids, "database")):
            if not len(images) == len(labels) == len(ids):
                raise ValueError(f"{what}: {len(images)} images, {len(labels)} labels and "
                                 f"{len(ids)} ids; they must match")
        if self.query_labels.ndim != self.database_labels.ndim:
            raise ValueError("query and database labels must be the same kind (class ids or "
                             "multi-hot)")
        if not 0 <= self.num_train <= len(self.database_images):
            raise ValueError(f"num_train={self.num_train} must be within the "
                             f"{len(self.database_images)} database items")

    @property
    def multi_label(self):
        return self.query_labels.ndim == 2

    @property
    def num_queries(self):
        return len(self.query_images)

    @property
    def num_database(self):
        return len(self.database_images)

    @property
    def train_ids(self):
        """Original ids of the pretraining images (a prefix of the database)."""
        return self.database_ids[:self.num_train]


def _shard_of(input_context):
    """(number of input pipelines, this pipeline's id); (1, 0) without a context."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def as_rgb(images):
    """uint8 [N, H, W], [N, H, W, 1] or [N, H, W, 3] → uint8 [N, H, W, 3]."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels; received dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape [N, H, W], [N, H, W, 1] or [N, H, W, 3]; "
                         f"received {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def as_labels(labels, count, what):
    """int64 class ids [count] or multi-hot {0, 1} [count, C], validated."""
    labels = np.asarray(labels)
    integer = np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    if labels.ndim not in (1, 2) or len(labels) != count or not integer:
        raise ValueError(f"{what} must be integer class ids of shape [{count}] or multi-hot "
                         f"{{0, 1}} integers of shape [{count}, C]; received shape "
                         f"{labels.shape}, dtype {labels.dtype}")
    if labels.ndim == 2 and labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{what} is multi-hot [{count}, {labels.shape[1]}], so its values must "
                         f"be 0 or 1; found values in [{labels.min()}, {labels.max()}]")
    if labels.ndim == 1 and count and labels.min() < 0:
        raise ValueError(f"{what} must be class ids >= 0; found {labels.min()}")
    return labels.astype(np.int64)


def _labels_num_classes(num_classes, labels_by_name):
    """The class count that fits every label array of {name: labels} (all class ids, or all
    multi-hot [N, C] with one C); `num_classes` None means: infer it, else every class id
    must be below it."""
    label_arrays = list(labels_by_name.values())
    kinds = {labels.ndim for labels in label_arrays}
    if len(kinds) > 1:
        raise ValueError("labels mix class ids [N] and multi-hot [N, C]; every split of a "
                         "source must use the same kind")
    if kinds == {2}:
        widths = {labels.shape[1] for labels in label_arrays}
        if len(widths) > 1 or (num_classes is not None and widths != {num_classes}):
            raise ValueError(f"multi-hot labels have {sorted(widths)} columns; expected one "
                             f"width{'' if num_classes is None else f' = {num_classes}'}")
        return widths.pop()
    if num_classes is None:
        return int(max(labels.max(initial=-1) for labels in label_arrays)) + 1
    for name, labels in labels_by_name.items():
        if labels.max(initial=-1) >= num_classes:
            raise ValueError(f"{name} holds class id {labels.max()}; with num_classes="
                             f"{num_classes} class ids must be < {num_classes}")
    return num_classes


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; received {value!r}")
    return int(value)


def resize_square(images, image_size):
    """uint8 [..., H, W, C] → uint8 [..., S, S, C], bilinear (anti-aliased when shrinking)."""
    resized = tf.image.resize(tf.cast(images, tf.float32), (image_size, image_size),
                              method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def check_test_fraction(test_fraction):
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1); received {test_fraction}")


def _permute_rows_in_place(array, order):
    """Reorders rows so that array[k] holds the former array[order[k]] (`order` a permutation
    of range(len(array))), following the permutation's cycles with one spare row: a
    fancy-indexed copy would double the peak memory of a 3.7 GB FLICKR-25K pool."""
    order = np.asarray(order, np.int64)
    if order.shape != (len(array),) or not np.array_equal(np.sort(order),
                                                            np.arange(len(array))):
        raise ValueError(f"`order` must be a permutation of range({len(array)})")
    placed = np.zeros(len(order), bool)
    for start in range(len(order)):
        if placed[start]:
            continue
        saved = array[start].copy()
        k = start
        while True:
            placed[k] = True
            source = order[k]
            if source == start:
                array[k] = saved
                break
            array[k] = array[source]
            k = source


def retrieval_source(name, pool_images, pool_labels, split, *, pool_ids=None,
                     num_classes=None, class_names=None, num_skipped=0, num_dropped=0):
    """An ArrayImageSource for the retrieval protocol: train split = `split.train`, test
    split = `split.query`, and `.retrieval` with the query and database sets.

    pool_images: uint8 [N, H, W, 3], which this function takes over: its rows are reordered
      IN PLACE to [query | train | rest of database | unused] so that every set is a view
      (see RetrievalArrays for the memory this saves).
    pool_labels: class ids [N] or multi-hot [N, C]; pool_ids: each row's identity in the
      original dataset (default: the row index).
    split: a splits.RetrievalSplit of row indices; rows in neither set are left out.
    """
    pool_images = as_rgb(pool_images)
    pool_labels = as_labels(pool_labels, len(pool_images), "pool_labels")
    pool_ids = (np.arange(len(pool_images), dtype=np.int64) if pool_ids is None
                else np.asarray(pool_ids, np.int64))
    if pool_ids.shape != (len(pool_images),):
        raise ValueError(f"pool_ids must have shape [{len(pool_images)}]; received "
                         f"{pool_ids.shape}")
    order = contiguous_order(split, len(pool_images))
    _permute_rows_in_place(pool_images, order)
    labels, ids = pool_labels[order], pool_ids[order]
    num_query, num_train, num_database = len(split.query), len(split.train), len(split.database)
    query = slice(0, num_query)
    database = slice(num_query, num_query + num_database)
    train = slice(num_query, num_query + num_train)
    retrieval = RetrievalArrays(
        query_images=pool_images[query], query_labels=labels[query],
        database_images=pool_images[database], database_labels=labels[database],
        query_ids=ids[query], database_ids=ids[database], num_train=num_train,
        num_dropped=num_dropped)
    return ArrayImageSource(name, pool_images[train], labels[train], pool_images[query],
                            labels[query], num_classes=num_classes, class_names=class_names,
                            num_skipped=num_skipped, retrieval=retrieval)


# ----------------------------------------------------------------------------- loaders
def load_digits_source(image_size=16, seed=0, test_fraction=1 / 3):
    """scikit-learn's bundled handwritten digits: 1 797 images 8×8, 10 classes, no download.

    Values 0..16 are scaled to 0..255, upsampled to `image_size` (bilinear) and replicated
    to RGB. The stratified split (`test_fraction` of every class to test) depends only on
    `seed`, so train and test are the same in every run.
    """
    from sklearn.datasets import load_digits

    image_size = check_positive_int("image_size", image_size)
    check_test_fraction(test_fraction)
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    if image_size != images.shape[1]:
        images = resize_square(images, image_size).numpy()
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    return ArrayImageSource("digits", images[train], labels[train], images[test],
                            labels[test], num_classes=10,
                            class_names=[str(d) for d in range(10)])


def load_npz_source(path):
    """A NumPy archive with x_train, y_train, x_test, y_test (optional class_names).

    Images uint8 [N, H, W] (grayscale, replicated to RGB), [N, H, W, 1] or [N, H, W, 3];
    labels integer class ids >= 0 [N] (< len(class_names) when the archive names its
    classes). The source's name is the file name without extension.
    Neither split may be empty: pretraining draws its batches from x_train, and every
    evaluation (the trainer's at the end of a run, nac-linear-eval, nac-hash-retrieval)
    scores x_test, so an empty test split would fail only after training.
    """
    try:
        archive = np.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such .npz file: {path}") from None
    except OSError as error:  # no permission, a directory, ...
        raise ValueError(cannot_read(path, error)) from None
    except (ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array, not an .npz archive with keys "
                         f"{', '.join(NPZ_KEYS)}")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing key(s) {', '.join(missing)}; expected keys "
                             f"{', '.join(NPZ_KEYS)} (found: {', '.join(archive.files)})")
        try:  # the members are read (and decompressed) only here
            arrays = {key: archive[key] for key in NPZ_KEYS}
            class_names = archive["class_names"].tolist() if "class_names" in archive.files \
                else None
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise ValueError(f"{path}: key x_{split} has shape {images.shape}; expected "
                             "[N, H, W] or [N, H, W, C] with C = 1 or 3")
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: key x_{split} has dtype {images.dtype}; expected uint8")
        if not len(images):
            raise ValueError(f"{path}: key x_{split} holds no images; both splits need "
                             "images (pretraining draws x_train, evaluation scores x_test)")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: key y_{split} has shape {labels.shape} and dtype "
                             f"{labels.dtype}; expected integer class ids of shape "
                             f"[{len(images)}]")
        if labels.min() < 0:
            raise ValueError(f"{path}: key y_{split} holds class id {labels.min()}; class ids "
                             "must be >= 0")
        if class_names is not None and labels.max() >= len(class_names):
            raise ValueError(f"{path}: key y_{split} holds class id {labels.max()}, but key "
                             f"class_names names {len(class_names)} classes (ids 0.."
                             f"{len(class_names) - 1})")
    if arrays["x_train"].shape[1:3] != arrays["x_test"].shape[1:3]:
        raise ValueError(f"{path}: key x_test has images of size {arrays['x_test'].shape[1:3]};"
                         f" expected the size of x_train, {arrays['x_train'].shape[1:3]}")
    name = os.path.splitext(os.path.basename(path))[0]
    return ArrayImageSource(name, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                            arrays["y_test"], class_names=class_names,
                            num_classes=None if class_names is None else len(class_names))


def path_missing(path):
    """Whether `path` does not exist. A path that cannot be looked up (a parent without
    search permission) is not reported missing: its loader says why it cannot be read."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False
