"""FLICKR-25K (MIRFLICKR-25000; Huiskes & Lew, 2008) for the hashing protocol of paper Table 4.

Not in TFDS: `data_dir` is a manual directory in the layout of the two official archives
(mirflickr25k.zip and mirflickr25k_annotations_v080.zip from press.liacs.nl/mirflickr):

    <data_dir>/mirflickr/im1.jpg ... im25000.jpg       (other files there, e.g. doc/, meta/,
                                                        are ignored)
    <data_dir>/mirflickr25k_annotations_v080/animals.txt ... water.txt

Each annotation file lists, one per line, the 1-based numbers n of the images (im<n>.jpg)
showing its concept. The 24 "potential" label files (`FLICKR25K_LABELS`) give the multi-hot
labels [N, 24], columns in that (alphabetical) order, as in the NAC authors' code
(hash_utils.Flickr25K) and HashNet-style list generators. The `*_r1.txt` files ("relevant":
a stricter subset of 14 concepts) and README.txt are ignored.
Assumption: the annotation archive is extracted into a folder named
mirflickr25k_annotations_v080 (if its .txt files landed elsewhere, move them there).

Protocol (docs/protocols.md section 2): images with none of the 24 labels are dropped before
splitting (they can never be relevant to any query). With the v080 annotations 24 581 of the
25 000 images carry a label (the count of public 24-label lists of this dataset); the 20 015
sometimes quoted is the cross-modal subset of images with at least 20 Flickr tags (DCMH,
Jiang & Li 2017), which needs the tag metadata and is not this protocol. The NAC authors'
code kept unlabeled images (all-zero labels) and skipped queries without relevant items in
mAP; `drop_unlabeled=False` reproduces that pool. Then a seeded split: 2 000 queries, the
rest the database, 5 000 pretraining images drawn from the database.

Images are decoded in a parallel tf.data map and resized, whole, to `image_size`² (default
224; bilinear, anti-aliased, aspect ratio not kept), as the other loaders do. The authors'
code instead crops from the original photo (RandomResizedCrop for training; Resize(256) +
CenterCrop(224) for queries and database), so their evaluation views differ slightly.
Memory: 24 581 images at 224² are ≈ 3.7 GB uint8, held once (see `RetrievalArrays`).
"""
import os
import re
import sys
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from nac_tf.config import ON_CORRUPT
from nac_tf.data.image_folder import list_directory
from nac_tf.data.sources import check_positive_int, resize_square, retrieval_source
from nac_tf.data.splits import RetrievalSplit, random_retrieval_split
from nac_tf.errors import cannot_read

FLICKR25K_LABELS = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
    "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
    "structures", "sunset", "transport", "tree", "water",
)
IMAGE_DIR = "mirflickr"
ANNOTATION_DIR = "mirflickr25k_annotations_v080"
NUM_QUERIES = 2000
NUM_TRAIN = 5000
EXPECTED_LAYOUT = (f"expected <data_dir>/{IMAGE_DIR}/im1.jpg ... im25000.jpg and "
                   f"<data_dir>/{ANNOTATION_DIR}/<label>.txt for the 24 labels "
                   f"{', '.join(FLICKR25K_LABELS)}")
_IMAGE_NAME = re.compile(r"im([1-9][0-9]*)\.jpg")
_DECODE_BATCH = 64


