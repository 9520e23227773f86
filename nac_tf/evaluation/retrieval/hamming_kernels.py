"""Compiled kernels of the Hamming-ranking metrics (Numba; the optional extra `nac_tf[fast]`).

The NumPy path of `nac_tf.evaluation.retrieval` materialises a distance matrix per chunk
of queries and argsorts it; these kernels make one pass over the database per query
instead, on all cores (`numba.prange` over queries), with the same results:

- stable AP (`stable_precision_sums`): ties in database order. In one pass over the items
  in database order, the histogram of distances seen so far gives every item its position
  inside its distance group; the relevant items' (distance, position) are recorded. Then
  rank = (items at smaller distances) + position + 1 and the relevant items' own ranks
  follow from the same counts over the relevant items, so no sort is needed. The
  precisions are summed in rank order, the order of the NumPy path, so the sums are equal
  bit for bit.
- per-distance counts (`bucket_counts`): items and relevant items at every distance, for
  the expected-ties AP, the radius precision and the PR curve.
- the exact top k (`top_k_hamming`, the hash index's own flat engine): the histogram of a
  query's distances gives the distance t of its k-th item and where every distance group
  starts in the result; one more pass in database order writes the items below t and the
  first items at t into their places, so the k items come out sorted by (distance, id)
  without a sort.

Distances are popcounts of XOR (or, for the inner-product compatibility mode, bits minus
the popcount of AND) over a word-major copy of the database, so the distance loop runs
over contiguous words and compiles to vector popcounts where the CPU has them. Relevance
is computed the same way: class-id equality, or a shared bit of the multi-hot label masks.
Kernels are compiled on first use (a few seconds) and cached on disk by Numba.
"""
import threading

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

# Numba's default (workqueue) threading layer aborts the process when two threads launch
# parallel kernels at once: concurrent callers queue here instead.
_LAUNCH_LOCK = threading.Lock()


