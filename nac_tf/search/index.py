"""`HashIndex`: the binary codes of a collection, searchable by Hamming distance, with the
items' labels and file paths, saved to and loaded from a directory (`index_files`).

    index = HashIndex.build("runs/x/saved_model", images, labels=labels, kind="hnsw")
    result = index.search(images=query_images, k=10)   # SearchResult(ids, distances)
    index.save("runs/x/index"); index = HashIndex.load("runs/x/index")

An index records the fingerprint of the model that made its codes
(`nac_tf.export.weights_fingerprint`) and its code width, and refuses codes of another
model or width. Built into a directory, encoding is resumable: the codes are saved chunk by
chunk as they are made, and the same build started again continues from them
(`index_files.PartialBuild`). Results are sorted by (distance, id); the engines and their
defaults are in `nac_tf.search.engines`.
"""
import dataclasses
import logging
import os
import sys
import time

import numpy as np

from nac_tf.search import engines, index_files
from nac_tf.search.collections import (ArrayCollection, Collection, array_collection,
                                       check_labels, check_paths)
from nac_tf.settings import ConfigError

logger = logging.getLogger(__name__)

# A resumable build saves its codes every CHUNK_BATCHES batches of images.
CHUNK_BATCHES = 16


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The k results of every query, sorted by (distance, id): ids int64 [Q, k] (rows of
    the index) and Hamming distances int32 [Q, k]; -1 / -1 where an approximate index found
    fewer than k items."""
    ids: np.ndarray
    distances: np.ndarray


def resolve_model(model, checkpoint=None):
    """(ExportedModel, location) of `model`: an ExportedModel, an export directory (written
    by nac-export) or a pretraining run directory (its newest intact checkpoint, or
    `checkpoint`). `location` says where to load it again (None for a model in memory)."""
    from nac_tf import run_directory  # noqa: PLC0415
    from nac_tf.export import ExportedModel, load_exported_model  # noqa: PLC0415

    if isinstance(model, ExportedModel):
        return model, ({"saved_model": os.path.abspath(model.export_dir)}
                       if model.export_dir else None)
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError("model", f"must be an ExportedModel, an export directory or a run "
                          f"directory; got {type(model).__name__}")
    path = os.path.abspath(model)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return load_exported_model(path), {"saved_model": path}
    if os.path.isdir(path) and not run_directory.missing_run_files(path):
        _, statistics, method, used = run_directory.restore_run(path, checkpoint)
        return (ExportedModel.from_method(method, statistics),
                {"model_dir": path, "checkpoint": os.path.abspath(used)})
    raise ConfigError("model", f"{str(model)!r} is neither an export (saved_model.pb) nor a "
                      "pretraining run directory")


def load_model(location):
    """The ExportedModel recorded as `location` by `resolve_model`."""
    if not location:
        raise ConfigError("model", "the index records no model (its codes came from Python "
                          "or a model in memory); pass the model")
    return resolve_model(location.get("saved_model") or location["model_dir"],
                         location.get("checkpoint"))[0]


class _Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal, else a line at
    the start and at the end."""

    def __init__(self, total, what):
        self.total, self.what, self.started = total, what, time.time()
        self.terminal = sys.stderr.isatty()
        self.shown = 0.0
        if not self.terminal:
            print(f"{what}: {total} images", file=sys.stderr, flush=True)

    def update(self, done):
        now = time.time()
        if self.terminal and (now - self.shown > 0.1 or done == self.total):
            self.shown = now
            filled = int(30 * done / max(self.total, 1))
            print(f"\r{self.what}: [{'=' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
                  f"images, {now - self.started:.0f} s", end="", file=sys.stderr, flush=True)
        if done == self.total:
            print("" if self.terminal else f"{self.what}: done in {now - self.started:.1f} s",
                  file=sys.stderr, flush=True)


def _hash_codes(model, images, batch_size):
    """Packed codes of images (an array, or a list of images of possibly different sizes:
    each run of equal sizes is one call)."""
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if isinstance(batch, np.ndarray):
            parts.append(model.hash_codes(batch))
            continue
        run = [batch[0]]
        for image in batch[1:] + [None]:
            if image is not None and image.shape == run[0].shape:
                run.append(image)
                continue
            parts.append(model.hash_codes(np.stack(run)))
            run = [image]
    return np.concatenate(parts)


