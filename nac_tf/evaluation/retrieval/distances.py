"""Hamming distances between packed codes, per chunk of queries: the NumPy backend (popcount
of XOR on 64-bit words), FAISS's `hammings`, and the choice of backend, including the
compiled kernels of `hamming_kernels` (Numba, optional)."""
import numpy as np

from nac_tf.evaluation.retrieval.inputs import as_words, check_option, packed_matrix
from nac_tf.evaluation.retrieval.scan import chunk_rows

BACKENDS = ("auto", "numba", "numpy", "faiss")
DISTANCE_BACKENDS = ("numpy", "faiss")
FAISS_INSTALL_HINT = 'pip install "nac_tf[faiss]"'
NUMBA_INSTALL_HINT = 'pip install "nac_tf[fast]"'

# Popcount of every byte, for NumPy < 2.0 which has no np.bitwise_count.
_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], np.uint8)
_BYTE_POPCOUNT.setflags(write=False)


def _popcount(words, out):
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words, out=out)
    # NumPy < 2.0: look up the popcount of each byte and add the 8 bytes of each word.
    byte_counts = _BYTE_POPCOUNT[words.view(np.uint8)].reshape(words.shape + (8,))
    return np.sum(byte_counts, axis=-1, dtype=out.dtype, out=out)


def _distance_dtype(num_bits):
    return np.uint8 if num_bits <= 255 else np.uint16 if num_bits <= 65535 else np.uint32


# "auto" leaves problems smaller than this (query-item pairs) to NumPy: they take it under
# 0.2 s, less than compiling the kernels (several seconds, once per installation).
AUTO_COMPILED_MIN_PAIRS = 1 << 24


def resolve_backend(backend, num_pairs):
    """"auto" -> "numba" when Numba is installed and the problem is large, else "numpy";
    other names as they are."""
    check_option("backend", backend, BACKENDS)
    if backend == "auto" and num_pairs < AUTO_COMPILED_MIN_PAIRS:
        return "numpy"
    if backend in ("auto", "numba"):
        try:
            import numba  # noqa: F401, PLC0415 (optional dependency)
        except ImportError as error:
            if backend == "numba":
                raise ImportError("backend='numba' needs the optional Numba package: "
                                  f"{NUMBA_INSTALL_HINT}") from error
            return "numpy"
        return "numba"
    return backend


def compiled_ranking(query, database, num_bits, relevance, inner_product=False):
    """The compiled kernels' view of packed codes and relevance (see hamming_kernels)."""
    from nac_tf.evaluation.retrieval.hamming_kernels import CompiledRanking  # noqa: PLC0415

    labels = ({"query_masks": relevance.query, "db_masks": relevance.database}
              if relevance.multi_hot else
              # Any integer dtype -> int64: the cast is one-to-one, so equality is kept.
              {"query_classes": relevance.query.astype(np.int64),
               "db_classes": relevance.database.astype(np.int64)})
    return CompiledRanking(as_words(query), as_words(database).T, num_bits, inner_product,
                           **labels)


def _import_faiss():
    try:
        import faiss  # noqa: PLC0415 (optional dependency, imported only when asked for)
    except ImportError as error:
        raise ImportError("backend='faiss' needs the optional FAISS package: "
                          f"{FAISS_INSTALL_HINT}") from error
    return faiss


class Distances:
    """Per-chunk Hamming distances (or inner products) of queries against the whole database."""

    def __init__(self, query_packed, db_packed, num_bits, backend="numpy", inner_product=False):
        check_option("backend", backend, DISTANCE_BACKENDS)
        if backend == "faiss" and inner_product:
            raise ValueError("backend='faiss' computes Hamming distances only")
        self.num_bits = num_bits
        self.num_items = db_packed.shape[0]
        self.dtype = _distance_dtype(num_bits)
        self.backend = backend
        self.inner_product = inner_product
        self.query_words = as_words(query_packed)
        if backend == "faiss":
            self.faiss = _import_faiss()
            # FAISS reads raw bytes; 8-byte multiples select its fastest kernel.
            self.query_bytes = self.query_words.view(np.uint8)
            self.db_bytes = np.ascontiguousarray(as_words(db_packed).view(np.uint8))
        else:
            # Word-major database: each broadcast XOR runs over a contiguous row of N words.
            self.db_words = np.ascontiguousarray(as_words(db_packed).T)

    def workspace(self, chunk_size):
        shape = (chunk_size, self.num_items)
        if self.backend == "faiss":
            return {"int32": np.empty(shape, np.int32)}
        return {"words": np.empty(shape, np.uint64), "counts": np.empty(shape, np.uint8)}

    def compute(self, start, stop, out, workspace):
        """Write the distances of queries start..stop-1 into out [stop - start, N]."""
        rows = stop - start
        if self.backend == "faiss":
            result = workspace["int32"][:rows]
            query = np.ascontiguousarray(self.query_bytes[start:stop])
            self.faiss.hammings(self.faiss.swig_ptr(query), self.faiss.swig_ptr(self.db_bytes),
                                int(rows), int(self.num_items), int(query.shape[1]),
                                self.faiss.swig_ptr(result))
            np.copyto(out, result, casting="unsafe")
            return out
        words, counts = workspace["words"][:rows], workspace["counts"][:rows]
        combine = np.bitwise_and if self.inner_product else np.bitwise_xor
        for word in range(self.db_words.shape[0]):
            combine(self.query_words[start:stop, word, None], self.db_words[word][None, :],
                    out=words)
            if word == 0:
                _popcount(words, out=out)
            else:
                _popcount(words, out=counts)
                np.add(out, counts, out=out)
        if self.inner_product:
            # Descending inner product == ascending (num_bits - inner product).
            np.subtract(self.dtype(self.num_bits), out, out=out)
        return out


def hamming_distances(query_packed, db_packed, chunk_size=None, backend="numpy"):
    """Hamming distances int32 [Q, N] between packed codes (uint8 [*, bytes], np.packbits).

    Popcount of XOR on 64-bit words, `chunk_size` queries at a time so the temporaries stay
    O(chunk_size * N); backend="faiss" uses faiss.hammings (optional extra, same values).
    """
    query = packed_matrix(query_packed, "query_packed")
    database = packed_matrix(db_packed, "db_packed")
    if query.shape[1] != database.shape[1]:
        raise ValueError(f"query_packed has {query.shape[1]} bytes per code but db_packed has "
                         f"{database.shape[1]}")
    distances = Distances(query, database, 8 * query.shape[1], backend)
    chunk_size = chunk_rows(chunk_size, database.shape[0])
    result = np.empty((query.shape[0], database.shape[0]), np.int32)
    workspace = distances.workspace(chunk_size)
    chunk = np.empty((chunk_size, database.shape[0]), distances.dtype)
    for start in range(0, query.shape[0], chunk_size):
        stop = min(start + chunk_size, query.shape[0])
        result[start:stop] = distances.compute(start, stop, chunk[:stop - start], workspace)
    return result
