"""Hash-code retrieval metrics (docs/protocols.md section 2), in pure NumPy.

Every metric ranks the database for each query by Hamming distance (popcount of XOR), and a
database item is relevant to a query when they share at least one label.

Conventions (shared by all functions):

- Codes are {0,1} matrices [N, D] of any integer or bool dtype, or, with ``packed=True``,
  uint8 matrices [N, ceil(D/8)] as made by :func:`pack_bits` / ``np.packbits(bits, axis=1)``
  (big-endian bit order, NumPy's default). Packedness is an explicit keyword, never guessed:
  a uint8 matrix of 0s and 1s is a valid code matrix *and* a valid packed matrix (of other
  codes), so no rule on the values can tell them apart. Packed codes have 8 * bytes bits as
  far as the metrics can see; the zero padding bits never change a distance.
- Labels are class ids [N] (integers) or multi-hot rows [N, C] whose values are exactly 0 or 1,
  in a bool, integer or float dtype; queries and database must use the same kind.
- ``ties="stable"``: items at equal distance keep database order, so a result never depends
  on the sort implementation. ``ties="expected"``: the exact expectation over a uniformly
  random order inside every group of equal distance (derivation in
  :func:`average_precisions`).
- AP@all = (1/R) sum over relevant ranks of precision@rank, R = number of relevant items.
  AP@k follows the HashNet / DeepHash code: the same sum over the top k ranks, divided by the
  number of relevant items *in the top k*.
- ``empty_queries="exclude"`` (default, as the NAC and HashNet code do) drops from the mean
  the queries with no relevant item (for AP@k: none in the top k); ``"zero"`` counts them as
  AP 0. If every query is excluded the mean is NaN.

Speed: with Numba installed (the extra ``nac_tf[fast]``), ``backend="auto"`` (the default)
runs, for problems of at least 2^24 query-item pairs, compiled kernels (`nac_tf.evaluation.hamming_kernels`): one pass over the database per
query on all cores, no distance matrix and no sort. Without it, or with backend="numpy",
distances are computed on 64-bit words (``np.bitwise_count``) for a few queries at a time,
in worker threads (NumPy releases the GIL), stable AP uses NumPy's stable argsort of the
small-integer distances (a radix sort), and the expected mode, radius precision and PR
curve only need per-distance counts. Every backend gives the same results.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

TIES = ("stable", "expected")
EMPTY_QUERIES = ("exclude", "zero")
BACKENDS = ("auto", "numba", "numpy", "faiss")
DISTANCE_BACKENDS = ("numpy", "faiss")
FAISS_INSTALL_HINT = 'pip install "nac_tf[faiss]"'
NUMBA_INSTALL_HINT = 'pip install "nac_tf[fast]"'

# Popcount of every byte, for NumPy < 2.0 which has no np.bitwise_count.
_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], np.uint8)
_BYTE_POPCOUNT.setflags(write=False)


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class AveragePrecisions:
    """Per-query average precisions and how they combine into the mean.

    Attributes:
      values: [Q] float64. ties="stable": AP of each query (NaN when it is excluded).
        ties="expected": E[AP | the query counts] (NaN when it never counts).
      inclusion_probability: [Q] float64, probability that the query counts in the mean
        (0 or 1 except for ties="expected" with top_k, where whether a query has a relevant
        item in its top k can depend on the order inside the boundary tie group).
      weights: [Q] float64 weights of the mean (sum 1, or all 0 when no query can count).
      num_excluded: number of queries that never count in the mean.
      mean: sum(weights * values) over counted queries: the (expected) mAP; NaN if none.
    """
    values: np.ndarray
    inclusion_probability: np.ndarray
    weights: np.ndarray
    num_excluded: int
    mean: float


@dataclass(frozen=True)
class HammingRadiusPrecision:
    """Precision within a Hamming ball, averaged over all queries (empty ball = 0)."""
    mean_precision: float
    num_empty: int
    precisions: np.ndarray  # [Q] float64


@dataclass(frozen=True)
class PrecisionRecallCurve:
    """Mean precision and recall of the Hamming ball of every radius 0..D."""
    radius: np.ndarray           # [D + 1] int
    precision: np.ndarray        # [D + 1] float64; a query with an empty ball counts 0
    recall: np.ndarray           # [D + 1] float64
    num_empty_balls: np.ndarray  # [D + 1] int, over the queries that count
    num_excluded: int            # queries without any relevant item left out of both curves


# ------------------------------------------------------------------------ input checks

def _check_option(name, value, accepted):
    if not isinstance(value, str) or value not in accepted:
        raise ValueError(f"{name} must be one of {list(accepted)}, got {value!r}")


def _binary_matrix(bits, name):
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"{name} must be a matrix [N, D] of {{0,1}} bits, got shape {bits.shape}")
    if bits.dtype == np.bool_:
        return bits.view(np.uint8)
    if not np.issubdtype(bits.dtype, np.integer):
        raise ValueError(f"{name} must have an integer or bool dtype, got {bits.dtype}")
    if bits.size and (bits.min() < 0 or bits.max() > 1):
        raise ValueError(f"{name} must hold only 0 and 1 (use bits = codes > 0 for signed "
                         f"codes), got values in [{bits.min()}, {bits.max()}]")
    return bits.astype(np.uint8, copy=False)


def pack_bits(bits):
    """{0,1} codes [N, D] -> uint8 [N, ceil(D/8)], big-endian bit order (np.packbits)."""
    return np.packbits(_binary_matrix(bits, "bits"), axis=1)


def _packed_matrix(packed_bits, name):
    packed_bits = np.asarray(packed_bits)
    if packed_bits.ndim != 2 or packed_bits.dtype != np.uint8:
        raise ValueError(f"{name} must be packed codes: uint8 [N, bytes] as from "
                         f"np.packbits(bits, axis=1); got {packed_bits.dtype} {packed_bits.shape}")
    return packed_bits


def _codes(query_bits, db_bits, packed):
    """Packed uint8 query and database codes, width-checked, and their number of bits."""
    if not isinstance(packed, (bool, np.bool_)):
        raise ValueError(f"packed must be True or False, got {packed!r}")
    if packed:
        query = _packed_matrix(query_bits, "query_bits")
        database = _packed_matrix(db_bits, "db_bits")
        unit = "bytes"
    else:
        query = _binary_matrix(query_bits, "query_bits")
        database = _binary_matrix(db_bits, "db_bits")
        unit = "bits"
    if query.shape[1] != database.shape[1]:
        raise ValueError(f"query_bits has {query.shape[1]} {unit} per code but db_bits has "
                         f"{database.shape[1]}: query and database codes must have the same width")
    if query.shape[0] == 0 or database.shape[0] == 0 or query.shape[1] == 0:
        raise ValueError(f"query_bits {query.shape} and db_bits {database.shape} must be "
                         "non-empty")
    num_bits = query.shape[1] * (8 if packed else 1)
    if not packed:
        query, database = np.packbits(query, axis=1), np.packbits(database, axis=1)
    return query, database, num_bits


LABEL_FORMS = ("1-D integer class ids [N], or a 2-D multi-hot matrix [N, C] of 0/1 values "
               "with a bool, integer or float dtype")


def _labels(labels, name, num_rows, bits_name):
    """Class ids [N] as given, or a multi-hot matrix [N, C] as uint8 {0, 1}.

    Multi-hot matrices may come as bool, any integer or any float dtype (FLICKR-25K copies
    often store float 0/1), but every value must be exactly 0 or 1: anything else (0.5, NaN,
    2) has no meaning as "carries this label" and is refused rather than thresholded.
    """
    try:
        labels = np.asarray(labels)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} must be {LABEL_FORMS}; it is not a regular array "
                         f"({error})") from None
    if labels.ndim not in (1, 2):
        raise ValueError(f"{name} must be {LABEL_FORMS}; got a {labels.ndim}-D array of shape "
                         f"{labels.shape}")
    if labels.shape[0] != num_rows:
        raise ValueError(f"{name} has {labels.shape[0]} rows but {bits_name} has {num_rows} "
                         "(one label row per code row)")
    is_bool = labels.dtype == np.bool_
    is_integer = np.issubdtype(labels.dtype, np.integer)
    if labels.ndim == 1:
        if not (is_bool or is_integer):
            raise ValueError(f"{name} is 1-D, so it must hold integer class ids, got dtype "
                             f"{labels.dtype}; accepted: {LABEL_FORMS}")
        return labels
    if not (is_bool or is_integer or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"{name} is 2-D, so it must be multi-hot with a bool, integer or float "
                         f"dtype, got dtype {labels.dtype}; accepted: {LABEL_FORMS}")
    if not is_bool:
        invalid = (labels != 0) & (labels != 1)  # NaN compares unequal to both
        if invalid.any():
            row, column = np.argwhere(invalid)[0]
            raise ValueError(
                f"{name} is 2-D, so it must be multi-hot: every value exactly 0 or 1; found "
                f"{labels[row, column].item()!r} at [{row}, {column}] ({int(invalid.sum())} "
                f"such entries); accepted: {LABEL_FORMS}")
    return labels.astype(np.uint8)


def _label_masks(multi_hot):
    """Multi-hot [N, C] -> uint64 label bit masks [N, ceil(C/64)]."""
    packed = np.packbits(multi_hot.astype(np.uint8, copy=False), axis=1)
    return _as_words(packed)


class _Relevance:
    """Relevance rows (bool [c, N]) for chunks of queries: shared label => relevant."""

    def __init__(self, query_labels, db_labels, num_queries, num_items):
        query_labels = _labels(query_labels, "query_labels", num_queries, "query_bits")
        db_labels = _labels(db_labels, "db_labels", num_items, "db_bits")
        if query_labels.ndim != db_labels.ndim:
            raise ValueError("query_labels and db_labels must both be class ids [N] or both "
                             f"multi-hot [N, C]; got shapes {query_labels.shape} and "
                             f"{db_labels.shape}")
        self.multi_hot = query_labels.ndim == 2
        if self.multi_hot:
            if query_labels.shape[1] != db_labels.shape[1]:
                raise ValueError(f"query_labels has {query_labels.shape[1]} classes but "
                                 f"db_labels has {db_labels.shape[1]}")
            self.query = _label_masks(query_labels)
            self.database = np.ascontiguousarray(_label_masks(db_labels).T)
        else:
            self.query = query_labels
            self.database = db_labels

    def rows(self, start, stop, out):
        if not self.multi_hot:
            return np.equal(self.query[start:stop, None], self.database[None, :], out=out)
        shared = np.empty(out.shape, np.uint64)
        out[...] = False
        for word in range(self.database.shape[0]):
            np.bitwise_and(self.query[start:stop, word, None], self.database[word][None, :],
                           out=shared)
            np.logical_or(out, shared, out=out)
        return out


def _check_top_k(top_k):
    if top_k is None:
        return None
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)) \
            or top_k < 1:
        raise ValueError(f"top_k must be None or a positive integer, got {top_k!r}")
    return int(top_k)


# --------------------------------------------------------------------------- distances

def _as_words(packed):
    """uint8 [N, B] -> uint64 [N, ceil(B/8)], zero-padded (padding never changes a popcount)."""
    num_rows, num_bytes = packed.shape
    padded = np.zeros((num_rows, -(-num_bytes // 8) * 8), np.uint8)
    padded[:, :num_bytes] = packed
    return padded.view(np.uint64)


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


def _resolve_backend(backend, num_pairs):
    """"auto" -> "numba" when Numba is installed and the problem is large, else "numpy";
    other names as they are."""
    _check_option("backend", backend, BACKENDS)
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


def _compiled_ranking(query, database, num_bits, relevance, inner_product=False):
    """The compiled kernels' view of packed codes and relevance (see hamming_kernels)."""
    from nac_tf.evaluation.hamming_kernels import CompiledRanking  # noqa: PLC0415 (optional)

    labels = ({"query_masks": relevance.query, "db_masks": relevance.database}
              if relevance.multi_hot else
              # Any integer dtype -> int64: the cast is one-to-one, so equality is kept.
              {"query_classes": relevance.query.astype(np.int64),
               "db_classes": relevance.database.astype(np.int64)})
    return CompiledRanking(_as_words(query), _as_words(database).T, num_bits, inner_product,
                           **labels)


