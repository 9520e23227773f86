"""A hash index on disk: its file names, the manifest, atomic writes and the state of an
unfinished (resumable) build. No TensorFlow here.

    <directory>/
      index.json             the manifest (`MANIFEST`), written last
      codes-<g>.npy          packed codes uint8 [N, ceil(code_bits / 8)] (np.packbits order)
      labels-<g>.npy         class ids int64 [N] or multi-hot uint8 [N, C], if any
      paths-<g>.json         the items' file paths (null for an item without one), if any
      engine-<g>.faiss       the FAISS index of an hnsw or ivf index (faiss.write_index_binary)
      partial/               an unfinished build: state.json and chunk-<c>.npy, the codes of
                             the images encoded so far, one file per chunk

Every file is written beside its final name and moved into place (os.replace), and the
data files of a save carry a new generation number g, named by the manifest: replacing
index.json is the moment a save takes effect, so a kill at any point leaves the previous
index or the new one, never a mixture. Files of other generations are removed after it.
An item's id is its row in the codes.

The manifest (`FORMAT_VERSION` 1): format, generation, fingerprint (the model's, see
`nac_tf.export.weights_fingerprint`), code_bits, code_bytes, kind, parameters, engine, size,
parts (one description per collection added, with first_id and count: how to read the items'
images again, `nac_tf.search.collections`), model (where the model is: {"saved_model": dir}
or {"model_dir": dir, "checkpoint": prefix}), class_names, files.
"""
import contextlib
import json
import os
import re
import shutil

import numpy as np

from nac_tf.errors import cannot_read, cannot_write
from nac_tf.run_directory import write_json
from nac_tf.settings import ConfigError

FORMAT_VERSION = 1
MANIFEST = "index.json"
PARTIAL_DIR = "partial"
PARTIAL_STATE = "state.json"
DATA_FILES = {"codes": "codes-{}.npy", "labels": "labels-{}.npy", "paths": "paths-{}.json",
              "engine": "engine-{}.faiss"}
_GENERATION_FILE = re.compile(r"^(codes|labels|paths|engine)-(\d+)\.(npy|json|faiss)$")
_CHUNK_FILE = "chunk-{:06d}.npy"
MANIFEST_KEYS = ("format", "generation", "fingerprint", "code_bits", "code_bytes", "kind",
                 "parameters", "engine", "size", "parts", "model", "class_names", "files")


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """A file object whose contents appear at `path` only when the block ends without an
    error (written to a temporary name beside it, then os.replace)."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_array(path, array):
    with atomic_file(path) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _corrupt(directory, what):
    return ConfigError("directory", f"{directory!r} holds a damaged hash index ({what}); "
                       "build it again")


def has_index(directory):
    return os.path.isfile(os.path.join(directory, MANIFEST))


def read_manifest(directory):
    """The manifest of the index in `directory`; ConfigError("directory") when there is
    none or it cannot be used."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise ConfigError("directory", f"{directory!r} is not a directory holding a hash index")
    if not os.path.isfile(path):
        raise ConfigError("directory", f"{directory!r} holds no hash index (no {MANIFEST})")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except OSError as error:
        raise ConfigError("directory", cannot_read(path, error)) from None
    except ValueError as error:
        raise _corrupt(directory, f"{MANIFEST} is not JSON: {error}") from None
    if not isinstance(manifest, dict) or any(key not in manifest for key in MANIFEST_KEYS):
        raise _corrupt(directory, f"{MANIFEST} lacks some of {', '.join(MANIFEST_KEYS)}")
    if manifest["format"] != FORMAT_VERSION:
        raise ConfigError("directory", f"{directory!r} holds an index of format "
                          f"{manifest['format']!r}; this nac_tf reads format {FORMAT_VERSION}")
    return manifest


def data_path(directory, manifest, name):
    """The path of a data file (codes, labels, paths, engine) of the manifest, or None."""
    filename = manifest["files"].get(name)
    return None if filename is None else os.path.join(directory, filename)


def read_data(directory, manifest):
    """(codes uint8 [N, B], labels or None, paths or None), checked against the manifest."""
    size, code_bytes = manifest["size"], manifest["code_bytes"]
    try:
        codes = np.load(data_path(directory, manifest, "codes"), allow_pickle=False)
        labels_path = data_path(directory, manifest, "labels")
        labels = None if labels_path is None else np.load(labels_path, allow_pickle=False)
        paths_path = data_path(directory, manifest, "paths")
        paths = None
        if paths_path is not None:
            with open(paths_path) as f:
                paths = json.load(f)
    except (OSError, ValueError, EOFError) as error:
        raise _corrupt(directory, cannot_read(getattr(error, "filename", None) or directory,
                                              error)) from None
    if codes.dtype != np.uint8 or codes.shape != (size, code_bytes):
        raise _corrupt(directory, f"codes {codes.dtype} {list(codes.shape)}, expected uint8 "
                       f"[{size}, {code_bytes}]")
    if labels is not None and len(labels) != size:
        raise _corrupt(directory, f"{len(labels)} labels for {size} items")
    if paths is not None and (not isinstance(paths, list) or len(paths) != size):
        raise _corrupt(directory, f"the paths do not list {size} items")
    return codes, labels, paths


