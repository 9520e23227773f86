"""The search engines of a hash index: the kinds `flat` (exact), `hnsw` and `ivf`
(approximate), their parameters and the defaults chosen from the collection's size.

FAISS (`nac_tf[faiss]`) runs every kind: `IndexBinaryFlat`, `IndexBinaryHNSW`,
`IndexBinaryIVF`. Without FAISS, `flat` runs on nac_tf's own exact top-k kernel
(`hamming_kernels.top_k_hamming`, compiled by Numba; NumPy where Numba is absent too), with
the same results; `hnsw` and `ivf` need FAISS.

Results are always sorted by (distance, id): an exact engine returns the k items a stable
sort of the Hamming distances puts first (ties in id order); an approximate engine may
miss some, and when it finds fewer than k items the missing ones are id -1, distance -1,
last. Codes are packed bytes (`np.packbits` order) and every engine scans all
8 * bytes bits; padding bits are 0 in every code, so they never change a distance.

Default parameters for a collection of N codes (`default_parameters`; 0 or None asks for
them):
  hnsw: m = 16 neighbours per node below 100 000 codes, 32 from there; ef_construction =
        8 m; ef_search = 16 ceil(log2 N), within [64, 512]. A search uses
        max(ef_search, k).
  ivf:  nlist = round(sqrt N) lists, at most N // 39 so that k-means trains on at least 39
        codes per list (FAISS's own minimum), at least 1; nprobe = ceil(nlist / 8) lists
        visited per query.
"""
import dataclasses
import math

import numpy as np

from nac_tf.evaluation.retrieval.distances import FAISS_INSTALL_HINT, Distances
from nac_tf.evaluation.retrieval.inputs import as_words
from nac_tf.evaluation.retrieval.scan import default_threads
from nac_tf.settings import ConfigError

