"""The NAC authors' hash mAP as Table 3 reports it (benchmarks/experiments.py
`authors_hash_map`), against a float64 reference written from its description: inner
products of {0, 1} codes, NumPy's default sort of their negatives, relevance = same class,
AP over the whole database, queries without a relevant item left out."""
import os
import sys

import numpy as np
import pytest

from nac_tf.evaluation.retrieval import inner_product_map

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from experiments import authors_hash_map  # noqa: E402


def _reference(query_bits, database_bits, query_labels, database_labels):
    precisions = []
    for bits, label in zip(query_bits, query_labels):
        # The ranking is the authors' (float32 products, the default sort of a column): the
        # order inside ties is that sort's, so it must be the same call; the rest is not.
        order = np.argsort(-(database_bits.astype(np.float32) @ bits.astype(np.float32)))
        relevant = (database_labels[order] == label).astype(np.float64)
        if relevant.sum() == 0:
            continue
        hits, total = 0.0, 0.0
        for rank, is_relevant in enumerate(relevant, start=1):
            if is_relevant:
                hits += 1.0
                total += hits / rank
        precisions.append(total / relevant.sum())
    return float(np.mean(precisions))


@pytest.mark.parametrize("num_bits", [16, 64])
def test_authors_map_equals_the_reference_and_does_not_depend_on_the_chunk(num_bits):
    rng = np.random.default_rng(num_bits)
    prototypes = rng.integers(0, 2, (10, num_bits))
    database_labels, query_labels = rng.integers(0, 10, 1500), rng.integers(0, 11, 300)
    # Class 10 has no database item: its queries are left out, as the authors leave them.
    database_bits = prototypes[database_labels] ^ (rng.random((1500, num_bits)) < 0.2)
    query_bits = prototypes[query_labels % 10] ^ (rng.random((300, num_bits)) < 0.2)
    packed = np.packbits(query_bits, axis=1), np.packbits(database_bits, axis=1)
    expected = _reference(query_bits, database_bits, query_labels, database_labels)
    for chunk in (300, 64, 7):
        value = authors_hash_map(*packed, query_labels, database_labels, 11, chunk=chunk)
        assert value == pytest.approx(expected, abs=1e-12)
    # The same ranking with ties in database order (nac_tf's compatibility mode) differs
    # only by the order within ties: close, not equal, on codes with many ties.
    stable = inner_product_map(*packed, query_labels, database_labels, packed=True)
    assert abs(stable - expected) < 0.01
