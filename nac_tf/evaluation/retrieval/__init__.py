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
runs, for problems of at least 2^24 query-item pairs, compiled kernels (`hamming_kernels`):
one pass over the database per query on all cores, no distance matrix and no sort.
Without it, or with backend="numpy", distances are computed on 64-bit words
(``np.bitwise_count``) for a few queries at a time, in worker threads (NumPy releases the
GIL), stable AP uses NumPy's stable argsort of the small-integer distances (a radix sort),
and the expected mode, radius precision and PR curve only need per-distance counts. Every
backend gives the same results.

Modules, by family: `inputs` (checks and packing of codes and labels, relevance),
`distances` (the NumPy and FAISS distance backends and the choice of backend),
`hamming_kernels` (the compiled kernels), `scan` (queries in chunks over threads),
`average_precision` (stable AP and the metrics built on AP), `expected_ties` (the closed
forms of the expected mode), `hamming_ball` (radius precision, PR curve).
"""

from nac_tf.evaluation.retrieval.average_precision import (AveragePrecisions,
                                                           average_precisions,
                                                           inner_product_map,
                                                           mean_average_precision)
from nac_tf.evaluation.retrieval.distances import hamming_distances
from nac_tf.evaluation.retrieval.hamming_ball import (HammingRadiusPrecision,
                                                      PrecisionRecallCurve,
                                                      precision_recall_curve,
                                                      precision_within_hamming_radius)
from nac_tf.evaluation.retrieval.inputs import pack_bits

__all__ = ["AveragePrecisions", "HammingRadiusPrecision", "PrecisionRecallCurve",
           "average_precisions", "hamming_distances", "inner_product_map",
           "mean_average_precision", "pack_bits", "precision_recall_curve",
           "precision_within_hamming_radius"]
