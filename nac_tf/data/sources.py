"""Where images come from: scikit-learn's digits, NumPy archives, image folders, TFDS.

Every loader returns an `ImageSource`: a train and a test split of (uint8 RGB image
[H, W, 3], int64 label). Data that fits in memory (everything but ImageNet) is held as
NumPy arrays, which evaluation code reads directly; ImageNet is streamed from TFDS and
decoded lazily. `load_source` dispatches on the `--dataset` flag's names (`DATASETS`).

Images of a source all have one size, so the augmenter can crop whole batches. Loaders that
resize (digits, image folders, ImageNet) resize to a square `image_size` without cropping:
every pixel of the original stays in the frame and the aspect ratio is not kept (as the
HashNet / NAC code prepares FLICKR-25K).
"""
import dataclasses
import os
import zipfile
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

DATASETS = ("digits", "cifar10", "imagenet2012", "npz", "image_folder")
TFDS_DATASETS = ("cifar10", "imagenet2012")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
ON_CORRUPT = ("skip", "raise")


@dataclasses.dataclass(frozen=True)
class DatasetDefaults:
    """What the trainer assumes for a dataset when a flag leaves it open.

    image_size: the training resolution; None means the data's own size (npz archives).
    mean, std: per-channel statistics of [0, 1] pixels for input normalisation; None
      means "measure them on the training images" (see `dataset_statistics`).
    """

    image_size: Optional[int]
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None


DATASET_DEFAULTS = {
    "digits": DatasetDefaults(image_size=16),
    # The values used by the SimCLR / NAC CIFAR code.
    "cifar10": DatasetDefaults(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # torchvision's ImageNet statistics.
    "imagenet2012": DatasetDefaults(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "npz": DatasetDefaults(image_size=None),
    "image_folder": DatasetDefaults(image_size=224),
}
# For sources without arrays and without known statistics: [0, 1] pixels mapped to
# roughly [-2, 2], a neutral choice that keeps the first layer's inputs well scaled.
FALLBACK_MEAN = (0.5, 0.5, 0.5)
FALLBACK_STD = (0.25, 0.25, 0.25)


# ----------------------------------------------------------------------------- sources
class ImageSource:
    """A labelled image dataset with a train and a test split.

    Attributes: `name`, `num_train`, `num_test`, `num_classes`, `image_shape` (H, W, 3),
    `class_names` (or None), `num_skipped` (unreadable files left out while loading).
    `train_dataset()` / `test_dataset()` give tf.data.Datasets of
    (uint8 image [H, W, 3], int64 label) in a fixed order (the pipeline shuffles).
    `train_dataset(input_context)` holds only that input pipeline's shard, cut as early as
    the source allows (before decoding, for streamed sources).
    """

    has_arrays = False

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
    `train_labels`, `test_labels` int64 [N]. Grayscale input ([N, H, W] or [N, H, W, 1])
    is replicated to three channels."""

    has_arrays = True

    def __init__(self, name, train_images, train_labels, test_images, test_labels,
                 num_classes=None, class_names=None, num_skipped=0):
        train_images, test_images = as_rgb(train_images), as_rgb(test_images)
        train_labels = _as_labels(train_labels, len(train_images), "train_labels")
        test_labels = _as_labels(test_labels, len(test_images), "test_labels")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise ValueError(f"train images are {train_images.shape[1:]} but test images are "
                             f"{test_images.shape[1:]}; a source has one image shape")
        if num_classes is None:
            num_classes = int(max(train_labels.max(initial=-1),
                                  test_labels.max(initial=-1))) + 1
        super().__init__(name, len(train_images), len(test_images), num_classes,
                         train_images.shape[1:], class_names, num_skipped)
        self.train_images, self.train_labels = train_images, train_labels
        self.test_images, self.test_labels = test_images, test_labels

    def train_dataset(self, input_context=None):
        pipelines, pipeline_id = _shard_of(input_context)
        return tf.data.Dataset.from_tensor_slices(
            (self.train_images[pipeline_id::pipelines], self.train_labels[pipeline_id::pipelines]))

    def test_dataset(self):
        return tf.data.Dataset.from_tensor_slices((self.test_images, self.test_labels))


class StreamImageSource(ImageSource):
    """A source too large for memory: datasets are built on demand by the given functions
    (no arrays; `has_arrays` is False). `make_train_dataset(input_context)` must return
    the shard of that input context (all data for None)."""

    def __init__(self, name, make_train_dataset: Callable[..., tf.data.Dataset],
                 make_test_dataset: Callable[[], tf.data.Dataset], num_train, num_test,
                 num_classes, image_shape, class_names=None):
        super().__init__(name, num_train, num_test, num_classes, image_shape, class_names)
        self._make_train_dataset = make_train_dataset
        self._make_test_dataset = make_test_dataset

    def train_dataset(self, input_context=None):
        return self._make_train_dataset(input_context)

    def test_dataset(self):
        return self._make_test_dataset()


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


def _as_labels(labels, count, what):
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be integer class ids of shape [{count}]; received "
                         f"shape {labels.shape}, dtype {labels.dtype}")
    if count and labels.min() < 0:
        raise ValueError(f"{what} must be class ids >= 0; found {labels.min()}")
    return labels.astype(np.int64)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; received {value!r}")
    return int(value)


def _resize_square(images, image_size):
    """uint8 [..., H, W, C] → uint8 [..., S, S, C], bilinear (anti-aliased when shrinking)."""
    resized = tf.image.resize(tf.cast(images, tf.float32), (image_size, image_size),
                              method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def stratified_split(labels, test_fraction, seed):
    """Seeded per-class split: round(test_fraction · n_c) of each class's n_c items go to
    the test set. Returns sorted (train, test) index arrays; the same seed, the same split."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = [rng.permutation(np.flatnonzero(labels == c))[:int(round(test_fraction * n))]
            for c, n in zip(*np.unique(labels, return_counts=True))]
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def _check_test_fraction(test_fraction):
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1); received {test_fraction}")


