"""Datasets by name: `load_source` calls the loader of the dataset's record in
`nac_tf.specs.datasets` (the names: `nac_tf.config.DATASETS`), and `dataset_statistics`
gives the input statistics the trainer normalises with.
"""
from typing import Optional, Sequence, Tuple

import numpy as np

from nac_tf.data import sources
from nac_tf.specs import resolve
from nac_tf.specs.datasets import dataset_spec

# For sources without arrays and without known statistics: [0, 1] pixels mapped to
# roughly [-2, 2], a neutral choice that keeps the first layer's inputs well scaled.
FALLBACK_MEAN = (0.5, 0.5, 0.5)
FALLBACK_STD = (0.25, 0.25, 0.25)


def load_arrays_source(dataset, data_dir=None, image_size=None, seed=0):
    """`load_source` of a dataset held in memory (not streamed), for the evaluation commands
    and the search collections: errors about the data are ConfigError("data_dir"), a
    streamed dataset ConfigError("dataset"). Falsy data_dir / image_size: the defaults."""
    from nac_tf.settings import ConfigError

    try:
        source = load_source(dataset, data_dir=data_dir or None, image_size=image_size or None,
                             seed=seed)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError("data_dir", f"cannot load dataset {dataset}: {error}") from None
    if not source.has_arrays:
        raise ConfigError("dataset", f"{dataset} is streamed; this needs a dataset held in "
                          "memory")
    return source


def load_source(dataset, data_dir=None, image_size=None, seed=0, on_corrupt="skip"):
    """The ImageSource of `dataset` (one of `nac_tf.config.DATASETS`).

    data_dir: npz: the .npz file; image_folder: the root of class folders; imagenet2012:
      the TFDS manual directory with the ImageNet tars (prepared files are written there
      too); cifar10: an optional TFDS data directory; cifar10_hashing: an optional .npz
      archive or TFDS data directory; flickr25k: the directory holding mirflickr/ and
      mirflickr25k_annotations_v080/; digits: unused.
      A TFDS dataset (cifar10, cifar10_hashing, imagenet2012) not prepared in data_dir yet
      is prepared there from its source files (the `tfds_source_files` of its spec) when
      data_dir, or TFDS's manual directory data_dir/downloads/manual, holds them:
      cifar-10-binary.tar.gz as downloaded from the CIFAR-10 site (for machines without
      internet), ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; else CIFAR-10 is
      downloaded (or taken from an earlier download in data_dir/downloads). When that cannot
      work, FileNotFoundError (ValueError for a file that is not TFDS's) says so in one line.
    image_size: size to resize to for the datasets whose loader resizes (`DatasetSpec.
      resizes`: digits, image_folder, imagenet2012 and flickr25k; default: the spec's
      `image_size`); cifar10, cifar10_hashing and npz keep their native size.
    seed: the train/test split of digits and image_folder, and the retrieval split of
      cifar10_hashing and flickr25k.
    on_corrupt: image files that cannot be decoded (image_folder, flickr25k): "skip" leaves
      them out and counts them in `source.num_skipped`, "raise" raises ValueError naming
      the file.
    """
    spec = dataset_spec(dataset)
    needs = spec.data_dir_needs
    if needs and not data_dir:
        raise ValueError(f"dataset={dataset!r} needs a data_dir: {needs}")
    if needs and sources.path_missing(data_dir):
        raise FileNotFoundError(f"data_dir={data_dir!r} does not exist; dataset={dataset!r} "
                                f"needs {needs}")
    arguments = {"image_size": image_size or spec.image_size, "seed": seed,
                 "on_corrupt": on_corrupt}
    keywords = {name: arguments[name] for name in spec.loader_arguments if name != "data_dir"}
    loader = resolve(spec.loader)
    if "data_dir" in spec.loader_arguments:
        return loader(data_dir or None, **keywords)
    return loader(**keywords)


def dataset_statistics(dataset, source: Optional[sources.ImageSource] = None,
                       chunk_size=4096) -> Tuple[Sequence[float], Sequence[float]]:
    """Per-channel (mean, std) of [0, 1] pixels for the encoder's input normalisation.

    CIFAR-10 and ImageNet use their published values (the `statistics` of the dataset's
    spec); other datasets are measured on all training images of an array-backed `source`;
    otherwise FALLBACK_MEAN / FALLBACK_STD.
    """
    statistics = dataset_spec(dataset).statistics
    if statistics is not None:
        return statistics
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
