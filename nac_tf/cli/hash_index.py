"""nac-hash-index: builds a hash index of a collection's codes on disk (docs/search.md).

    nac-hash-index --index_dir=DIR (--saved_model=DIR | --model_dir=RUN [--checkpoint=...])
        (--dataset=NAME [--data_dir=...] [--split=database] [--seed=0] [--image_size=0]
         | --images=PATH)
        [--index=flat|hnsw|ivf] [--m=0 --ef_construction=0 --ef_search=0 | --nlist=0
         --nprobe=0] [--batch_size=256] [--append]
    python -m nac_tf.cli.hash_index ...

--images is a folder of image files (every file below it, recursively), one image file, or
an .npz archive with x (uint8 [N, H, W, 3]) and optionally y (labels) and class_names.
--split: database and queries are the dataset's retrieval protocol's sets, train and test
its plain splits. Kind parameters at 0 take the default for the collection's size.

The codes are encoded in batches with a progress bar and saved as they are made: a killed
build continues from them when the same command runs again. The same command on a finished
index does nothing; another collection is added to it with --append. Flags are checked
before TensorFlow is imported; a bad flag or input (an index of another model, an empty
collection, an unreadable image) exits with code 2 and one line `error: --flag: ...`.
"""
import logging
import os

from absl import flags

from nac_tf import run_directory
from nac_tf.cli import checks, common
from nac_tf.config import DATASETS, ConfigError
from nac_tf.errors import read_problem, write_problem
from nac_tf.search import engines, index_files
from nac_tf.search.collections import SPLITS

MODEL_FLAGS = ("saved_model", "model_dir")


def define_model_flags(flag_values, purpose):
    flags.DEFINE_string("saved_model", "", f"Export written by nac-export{purpose}.",
                        flag_values=flag_values)
    flags.DEFINE_string("model_dir", "", f"Pretraining run directory{purpose}.",
                        flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "", "With --model_dir: the checkpoint prefix (default: "
                        "the newest intact one).", flag_values=flag_values)


