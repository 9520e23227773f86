"""Collections of images to index or to query with: a split of a dataset nac_tf reads, a
folder of image files, one image file, an .npz archive, or arrays given in Python.

A `Collection` holds its items' labels and file paths (when it has them) and a
`description`, a JSON object from which `open_collection` reads the same images again (the
search report shows the images of the items it returns). Images are read slice by slice
(`Collection.images(start, stop)`), so a folder is never decoded whole into memory.

Sources and their descriptions (`"source"`):
  dataset  a split of `nac_tf.data.catalog.load_source`'s dataset: "database" / "queries"
           (the retrieval protocol's sets, `evaluation.evaluators.retrieval_sets`), "train"
           or "test" (the plain splits); labels and class names from the dataset.
  files    a folder (every image file below it, recursively, in sorted order) or one image
           file, decoded by `tf.io.decode_image`; paths, no labels. Images may differ in
           size: the model resizes each one.
  npz      an archive with x (uint8 [N, H, W, 3]) and optionally y (class ids [N] or
           multi-hot [N, C]) and class_names.
  arrays   uint8 [N, H, W, 3] given in Python (with a sha256 of their bytes, so a resumed
           build recognises them); their images cannot be read again later.
"""
import hashlib
import os
import zipfile
import zlib

import numpy as np

from nac_tf.errors import cannot_read, read_problem
from nac_tf.settings import ConfigError

SPLITS = ("database", "queries", "train", "test")
SOURCES = ("dataset", "files", "npz", "arrays")
IMAGE_FORMAT = "uint8 [N, H, W, 3]"


def check_images(images, name="images"):
    """`images` as a NumPy array if they are uint8 [N, H, W, 3] with N, H, W > 0, else
    ConfigError naming the parameter."""
    array = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        hint = (" (convert float images in [0, 1] with np.round(x * 255).astype(np.uint8))"
                if np.issubdtype(array.dtype, np.floating) else "")
        raise ConfigError(name, f"must be {IMAGE_FORMAT}; got {array.dtype} "
                          f"{list(array.shape)}{hint}")
    if not len(array):
        raise ConfigError(name, "holds no images (an empty collection)")
    if not (array.shape[1] and array.shape[2]):
        raise ConfigError(name, f"images must have H, W > 0; got {list(array.shape)}")
    return array


