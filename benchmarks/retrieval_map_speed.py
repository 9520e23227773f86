"""Benchmark (not a test): speed of mAP@all on 10 000 queries x 50 000 items, 128-bit codes.

    python benchmarks/retrieval_map_speed.py [--queries=10000] [--items=50000] [--bits=128]
                                             [--threads=N] [--skip_faiss]

Codes have class structure (10 classes; each code is its class prototype with every bit
flipped with probability 0.3), so rankings, APs and tie groups look like those of a trained
hashing model. Times, in one run:
  1. nac_tf mean_average_precision, compiled kernels (backend="numba", the default when
     numba is installed; compiled before timing), stable ties; then ties="expected";
  2. the same on the NumPy backend, stable and expected ties;
  3. the same as 1 with backend="faiss" (faiss.hammings distances), if faiss is installed;
  4. FAISS IndexBinaryFlat.search of all items (k = N; use_heap=False, FAISS's counting
     selection, which is the fast one for k = N and keeps equal distances in id order),
     followed by AP computed from the returned ranking; the default heap selection is timed
     on --heap_queries queries and scaled to all of them (it is far slower for k = N).
Checks that 1, 3 and 4 give the same mAP and prints the expected-ties gap, then a table of
seconds (wall clock, and CPU seconds of this process: other jobs on the machine show up as
wall >> CPU / threads).
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from nac_tf.evaluation.retrieval import mean_average_precision  # noqa: E402


def make_codes(num_queries, num_items, num_bits, num_classes=10, flip=0.3, seed=0):
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 2, (num_classes, num_bits), dtype=np.uint8)

    def draw(count):
        labels = rng.integers(0, num_classes, count)
        bits = prototypes[labels] ^ (rng.random((count, num_bits)) < flip).astype(np.uint8)
        return np.packbits(bits, axis=1), labels

    query, query_labels = draw(num_queries)
    database, db_labels = draw(num_items)
    return query, database, query_labels, db_labels


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def faiss_search_map(query, database, query_labels, db_labels, use_heap=False, batch=250):
    """mAP@all from IndexBinaryFlat.search(k=N): (mAP, search seconds, AP seconds)."""
    import faiss

    index = faiss.IndexBinaryFlat(8 * query.shape[1])
    index.use_heap = use_heap
    index.add(database)
    num_items = database.shape[0]
    search_seconds = ap_seconds = 0.0
    aps = []
    for start in range(0, query.shape[0], batch):
        began = time.perf_counter()
        distances, ids = index.search(query[start:start + batch], num_items)
        search_seconds += time.perf_counter() - began
        began = time.perf_counter()
        step = np.diff(distances, axis=1)
        if np.any(step < 0) or np.any((step == 0) & (np.diff(ids, axis=1) < 0)):
            # Not the stable order (equal distances by id): re-sort to compare like with like.
            order = np.lexsort((ids, distances))
            ids = np.take_along_axis(ids, order, axis=1)
        relevant = db_labels[ids] == query_labels[start:start + batch, None]
        for row in relevant:
            positions = np.flatnonzero(row)
            if positions.size:  # queries without relevant item are excluded
                aps.append(np.mean(np.arange(1, positions.size + 1) / (positions + 1.0)))
        ap_seconds += time.perf_counter() - began
    return float(np.mean(aps)), search_seconds, ap_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--bits", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip_faiss", action="store_true")
    parser.add_argument("--heap_queries", type=int, default=200,
                        help="queries for the (slow) default heap search; 0 skips it")
    args = parser.parse_args()

    query, database, query_labels, db_labels = make_codes(args.queries, args.items, args.bits)
    common = dict(query_bits=query, db_bits=database, query_labels=query_labels,
                  db_labels=db_labels, packed=True, num_threads=args.threads)
    print(f"{args.queries} queries x {args.items} items, {args.bits} bits; numpy "
          f"{np.__version__}; {os.cpu_count()} CPUs; load average before: "
          f"{os.getloadavg()[0]:.2f}")

    rows = []
    backends = ["numpy"]
    try:
        import numba
    except ImportError:
        print('numba not installed (pip install "nac_tf[fast]"): compiled rows skipped')
    else:
        backends.insert(0, "numba")
        # Compile (or load from Numba's cache) outside the timings.
        for ties in ("stable", "expected"):
            mean_average_precision(query[:2], database[:10], query_labels[:2], db_labels[:10],
                                   packed=True, ties=ties, backend="numba")
    results = {}
    for backend in backends:
        for ties in ("stable", "expected"):
            value, wall, cpu = timed(lambda: mean_average_precision(
                ties=ties, backend=backend, **common))
            label = f"numba {numba.__version__}" if backend == "numba" else "numpy"
            rows.append((f"{label}, {ties} ties", wall, cpu, value))
            results[backend, ties] = value
    stable, expected = results["numpy", "stable"], results["numpy", "expected"]
    for (backend, ties), value in results.items():
        assert value == results["numpy", ties], (backend, ties, value)

    faiss_values = []
    if not args.skip_faiss:
        try:
            import faiss
        except ImportError:
            print('faiss not installed (pip install "nac_tf[faiss]"): FAISS rows skipped')
        else:
            value, wall, cpu = timed(lambda: mean_average_precision(backend="faiss", **common))
            rows.append((f"faiss {faiss.__version__} hammings, stable", wall, cpu, value))
            faiss_values.append(value)
            (value, search_s, ap_s), wall, cpu = timed(
                lambda: faiss_search_map(query, database, query_labels, db_labels))
            rows.append(("faiss IndexBinaryFlat search k=N + AP", wall, cpu, value))
            rows.append(("  of which search", search_s, float("nan"), float("nan")))
            rows.append(("  of which AP", ap_s, float("nan"), float("nan")))
            faiss_values.append(value)
            if args.heap_queries:
                # FAISS's default heap selection is far slower for k = N: time a subset.
                subset = slice(0, args.heap_queries)
                (value, search_s, ap_s), wall, cpu = timed(lambda: faiss_search_map(
                    query[subset], database, query_labels[subset], db_labels, use_heap=True))
                scale = args.queries / args.heap_queries
                rows.append((f"  same, use_heap=True: {args.heap_queries} q x {scale:g}",
                             wall * scale, cpu * scale, float("nan")))

    print(f"{'method':42s} {'wall s':>8s} {'cpu s':>8s} {'mAP@all':>14s}")
    for name, wall, cpu, value in rows:
        cpu_text = f"{cpu:8.2f}" if np.isfinite(cpu) else f"{'-':>8s}"
        value_text = f"{value:14.10f}" if np.isfinite(value) else f"{'-':>14s}"
        print(f"{name:42s} {wall:8.2f} {cpu_text} {value_text}")
    for value in faiss_values:
        assert abs(value - stable) < 1e-12, (value, stable)
    print(f"mAP identical across backends: {', '.join(backends)}"
          f"{', faiss' if faiss_values else ''}; "
          f"expected - stable = {expected - stable:+.3e}")


if __name__ == "__main__":
    main()