def _import_faiss():
    try:
        import faiss  # noqa: PLC0415 (optional dependency, imported only when asked for)
    except ImportError as error:
        raise ImportError("backend='faiss' needs the optional FAISS package: "
                          f"{FAISS_INSTALL_HINT}") from error
    return faiss


class _Distances:
    """Per-chunk Hamming distances (or inner products) of queries against the whole database."""

    def __init__(self, query_packed, db_packed, num_bits, backend="numpy", inner_product=False):
        _check_option("backend", backend, DISTANCE_BACKENDS)
        if backend == "faiss" and inner_product:
            raise ValueError("backend='faiss' computes Hamming distances only")
        self.num_bits = num_bits
        self.num_items = db_packed.shape[0]
        self.dtype = _distance_dtype(num_bits)
        self.backend = backend
        self.inner_product = inner_product
        self.query_words = _as_words(query_packed)
        if backend == "faiss":
            self.faiss = _import_faiss()
            # FAISS reads raw bytes; 8-byte multiples select its fastest kernel.
            self.query_bytes = self.query_words.view(np.uint8)
            self.db_bytes = np.ascontiguousarray(_as_words(db_packed).view(np.uint8))
        else:
            # Word-major database: each broadcast XOR runs over a contiguous row of N words.
            self.db_words = np.ascontiguousarray(_as_words(db_packed).T)

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
    query = _packed_matrix(query_packed, "query_packed")
    database = _packed_matrix(db_packed, "db_packed")
    if query.shape[1] != database.shape[1]:
        raise ValueError(f"query_packed has {query.shape[1]} bytes per code but db_packed has "
                         f"{database.shape[1]}")
    distances = _Distances(query, database, 8 * query.shape[1], backend)
    chunk_size = _chunk_rows(chunk_size, database.shape[0])
    result = np.empty((query.shape[0], database.shape[0]), np.int32)
    workspace = distances.workspace(chunk_size)
    chunk = np.empty((chunk_size, database.shape[0]), distances.dtype)
    for start in range(0, query.shape[0], chunk_size):
        stop = min(start + chunk_size, query.shape[0])
        result[start:stop] = distances.compute(start, stop, chunk[:stop - start], workspace)
    return result