KINDS = ("flat", "hnsw", "ivf")
EXACT_KINDS = ("flat",)
# The engine that runs an index: FAISS, or nac_tf's own exact kernel (flat only).
FAISS, OWN = "faiss", "nac_tf"
ENGINES = (FAISS, OWN)
MISSING = -1  # id and distance of a result an approximate engine did not find
# FAISS's k-means wants at least this many training codes per list.
IVF_MIN_CODES_PER_LIST = 39
HNSW_LARGE = 100_000


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A parameter of one kind of index: its name (also the command line's flag), what it
    sets, and whether a search may override it."""
    name: str
    kind: str
    help: str
    search_time: bool = False


PARAMETERS = (
    Parameter("m", "hnsw", "HNSW: neighbours per node of the graph."),
    Parameter("ef_construction", "hnsw", "HNSW: candidates kept while building the graph."),
    Parameter("ef_search", "hnsw", "HNSW: candidates kept while searching (at least k).",
              search_time=True),
    Parameter("nlist", "ivf", "IVF: number of lists (k-means centroids)."),
    Parameter("nprobe", "ivf", "IVF: lists visited per query.", search_time=True),
)
PARAMETER_NAMES = tuple(parameter.name for parameter in PARAMETERS)
SEARCH_PARAMETER_NAMES = tuple(p.name for p in PARAMETERS if p.search_time)


def kind_parameters(kind):
    """The names of `kind`'s parameters."""
    return tuple(parameter.name for parameter in PARAMETERS if parameter.kind == kind)


def check_kind(kind):
    if kind not in KINDS:
        raise ConfigError("kind", f"{kind!r} is not one of: {', '.join(KINDS)}")
    return kind


def default_parameters(kind, size):
    """The parameters of `kind` for a collection of `size` codes (the rule of the module's
    docstring)."""
    check_kind(kind)
    size = max(int(size), 1)
    if kind == "hnsw":
        m = 16 if size < HNSW_LARGE else 32
        ef_search = int(np.clip(16 * math.ceil(math.log2(max(size, 2))), 64, 512))
        return {"m": m, "ef_construction": 8 * m, "ef_search": ef_search}
    if kind == "ivf":
        nlist = max(1, min(round(math.sqrt(size)), size // IVF_MIN_CODES_PER_LIST))
        return {"nlist": nlist, "nprobe": math.ceil(nlist / 8)}
    return {}


def _positive(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 0:
        raise ConfigError(name, f"{value!r} must be a positive integer (0: the default for "
                          "the collection's size)")
    return int(value)


def _check_names(kind, names, accepted):
    for name in names:
        if name not in PARAMETER_NAMES:
            raise ConfigError(name, f"is not a parameter of any index kind (parameters: "
                              f"{', '.join(PARAMETER_NAMES)})")
        if name not in accepted:
            owner = next(p.kind for p in PARAMETERS if p.name == name)
            raise ConfigError(name, f"applies to {owner} indexes; this index is {kind}")


def resolve_parameters(kind, size, params=None):
    """`kind`'s parameters for `size` codes: the given ones (a dict; None or 0 for a value
    means the default), the defaults for the rest. ConfigError naming a parameter that is
    unknown, of another kind, or out of range (nlist > size)."""
    check_kind(kind)
    params = dict(params or {})
    _check_names(kind, params, kind_parameters(kind))
    resolved = default_parameters(kind, size)
    for name, value in params.items():
        if value is not None and _positive(name, value):
            resolved[name] = int(value)
    if kind == "ivf" and resolved["nlist"] > size:
        raise ConfigError("nlist", f"{resolved['nlist']} lists need at least as many codes; "
                          f"the collection has {size}")
    return resolved


def search_parameters(kind, parameters, overrides):
    """The search-time parameters of an index of `kind` built with `parameters`, with the
    non-zero `overrides` (ef_search, nprobe) in place."""
    _check_names(kind, overrides, tuple(name for name in kind_parameters(kind)
                                        if name in SEARCH_PARAMETER_NAMES))
    resolved = {name: parameters[name] for name in kind_parameters(kind)
                if name in SEARCH_PARAMETER_NAMES}
    for name, value in overrides.items():
        if value is not None and _positive(name, value):
            resolved[name] = int(value)
    return resolved


def faiss_available():
    try:
        import faiss  # noqa: F401, PLC0415 (optional dependency)
    except ImportError:
        return False
    return True


def _import_faiss(kind):
    try:
        import faiss  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise ConfigError("kind", f"a {kind} index needs FAISS: {FAISS_INSTALL_HINT}") \
            from None
    return faiss


def default_engine(kind):
    """FAISS when installed, else nac_tf's own kernel for an exact kind; ConfigError
    naming the extra for an approximate kind without FAISS."""
    check_kind(kind)
    if faiss_available():
        return FAISS
    if kind in EXACT_KINDS:
        return OWN
    _import_faiss(kind)


def sorted_results(ids, distances):
    """(ids int64 [Q, k], distances int32 [Q, k]) with every row sorted by (distance, id)
    and the missing results (id < 0) last as (-1, -1)."""
    ids = np.asarray(ids, np.int64)
    distances = np.asarray(distances, np.int64)
    missing = ids < 0
    largest = np.iinfo(np.int64).max
    order = np.lexsort((np.where(missing, largest, ids),
                        np.where(missing, largest, distances)), axis=-1)
    ids = np.take_along_axis(ids, order, axis=-1)
    distances = np.take_along_axis(distances, order, axis=-1)
    missing = np.take_along_axis(missing, order, axis=-1)
    ids[missing] = MISSING
    distances[missing] = MISSING
    return ids, distances.astype(np.int32)


class ExactEngine:
    """nac_tf's own exact flat engine: Hamming top-k of every query over all codes, ties in
    id order, compiled by Numba when installed, else NumPy (identical results)."""

    name = OWN
    kind = "flat"

    def __init__(self, code_bytes):
        self.code_bytes = int(code_bytes)
        self.db_words = np.zeros((-(-self.code_bytes // 8), 0), np.uint64)  # word-major

    @property
    def size(self):
        return self.db_words.shape[1]

    def add(self, packed):
        self.db_words = np.ascontiguousarray(
            np.concatenate([self.db_words, as_words(packed).T], axis=1))

    def search(self, packed, k, num_threads=None):
        query_words = as_words(packed)
        num_bits = 8 * self.code_bytes
        try:
            from nac_tf.evaluation.retrieval.hamming_kernels import top_k_hamming  # noqa: PLC0415
        except ImportError:  # no Numba
            return _numpy_top_k(packed, self.db_words, num_bits, k)
        return top_k_hamming(query_words, self.db_words, num_bits, k,
                             default_threads(num_threads))

    def memory_bytes(self):
        return int(self.db_words.nbytes)


def _numpy_top_k(packed, db_words, num_bits, k, chunk=64):
    """The exact top-k with NumPy: distances of a few queries at a time, then a stable
    argsort (ties stay in id order)."""
    database = np.ascontiguousarray(db_words.T).view(np.uint8)[:, :packed.shape[1]]
    distances = Distances(packed, database, num_bits, "numpy")
    ids = np.empty((len(packed), k), np.int64)
    result = np.empty((len(packed), k), np.int32)
    workspace = distances.workspace(chunk)
    rows = np.empty((chunk, distances.num_items), distances.dtype)
    for start in range(0, len(packed), chunk):
        stop = min(start + chunk, len(packed))
        block = distances.compute(start, stop, rows[:stop - start], workspace)
        order = np.argsort(block, axis=1, kind="stable")[:, :k]
        ids[start:stop] = order
        result[start:stop] = np.take_along_axis(block, order, axis=1)
    return ids, result


class FaissEngine:
    """A FAISS binary index of one kind (`faiss.IndexBinaryFlat`, `IndexBinaryHNSW`,
    `IndexBinaryIVF`)."""

    name = FAISS

    def __init__(self, kind, code_bytes, parameters, index=None):
        self.faiss = _import_faiss(check_kind(kind))
        self.kind, self.code_bytes, self.parameters = kind, int(code_bytes), dict(parameters)
        self._quantizer = None  # IndexBinaryIVF does not own a quantizer given from Python
        self.index = index if index is not None else self._new_index()

    def _new_index(self):
        faiss, bits = self.faiss, 8 * self.code_bytes
        if self.kind == "hnsw":
            index = faiss.IndexBinaryHNSW(bits, self.parameters["m"])
            index.hnsw.efConstruction = self.parameters["ef_construction"]
            return index
        if self.kind == "ivf":
            self._quantizer = faiss.IndexBinaryFlat(bits)
            return faiss.IndexBinaryIVF(self._quantizer, bits, self.parameters["nlist"])
        return faiss.IndexBinaryFlat(bits)

    @property
    def size(self):
        return int(self.index.ntotal)

    def train(self, packed):
        """IVF's k-means over `packed` (the codes of the first build); a no-op otherwise."""
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(packed))

    def add(self, packed):
        self.train(packed)
        self.index.add(np.ascontiguousarray(packed))

    def search(self, packed, k, ef_search=None, nprobe=None):
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(int(ef_search or self.parameters["ef_search"]), k)
        elif self.kind == "ivf":
            self.index.nprobe = int(nprobe or self.parameters["nprobe"])
        distances, ids = self.index.search(np.ascontiguousarray(packed), int(k))
        return ids, distances

    def memory_bytes(self):
        """The serialized index's size in bytes (what it holds in memory, within a few
        bytes)."""
        return int(self.faiss.serialize_index_binary(self.index).nbytes)

    def write(self, path):
        self.faiss.write_index_binary(self.index, path)

    @classmethod
    def read(cls, kind, code_bytes, parameters, path):
        faiss = _import_faiss(kind)
        return cls(kind, code_bytes, parameters, index=faiss.read_index_binary(path))


def make_engine(kind, code_bytes, parameters, engine=None):
    """An empty engine of `kind` (trained by its first `add`): `engine` "faiss", "nac_tf"
    (flat only) or None for `default_engine(kind)`."""
    engine = engine or default_engine(kind)
    if engine not in ENGINES:
        raise ConfigError("engine", f"{engine!r} is not one of: {', '.join(ENGINES)}")
    if engine == OWN:
        if kind not in EXACT_KINDS:
            raise ConfigError("engine", f"nac_tf's own engine runs flat indexes only, not "
                              f"{kind}")
        return ExactEngine(code_bytes)
    return FaissEngine(kind, code_bytes, parameters)


def search_engine(engine, packed, k, overrides=None, num_threads=None):
    """(ids int64 [Q, k], distances int32 [Q, k]) of `engine` for packed queries, sorted
    by (distance, id)."""
    if isinstance(engine, ExactEngine):
        ids, distances = engine.search(packed, k, num_threads)
    else:
        ids, distances = engine.search(packed, k, **(overrides or {}))
    return sorted_results(ids, distances)
