"""The scan of the NumPy and FAISS backends: queries in chunks, over worker threads, each
chunk's distances and relevance handed to a per-chunk computation."""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nac_tf.evaluation.retrieval.inputs import positive_integer_or_none


def default_threads(num_threads):
    if num_threads is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return len(cpus) if cpus else (os.cpu_count() or 1)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return int(num_threads)


def chunk_rows(chunk_size, num_items):
    if chunk_size is None:
        # About 2^18 items per chunk: the per-chunk buffers (a few MB) stay in cache, and
        # the per-chunk Python overhead stays small next to the work.
        return int(np.clip((1 << 18) // num_items, 1, 256))
    return positive_integer_or_none("chunk_size", chunk_size)


def scan(distances, relevance, num_queries, chunk_size, num_threads, process_chunk,
         make_workspace=None, finish=None):
    """Call process_chunk(start, stop, dist, rel, workspace) on every chunk of queries.

    Queries are split into one contiguous range per worker thread; every worker owns its
    buffers (and calls finish(workspace) when its range is done), and process_chunk writes
    only to the rows start..stop-1 of its outputs, so the workers share no mutable state.
    """
    chunk_size = chunk_rows(chunk_size, distances.num_items)
    num_threads = min(default_threads(num_threads), -(-num_queries // chunk_size))
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


def bucket_counts(dist, rel, num_buckets):
    """Items and relevant items at every distance: two int64 arrays [c, num_buckets]."""
    # One histogram of 2 * distance + relevance per row gives both counts.
    index_dtype = np.uint16 if num_buckets <= 32768 else np.uint32
    index = np.left_shift(dist, index_dtype(1), dtype=index_dtype)
    np.bitwise_or(index, rel, out=index, dtype=index_dtype)
    counts = np.stack([np.bincount(row, minlength=2 * num_buckets) for row in index])
    counts = counts.reshape(dist.shape[0], num_buckets, 2)
    return counts.sum(axis=2), counts[:, :, 1]