# -------------------------------------------------------------------------- the scan

def _default_threads(num_threads):
    if num_threads is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return len(cpus) if cpus else (os.cpu_count() or 1)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return int(num_threads)


def _chunk_rows(chunk_size, num_items):
    if chunk_size is None:
        # About 2^18 items per chunk: the per-chunk buffers (a few MB) stay in cache, and
        # the per-chunk Python overhead stays small next to the work.
        return int(np.clip((1 << 18) // num_items, 1, 256))
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _scan(distances, relevance, num_queries, chunk_size, num_threads, process_chunk,
          make_workspace=None, finish=None):
    """Call process_chunk(start, stop, dist, rel, workspace) on every chunk of queries.

    Queries are split into one contiguous range per worker thread; every worker owns its
    buffers (and calls finish(workspace) when its range is done), and process_chunk writes
    only to the rows start..stop-1 of its outputs, so the workers share no mutable state.
    """
    chunk_size = _chunk_rows(chunk_size, distances.num_items)
    num_threads = min(_default_threads(num_threads), -(-num_queries // chunk_size))
    bounds = np.linspace(0, num_queries, num_threads + 1).round().astype(int)

    def work(first, last):
        workspace = distances.workspace(chunk_size)
        workspace["dist"] = np.empty((chunk_size, distances.num_items), distances.dtype)
        workspace["rel"] = np.empty((chunk_size, distances.num_items), np.bool_)
        if make_workspace is not None:
            workspace.update(make_workspace(chunk_size))
        for start in range(first, last, chunk_size):
            stop = min(start + chunk_size, last)
            rows = stop - start
            dist = distances.compute(start, stop, workspace["dist"][:rows], workspace)
            rel = relevance.rows(start, stop, workspace["rel"][:rows])
            process_chunk(start, stop, dist, rel, workspace)
        if finish is not None:
            finish(workspace)

    if num_threads == 1:
        work(0, num_queries)
        return
    with ThreadPoolExecutor(num_threads) as pool:
        for future in [pool.submit(work, bounds[i], bounds[i + 1]) for i in range(num_threads)]:
            future.result()


def _bucket_counts(dist, rel, num_buckets):
    """Items and relevant items at every distance: two int64 arrays [c, num_buckets]."""
    # One histogram of 2 * distance + relevance per row gives both counts.
    index_dtype = np.uint16 if num_buckets <= 32768 else np.uint32
    index = np.left_shift(dist, index_dtype(1), dtype=index_dtype)
    np.bitwise_or(index, rel, out=index, dtype=index_dtype)
    counts = np.stack([np.bincount(row, minlength=2 * num_buckets) for row in index])
    counts = counts.reshape(dist.shape[0], num_buckets, 2)
    return counts.sum(axis=2), counts[:, :, 1]


# ------------------------------------------------------------------------- stable AP

class _StableRanking:
    """Sum of precision@rank over relevant ranks, with ties in database order.

    The order is NumPy's stable argsort of the distances, which keeps equal distances in
    database order and is a radix sort (O(N)) for the 8- and 16-bit distances of codes up
    to 65 535 bits; the relevance of the item at every rank is then one gather.
    """

    def __init__(self, num_items, top_k):
        self.num_items = num_items
        self.top_k = num_items if top_k is None else min(top_k, num_items)

    def workspace(self, chunk_size):
        return {}

    def precision_sums(self, dist, rel, workspace):
        """(sum of precision@rank over relevant ranks <= k, relevant items in top k), per row."""
        del workspace  # the argsort allocates its own result
        rows, num_items = dist.shape
        order = np.argsort(dist, axis=1, kind="stable")[:, :self.top_k]
        # Flat indices into rel: np.take on the flat array is several times faster than
        # np.take_along_axis, and np.flatnonzero than a 2-D np.nonzero (NumPy 2.4).
        order += np.arange(0, rows * num_items, num_items)[:, None]
        relevant_at_rank = np.take(np.ascontiguousarray(rel).reshape(-1), order)
        # All rows at once: the m-th relevant item of a row, at 0-based position p, has
        # precision m / (p + 1); flatnonzero lists them row by row, positions ascending.
        row, position = np.divmod(np.flatnonzero(relevant_at_rank), self.top_k)
        hits = np.bincount(row, minlength=rows)
        first = np.cumsum(hits) - hits
        m = np.arange(1, row.size + 1) - first[row]
        sums = np.bincount(row, weights=m / (position + 1.0), minlength=rows)
        return sums, hits


# ----------------------------------------------------------------------- expected AP

def _harmonic_table(num_items):
    """H[j] = sum_{i<=j} 1/i for j = 0..N, accumulated in extended precision where available."""
    table = np.zeros(num_items + 1, np.longdouble)
    np.cumsum(1.0 / np.arange(1, num_items + 1, dtype=np.longdouble), out=table[1:])
    return table


def _expected_group_sum(n, r, s, c, harmonic):
    """E[sum over the group's relevant ranks of precision@rank], random order in the group.

    A group of n items (r relevant) fills ranks s+1..s+n with c relevant items ranked before
    it. Rank s+t holds a relevant item with probability r/n; given that, the number of
    relevant items among the t-1 group ranks before it is hypergeometric with mean
    (t-1)(r-1)/(n-1). Precision@(s+t) is linear in that number, so

      E = sum_t (r/n) (c + 1 + (t-1)(r-1)/(n-1)) / (s+t)
        = (r/n) [ (c+1) dH + (r-1)/(n-1) (n - (s+1) dH) ],   dH = H_{s+n} - H_s,

    using sum_t (t-1)/(s+t) = n - (s+1) dH; the (r-1)/(n-1) term is 0 when n = 1.
    Arrays of any common shape; groups with n = 0 give 0.
    """
    n = np.asarray(n, np.float64)
    r = np.asarray(r, np.float64)
    s_int = np.asarray(s, np.intp)
    n_int = np.asarray(n, np.intp)
    delta_h = harmonic[s_int + n_int] - harmonic[s_int]
    later = n - (s_int + 1) * delta_h  # sum_t (t-1)/(s+t), in extended precision
    pair_rate = np.divide(r - 1, n - 1, out=np.zeros_like(n), where=n > 1)
    inner = (np.asarray(c, np.float64) + 1) * delta_h + pair_rate * later
    share = np.divide(r, n, out=np.zeros_like(n), where=n > 0)
    return np.asarray(share * inner, np.float64)


def _expected_ap_at_k(total, relevant, top_k, harmonic):
    """Exact E[AP@k] (AP@k = 0 without relevant item in the top k) and P(one is there).

    Groups wholly inside the top k contribute their expected precision sums A (above); their
    relevant count c is fixed. At most one boundary group (n items, r relevant, starting
    after rank s) is cut: m = k - s of its items enter the top k, Y of them relevant,
    Y ~ Hypergeometric(n, r, m). Given Y = y the y relevant ranks are a uniform subset of
    the m, so E[B | y] = (y/m) [ (c+1) dH_m + (y-1)/(m-1) (m - (s+1) dH_m) ] with
    dH_m = H_{s+m} - H_s; the denominator c + y is fixed given y, hence

      E[AP@k] = sum_y P(Y=y) (A + E[B | y]) / (c + y)   over y with c + y > 0.

    total, relevant: int [c_rows, buckets]. Returns (expected AP@k, inclusion probability).
    """
    rows = total.shape[0]
    before = np.cumsum(total, axis=1) - total
    relevant_before = np.cumsum(relevant, axis=1) - relevant
    inside = before + total <= top_k
    group_sums = _expected_group_sum(total, relevant, before, relevant_before, harmonic)
    a = np.where(inside, group_sums, 0.0).sum(axis=1)
    c = np.where(inside, relevant, 0).sum(axis=1)
    cut = (before < top_k) & (before + total > top_k)
    has_cut = cut.any(axis=1)
    expected = np.divide(a, c, out=np.zeros(rows), where=c > 0)
    inclusion = (c > 0).astype(np.float64)
    cut_rows = np.flatnonzero(has_cut)
    if cut_rows.size == 0:
        return expected, inclusion
    column = np.argmax(cut[cut_rows], axis=1)
    n = total[cut_rows, column]
    r = relevant[cut_rows, column]
    s = before[cut_rows, column]
    # A few rows at a time: each row spans every possible Y, up to min(r, k) values.
    for part in np.array_split(np.arange(cut_rows.size), -(-cut_rows.size // 64)):
        rows_of_part = cut_rows[part]
        expected[rows_of_part], inclusion[rows_of_part] = _expected_cut_group(
            n[part], r[part], s[part], top_k - s[part], c[rows_of_part], a[rows_of_part],
            harmonic)
    return expected, inclusion


def _expected_cut_group(n, r, s, m, c, a, harmonic):
    """E[AP@k] and P(c + Y > 0) for rows whose top k cuts a group (see `_expected_ap_at_k`)."""
    low = np.maximum(0, m - (n - r))
    high = np.minimum(r, m)
    y = low[:, None] + np.arange(int((high - low).max()) + 1)[None, :]
    valid = y <= high[:, None]
    # Hypergeometric pmf from the ratio P(y+1)/P(y), in logs, normalised per row.
    y_prev = y[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = (np.log((r[:, None] - y_prev) * (m[:, None] - y_prev), dtype=np.float64)
                     - np.log((y_prev + 1) * (n[:, None] - r[:, None] - m[:, None] + y_prev + 1),
                              dtype=np.float64))
    log_pmf = np.zeros(y.shape)
    log_pmf[:, 1:] = np.cumsum(np.where(valid[:, 1:], log_ratio, 0.0), axis=1)
    log_pmf = np.where(valid, log_pmf, -np.inf)
    pmf = np.exp(log_pmf - log_pmf.max(axis=1, keepdims=True))
    pmf /= pmf.sum(axis=1, keepdims=True)
    delta_h = (harmonic[s + m] - harmonic[s])[:, None]
    later = m[:, None] - (s[:, None] + 1) * delta_h
    pair_rate = np.divide(y - 1, (m - 1)[:, None], out=np.zeros(y.shape),
                          where=(m > 1)[:, None] & valid)
    boundary_sum = np.asarray(
        y / m[:, None] * ((c[:, None] + 1) * delta_h + pair_rate * later), np.float64)
    denominator = c[:, None] + y
    counted = valid & (denominator > 0)
    value = np.divide(a[:, None] + boundary_sum, denominator, out=np.zeros(y.shape),
                      where=counted)
    inclusion = np.where(c > 0, 1.0, np.where(counted, pmf, 0.0).sum(axis=1))
    return (pmf * value).sum(axis=1), inclusion


def _poisson_binomial(probabilities):
    """pmf of the number of successes of independent Bernoulli(p_j) trials."""
    pmf = np.ones(1)
    for p in probabilities:
        pmf = np.concatenate([pmf * (1 - p), [0.0]]) + np.concatenate([[0.0], pmf * p])
    return pmf


def _mean_weights(inclusion):
    """Weights w: E[mean AP over counted queries | some query counts] = sum_q w_q E[AP_q | counted].

    Query q counts (I_q = 1) with probability p_q, independently of the other queries (each
    query's tie order is drawn independently), and I_q * AP_q is independent of
    M_q = sum_{j != q} I_j, so (reading 0/0 as 0)

      E[sum_q I_q AP_q / sum_j I_j] = sum_q p_q E[AP_q | I_q = 1] E[1 / (1 + M_q)].

    With K sure queries and the uncertain ones' count Y (Poisson-binomial), M_q = K - 1 + Y
    for a sure q, and K + Y_{-q} for an uncertain q, whose leave-one-out pmf is deconvolved
    from Y's pmf in the numerically stable direction. The result is divided by
    P(some query counts). Deterministic inclusion gives the plain mean: w = 1/K.
    """
    weights = np.zeros(inclusion.shape)
    sure = inclusion >= 1.0
    uncertain = np.flatnonzero((inclusion > 0.0) & ~sure)
    num_sure = int(sure.sum())
    p = inclusion[uncertain]
    pmf = _poisson_binomial(p)
    count_values = np.arange(pmf.size, dtype=np.float64)
    if num_sure:
        weights[sure] = np.sum(pmf / (num_sure + count_values))
    if p.size:
        # Y_{-q} pmf g solves pmf = g * [1-p, p]; divide forward when p <= 1/2 and backward
        # otherwise, so every step multiplies the rounding error by at most 1.
        forward = p <= 0.5
        p_forward, p_backward = p[forward], p[~forward]
        sum_forward, sum_backward = np.zeros(p_forward.size), np.zeros(p_backward.size)
        g = np.zeros(p_forward.size)
        for i in range(p.size):  # g_i = (pmf_i - p g_{i-1}) / (1 - p)
            g = (pmf[i] - p_forward * g) / (1 - p_forward)
            sum_forward += g / (num_sure + 1 + i)
        g = np.zeros(p_backward.size)
        for i in range(p.size, 0, -1):  # g_{i-1} = (pmf_i - (1 - p) g_i) / p
            g = (pmf[i] - (1 - p_backward) * g) / p_backward
            sum_backward += g / (num_sure + i)
        expectation = np.empty(p.size)
        expectation[forward], expectation[~forward] = sum_forward, sum_backward
        weights[uncertain] = expectation
    weights *= inclusion
    any_counts = 1.0 if num_sure else 1.0 - pmf[0]
    if any_counts <= 0.0:
        return np.zeros(inclusion.shape)
    return weights / any_counts


# ------------------------------------------------------------------------ the metrics

def _finish(values, inclusion, weights):
    counted = inclusion > 0
    values = np.where(counted, values, np.nan)
    num_counted = int(counted.sum())
    if not num_counted:
        mean = float("nan")
    elif np.all(inclusion[counted] == 1.0) and np.all(weights[counted] == weights[counted][0]):
        mean = float(np.mean(values[counted]))  # the usual mean, summed the usual way
    else:
        mean = float(np.dot(weights[counted], values[counted]))
    return AveragePrecisions(values=values, inclusion_probability=inclusion, weights=weights,
                             num_excluded=int(values.size - num_counted), mean=mean)


def _average_precisions(query_bits, db_bits, query_labels, db_labels, top_k, ties,
                        empty_queries, packed, backend, chunk_size, num_threads,
                        inner_product=False):
    _check_option("ties", ties, TIES)
    _check_option("empty_queries", empty_queries, EMPTY_QUERIES)
    top_k = _check_top_k(top_k)
    _check_option("backend", backend, BACKENDS)
    if backend == "faiss" and inner_product:
        raise ValueError("backend='faiss' computes Hamming distances only")
    query, database, num_bits = _codes(query_bits, db_bits, packed)
    num_queries, num_items = query.shape[0], database.shape[0]
    backend = _resolve_backend(backend, num_queries * num_items)
    relevance = _Relevance(query_labels, db_labels, num_queries, num_items)
    k = num_items if top_k is None else min(top_k, num_items)
    _chunk_rows(chunk_size, num_items)  # validated whichever backend runs

    # zero policy: E[AP] with AP = 0 for empty queries; exclude: E[AP | counted].
    ap_or_zero = np.zeros(num_queries)
    inclusion = np.zeros(num_queries)
    if backend == "numba":
        ranking = _compiled_ranking(query, database, num_bits, relevance, inner_product)
        threads = _default_threads(num_threads)
        if ties == "stable":
            sums, hits = ranking.stable_precision_sums(k, threads)
            np.divide(sums, hits, out=ap_or_zero, where=hits > 0)
            inclusion[:] = hits > 0
        else:
            total, relevant = ranking.bucket_counts(threads)
            harmonic = _harmonic_table(num_items)
            for start in range(0, num_queries, 256):  # the closed forms, 256 rows at a time
                stop = min(start + 256, num_queries)
                ap_or_zero[start:stop], inclusion[start:stop] = _expected_ap_at_k(
                    total[start:stop], relevant[start:stop], k, harmonic)
        return _mean_of_queries(ap_or_zero, inclusion, empty_queries)

    distances = _Distances(query, database, num_bits, backend, inner_product)
    if ties == "stable":
        ranking = _StableRanking(num_items, k)

        def process(start, stop, dist, rel, workspace):
            sums, hits = ranking.precision_sums(dist, rel, workspace)
            ap_or_zero[start:stop] = np.divide(sums, hits, out=np.zeros(stop - start),
                                               where=hits > 0)
            inclusion[start:stop] = hits > 0

        _scan(distances, relevance, num_queries, chunk_size, num_threads, process,
              make_workspace=ranking.workspace)
    else:
        harmonic = _harmonic_table(num_items)

        def flush(workspace):
            # The closed forms are vectorised over queries: run them on a few hundred at once.
            pending = workspace.pop("pending", [])
            if pending:
                total = np.concatenate([counts[0] for _, counts in pending])
                relevant = np.concatenate([counts[1] for _, counts in pending])
                expected, probability = _expected_ap_at_k(total, relevant, k, harmonic)
                row = 0
                for (start, stop), _ in pending:
                    ap_or_zero[start:stop] = expected[row:row + stop - start]
                    inclusion[start:stop] = probability[row:row + stop - start]
                    row += stop - start

        def process(start, stop, dist, rel, workspace):
            pending = workspace.setdefault("pending", [])
            pending.append(((start, stop), _bucket_counts(dist, rel, num_bits + 1)))
            if sum(last - first for (first, last), _ in pending) >= 256:
                flush(workspace)

        _scan(distances, relevance, num_queries, chunk_size, num_threads, process,
              finish=flush)
    return _mean_of_queries(ap_or_zero, inclusion, empty_queries)


def _mean_of_queries(ap_or_zero, inclusion, empty_queries):
    """AveragePrecisions from per-query E[AP] (0 when not counted) and P(counted)."""
    num_queries = ap_or_zero.size
    if empty_queries == "zero":
        return _finish(ap_or_zero, np.ones(num_queries), np.full(num_queries, 1 / num_queries))
    conditional = np.divide(ap_or_zero, inclusion, out=np.zeros(num_queries),
                            where=inclusion > 0)
    return _finish(conditional, inclusion, _mean_weights(inclusion))


def average_precisions(query_bits, db_bits, query_labels, db_labels, top_k=None,
                       ties="stable", empty_queries="exclude", packed=False, backend="auto",
                       chunk_size=None, num_threads=None):
    """Per-query average precision of Hamming ranking, as :class:`AveragePrecisions`.

    Args:
      query_bits, db_bits: {0,1} codes [Q, D] and [N, D], or packed uint8 with packed=True.
      query_labels, db_labels: integer class ids [Q], [N], or multi-hot 0/1 matrices [Q, C],
        [N, C] (bool, integer or float dtype).
      top_k: None for AP@all; else AP@k = (sum of precision@rank over the relevant items in
        the top k) / (number of relevant items in the top k), the HashNet / DeepHash
        convention. k >= N is AP@all.
      ties: "stable" (equal distances in database order) or "expected" (exact expectation
        over uniformly random orders inside every equal-distance group; derivation below).
      empty_queries: "exclude" leaves the queries with no relevant item (in the top k) out of
        the mean; "zero" counts them as AP 0.
      packed: the codes are np.packbits output (an explicit switch: it cannot be detected).
      backend: "auto" (default: "numba" if Numba is installed and Q * N >= 2^24, else
        "numpy"), "numba"
        (compiled kernels, extra nac_tf[fast]), "numpy", or "faiss" (faiss.hammings
        distances, extra nac_tf[faiss]); identical results.
      chunk_size: numpy/faiss backends: queries per step (default: about 2^18 / N); memory
        O(chunk_size * N) per thread. The compiled kernels hold O(N) per thread.
      num_threads: worker threads (default: the CPUs this process may use).

    Expected ties, AP@all. Let a group of n items (r relevant) at one distance fill ranks
    s+1..s+n, with c relevant items ranked before it; R (the denominator) does not depend on
    the order. Rank s+t holds a relevant item with probability r/n; given that, the number of
    relevant group items ranked before it is hypergeometric with mean (t-1)(r-1)/(n-1).
    precision@(s+t) = (c + 1 + that number)/(s+t) is linear in it, so the group adds

        E = sum_{t=1..n} (r/n) (c + 1 + (t-1)(r-1)/(n-1)) / (s+t)
          = (r/n) [ (c+1) dH + (r-1)/(n-1) (n - (s+1) dH) ],   dH = H_{s+n} - H_s,

    (sum_t (t-1)/(s+t) = n - (s+1) dH; H = harmonic numbers; the (r-1)/(n-1) term is 0 for
    n = 1) and E[AP] = (1/R) sum over groups of E.

    Expected ties, AP@k. Groups wholly inside the top k add E as above (sum A) and a fixed
    number c of relevant items. At most one group is cut by rank k: it starts after rank s
    and m = k - s of its n items (r relevant) enter the top k, Y of them relevant,
    Y ~ Hypergeometric(n, r, m). Given Y = y the relevant ranks are a uniform y-subset of
    s+1..s+m, so their precision sum has mean
    B_y = (y/m) [ (c+1) dH_m + (y-1)/(m-1) (m - (s+1) dH_m) ], dH_m = H_{s+m} - H_s, and the
    denominator c + y is fixed given y:

        E[AP@k] = sum_y P(Y = y) (A + B_y) / (c + y)   over y with c + y > 0.

    With "exclude", whether a query counts can then be random (P = P(c + Y > 0)). The mean
    is the exact expectation of (mean AP over the counted queries) given that some query
    counts: queries' tie orders are independent, so it equals
    sum_q P_q E[AP_q | counted] E[1 / (1 + number of other counted queries)] / P(any),
    computed from the Poisson-binomial distribution of that number (`_mean_weights`).
    Everything is exact up to float64 rounding (~1e-13).
    """
    return _average_precisions(query_bits, db_bits, query_labels, db_labels, top_k, ties,
                               empty_queries, packed, backend, chunk_size, num_threads)


def mean_average_precision(query_bits, db_bits, query_labels, db_labels, top_k=None,
                           ties="stable", empty_queries="exclude", packed=False,
                           backend="auto", chunk_size=None, num_threads=None):
    """mAP@all (top_k=None) or mAP@k of Hamming ranking: `average_precisions(...).mean`."""
    return average_precisions(query_bits, db_bits, query_labels, db_labels, top_k, ties,
                              empty_queries, packed, backend, chunk_size, num_threads).mean


def inner_product_map(query_bits, db_bits, query_labels, db_labels, top_k=None,
                      empty_queries="exclude", packed=False, backend="auto", chunk_size=None,
                      num_threads=None):
    """COMPATIBILITY mode: mAP of the NAC authors' evaluation, which is NOT Hamming ranking.

    Their code ranked {0,1} codes by inner product (number of shared 1-bits), descending,
    here with ties in database order. Two items at the same Hamming distance can have
    different inner products (bits that are 0 in both count for Hamming, not for the inner
    product), so the numbers differ from `mean_average_precision`; use them only to compare
    with the paper's tables. Same AP / top_k / empty-query conventions; backend "auto",
    "numba" or "numpy" (FAISS computes Hamming distances only).
    """
    return _average_precisions(query_bits, db_bits, query_labels, db_labels, top_k, "stable",
                               empty_queries, packed, backend, chunk_size, num_threads,
                               inner_product=True).mean


def _ball_counts(query_bits, db_bits, query_labels, db_labels, packed, backend, chunk_size,
                 num_threads):
    """Items and relevant items within every radius 0..D: int64 [Q, D + 1] each."""
    query, database, num_bits = _codes(query_bits, db_bits, packed)
    backend = _resolve_backend(backend, query.shape[0] * database.shape[0])
    relevance = _Relevance(query_labels, db_labels, query.shape[0], database.shape[0])
    _chunk_rows(chunk_size, database.shape[0])  # validated whichever backend runs
    if backend == "numba":
        total, relevant = _compiled_ranking(query, database, num_bits, relevance).bucket_counts(
            _default_threads(num_threads))
        return np.cumsum(total, axis=1), np.cumsum(relevant, axis=1)
    distances = _Distances(query, database, num_bits, backend)
    within = np.zeros((query.shape[0], num_bits + 1), np.int64)
    relevant_within = np.zeros_like(within)

    def process(start, stop, dist, rel, workspace):
        total, relevant = _bucket_counts(dist, rel, num_bits + 1)
        np.cumsum(total, axis=1, out=within[start:stop])
        np.cumsum(relevant, axis=1, out=relevant_within[start:stop])

    _scan(distances, relevance, query.shape[0], chunk_size, num_threads, process)
    return within, relevant_within


def precision_within_hamming_radius(query_bits, db_bits, query_labels, db_labels, radius=2,
                                    packed=False, backend="auto", chunk_size=None,
                                    num_threads=None):
    """Mean over all queries of the precision of the ball of `radius` (empty ball = 0)."""
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, np.integer)) \
            or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    within, relevant_within = _ball_counts(query_bits, db_bits, query_labels, db_labels,
                                           packed, backend, chunk_size, num_threads)
    column = min(int(radius), within.shape[1] - 1)
    retrieved, hits = within[:, column], relevant_within[:, column]
    precisions = np.divide(hits, retrieved, out=np.zeros(hits.shape), where=retrieved > 0)
    return HammingRadiusPrecision(mean_precision=float(precisions.mean()),
                                  num_empty=int(np.sum(retrieved == 0)),
                                  precisions=precisions)


def precision_recall_curve(query_bits, db_bits, query_labels, db_labels,
                           empty_queries="exclude", packed=False, backend="auto",
                           chunk_size=None, num_threads=None):
    """Hashing PR curve: per-query precision and recall of the ball of each radius 0..D,
    averaged over queries (precision 0 for an empty ball). Queries without any relevant
    item have no recall: "exclude" leaves them out of both curves, "zero" counts them as 0.
    """
    _check_option("empty_queries", empty_queries, EMPTY_QUERIES)
    within, relevant_within = _ball_counts(query_bits, db_bits, query_labels, db_labels,
                                           packed, backend, chunk_size, num_threads)
    num_relevant = relevant_within[:, -1]
    counted = num_relevant > 0 if empty_queries == "exclude" else np.ones(len(within), bool)
    within, relevant_within = within[counted], relevant_within[counted]
    precision = np.divide(relevant_within, within, out=np.zeros(within.shape),
                          where=within > 0)
    recall = np.divide(relevant_within, num_relevant[counted, None],
                       out=np.zeros(within.shape), where=num_relevant[counted, None] > 0)
    empty = (within == 0).sum(axis=0)
    nan_curve = np.full(within.shape[1], np.nan)
    return PrecisionRecallCurve(
        radius=np.arange(within.shape[1]),
        precision=precision.mean(axis=0) if counted.any() else nan_curve,
        recall=recall.mean(axis=0) if counted.any() else nan_curve,
        num_empty_balls=empty,
        num_excluded=int(np.sum(~counted)))