def save(directory, manifest, codes, labels, paths, write_engine=None):
    """Writes the data files of a new generation, then the manifest (completed with
    generation and files), then removes other generations' files. `write_engine(path)`
    writes the engine's file, if it has one. Returns the manifest."""
    try:
        os.makedirs(directory, exist_ok=True)
        previous = read_manifest(directory)["generation"] if has_index(directory) else 0
    except ConfigError:  # a damaged manifest is replaced
        previous = 0
    generation = previous + 1
    files = {}
    try:
        files["codes"] = DATA_FILES["codes"].format(generation)
        write_array(os.path.join(directory, files["codes"]), codes)
        if labels is not None:
            files["labels"] = DATA_FILES["labels"].format(generation)
            write_array(os.path.join(directory, files["labels"]), labels)
        if paths is not None:
            files["paths"] = DATA_FILES["paths"].format(generation)
            write_json(os.path.join(directory, files["paths"]), list(paths))
        if write_engine is not None:
            files["engine"] = DATA_FILES["engine"].format(generation)
            temporary = os.path.join(directory, files["engine"] + f".tmp-{os.getpid()}")
            try:
                write_engine(temporary)
                os.replace(temporary, os.path.join(directory, files["engine"]))
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)
        manifest = dict(manifest, format=FORMAT_VERSION, generation=generation, files=files)
        write_json(os.path.join(directory, MANIFEST), manifest)
    except (OSError, RuntimeError) as error:  # a full disk; FAISS raises RuntimeError
        raise ConfigError("directory", cannot_write(directory, error)) from None
    for name in os.listdir(directory):
        match = _GENERATION_FILE.match(name)
        if match and int(match.group(2)) != generation:
            os.remove(os.path.join(directory, name))
    return manifest


def remove_finished_partial(directory, description):
    """Removes the partial build of the collection `description` once the index holds it
    (left behind by a kill between the index's save and the partial build's removal)."""
    path = os.path.join(directory, PARTIAL_DIR)
    try:
        with open(os.path.join(path, PARTIAL_STATE)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return
    if isinstance(state, dict) and state.get("collection") == description:
        shutil.rmtree(path, ignore_errors=True)


class PartialBuild:
    """The codes of an unfinished build, saved chunk by chunk in <directory>/partial.

    `state` (a JSON object) says what is being built: the collection, the model's
    fingerprint, the chunk size, the kind... A build finds the state it started with and
    continues from the chunks there; a different state is refused, so chunks of one
    collection are never mixed into another's codes.
    """

    def __init__(self, directory, state):
        self.path = os.path.join(directory, PARTIAL_DIR)
        self.state = state
        state_path = os.path.join(self.path, PARTIAL_STATE)
        if os.path.isfile(state_path):
            try:
                with open(state_path) as f:
                    found = json.load(f)
            except (OSError, ValueError):
                found = None  # a damaged state file: its chunks cannot be trusted
            if found is not None and found != state:
                differs = sorted(key for key in set(state) | set(found)
                                 if state.get(key) != found.get(key))
                raise ConfigError("directory", f"{directory!r} holds an unfinished build of "
                                  f"another collection or with other settings (it differs in "
                                  f"{', '.join(differs)}); repeat that build to finish it, or "
                                  f"delete {self.path!r} to start over")
            if found is None:
                shutil.rmtree(self.path)
        self.resumed = os.path.isdir(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
            write_json(state_path, state)
        except OSError as error:
            raise ConfigError("directory", cannot_write(self.path, error)) from None

    def chunk_path(self, chunk):
        return os.path.join(self.path, _CHUNK_FILE.format(chunk))

    def read(self, chunk, rows, code_bytes):
        """The saved codes of `chunk` (uint8 [rows, code_bytes]), or None if absent or
        damaged."""
        try:
            codes = np.load(self.chunk_path(chunk), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        return codes if codes.dtype == np.uint8 and codes.shape == (rows, code_bytes) \
            else None

    def write(self, chunk, codes):
        try:
            write_array(self.chunk_path(chunk), codes)
        except OSError as error:
            raise ConfigError("directory", cannot_write(self.chunk_path(chunk), error)) \
                from None

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)