def encode(model, collection, batch_size=256, directory=None, state=None, progress=False):
    """Packed codes uint8 [N, B] of `collection` by `model` (an ExportedModel), in batches
    of `batch_size`. With `directory`, saved chunk by chunk in its partial build (`state`
    identifying it), so a build started again continues where this one stopped."""
    batch_size = _positive("batch_size", batch_size)
    code_bytes = -(-int(model.metadata["code_dim"]) // 8)
    chunk = batch_size * CHUNK_BATCHES
    partial = None
    if directory is not None:
        partial = index_files.PartialBuild(directory, dict(state or {}, chunk_size=chunk,
                                                           collection=collection.description))
    bar = _Progress(collection.count, "Encoding") if progress else None
    parts, reused = [], 0
    for number, start in enumerate(range(0, collection.count, chunk)):
        stop = min(start + chunk, collection.count)
        codes = partial.read(number, stop - start, code_bytes) if partial else None
        if codes is None:
            codes = _hash_codes(model, collection.images(start, stop), batch_size)
            if partial is not None:
                partial.write(number, codes)
        else:
            reused += stop - start
        parts.append(codes)
        if bar is not None:
            bar.update(stop)
    if reused:
        logger.info("Continued an interrupted build: %d of %d images were encoded already",
                    reused, collection.count)
    return np.concatenate(parts), partial


def _positive(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise ConfigError(name, f"{value!r} must be a positive integer")
    return int(value)


def _as_collection(images, labels, paths):
    if isinstance(images, Collection):
        if labels is not None or paths is not None:
            raise ConfigError("labels", "a Collection carries its own labels and paths")
        return images
    if images is None:
        raise ConfigError("images", "are required: uint8 [N, H, W, 3] or a "
                          "nac_tf.search.collections.Collection")
    return array_collection(images, labels, paths)


class HashIndex:
    """Packed binary codes [N, ceil(code_bits / 8)] with a search engine, labels, paths and
    the fingerprint of the model that made them. Build with `build` (from images) or
    `from_codes`; `search`, `add` / `add_codes`, `save` / `load`."""

    def __init__(self, codes, code_bits, kind, parameters, engine, fingerprint=None,
                 labels=None, paths=None, class_names=None, parts=(), model_location=None):
        self._codes, self.code_bits, self.kind = codes, int(code_bits), kind
        self.parameters, self._engine, self.fingerprint = dict(parameters), engine, fingerprint
        self._labels, self._paths, self.class_names = labels, paths, class_names
        self.parts, self.model_location = [dict(part) for part in parts], model_location
        self._model = None

    # ------------------------------------------------------------------------ making one
    @classmethod
    def from_codes(cls, packed, code_bits, labels=None, paths=None, kind="flat", params=None,
                   fingerprint=None, engine=None, description=None, class_names=None):
        """An index of packed codes uint8 [N, ceil(code_bits / 8)] (np.packbits order, as the
        export's hash_codes). `params`: the kind's parameters (missing or 0: the defaults
        for N, `engines.default_parameters`); `engine`: "faiss" or "nac_tf" (flat only),
        None for FAISS where installed. `fingerprint`: the model's, if known."""
        code_bits = _positive("code_bits", code_bits)
        packed = _check_codes(packed, code_bits, "packed")
        kind = engines.check_kind(kind)
        parameters = engines.resolve_parameters(kind, len(packed), params)
        index = cls(np.zeros((0, packed.shape[1]), np.uint8), code_bits, kind, parameters,
                    engines.make_engine(kind, packed.shape[1], parameters, engine),
                    fingerprint, class_names=class_names)
        index.add_codes(packed, labels, paths, fingerprint, description)
        return index

    @classmethod
    def build(cls, model, images=None, labels=None, paths=None, kind="flat", params=None,
              batch_size=256, directory=None, progress=False, checkpoint=None, engine=None):
        """The index of `images` (uint8 [N, H, W, 3], or a `collections.Collection`) encoded
        by `model` (an ExportedModel, an export directory or a run directory).

        With `directory` the build is resumable and the index is saved there; if it holds
        the finished index of this same build, that index is loaded (nothing to do)."""
        collection = _as_collection(images, labels, paths)
        kind = engines.check_kind(kind)
        parameters = engines.resolve_parameters(kind, collection.count, params)
        engine = engine or engines.default_engine(kind)  # no FAISS: refused before encoding
        exported, location = resolve_model(model, checkpoint)
        fingerprint = fingerprint_of(exported)
        state = {"fingerprint": fingerprint, "kind": kind, "parameters": parameters}
        if directory is not None and index_files.has_index(directory):
            existing = cls.load(directory)
            if existing.parts == [dict(collection.description, first_id=0)] and all(
                    state[key] == getattr(existing, key) for key in state):
                logger.info("The index in %s is complete (%d items): nothing to do",
                            directory, existing.size)
                index_files.remove_finished_partial(directory, collection.description)
                return existing
            raise ConfigError("directory", f"{directory!r} holds a finished index of another "
                              "collection or with other settings; load it and add to it, or "
                              "choose another directory")
        codes, partial = encode(exported, collection, batch_size, directory, state, progress)
        index = cls.from_codes(codes, exported.metadata["code_dim"], collection.labels,
                               collection.paths, kind, parameters, fingerprint,
                               engine, collection.description, collection.class_names)
        index.model_location, index._model = location, exported
        if directory is not None:
            index.save(directory)
            partial.remove()
        return index

    def add_codes(self, packed, labels=None, paths=None, fingerprint=None, description=None):
        """Adds packed codes (ids continue from `size`). Refuses another width, or codes of
        another model when both fingerprints are known; labels must come for every item or
        for none."""
        packed = _check_codes(packed, self.code_bits, "packed")
        if fingerprint is not None and self.fingerprint is not None \
                and fingerprint != self.fingerprint:
            raise ConfigError("fingerprint", _another_model(fingerprint, self.fingerprint))
        labels = check_labels(labels, len(packed))
        paths = check_paths(paths, len(packed))
        if self.size and (labels is None) != (self._labels is None):
            raise ConfigError("labels", "the index's items have labels, the new ones must too"
                              if labels is None else "the index's items have no labels")
        if self.size and labels is not None and labels.shape[1:] != self._labels.shape[1:]:
            raise ConfigError("labels", f"have shape {list(labels.shape[1:])} per item; the "
                              f"index's have {list(self._labels.shape[1:])}")
        if paths is not None or self._paths is not None:
            paths = (self._paths or [None] * self.size) + (paths or [None] * len(packed))
        self._engine.add(packed)
        first = self.size
        self._codes = np.concatenate([self._codes, packed])
        self._labels = labels if first == 0 else (
            None if labels is None else np.concatenate([self._labels, labels]))
        self._paths = paths
        self.parts.append(dict(description or {"source": "codes"}, first_id=first,
                               count=len(packed)))
        return self

    def add(self, images, labels=None, paths=None, model=None, batch_size=256,
            progress=False, directory=None):
        """Encodes `images` (uint8 [N, H, W, 3] or a Collection) with `model` (default: the
        index's own) and adds their codes. With `directory` (where the index is saved),
        the encoding is resumable and the index is saved there at the end."""
        collection = _as_collection(images, labels, paths)
        exported = self._checked_model(model)
        state = {"fingerprint": self.fingerprint, "append_to": self.size,
                 "kind": self.kind, "parameters": self.parameters}
        codes, partial = encode(exported, collection, batch_size, directory, state, progress)
        self.add_codes(codes, collection.labels, collection.paths, None,
                       collection.description)
        if directory is not None:
            self.save(directory)
            partial.remove()
        return self

    # ------------------------------------------------------------------------- searching
    def search(self, images=None, codes=None, k=10, model=None, batch_size=256,
               num_threads=None, **search_params):
        """The k nearest items of every query by Hamming distance, as a SearchResult.

        Queries are `images` (uint8 [Q, H, W, 3], encoded by `model`, default the index's
        own, whose fingerprint must match) or packed `codes` uint8 [Q, ceil(code_bits / 8)].
        `search_params`: ef_search (hnsw), nprobe (ivf) for this search."""
        if (images is None) == (codes is None):
            raise ConfigError("images", "give the queries as images or as codes (exactly one)")
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError("k", f"{k!r} must be a positive integer")
        if k > self.size:
            raise ConfigError("k", f"{k} is larger than the index's {self.size} items")
        overrides = engines.search_parameters(self.kind, self.parameters, search_params)
        if codes is None:
            codes = self.encode(images, model, batch_size)
        codes = _check_codes(codes, self.code_bits, "codes")
        ids, distances = engines.search_engine(self._engine, codes, int(k), overrides,
                                               num_threads)
        return SearchResult(ids, distances)

    def encode(self, images, model=None, batch_size=256, progress=False):
        """Packed codes of `images` (uint8 [N, H, W, 3] or a Collection) by `model`
        (default: the index's own; its fingerprint must be the index's)."""
        collection = images if isinstance(images, Collection) \
            else ArrayCollection({"source": "queries"}, images)
        return encode(self._checked_model(model), collection, batch_size,
                      progress=progress)[0]

    def model(self):
        """The ExportedModel that made the codes (loaded from its recorded location)."""
        return self._checked_model(None)

    def _checked_model(self, model):
        """`model` (default: the index's own, loaded once), refused unless its fingerprint
        is the index's."""
        if model is None and self._model is not None:
            return self._model
        exported = load_model(self.model_location) if model is None \
            else resolve_model(model)[0]
        fingerprint = fingerprint_of(exported)
        if self.fingerprint is not None and fingerprint != self.fingerprint:
            raise ConfigError("model", _another_model(fingerprint, self.fingerprint))
        if model is None:
            self._model = exported
        return exported

    # ------------------------------------------------------------------------ properties
    @property
    def size(self):
        return len(self._codes)

    @property
    def codes(self):
        """Packed codes uint8 [N, ceil(code_bits / 8)] (read-only view)."""
        view = self._codes.view()
        view.setflags(write=False)
        return view

    @property
    def labels(self):
        return self._labels

    @property
    def paths(self):
        return self._paths

    @property
    def engine(self):
        """"faiss" or "nac_tf" (the own exact kernel)."""
        return self._engine.name

    def memory_bytes(self):
        """The engine's size in bytes (FAISS: its serialized index)."""
        return self._engine.memory_bytes()

    # -------------------------------------------------------------------------- on disk
    def save(self, directory):
        """Writes the index into `directory` (`index_files`: atomically, a new generation
        of files replacing the previous one). Returns the directory."""
        manifest = {"fingerprint": self.fingerprint, "code_bits": self.code_bits,
                    "code_bytes": self._codes.shape[1], "kind": self.kind,
                    "parameters": self.parameters, "engine": self.engine, "size": self.size,
                    "parts": self.parts, "model": self.model_location,
                    "class_names": self.class_names}
        write_engine = None if self.kind in engines.EXACT_KINDS else self._engine.write
        index_files.save(directory, manifest, self._codes, self._labels, self._paths,
                         write_engine)
        return directory

    @classmethod
    def load(cls, directory):
        """The index saved in `directory`. A flat index's engine is rebuilt from its codes
        (FAISS where installed, else nac_tf's kernel); hnsw and ivf read their FAISS file."""
        manifest = index_files.read_manifest(directory)
        codes, labels, paths = index_files.read_data(directory, manifest)
        kind, parameters = manifest["kind"], manifest["parameters"]
        if kind in engines.EXACT_KINDS:
            engine = engines.make_engine(kind, codes.shape[1], parameters)
            engine.add(codes)
        else:
            engine = engines.FaissEngine.read(
                kind, codes.shape[1], parameters,
                index_files.data_path(directory, manifest, "engine"))
            if engine.size != len(codes):
                raise ConfigError("directory", f"{directory!r} holds a damaged hash index "
                                  f"(its engine holds {engine.size} items, its codes "
                                  f"{len(codes)}); build it again")
        return cls(codes, manifest["code_bits"], kind, parameters, engine,
                   manifest["fingerprint"], labels, paths, manifest["class_names"],
                   manifest["parts"], manifest["model"])

    def __repr__(self):
        return (f"HashIndex({self.size} items, {self.code_bits}-bit codes, {self.kind} "
                f"{self.parameters}, engine {self.engine})")


def fingerprint_of(model):
    """The fingerprint of an ExportedModel; ConfigError("model") for an export without
    one."""
    try:
        return model.fingerprint
    except ValueError as error:
        raise ConfigError("model", str(error)) from None


def _another_model(fingerprint, expected):
    return (f"codes of another model (fingerprint {fingerprint[:12]}...); the index holds "
            f"codes of the model with fingerprint {expected[:12]}...")


def _check_codes(codes, code_bits, name):
    """Packed codes uint8 [N, ceil(code_bits / 8)], N > 0; ConfigError naming `name`."""
    code_bytes = -(-code_bits // 8)
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ConfigError(name, f"must be packed codes uint8 [N, {code_bytes}] (np.packbits "
                          f"order, as the export's hash_codes); got {codes.dtype} "
                          f"{list(codes.shape)}")
    if codes.shape[1] != code_bytes:
        raise ConfigError(name, f"have {codes.shape[1]} bytes per code; this index holds "
                          f"{code_bits}-bit codes ({code_bytes} bytes per code)")
    if not len(codes):
        raise ConfigError(name, "hold no codes (an empty collection)")
    return np.ascontiguousarray(codes)
