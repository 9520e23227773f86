"""Datasets by name: what the trainer assumes for each (resolution, input statistics) and
`load_source`, which picks its loader (`nac_tf.data.sources`, `nac_tf.data.flickr25k`).

The names are `nac_tf.config.DATASETS`.
"""
import dataclasses
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from nac_tf.config import DATA_DIR_NEEDS, DATASETS
from nac_tf.data import flickr25k, sources


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
    # Pixels of CIFAR-10, so CIFAR-10's statistics.
    "cifar10_hashing": DatasetDefaults(32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # Flickr photos at ImageNet resolution; the NAC authors normalise them with torchvision's
    # ImageNet statistics (hash_utils.flickr_train_transform).
    "flickr25k": DatasetDefaults(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# For sources without arrays and without known statistics: [0, 1] pixels mapped to
# roughly [-2, 2], a neutral choice that keeps the first layer's inputs well scaled.
FALLBACK_MEAN = (0.5, 0.5, 0.5)
FALLBACK_STD = (0.25, 0.25, 0.25)



def load_source(dataset, data_dir=None, image_size=None, seed=0, on_corrupt="skip"):
    """The ImageSource of `dataset` (one of `nac_tf.config.DATASETS`).

    data_dir: npz: the .npz file; image_folder: the root of class folders; imagenet2012:
      the TFDS manual directory with the ImageNet tars (prepared files are written there
      too); cifar10: an optional TFDS data directory; cifar10_hashing: an optional .npz
      archive or TFDS data directory; flickr25k: the directory holding mirflickr/ and
      mirflickr25k_annotations_v080/; digits: unused.
      A TFDS dataset (cifar10, cifar10_hashing, imagenet2012) not prepared in data_dir yet
      is prepared there from its source files (nac_tf.config.TFDS_SOURCE_FILES) when
      data_dir, or TFDS's manual directory data_dir/downloads/manual, holds them:
      cifar-10-binary.tar.gz as downloaded from the CIFAR-10 site (for machines without
      internet), ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; else CIFAR-10 is
      downloaded (or taken from an earlier download in data_dir/downloads). When that cannot
      work, FileNotFoundError (ValueError for a file that is not TFDS's) says so in one line.
    image_size: size to resize to for digits, image_folder, imagenet2012 and flickr25k
      (defaults in DATASET_DEFAULTS); cifar10, cifar10_hashing and npz keep their native
      size.
    seed: the train/test split of digits and image_folder, and the retrieval split of
      cifar10_hashing and flickr25k.
    on_corrupt: image files that cannot be decoded (image_folder, flickr25k): "skip" leaves
      them out and counts them in `source.num_skipped`, "raise" raises ValueError naming
      the file.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not one of: {', '.join(DATASETS)}")
    size = image_size or DATASET_DEFAULTS[dataset].image_size
    if dataset == "digits":
        return sources.load_digits_source(image_size=size, seed=seed)
    if dataset == "cifar10":
        return sources.load_tfds_source(
            "cifar10", data_dir=data_dir or None, manual_dir=data_dir or None,
            instead=f"dataset='npz' with data_dir = {DATA_DIR_NEEDS['npz']}")
    if dataset == "cifar10_hashing":
        if data_dir and _missing(data_dir):
            raise FileNotFoundError(f"data_dir={data_dir!r} does not exist; dataset "
                                    "'cifar10_hashing' takes an optional .npz archive or TFDS "
                                    "data directory")
        return sources.load_cifar10_hashing_source(data_dir or None, seed=seed)
    needs = DATA_DIR_NEEDS[dataset]
    if not data_dir:
        raise ValueError(f"dataset={dataset!r} needs a data_dir: {needs}")
    if _missing(data_dir):
        raise FileNotFoundError(f"data_dir={data_dir!r} does not exist; dataset={dataset!r} "
                                f"needs {needs}")
    if dataset == "npz":
        return sources.load_npz_source(data_dir)
    if dataset == "image_folder":
        return sources.load_image_folder_source(data_dir, image_size=size, seed=seed,
                                        on_corrupt=on_corrupt)
    if dataset == "flickr25k":
        return flickr25k.load_flickr25k_source(data_dir, image_size=size, seed=seed,
                                               on_corrupt=on_corrupt)
    return sources.load_tfds_source("imagenet2012", data_dir=data_dir, manual_dir=data_dir,
                            image_size=size)


def _missing(path):
    """Whether `path` does not exist. A path that cannot be looked up (a parent without
    search permission) is not reported missing: its loader says why it cannot be read."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def dataset_statistics(dataset, source: Optional[sources.ImageSource] = None,
                       chunk_size=4096) -> Tuple[Sequence[float], Sequence[float]]:
    """Per-channel (mean, std) of [0, 1] pixels for the encoder's input normalisation.

    CIFAR-10 and ImageNet use their published values (DATASET_DEFAULTS); other datasets
    are measured on all training images of an array-backed `source`; otherwise
    FALLBACK_MEAN / FALLBACK_STD.
    """
    if dataset not in DATASET_DEFAULTS:
        raise ValueError(f"dataset={dataset!r} is not one of: {', '.join(DATASETS)}")
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
