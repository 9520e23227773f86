"""Images in class folders, root/<class>/<image> (dataset="image_folder"), decoded and
resized in memory into an `nac_tf.data.sources.ArrayImageSource`."""
import os

import numpy as np
import tensorflow as tf

from nac_tf.config import ON_CORRUPT
from nac_tf.data.sources import (
    ArrayImageSource, check_positive_int, check_test_fraction, resize_square)
from nac_tf.data.splits import stratified_split
from nac_tf.errors import read_problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


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
    image_size = check_positive_int("image_size", image_size)
    check_test_fraction(test_fraction)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such directory of class folders: {root}")
    class_names = sorted(entry for entry in list_directory(root)
                         if os.path.isdir(os.path.join(root, entry)))
    if not class_names:
        raise ValueError(f"{root}: no class folders; expected the layout root/<class>/<image>")
    images, labels, skipped = [], [], 0
    for class_id, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        for filename in sorted(list_directory(folder)):
            if not filename.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(folder, filename)
            try:
                image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                           expand_animations=False)
            except tf.errors.OpError as error:  # corrupt, truncated or unreadable
                if on_corrupt == "raise":
                    raise ValueError(f"cannot decode image {path}: {error.message}") from error
                skipped += 1
                continue
            images.append(resize_square(image, image_size).numpy())
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


def list_directory(path):
    """os.listdir, or ValueError naming the folder and why it cannot be read (`read_problem`:
    e.g. no read or search permission)."""
    problem = read_problem(path)
    if problem:
        raise ValueError(problem)
    return os.listdir(path)
