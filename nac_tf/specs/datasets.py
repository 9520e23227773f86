"""One `DatasetSpec` per dataset; the table `DATASET_SPECS`.

Adding a dataset: its loader (`nac_tf.data`) and one record here; its name then appears in
`nac_tf.config.DATASETS`, the accepted values of the dataset setting, the data_dir checks
(`data_dir_problem`) and `nac_tf.data.catalog.load_source`. Importing this module imports no
TensorFlow.
"""
import dataclasses
import os
from typing import Optional, Tuple

from nac_tf import specs
from nac_tf.errors import read_problem

# The arrays of an .npz archive of images (`nac_tf.data.sources.load_npz_source`).
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# What loaders receive from `nac_tf.data.catalog.load_source`: data_dir positionally (as
# the loader's first argument), the others by keyword.
LOADER_ARGUMENTS = ("data_dir", "image_size", "seed", "on_corrupt")
# What data_dir must be when given (see `data_dir_problem`).
DATA_DIR_KINDS = ("npz_file", "directory", "npz_file_or_directory")

# Per-channel (mean, std) of [0, 1] pixels. CIFAR-10: the values of the SimCLR / NAC CIFAR
# code; ImageNet: torchvision's.
CIFAR10_STATISTICS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGENET_STATISTICS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_SOURCE_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What nac_tf knows about dataset `name` before loading it.

    loader: "module:function" returning its `nac_tf.data.sources.ImageSource`, given the
      `loader_arguments` (a subset of LOADER_ARGUMENTS; with "image_size" the loader
      resizes to it, without it the images keep their native size).
    image_size: the training resolution when the image_size setting leaves it open; None:
      the data's own size (npz archives).
    statistics: per-channel (mean, std) of [0, 1] pixels for the input normalisation;
      None: measured on the training images (`nac_tf.data.catalog.dataset_statistics`).
    data_dir_needs: what data_dir must hold, for datasets that cannot do without one.
    data_dir_kind: what a given data_dir must be (one of DATA_DIR_KINDS), None: any
      readable path.
    tfds_source_files: the files TFDS prepares this TFDS dataset from, under the names TFDS
      gives them (tests check them against its builders). When data_dir holds them the
      dataset is prepared from them without a download: CIFAR-10 copied by hand onto a
      machine without internet, ImageNet always (TFDS cannot download it).
    multi_label: labels are multi-hot (no class ids, so no top-1 accuracy).
    streamed: read lazily from TFDS, never held in memory as arrays.
    description: what the dataset is, for the help of the dataset setting.
    data_dir_use: what an optional data_dir may be (datasets without `data_dir_needs`), for
      the help of the data_dir setting.
    """

    name: str
    loader: str
    loader_arguments: Tuple[str, ...]
    image_size: Optional[int]
    statistics: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
    data_dir_needs: Optional[str] = None
    data_dir_kind: Optional[str] = None
    tfds_source_files: Tuple[str, ...] = ()
    multi_label: bool = False
    streamed: bool = False
    description: str = ""
    data_dir_use: Optional[str] = None

    def __post_init__(self):
        unknown = set(self.loader_arguments) - set(LOADER_ARGUMENTS)
        if unknown or self.data_dir_kind not in (None,) + DATA_DIR_KINDS:
            raise ValueError(f"dataset {self.name!r}: loader_arguments must be among "
                             f"{', '.join(LOADER_ARGUMENTS)} and data_dir_kind among "
                             f"{', '.join(DATA_DIR_KINDS)}")

    @property
    def resizes(self):
        """Whether the loader resizes its images to the image_size setting."""
        return "image_size" in self.loader_arguments


DATASET_SPECS = (
    DatasetSpec("digits", "nac_tf.data.sources:load_digits_source", ("image_size", "seed"),
                image_size=16, description="bundled with scikit-learn"),
    DatasetSpec("cifar10", "nac_tf.data.tfds_sources:load_cifar10_source", ("data_dir",),
                image_size=32, statistics=CIFAR10_STATISTICS,
                tfds_source_files=("cifar-10-binary.tar.gz",), description="TFDS",
                data_dir_use="optional TFDS data_dir"),
    DatasetSpec("imagenet2012", "nac_tf.data.tfds_sources:load_imagenet_source",
                ("data_dir", "image_size"), image_size=224, statistics=IMAGENET_STATISTICS,
                data_dir_needs="the TFDS manual directory holding "
                               + " and ".join(IMAGENET_SOURCE_FILES),
                tfds_source_files=IMAGENET_SOURCE_FILES, streamed=True, description="TFDS"),
    DatasetSpec("npz", "nac_tf.data.sources:load_npz_source", ("data_dir",), image_size=None,
                data_dir_needs=f"the path of the .npz archive ({', '.join(NPZ_KEYS)})",
                data_dir_kind="npz_file",
                description=f"an archive with {', '.join(NPZ_KEYS)}"),
    DatasetSpec("image_folder", "nac_tf.data.image_folder:load_image_folder_source",
                ("data_dir", "image_size", "seed", "on_corrupt"), image_size=224,
                data_dir_needs="the root directory of class folders (root/<class>/<image>)",
                data_dir_kind="directory", description="root/<class>/"),
    # Pixels of CIFAR-10, so CIFAR-10's statistics.
    DatasetSpec("cifar10_hashing", "nac_tf.data.tfds_sources:load_cifar10_hashing_source",
                ("data_dir", "seed"), image_size=32, statistics=CIFAR10_STATISTICS,
                data_dir_kind="npz_file_or_directory",
                description="CIFAR-10 retrieval split: trains on 500 images per class, 1000 "
                            "queries per class",
                data_dir_use="optional .npz archive or TFDS data_dir"),
    # Flickr photos at ImageNet resolution; the NAC authors normalise them with
    # torchvision's ImageNet statistics (hash_utils.flickr_train_transform).
    DatasetSpec("flickr25k", "nac_tf.data.flickr25k:load_flickr25k_source",
                ("data_dir", "image_size", "seed", "on_corrupt"), image_size=224,
                statistics=IMAGENET_STATISTICS,
                data_dir_needs="the directory holding mirflickr/ (im1.jpg ... im25000.jpg) "
                               "and mirflickr25k_annotations_v080/ (MIRFLICKR-25000 is not "
                               "in TFDS)",
                data_dir_kind="directory", multi_label=True,
                description="MIRFLICKR-25000 from `data_dir`: trains on 5000 images, 2000 "
                            "queries"),
)
DATASETS = tuple(spec.name for spec in DATASET_SPECS)


def names_where(predicate):
    """The dataset names whose spec satisfies `predicate`, in table order."""
    return specs.names_where(DATASET_SPECS, predicate)


def dataset_spec(name):
    """The DatasetSpec of `name`; ValueError naming the accepted values otherwise."""
    return specs.spec_named(DATASET_SPECS, name,
                            f"dataset={name!r} is not one of: {', '.join(DATASETS)}")


def data_dir_problem(dataset, data_dir):
    """Why `data_dir` cannot serve `dataset` (a known name), in one line, or None. No I/O
    beyond checking that it can be read."""
    spec = dataset_spec(dataset)
    needs = spec.data_dir_needs
    if needs and not data_dir:
        return f"dataset={dataset!r} needs a data_dir: {needs}"
    if not data_dir:
        return None
    problem = read_problem(data_dir)
    if problem:
        return problem
    if spec.data_dir_kind == "npz_file" and not os.path.isfile(data_dir):
        return (f"dataset={dataset!r} needs a .npz file ({needs}); {data_dir!r} is not a "
                "file")
    if spec.data_dir_kind == "directory" and not os.path.isdir(data_dir):
        return f"dataset={dataset!r} needs {needs}; {data_dir!r} is not a directory"
    if spec.data_dir_kind == "npz_file_or_directory" and os.path.isfile(data_dir) \
            and not data_dir.endswith(".npz"):
        return (f"dataset={dataset!r} accepts an .npz archive ({', '.join(NPZ_KEYS)}), a "
                f"TFDS data directory, or nothing; {data_dir!r} is a file that is not .npz")
    return None