@intrinsic
def _popcount(typingctx, word):
    """The CPU's popcount of a uint64 (LLVM ctpop): popcnt / vpopcntq where available."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return signature, codegen


@njit(nogil=True, cache=True)
def _query_distances(query, db_words, inner_product, num_bits, out):
    """Hamming distances (or num_bits - inner product) of one query to every item."""
    num_words, num_items = db_words.shape
    if inner_product:
        for i in range(num_items):
            out[i] = num_bits
        for w in range(num_words):
            word = query[w]
            for i in range(num_items):
                out[i] -= _popcount(word & db_words[w, i])
    else:
        word = query[0]
        for i in range(num_items):
            out[i] = _popcount(word ^ db_words[0, i])
        for w in range(1, num_words):
            word = query[w]
            for i in range(num_items):
                out[i] += _popcount(word ^ db_words[w, i])


@njit(nogil=True, cache=True)
def _query_relevance(q, query_classes, db_classes, query_masks, db_masks, multi_hot, out):
    """out[i] = 1 if item i shares a label with query q (class ids or multi-hot masks)."""
    if multi_hot:
        num_words, num_items = db_masks.shape
        for i in range(num_items):
            out[i] = 0
        for w in range(num_words):
            mask = query_masks[q, w]
            for i in range(num_items):
                out[i] |= (mask & db_masks[w, i]) != 0
    else:
        label = query_classes[q]
        for i in range(db_classes.shape[0]):
            out[i] = db_classes[i] == label


@njit(nogil=True, cache=True)
def _query_rows(q, query_words, db_words, inner_product, num_bits, query_classes, db_classes,
                query_masks, db_masks, multi_hot, distance_like):
    """(distances, relevance) of query q to every item: the rows both kernels scan."""
    num_items = db_words.shape[1]
    distance = np.empty(num_items, distance_like.dtype)
    relevant = np.empty(num_items, np.uint8)
    _query_distances(query_words[q], db_words, inner_product, num_bits, distance)
    _query_relevance(q, query_classes, db_classes, query_masks, db_masks, multi_hot, relevant)
    return distance, relevant


@njit(parallel=True, nogil=True, cache=True)
def _stable_precision_sums(query_words, db_words, inner_product, num_bits, query_classes,
                           db_classes, query_masks, db_masks, multi_hot, top_k, distance_like):
    num_queries = query_words.shape[0]
    num_items = db_words.shape[1]
    num_buckets = num_bits + 1
    sums = np.zeros(num_queries)
    hits = np.zeros(num_queries, np.int64)
    for q in prange(num_queries):
        distance, relevant = _query_rows(q, query_words, db_words, inner_product, num_bits,
                                         query_classes, db_classes, query_masks, db_masks,
                                         multi_hot, distance_like)
        # Pass over the items in database order: `seen[d]` is the number of earlier items
        # at distance d, i.e. this item's position in its tie group. Relevant items are
        # recorded without a branch (the slot is overwritten unless the item is relevant).
        seen = np.zeros(num_buckets, np.int64)
        record_distance = np.empty(num_items + 1, np.int64)
        record_position = np.empty(num_items + 1, np.int64)
        num_relevant = 0
        for i in range(num_items):
            d = distance[i]
            position = seen[d]
            seen[d] = position + 1
            record_distance[num_relevant] = d
            record_position[num_relevant] = position
            num_relevant += relevant[i]
        # Items, and relevant items, ranked before each distance group.
        relevant_seen = np.zeros(num_buckets, np.int64)
        for j in range(num_relevant):
            relevant_seen[record_distance[j]] += 1
        items_before = 0
        relevant_before = 0
        for d in range(num_buckets):
            count = seen[d]
            seen[d] = items_before
            items_before += count
            count = relevant_seen[d]
            relevant_seen[d] = relevant_before
            relevant_before += count
        # The m-th relevant item in rank order has precision m / rank; relevant items of
        # one group keep database order, so the records give each its m directly.
        precision = np.empty(num_relevant)
        in_top_k = 0
        for j in range(num_relevant):
            d = record_distance[j]
            rank = seen[d] + record_position[j] + 1
            m = relevant_seen[d] + 1
            relevant_seen[d] = m
            if rank <= top_k:
                precision[m - 1] = m / rank
                in_top_k += 1
        # The relevant items in the top k are exactly m = 1..in_top_k; sum in rank order.
        total = 0.0
        for m in range(in_top_k):
            total += precision[m]
        sums[q] = total
        hits[q] = in_top_k
    return sums, hits


@njit(parallel=True, nogil=True, cache=True)
def _bucket_counts(query_words, db_words, inner_product, num_bits, query_classes, db_classes,
                   query_masks, db_masks, multi_hot, distance_like):
    num_queries = query_words.shape[0]
    num_items = db_words.shape[1]
    total = np.zeros((num_queries, num_bits + 1), np.int64)
    relevant_total = np.zeros((num_queries, num_bits + 1), np.int64)
    for q in prange(num_queries):
        distance, relevant = _query_rows(q, query_words, db_words, inner_product, num_bits,
                                         query_classes, db_classes, query_masks, db_masks,
                                         multi_hot, distance_like)
        for i in range(num_items):
            total[q, distance[i]] += 1
            relevant_total[q, distance[i]] += relevant[i]
    return total, relevant_total


@njit(parallel=True, nogil=True, cache=True)
def _top_k(query_words, db_words, num_bits, k, distance_like):
    num_queries = query_words.shape[0]
    num_items = db_words.shape[1]
    ids = np.empty((num_queries, k), np.int64)
    distances = np.empty((num_queries, k), np.int32)
    for q in prange(num_queries):
        distance = np.empty(num_items, distance_like.dtype)
        _query_distances(query_words[q], db_words, False, num_bits, distance)
        counts = np.zeros(num_bits + 1, np.int64)
        for i in range(num_items):
            counts[distance[i]] += 1
        # t: the distance of the k-th item; next_slot[d]: where group d continues.
        next_slot = np.zeros(num_bits + 1, np.int64)
        before = 0
        t = 0
        while before + counts[t] < k:
            next_slot[t] = before
            before += counts[t]
            t += 1
        next_slot[t] = before
        slots_at_t = k - before
        for i in range(num_items):
            d = distance[i]
            if d < t or (d == t and slots_at_t > 0):
                if d == t:
                    slots_at_t -= 1
                slot = next_slot[d]
                next_slot[d] = slot + 1
                ids[q, slot] = i
                distances[q, slot] = d
    return ids, distances


def top_k_hamming(query_words, db_words, num_bits, k, num_threads):
    """The k nearest items of every query by Hamming distance, ties in database order:
    (ids int64 [Q, k], distances int32 [Q, k]). query_words uint64 [Q, W], db_words uint64
    [W, N] (word-major), num_bits: 64 W or fewer, the largest possible distance; k <= N."""
    dtype = np.uint8 if num_bits <= 255 else np.uint16 if num_bits <= 65535 else np.uint32
    return CompiledRanking._launch(
        _top_k, num_threads, np.ascontiguousarray(query_words, np.uint64),
        np.ascontiguousarray(db_words, np.uint64), int(num_bits), int(k), np.zeros(0, dtype))


class CompiledRanking:
    """The kernels' inputs, laid out once for a query set and a database.

    query_words: uint64 [Q, W] codes; db_words: uint64 [W, N] (word-major); num_bits: D.
    Relevance: class ids (`query_classes` [Q], `db_classes` [N]) or label masks
    (`query_masks` uint64 [Q, L], `db_masks` uint64 [L, N], word-major).
    """

    def __init__(self, query_words, db_words, num_bits, inner_product=False,
                 query_classes=None, db_classes=None, query_masks=None, db_masks=None):
        self.multi_hot = query_masks is not None
        no_classes, no_masks = np.zeros(0, np.int64), np.zeros((0, 0), np.uint64)
        self.arguments = (
            np.ascontiguousarray(query_words, np.uint64),
            np.ascontiguousarray(db_words, np.uint64), bool(inner_product), int(num_bits),
            no_classes if self.multi_hot else np.ascontiguousarray(query_classes, np.int64),
            no_classes if self.multi_hot else np.ascontiguousarray(db_classes, np.int64),
            np.ascontiguousarray(query_masks, np.uint64) if self.multi_hot else no_masks,
            np.ascontiguousarray(db_masks, np.uint64) if self.multi_hot else no_masks,
            self.multi_hot)
        # The narrowest distance type: uint8 for codes up to 255 bits.
        dtype = np.uint8 if num_bits <= 255 else np.uint16 if num_bits <= 65535 else np.uint32
        self.distance_like = np.zeros(0, dtype)

    def stable_precision_sums(self, top_k, num_threads):
        """(sum of precision@rank over the relevant ranks <= top_k, relevant items in the
        top k), float64 [Q] and int64 [Q]; ties in database order."""
        return self._launch(_stable_precision_sums, num_threads, *self.arguments, int(top_k),
                            self.distance_like)

    def bucket_counts(self, num_threads):
        """Items and relevant items at every distance 0..D: int64 [Q, D + 1] each."""
        return self._launch(_bucket_counts, num_threads, *self.arguments, self.distance_like)

    @staticmethod
    def _launch(kernel, num_threads, *arguments):
        with _LAUNCH_LOCK:
            previous = numba.get_num_threads()
            numba.set_num_threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))
            try:
                return kernel(*arguments)
            finally:
                numba.set_num_threads(previous)