def define_collection_flags(flag_values, default_split, what):
    flags.DEFINE_string("dataset", "", f"{what} from a dataset: one of {', '.join(DATASETS)} "
                        f"(not {', '.join(checks.STREAMED_DATASETS)}).", flag_values=flag_values)
    flags.DEFINE_string("data_dir", "", "Where the dataset is (nac_tf.data.catalog."
                        "load_source); unused for digits.", flag_values=flag_values)
    flags.DEFINE_enum("split", default_split, list(SPLITS), "The dataset's images: the "
                      "retrieval protocol's database or queries, or the train or test split.",
                      flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the dataset's split.", flag_values=flag_values)
    flags.DEFINE_integer("image_size", 0, "Size the resizing datasets load images at; 0: the "
                         "model's training size.", flag_values=flag_values)
    flags.DEFINE_string("images", "", f"{what} from files: a folder of image files "
                        "(recursive), one image file, or an .npz with x (uint8 [N, H, W, 3]) "
                        "and optionally y.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 256, "Images per call of the model.",
                         flag_values=flag_values)


def define_flags(flag_values=flags.FLAGS):
    flags.DEFINE_string("index_dir", "", "Directory of the index (created; an unfinished "
                        "build there is continued).", flag_values=flag_values)
    define_model_flags(flag_values, " that encodes the images")
    define_collection_flags(flag_values, "database", "The images to index")
    flags.DEFINE_enum("index", "flat", list(engines.KINDS), "Kind of index: flat (exact), "
                      "hnsw or ivf (approximate, need FAISS).", flag_values=flag_values)
    for parameter in engines.PARAMETERS:
        flags.DEFINE_integer(parameter.name, 0, f"{parameter.help} 0: the default for the "
                             "collection's size (docs/search.md).", flag_values=flag_values)
    flags.DEFINE_bool("append", False, "Add the collection to the finished index in "
                      "--index_dir.", flag_values=flag_values)


def check_model_flags(values, required):
    """{"model": path or None, "checkpoint", "flag": the model's flag, "fingerprint": known
    before TensorFlow (an export's metadata) or None}; ConfigError naming the flag."""
    given = [name for name in MODEL_FLAGS if getattr(values, name)]
    if len(given) > 1:
        raise ConfigError(given[1], "give --saved_model or --model_dir, not both")
    if values.checkpoint and given != ["model_dir"]:
        raise ConfigError("checkpoint", "applies with --model_dir only")
    if not given:
        if required:
            raise ConfigError("saved_model", "is required (or --model_dir): the model that "
                              "encodes the images")
        return {"model": None, "checkpoint": None, "flag": "saved_model", "fingerprint": None}
    if given == ["saved_model"]:
        metadata = checks.check_saved_model(values.saved_model)
        if "weights_sha256" not in metadata:
            raise ConfigError("saved_model", f"{values.saved_model!r} was exported by an older "
                              "nac_tf without the model's fingerprint; export the run again")
        return {"model": os.path.abspath(values.saved_model), "checkpoint": None,
                "flag": "saved_model", "fingerprint": metadata["weights_sha256"]}
    model_dir = values.model_dir
    if not os.path.isdir(model_dir) or run_directory.missing_run_files(model_dir):
        raise ConfigError("model_dir", f"{model_dir!r} is not a pretraining run directory")
    if values.checkpoint and not os.path.isfile(values.checkpoint + ".index"):
        raise ConfigError("checkpoint", f"{values.checkpoint!r} is not a checkpoint prefix")
    if not values.checkpoint and run_directory.latest_checkpoint(model_dir) is None:
        raise ConfigError("model_dir", f"{model_dir!r} has no checkpoint")
    return {"model": os.path.abspath(model_dir), "checkpoint": values.checkpoint or None,
            "flag": "model_dir", "fingerprint": None}


def check_collection_flags(values, alternatives=()):
    """{"dataset" ...} or {"images": path}, checked; `alternatives`: other flags that may
    give the collection instead (--codes)."""
    given = [name for name in ("dataset", "images", *alternatives) if getattr(values, name)]
    accepted = " or ".join(f"--{name}" for name in ("dataset", "images", *alternatives))
    if len(given) != 1:
        raise ConfigError("images", f"give exactly one of {accepted}")
    checks.check_int("batch_size", values.batch_size, 1)
    checks.check_int("image_size", values.image_size, 0)
    if given == ["dataset"]:
        checks.check_dataset(values.dataset, values.data_dir)
        return {"dataset": values.dataset, "data_dir": values.data_dir or None,
                "split": values.split, "seed": values.seed, "image_size": values.image_size}
    if given == ["images"]:
        problem = read_problem(values.images)
        if problem:
            raise ConfigError("images", problem)
        return {"images": values.images}
    return {given[0]: getattr(values, given[0])}


def open_collection(settings, model_image_size):
    """The Collection of `check_collection_flags`' settings (after TensorFlow)."""
    from nac_tf.search import collections  # noqa: PLC0415

    if "images" in settings:
        return collections.path_collection(settings["images"])
    return collections.dataset_collection(
        settings["dataset"], settings["split"], settings["data_dir"], settings["seed"],
        settings["image_size"] or model_image_size)


def quiet_faiss_loader():
    """FAISS's loader logs at INFO which of its builds it loads: shown with --verbosity
    only, as TensorFlow's own INFO lines."""
    if not flags.FLAGS["verbosity"].present:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def flag_error(error, renamed):
    """A library ConfigError in the command's words: its parameter becomes the flag
    (`renamed`: {parameter: flag} where they differ)."""
    if isinstance(error, ConfigError) and error.field in renamed:
        return ConfigError(renamed[error.field], error.reason)
    return error


def validate_flags(values=flags.FLAGS):
    """The settings of the command line `values` (absl FlagValues); ConfigError naming the
    first unusable flag. An index already in --index_dir is checked against them."""
    if not values.index_dir:
        raise ConfigError("index_dir", "is required: the directory of the index")
    problem = write_problem(os.path.join(values.index_dir, index_files.MANIFEST))
    if problem:
        raise ConfigError("index_dir", problem)
    model = check_model_flags(values, required=not values.append)
    collection = check_collection_flags(values)
    engines.default_engine(values.index)  # an approximate kind without FAISS: refused now
    params = {}
    for parameter in engines.PARAMETERS:
        value = checks.check_int(parameter.name, getattr(values, parameter.name), 0,
                                 " (0: the default)")
        if value:
            if parameter.kind != values.index:
                raise ConfigError(parameter.name, f"applies to {parameter.kind} indexes; "
                                  f"--index is {values.index}")
            params[parameter.name] = value
    try:
        manifest = index_files.read_manifest(values.index_dir) \
            if index_files.has_index(values.index_dir) else None
    except ConfigError as error:
        raise flag_error(error, {"directory": "index_dir"}) from None
    if manifest is not None:
        if values["index"].present and values.index != manifest["kind"]:
            raise ConfigError("index", f"{values.index_dir!r} holds a {manifest['kind']} index; "
                              "choose another --index_dir for a new one")
        for name, value in params.items():
            if manifest["parameters"].get(name) != value:
                raise ConfigError(name, f"the index in {values.index_dir!r} was built with "
                                  f"{name}={manifest['parameters'].get(name)}")
        if model["fingerprint"] not in (None, manifest["fingerprint"]):
            raise ConfigError(model["flag"], f"the index in {values.index_dir!r} holds codes "
                              "of another model (its fingerprint differs); use the model that "
                              "built it, or another --index_dir")
    elif values.append:
        raise ConfigError("append", f"{values.index_dir!r} holds no finished index to add to")
    return {"index_dir": values.index_dir, "model": model, "collection": collection,
            "kind": values.index, "params": params, "batch_size": values.batch_size,
            "append": values.append, "manifest": manifest}


def model_image_size(location):
    """The training image size of the model at `location` ({"saved_model": dir} or
    {"model_dir": dir, ...}), read from its files (no TensorFlow)."""
    if location.get("saved_model"):
        return checks.check_saved_model(location["saved_model"])["image_size"]
    return run_directory.read_run_config(location["model_dir"])[1]["image_size"]


def build(settings):
    """Builds, continues or extends the index; prints what it did."""
    from nac_tf.search import HashIndex  # noqa: PLC0415
    from nac_tf.search.index import resolve_model  # noqa: PLC0415

    directory, model = settings["index_dir"], settings["model"]
    manifest = settings["manifest"]
    location = {model["flag"]: model["model"]} if model["model"] else manifest["model"]
    if not location:
        raise ConfigError("saved_model", f"the index in {directory!r} records no model; "
                          "pass the one that made its codes")
    collection = open_collection(settings["collection"], model_image_size(location))
    if manifest is None:
        index = HashIndex.build(model["model"], collection, kind=settings["kind"],
                                params=settings["params"], batch_size=settings["batch_size"],
                                directory=directory, progress=True,
                                checkpoint=model["checkpoint"])
        print(f"Indexed {collection.count} images in {directory}: {index}")
        return
    index = HashIndex.load(directory)
    # An export's fingerprint was checked before TensorFlow; a run directory's is known
    # once its networks are restored (HashIndex.add checks it).
    override = None
    if model["model"] and model["fingerprint"] is None:
        override = resolve_model(model["model"], model["checkpoint"])[0]
    if override is not None and override.fingerprint != index.fingerprint:
        raise ConfigError("model", f"the index in {directory!r} holds codes of another model "
                          "(its fingerprint differs); use the model that built it, or "
                          "another --index_dir")
    described = [{k: v for k, v in part.items() if k != "first_id"} for part in index.parts]
    if collection.description in described:
        index_files.remove_finished_partial(directory, collection.description)
        print(f"Nothing to do: the index in {directory} already holds these "
              f"{collection.count} images ({index.size} items in all)")
        return
    if not settings["append"]:
        raise ConfigError("append", f"{directory!r} holds a finished index of another "
                          "collection; pass --append to add this one to it, or choose "
                          "another --index_dir")
    if override is None and model["model"]:
        override = resolve_model(model["model"])[0]
    index.add(collection, model=override, batch_size=settings["batch_size"], progress=True,
              directory=directory)
    print(f"Added {collection.count} images to the index in {directory}: {index}")


def execute(values=flags.FLAGS):
    """The command on parsed flags `values`: check them, import TensorFlow, build. Errors
    are ConfigErrors naming the flag."""
    renamed = {"directory": "index_dir", "kind": "index"}
    try:
        settings = validate_flags(values)
        collection_flag = next(iter(settings["collection"]))
        renamed.update(model=settings["model"]["flag"], images=collection_flag,
                       labels=collection_flag)
        common.import_tensorflow()
        build(settings)
    except ConfigError as error:
        raise flag_error(error, renamed) from None


def command_main(execute_command):
    """The absl main of a search command (this one, nac-hash-search) that runs
    `execute_command()`: a ConfigError becomes one `error: --flag: ...` line, exit 2."""
    def main(argv):
        common.reject_arguments(argv)
        quiet_faiss_loader()
        try:
            execute_command()
        except ConfigError as error:
            common.exit_with_flag_error(error)
    return main


main = command_main(execute)


def run(argv=None):
    """The `nac-hash-index` console script."""
    common.run(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
    run()
