"""Metrics of the Hamming ball around each query: the precision within a radius and the
precision-recall curve over every radius 0..D."""
from dataclasses import dataclass

import numpy as np

from nac_tf.evaluation.retrieval.distances import Distances, compiled_ranking, resolve_backend
from nac_tf.evaluation.retrieval.inputs import EMPTY_QUERIES, Relevance, check_option, codes
from nac_tf.evaluation.retrieval.scan import bucket_counts, chunk_rows, default_threads, scan


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


def _ball_counts(query_bits, db_bits, query_labels, db_labels, packed, backend, chunk_size,
                 num_threads):
    """Items and relevant items within every radius 0..D: int64 [Q, D + 1] each."""
    query, database, num_bits = codes(query_bits, db_bits, packed)
    backend = resolve_backend(backend, query.shape[0] * database.shape[0])
    relevance = Relevance(query_labels, db_labels, query.shape[0], database.shape[0])
    chunk_rows(chunk_size, database.shape[0])  # validated whichever backend runs
    if backend == "numba":
        total, relevant = compiled_ranking(query, database, num_bits, relevance).bucket_counts(
            default_threads(num_threads))
        return np.cumsum(total, axis=1), np.cumsum(relevant, axis=1)
    distances = Distances(query, database, num_bits, backend)
    within = np.zeros((query.shape[0], num_bits + 1), np.int64)
    relevant_within = np.zeros_like(within)

    def process(start, stop, dist, rel, workspace):
        total, relevant = bucket_counts(dist, rel, num_bits + 1)
        np.cumsum(total, axis=1, out=within[start:stop])
        np.cumsum(relevant, axis=1, out=relevant_within[start:stop])

    scan(distances, relevance, query.shape[0], chunk_size, num_threads, process)
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
    check_option("empty_queries", empty_queries, EMPTY_QUERIES)
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
