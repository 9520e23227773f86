"""Average precision of Hamming ranking (and of the authors' inner-product ranking): per
query, with ties in database order (a stable sort) or in expectation, and their mean."""
from dataclasses import dataclass

import numpy as np

from nac_tf.evaluation.retrieval.distances import (BACKENDS, Distances, compiled_ranking,
                                                   resolve_backend)
from nac_tf.evaluation.retrieval.expected_ties import (expected_ap_at_k, harmonic_table,
                                                       mean_weights)
from nac_tf.evaluation.retrieval.inputs import (EMPTY_QUERIES, TIES, Relevance, check_option,
                                                codes, positive_integer_or_none)
from nac_tf.evaluation.retrieval.scan import bucket_counts, chunk_rows, default_threads, scan


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
    check_option("ties", ties, TIES)
    check_option("empty_queries", empty_queries, EMPTY_QUERIES)
    top_k = positive_integer_or_none("top_k", top_k)
    check_option("backend", backend, BACKENDS)
    if backend == "faiss" and inner_product:
        raise ValueError("backend='faiss' computes Hamming distances only")
    query, database, num_bits = codes(query_bits, db_bits, packed)
    num_queries, num_items = query.shape[0], database.shape[0]
    backend = resolve_backend(backend, num_queries * num_items)
    relevance = Relevance(query_labels, db_labels, num_queries, num_items)
    k = num_items if top_k is None else min(top_k, num_items)
    chunk_rows(chunk_size, num_items)  # validated whichever backend runs

    # zero policy: E[AP] with AP = 0 for empty queries; exclude: E[AP | counted].
    ap_or_zero = np.zeros(num_queries)
    inclusion = np.zeros(num_queries)
    if backend == "numba":
        ranking = compiled_ranking(query, database, num_bits, relevance, inner_product)
        threads = default_threads(num_threads)
        if ties == "stable":
            sums, hits = ranking.stable_precision_sums(k, threads)
            np.divide(sums, hits, out=ap_or_zero, where=hits > 0)
            inclusion[:] = hits > 0
        else:
            total, relevant = ranking.bucket_counts(threads)
            harmonic = harmonic_table(num_items)
            for start in range(0, num_queries, 256):  # the closed forms, 256 rows at a time
                stop = min(start + 256, num_queries)
                ap_or_zero[start:stop], inclusion[start:stop] = expected_ap_at_k(
                    total[start:stop], relevant[start:stop], k, harmonic)
        return _mean_of_queries(ap_or_zero, inclusion, empty_queries)

    distances = Distances(query, database, num_bits, backend, inner_product)
    if ties == "stable":
        ranking = _StableRanking(num_items, k)

        def process(start, stop, dist, rel, workspace):
            sums, hits = ranking.precision_sums(dist, rel, workspace)
            ap_or_zero[start:stop] = np.divide(sums, hits, out=np.zeros(stop - start),
                                               where=hits > 0)
            inclusion[start:stop] = hits > 0

        scan(distances, relevance, num_queries, chunk_size, num_threads, process,
             make_workspace=ranking.workspace)
    else:
        harmonic = harmonic_table(num_items)

        def flush(workspace):
            # The closed forms are vectorised over queries: run them on a few hundred at once.
            pending = workspace.pop("pending", [])
            if pending:
                total = np.concatenate([counts[0] for _, counts in pending])
                relevant = np.concatenate([counts[1] for _, counts in pending])
                expected, probability = expected_ap_at_k(total, relevant, k, harmonic)
                row = 0
                for (start, stop), _ in pending:
                    ap_or_zero[start:stop] = expected[row:row + stop - start]
                    inclusion[start:stop] = probability[row:row + stop - start]
                    row += stop - start

        def process(start, stop, dist, rel, workspace):
            pending = workspace.setdefault("pending", [])
            pending.append(((start, stop), bucket_counts(dist, rel, num_bits + 1)))
            if sum(last - first for (first, last), _ in pending) >= 256:
                flush(workspace)

        scan(distances, relevance, num_queries, chunk_size, num_threads, process,
             finish=flush)
    return _mean_of_queries(ap_or_zero, inclusion, empty_queries)


def _mean_of_queries(ap_or_zero, inclusion, empty_queries):
    """AveragePrecisions from per-query E[AP] (0 when not counted) and P(counted)."""
    num_queries = ap_or_zero.size
    if empty_queries == "zero":
        return _finish(ap_or_zero, np.ones(num_queries), np.full(num_queries, 1 / num_queries))
    conditional = np.divide(ap_or_zero, inclusion, out=np.zeros(num_queries),
                            where=inclusion > 0)
    return _finish(conditional, inclusion, mean_weights(inclusion))


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
    computed from the Poisson-binomial distribution of that number (`mean_weights`).
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