def find_images(image_dir):
    """Sorted image numbers n (int64) of the im<n>.jpg files in `image_dir`."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"no image folder {image_dir}; {EXPECTED_LAYOUT}")
    numbers = sorted(int(match.group(1)) for match in map(_IMAGE_NAME.fullmatch,
                                                          list_directory(image_dir)) if match)
    if not numbers:
        raise ValueError(f"{image_dir}: no im<n>.jpg images; {EXPECTED_LAYOUT}")
    return np.asarray(numbers, np.int64)


def read_labels(annotation_dir, image_numbers):
    """Multi-hot int64 labels [len(image_numbers), 24] from the 24 potential label files:
    row i is the image im<image_numbers[i]>.jpg, column j the label FLICKR25K_LABELS[j]."""
    if not os.path.isdir(annotation_dir):
        raise FileNotFoundError(f"no annotation folder {annotation_dir}; {EXPECTED_LAYOUT}")
    list_directory(annotation_dir)  # unreadable: say so, rather than "missing label files"
    missing = [f"{label}.txt" for label in FLICKR25K_LABELS
               if not os.path.isfile(os.path.join(annotation_dir, f"{label}.txt"))]
    if missing:
        raise FileNotFoundError(f"{annotation_dir}: missing label file(s) {', '.join(missing)};"
                                f" {EXPECTED_LAYOUT}")
    image_numbers = np.asarray(image_numbers, np.int64)
    labels = np.zeros((len(image_numbers), len(FLICKR25K_LABELS)), np.int64)
    for column, label in enumerate(FLICKR25K_LABELS):
        path = os.path.join(annotation_dir, f"{label}.txt")
        try:
            with open(path) as f:
                tokens = f.read().split()
        except OSError as error:  # no read permission, ...
            raise ValueError(cannot_read(path, error)) from None
        try:
            numbers = np.asarray([int(token) for token in tokens], np.int64)
        except ValueError as error:
            raise ValueError(f"{path}: expected one image number per line ({error})") from None
        rows = np.searchsorted(image_numbers, numbers)
        unknown = (rows >= len(image_numbers)) | (
            image_numbers[np.minimum(rows, len(image_numbers) - 1)] != numbers)
        if unknown.any():
            n = int(numbers[unknown][0])
            raise ValueError(f"{path} lists image {n}, but there is no {IMAGE_DIR}/im{n}.jpg "
                             f"({int(unknown.sum())} such number(s)); is the image archive "
                             "completely extracted?")
        labels[rows, column] = 1
    return labels


def load_flickr25k_source(root, image_size=224, seed=0, num_queries=NUM_QUERIES,
                          num_train=NUM_TRAIN, on_corrupt="skip", drop_unlabeled=True,
                          log: Optional[Callable[[str], None]] = None):
    """FLICKR-25K from `root` (layout in the module docstring) as a multi-label
    ArrayImageSource: train split = the `num_train` pretraining images, test split = the
    `num_queries` queries, `.retrieval` = queries and database (ids: image numbers n).

    on_corrupt: "skip" leaves out images that cannot be decoded and counts them in
      `num_skipped`; "raise" raises ValueError naming the first such file.
    drop_unlabeled: leave out images without any of the 24 labels (counted in
      `retrieval.num_dropped`) before splitting.
    log: progress messages (default: stderr, only for loads of more than 2 000 images).
    The split is seeded by `seed` and drawn among the images that are kept and readable.
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"`on_corrupt` must be one of {', '.join(ON_CORRUPT)}; received "
                         f"{on_corrupt!r}")
    image_size = check_positive_int("image_size", image_size)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such directory: {root}; {EXPECTED_LAYOUT}")
    image_dir = os.path.join(root, IMAGE_DIR)
    numbers = find_images(image_dir)
    labels = read_labels(os.path.join(root, ANNOTATION_DIR), numbers)
    keep = labels.any(axis=1) if drop_unlabeled else np.ones(len(numbers), bool)
    num_dropped = int(len(numbers) - keep.sum())
    numbers, labels = numbers[keep], labels[keep]
    # Fail before the slow decoding when the split cannot fit even without skipped images.
    random_retrieval_split(len(numbers), num_queries, num_train, seed=seed)
    if log is None and len(numbers) > 2000:
        log = _log_to_stderr
    paths = [os.path.join(image_dir, f"im{n}.jpg") for n in numbers]
    images, readable = _decode_all(paths, image_size, on_corrupt, log)
    rows = np.flatnonzero(readable)
    split = random_retrieval_split(len(rows), num_queries, num_train, seed=seed)
    split = RetrievalSplit(query=rows[split.query], database=rows[split.database],
                           train=rows[split.train])
    return retrieval_source("flickr25k", images, labels, split, pool_ids=numbers,
                            num_classes=len(FLICKR25K_LABELS), class_names=FLICKR25K_LABELS,
                            num_skipped=len(paths) - len(rows), num_dropped=num_dropped)


def _decode_all(paths, image_size, on_corrupt, log):
    """(uint8 [N, S, S, 3] images in `paths` order, bool [N] readable). Decodes in a
    parallel, order-preserving tf.data map; unreadable files are dropped from the stream
    (`ignore_errors`) and show up as gaps in the indices, their rows left unfilled."""
    count = len(paths)
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    readable = np.zeros(count, bool)

    def decode(index, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return index, resize_square(image, image_size)

    dataset = tf.data.Dataset.from_tensor_slices((np.arange(count), paths))
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors().batch(_DECODE_BATCH).prefetch(tf.data.AUTOTUNE)
    next_index, next_report = 0, count // 10
    for indices, batch in dataset.as_numpy_iterator():
        images[indices] = batch
        readable[indices] = True
        next_index = int(indices[-1]) + 1
        if on_corrupt == "raise" and not readable[:next_index].all():
            _raise_for(paths[int(np.argmin(readable[:next_index]))])
        if log is not None and next_index >= next_report:
            log(f"flickr25k: decoded {next_index}/{count} images "
                f"({next_index - int(readable[:next_index].sum())} unreadable so far)")
            next_report = next_index + max(count // 10, 1)
    if on_corrupt == "raise" and not readable.all():
        _raise_for(paths[int(np.argmin(readable))])
    return images, readable


def _raise_for(path):
    """Raises ValueError for an image the pipeline could not decode, with the decoder's
    message (decoded again eagerly: ignore_errors drops the error)."""
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        message = "decoding failed in the input pipeline"
    except tf.errors.OpError as error:  # corrupt, truncated or unreadable
        message = error.message
    raise ValueError(f"cannot decode image {path}: {message}")


def _log_to_stderr(message):
    print(message, file=sys.stderr, flush=True)