def check_labels(labels, count, name="labels"):
    """int64 class ids [count] (>= 0) or multi-hot {0, 1} uint8 [count, C], or None;
    ConfigError naming the parameter otherwise."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    integer = np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    if labels.ndim not in (1, 2) or len(labels) != count or not integer:
        raise ConfigError(name, f"must be integer class ids [{count}] or multi-hot 0/1 "
                          f"[{count}, C], one row per image; got {labels.dtype} "
                          f"{list(labels.shape)}")
    if labels.ndim == 2:
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ConfigError(name, "is multi-hot [N, C], so every value must be 0 or 1")
        return labels.astype(np.uint8)
    if labels.size and labels.min() < 0:
        raise ConfigError(name, f"class ids must be >= 0; found {labels.min()}")
    return labels.astype(np.int64)


def check_paths(paths, count, name="paths"):
    """A list of `count` strings, or None."""
    if paths is None:
        return None
    paths = [str(path) for path in paths]
    if len(paths) != count:
        raise ConfigError(name, f"has {len(paths)} entries for {count} images")
    return paths


def label_text(label, class_names=None):
    """A label row as text: the class's name (or id), or the names of a multi-hot row's
    classes joined by ", "."""
    label = np.asarray(label)
    ids = np.flatnonzero(label) if label.ndim == 1 else [int(label)]
    return ", ".join(class_names[i] if class_names and i < len(class_names) else str(i)
                     for i in ids)


def shares_label(query_label, item_labels):
    """bool [N]: whether each item shares a label with the query (class id equality, or a
    common class of multi-hot rows)."""
    item_labels = np.asarray(item_labels)
    if item_labels.ndim == 1:
        return item_labels == np.asarray(query_label)
    return (item_labels.astype(bool) & np.asarray(query_label, bool)[None, :]).any(axis=1)


class Collection:
    """Images, with optional labels [N] / [N, C], paths and class names, and the
    description that reads them again (`open_collection`)."""

    def __init__(self, description, count, labels=None, paths=None, class_names=None):
        self.description = dict(description, count=int(count))
        self.count = int(count)
        self.labels = check_labels(labels, self.count)
        self.paths = check_paths(paths, self.count)
        self.class_names = None if class_names is None else [str(n) for n in class_names]

    def images(self, start, stop):
        """Images start..stop-1: uint8 [n, H, W, 3], or a list of [H, W, 3] of different
        sizes."""
        raise NotImplementedError

    def images_at(self, ids):
        """The images of the given item ids, a list of uint8 [H, W, 3]."""
        return [self.images(int(i), int(i) + 1)[0] for i in ids]

    def name(self, i, what="item"):
        """Item i's name: its file path relative to the collection's folder (or the file's
        name), else "<what> i"."""
        if self.paths is not None:
            root = self.description.get("path", "")
            return os.path.relpath(self.paths[i], root) if os.path.isdir(root) \
                else os.path.basename(self.paths[i])
        return f"{what} {i}"


class ArrayCollection(Collection):
    """Images held in memory (a dataset split, an npz archive, arrays given in Python)."""

    def __init__(self, description, images, labels=None, paths=None, class_names=None):
        self.array = check_images(images)
        super().__init__(description, len(self.array), labels, paths, class_names)

    def images(self, start, stop):
        return self.array[start:stop]  # a view: a large collection is never copied whole


class FileCollection(Collection):
    """Image files decoded when read (tf.io.decode_image: JPEG, PNG, BMP, GIF)."""

    def __init__(self, description, paths):
        super().__init__(description, len(paths), paths=paths)

    def images(self, start, stop):
        return [decode_image_file(path) for path in self.paths[start:stop]]


def array_collection(images, labels=None, paths=None):
    """Arrays given in Python; their description carries the sha256 of their bytes."""
    images = check_images(images)
    digest = hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()
    return ArrayCollection({"source": "arrays", "shape": list(images.shape),
                            "sha256": digest}, images, labels, paths)


def dataset_collection(dataset, split, data_dir=None, seed=0, image_size=None):
    """A split (`SPLITS`) of a dataset of `nac_tf.data.catalog`. Errors about the data are
    ConfigError("data_dir") (or "dataset"/"split")."""
    from nac_tf.data.catalog import load_arrays_source  # noqa: PLC0415 (imports TensorFlow)
    from nac_tf.evaluation.evaluators import retrieval_sets  # noqa: PLC0415

    if split not in SPLITS:
        raise ConfigError("split", f"{split!r} is not one of: {', '.join(SPLITS)}")
    source = load_arrays_source(dataset, data_dir, image_size, seed)
    query_images, query_labels, database_images, database_labels, _ = retrieval_sets(source)
    images, labels = {
        "train": (source.train_images, source.train_labels),
        "test": (source.test_images, source.test_labels),
        "queries": (query_images, query_labels),
        "database": (database_images, database_labels)}[split]
    description = {"source": "dataset", "dataset": dataset,
                   "data_dir": os.path.abspath(data_dir) if data_dir else None,
                   "split": split, "seed": int(seed),
                   "image_size": int(images.shape[1])}
    return ArrayCollection(description, images, labels, class_names=source.class_names)


def image_files(root):
    """The image files below the folder `root` (recursively), sorted by path."""
    from nac_tf.data.image_folder import IMAGE_EXTENSIONS  # noqa: PLC0415

    found = []
    for folder, folders, names in os.walk(root, onerror=_raise_unreadable):
        folders.sort()
        found.extend(os.path.join(folder, name) for name in names
                     if name.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


def _raise_unreadable(error):
    raise ConfigError("images", cannot_read(error.filename, error))


def path_collection(path):
    """A folder of image files, one image file, or an .npz archive (x, optional y and
    class_names). ConfigError("images") for what cannot be read or holds no image."""
    problem = read_problem(path)
    if problem:
        raise ConfigError("images", problem)
    path = os.path.abspath(path)
    if path.endswith(".npz") and os.path.isfile(path):
        return _npz_collection(path)
    if os.path.isdir(path):
        paths = image_files(path)
        if not paths:
            raise ConfigError("images", f"{path!r} holds no image files (an empty collection)")
    else:
        paths = [path]
    digest = hashlib.sha256("\n".join(os.path.relpath(p, path) for p in paths)
                            .encode()).hexdigest()
    return FileCollection({"source": "files", "path": path, "files_sha256": digest}, paths)


def _npz_collection(path):
    try:
        with np.load(path) as archive:
            if "x" not in archive.files:
                raise ConfigError("images", f"{path!r} has no key x (found: "
                                  f"{', '.join(archive.files) or 'nothing'}); expected x "
                                  f"{IMAGE_FORMAT} and optionally y, class_names")
            images = archive["x"]
            labels = archive["y"] if "y" in archive.files else None
            class_names = archive["class_names"].tolist() if "class_names" in archive.files \
                else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError("images", f"{path!r} is not a readable .npz archive "
                          f"({cannot_read(path, error)})") from None
    try:
        images = check_images(images, "x")
        labels = check_labels(labels, len(images), "y")
    except ConfigError as error:
        raise ConfigError("images", f"{path!r}: key {error.field} {error.reason}") from None
    return ArrayCollection({"source": "npz", "path": path}, images, labels,
                           class_names=class_names)


def decode_image_file(path):
    """uint8 [H, W, 3] of an image file; ConfigError("images") naming a file that cannot be
    read or decoded."""
    import tensorflow as tf  # noqa: PLC0415

    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        raise ConfigError("images", f"cannot decode image {path!r} "
                          f"({error.message.splitlines()[0]})") from None
    return image.numpy()


def open_collection(description, paths=None):
    """The collection a description was made from (`paths`: the items' recorded file
    paths, for files); None for arrays given in Python, which cannot be read again."""
    source = description.get("source")
    if source == "dataset":
        return dataset_collection(description["dataset"], description["split"],
                                  description.get("data_dir"), description.get("seed", 0),
                                  description.get("image_size"))
    if source == "npz":
        return _npz_collection(description["path"])
    if source == "files":
        return FileCollection(description, paths) if paths is not None \
            else path_collection(description["path"])
    return None