# ----------------------------------------------------------------------------- loaders
def load_digits_source(image_size=16, seed=0, test_fraction=1 / 3):
    """scikit-learn's bundled handwritten digits: 1 797 images 8×8, 10 classes, no download.

    Values 0..16 are scaled to 0..255, upsampled to `image_size` (bilinear) and replicated
    to RGB. The stratified split (`test_fraction` of every class to test) depends only on
    `seed`, so train and test are the same in every run.
    """
    from sklearn.datasets import load_digits

    image_size = _check_positive_int("image_size", image_size)
    _check_test_fraction(test_fraction)
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    if image_size != images.shape[1]:
        images = _resize_square(images, image_size).numpy()
    labels = digits.target.astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    return ArrayImageSource("digits", images[train], labels[train], images[test],
                            labels[test], num_classes=10,
                            class_names=[str(d) for d in range(10)])


def load_npz_source(path):
    """A NumPy archive with x_train, y_train, x_test, y_test (optional class_names).

    Images uint8 [N, H, W] (grayscale, replicated to RGB), [N, H, W, 1] or [N, H, W, 3];
    labels integer [N]. The source's name is the file name without extension.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .npz file: {path}")
    try:
        archive = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array, not an .npz archive with keys "
                         f"{', '.join(NPZ_KEYS)}")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing key(s) {', '.join(missing)}; expected keys "
                             f"{', '.join(NPZ_KEYS)} (found: {', '.join(archive.files)})")
        arrays = {key: archive[key] for key in NPZ_KEYS}
        class_names = archive["class_names"].tolist() if "class_names" in archive.files \
            else None
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise ValueError(f"{path}: key x_{split} has shape {images.shape}; expected "
                             "[N, H, W] or [N, H, W, C] with C = 1 or 3")
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: key x_{split} has dtype {images.dtype}; expected uint8")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: key y_{split} has shape {labels.shape} and dtype "
                             f"{labels.dtype}; expected integer class ids of shape "
                             f"[{len(images)}]")
    if arrays["x_train"].shape[1:3] != arrays["x_test"].shape[1:3]:
        raise ValueError(f"{path}: key x_test has images of size {arrays['x_test'].shape[1:3]};"
                         f" expected the size of x_train, {arrays['x_train'].shape[1:3]}")
    name = os.path.splitext(os.path.basename(path))[0]
    return ArrayImageSource(name, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                            arrays["y_test"], class_names=class_names)


def load_image_folder_source(root, image_size, test_fraction=0.2, seed=0, on_corrupt="skip"):
    """Images in root/<class>/<file> (jpg, png, bmp, gif), decoded and resized to
    `image_size`² in memory. Class folders in sorted order get ids 0..C-1; the split is
    stratified and seeded.

    Files that cannot be decoded are skipped and counted in `num_skipped`
    (`on_corrupt="skip"`), or raise ValueError naming the file (`on_corrupt="raise"`).
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"`on_corrupt` must be one of {', '.join(ON_CORRUPT)}; received "
                         f"{on_corrupt!r}")
    image_size = _check_positive_int("image_size", image_size)
    _check_test_fraction(test_fraction)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such directory of class folders: {root}")
    class_names = sorted(entry for entry in os.listdir(root)
                         if os.path.isdir(os.path.join(root, entry)))
    if not class_names:
        raise ValueError(f"{root}: no class folders; expected the layout root/<class>/<image>")
    images, labels, skipped = [], [], 0
    for class_id, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        for filename in sorted(os.listdir(folder)):
            if not filename.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(folder, filename)
            try:
                image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                           expand_animations=False)
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
                if on_corrupt == "raise":
                    raise ValueError(f"cannot decode image {path}: {error.message}") from error
                skipped += 1
                continue
            images.append(_resize_square(image, image_size).numpy())
            labels.append(class_id)
    if not images:
        raise ValueError(f"{root}: no readable images ({', '.join(IMAGE_EXTENSIONS)}) in its "
                         f"class folders ({skipped} unreadable)")
    images, labels = np.stack(images), np.asarray(labels, np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    return ArrayImageSource(os.path.basename(os.path.normpath(root)), images[train],
                            labels[train], images[test], labels[test],
                            num_classes=len(class_names), class_names=class_names,
                            num_skipped=skipped)


def load_tfds_source(name, data_dir=None, manual_dir=None, image_size=None):
    """CIFAR-10 or ImageNet-2012 through TensorFlow Datasets.

    cifar10: materialised as arrays at its native 32×32 (`image_size` is ignored: the
      augmenter and the evaluation pipeline resize). TFDS downloads it if `data_dir` does
      not hold it yet.
    imagenet2012: streamed; images are decoded and resized to `image_size`² (default 224)
      lazily. TFDS cannot download ImageNet: `manual_dir` must hold
      ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; the prepared files go to
      `data_dir`. Its test split is the 50 000-image validation set.
    """
    import tensorflow_datasets as tfds

    if name not in TFDS_DATASETS:
        raise ValueError(f"`name` must be one of {', '.join(TFDS_DATASETS)}; received {name!r}")
    builder = tfds.builder(name, data_dir=data_dir)
    download_config = (tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir
                       else None)
    builder.download_and_prepare(download_config=download_config)
    label_feature = builder.info.features["label"]
    if name == "cifar10":
        (x_train, y_train), (x_test, y_test) = (
            _materialise(builder.as_dataset(split=split, as_supervised=True))
            for split in ("train", "test"))
        return ArrayImageSource("cifar10", x_train, y_train, x_test, y_test,
                                num_classes=label_feature.num_classes,
                                class_names=label_feature.names)

    image_size = _check_positive_int("image_size", image_size or 224)

    def make_dataset(split, input_context=None):
        # TFDS shards by file, so each input pipeline decodes only its own images.
        dataset = builder.as_dataset(
            split=split, as_supervised=True, shuffle_files=split == "train",
            read_config=tfds.ReadConfig(input_context=input_context))
        return dataset.map(
            lambda image, label: (_resize_square(image, image_size), tf.cast(label, tf.int64)),
            num_parallel_calls=tf.data.AUTOTUNE)

    return StreamImageSource(
        "imagenet2012", lambda input_context=None: make_dataset("train", input_context),
        lambda: make_dataset("validation"),
        num_train=_split_size(builder, "train"), num_test=_split_size(builder, "validation"),
        num_classes=label_feature.num_classes, image_shape=(image_size, image_size, 3),
        class_names=label_feature.names)


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


# ----------------------------------------------------------------------------- dispatch
def load_source(dataset, data_dir=None, image_size=None, seed=0):
    """The ImageSource for `--dataset` (one of DATASETS).

    data_dir: npz: the .npz file; image_folder: the root of class folders; imagenet2012:
      the TFDS manual directory with the ImageNet tars (prepared files are written there
      too); cifar10: an optional TFDS data directory; digits: unused.
    image_size: size to resize to for digits, image_folder and imagenet2012 (defaults in
      DATASET_DEFAULTS); cifar10 and npz keep their native size.
    seed: the train/test split of digits and image_folder.
    """
    if dataset not in DATASETS:
        raise ValueError(f"--dataset={dataset!r} is not one of: {', '.join(DATASETS)}")
    size = image_size or DATASET_DEFAULTS[dataset].image_size
    if dataset == "digits":
        return load_digits_source(image_size=size, seed=seed)
    if dataset == "cifar10":
        return load_tfds_source("cifar10", data_dir=data_dir or None)
    needs = {"npz": "the path of the .npz archive",
             "image_folder": "the root directory of class folders",
             "imagenet2012": "the TFDS manual directory holding ILSVRC2012_img_train.tar and "
                             "ILSVRC2012_img_val.tar"}[dataset]
    if not data_dir:
        raise ValueError(f"--data_dir is required for --dataset={dataset}: {needs}")
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"--data_dir={data_dir!r} does not exist; --dataset={dataset} "
                                f"needs {needs}")
    if dataset == "npz":
        return load_npz_source(data_dir)
    if dataset == "image_folder":
        return load_image_folder_source(data_dir, image_size=size, seed=seed)
    return load_tfds_source("imagenet2012", data_dir=data_dir, manual_dir=data_dir,
                            image_size=size)


def dataset_statistics(dataset, source: Optional[ImageSource] = None,
                       chunk_size=4096) -> Tuple[Sequence[float], Sequence[float]]:
    """Per-channel (mean, std) of [0, 1] pixels for the encoder's input normalisation.

    CIFAR-10 and ImageNet use their published values (DATASET_DEFAULTS); other datasets
    are measured on all training images of an array-backed `source`; otherwise
    FALLBACK_MEAN / FALLBACK_STD.
    """
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"--dataset={dataset!r} is not one of: {', '.join(DATASETS)}")
    defaults = DATASET_DEFAULTS[dataset]
    if defaults.mean is not None:
        return defaults.mean, defaults.std
    if source is None or not source.has_arrays or source.num_train == 0:
        return FALLBACK_MEAN, FALLBACK_STD
    # Chunked sums: a float64 copy of a 60 000-image set would need gigabytes.
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, source.num_train, chunk_size):
        chunk = source.train_images[start:start + chunk_size].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += np.square(chunk).sum(axis=(0, 1, 2))
    count = source.num_train * source.image_shape[0] * source.image_shape[1]
    mean = total / count
    # A constant channel would divide by zero in the encoder: floor the std.
    std = np.maximum(np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0)), 1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
