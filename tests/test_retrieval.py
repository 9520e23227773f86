"""Retrieval metrics against brute-force float64 references written from the definitions.

Codes are short (8-16 bits) so that many database items share a distance: tie handling is
what these tests are about. The reference tests run on both computing backends: the NumPy
path and the compiled Numba kernels (nac_tf.evaluation.retrieval.hamming_kernels; numba is
part of the test extra, so they run rather than skip).
"""
import itertools
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nac_tf.evaluation.retrieval import average_precision as ap_module
from nac_tf.evaluation.retrieval import distances as backends
from nac_tf.evaluation.retrieval import (
    average_precisions, hamming_distances, inner_product_map, mean_average_precision,
    pack_bits, precision_recall_curve, precision_within_hamming_radius)
from nac_tf.evaluation.retrieval.expected_ties import mean_weights

# Both implementations of every metric; "auto" picks numba when it is installed.
BACKENDS = pytest.mark.parametrize("backend", ["numpy", "numba"])

# ------------------------------------------------------------------ brute-force references


def ref_distances(query_bits, db_bits):
    """Hamming distances counted bit by bit."""
    distances = np.zeros((len(query_bits), len(db_bits)), np.int64)
    for bit in range(query_bits.shape[1]):
        distances += query_bits[:, None, bit] != db_bits[None, :, bit]
    return distances


def ref_relevance(query_labels, db_labels):
    if query_labels.ndim == 1:
        return query_labels[:, None] == db_labels[None, :]
    shared = query_labels[:, None, :].astype(bool) & db_labels[None, :, :].astype(bool)
    return shared.any(axis=2)


def ref_ap_of_order(order, relevant_row, top_k=None):
    """AP of one ranking (HashNet AP@k); None when no relevant item is in the top k."""
    hits, total = 0, 0.0
    for rank, item in enumerate(order[:top_k], start=1):
        if relevant_row[item]:
            hits += 1
            total += hits / rank
    return total / hits if hits else None


def ref_mean(aps, empty_queries):
    if empty_queries == "zero":
        return float(np.mean([0.0 if ap is None else ap for ap in aps]))
    counted = [ap for ap in aps if ap is not None]
    return float(np.mean(counted)) if counted else float("nan")


def ref_stable_aps(scores, relevance, top_k=None):
    """Per-query APs ranking ascending scores, ties in database order."""
    return [ref_ap_of_order(np.argsort(scores[q], kind="stable"), relevance[q], top_k)
            for q in range(len(scores))]


def tie_orders(distance_row):
    """Every ranking that differs from the stable one only inside equal-distance groups."""
    groups = [np.flatnonzero(distance_row == d) for d in np.unique(distance_row)]
    for parts in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield np.concatenate(parts)


def random_problem(seed, num_queries=40, num_items=300, num_bits=8, multi_label=False,
                   num_classes=4):
    """Random codes with class structure (so APs are not all alike) and many ties."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 2, (num_classes + 1, num_bits))

    def codes(labels):
        primary = labels if labels.ndim == 1 else np.argmax(labels, axis=1)
        flips = rng.random((len(primary), num_bits)) < 0.3
        return (prototypes[primary] ^ flips).astype(np.int64)

    if multi_label:
        query_labels = (rng.random((num_queries, num_classes)) < 0.3).astype(np.int64)
        db_labels = (rng.random((num_items, num_classes)) < 0.3).astype(np.int64)
        query_labels[0] = 0  # a query with no label has no relevant item
    else:
        query_labels = rng.integers(0, num_classes + 1, num_queries)  # class 4: no item
        db_labels = rng.integers(0, num_classes, num_items)
    return codes(query_labels), codes(db_labels), query_labels, db_labels


# ---------------------------------------------------------------------------- distances


@pytest.mark.parametrize("num_bits", [8, 13, 64, 70, 128, 300])
def test_hamming_distances_match_bitwise_count(num_bits):
    rng = np.random.default_rng(num_bits)
    query = rng.integers(0, 2, (17, num_bits))
    database = rng.integers(0, 2, (53, num_bits))
    expected = ref_distances(query, database)
    for chunk_size in (1, 5, 64):
        result = hamming_distances(pack_bits(query), pack_bits(database), chunk_size=chunk_size)
        assert result.dtype == np.int32
        np.testing.assert_array_equal(result, expected)


def test_pack_bits_is_numpy_packbits():
    bits = np.random.default_rng(0).integers(0, 2, (6, 21))
    np.testing.assert_array_equal(pack_bits(bits), np.packbits(bits.astype(np.uint8), axis=1))
    np.testing.assert_array_equal(pack_bits(bits.astype(bool)), pack_bits(bits))


def test_popcount_fallback_without_bitwise_count(monkeypatch):
    """NumPy < 2.0 has no np.bitwise_count: the byte lookup table must give the same counts."""
    rng = np.random.default_rng(1)
    query, database = rng.integers(0, 2, (9, 100)), rng.integers(0, 2, (31, 100))
    monkeypatch.delattr(np, "bitwise_count")
    result = hamming_distances(pack_bits(query), pack_bits(database), chunk_size=4)
    np.testing.assert_array_equal(result, ref_distances(query, database))


# --------------------------------------------------------------------------- stable mAP


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("num_bits", [8, 16])
@pytest.mark.parametrize("top_k", [None, 1, 7, 100, 299, 300, 1000])
@pytest.mark.parametrize("empty_queries", ["exclude", "zero"])
@BACKENDS
def test_stable_map_matches_reference(multi_label, num_bits, top_k, empty_queries, backend):
    query, database, query_labels, db_labels = random_problem(
        num_bits + 3 * (top_k or 0), num_bits=num_bits, multi_label=multi_label)
    aps = ref_stable_aps(ref_distances(query, database), ref_relevance(query_labels, db_labels),
                         top_k)
    result = average_precisions(query, database, query_labels, db_labels, top_k=top_k,
                                empty_queries=empty_queries, chunk_size=7, backend=backend)
    assert result.mean == pytest.approx(ref_mean(aps, empty_queries), abs=1e-12)
    assert mean_average_precision(query, database, query_labels, db_labels, top_k=top_k,
                                  empty_queries=empty_queries, backend=backend) == result.mean
    empty = np.array([ap is None for ap in aps])
    if empty_queries == "exclude":
        assert result.num_excluded == empty.sum() > 0
        assert np.isnan(result.values[empty]).all()
        np.testing.assert_allclose(result.values[~empty], [ap for ap in aps if ap is not None],
                                   rtol=0, atol=1e-12)
    else:
        assert result.num_excluded == 0
        np.testing.assert_allclose(result.values, [ap or 0.0 for ap in aps], rtol=0, atol=1e-12)
    assert result.weights.sum() == pytest.approx(1.0)


def test_stable_ap_hand_computed_example():
    # Distances 0, 1, 1, 2 from the query; items 1 and 3 relevant (label 7).
    query = np.array([[0, 0, 0]])
    database = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    labels = np.array([3, 7, 3, 7])
    # Stable order 0, 1, 2, 3: relevant at ranks 2 and 4 -> (1/2 + 2/4) / 2.
    assert mean_average_precision(query, database, [7], labels) == pytest.approx(0.5)
    # Reordering the tied items 1, 2 in the database moves the relevant one to rank 3.
    swapped = database[[0, 2, 1, 3]]
    assert mean_average_precision(query, swapped, [7], labels[[0, 2, 1, 3]]) == \
        pytest.approx((1 / 3 + 2 / 4) / 2)
    # Expected ties average both orders of the tie.
    assert mean_average_precision(query, database, [7], labels, ties="expected") == \
        pytest.approx(((1 / 2 + 2 / 4) / 2 + (1 / 3 + 2 / 4) / 2) / 2)
    # AP@2 counts only the relevant items in the top 2.
    assert mean_average_precision(query, database, [7], labels, top_k=2) == pytest.approx(0.5)


def test_packed_and_unpacked_inputs_agree():
    query, database, query_labels, db_labels = random_problem(5, num_bits=13)
    for kwargs in ({}, {"top_k": 9}, {"ties": "expected"}, {"ties": "expected", "top_k": 9}):
        unpacked = mean_average_precision(query, database, query_labels, db_labels, **kwargs)
        packed = mean_average_precision(pack_bits(query), pack_bits(database), query_labels,
                                        db_labels, packed=True, **kwargs)
        assert packed == unpacked
    for function in (precision_within_hamming_radius, precision_recall_curve):
        unpacked = function(query, database, query_labels, db_labels)
        packed = function(pack_bits(query), pack_bits(database), query_labels, db_labels,
                          packed=True)
        if function is precision_recall_curve:
            # Packed codes have 16 bits as far as the metric can see: radii 14..16 repeat 13.
            np.testing.assert_array_equal(packed.precision[:14], unpacked.precision)
            np.testing.assert_array_equal(packed.recall[14:], unpacked.recall[-1])
        else:
            assert packed.mean_precision == unpacked.mean_precision
            assert packed.num_empty == unpacked.num_empty


@BACKENDS
def test_dtypes_threads_and_chunks_do_not_change_results(backend):
    query, database, query_labels, db_labels = random_problem(6, num_items=257)
    reference = average_precisions(query, database, query_labels, db_labels, top_k=50,
                                   backend="numpy")
    variants = [
        dict(query_bits=query.astype(bool), db_bits=database.astype(np.uint8)),
        dict(query_bits=query.astype(np.int8), db_bits=database, chunk_size=1, num_threads=1),
        dict(query_bits=query, db_bits=database, chunk_size=1000, num_threads=3),
    ]
    for variant in variants:
        kwargs = dict(query_labels=query_labels.astype(np.int32), db_labels=db_labels, top_k=50)
        kwargs.update(variant)
        result = average_precisions(**kwargs, backend=backend)
        np.testing.assert_array_equal(result.values, reference.values)
        assert result.mean == reference.mean


def test_all_queries_excluded_gives_nan():
    query, database, _, db_labels = random_problem(7)
    absent = np.full(len(query), 99)
    assert np.isnan(mean_average_precision(query, database, absent, db_labels))
    assert mean_average_precision(query, database, absent, db_labels,
                                  empty_queries="zero") == 0.0
    result = average_precisions(query, database, absent, db_labels, ties="expected")
    assert np.isnan(result.mean) and result.num_excluded == len(query)


@pytest.mark.parametrize("top_k", [None, 5])
def test_wide_codes_rank_the_same_with_radix_and_comparison_sorts(monkeypatch, top_k):
    """300-bit codes (uint16 distances: NumPy's radix sort), and the same distances held
    as uint32 (its comparison-based stable sort, which codes over 65 535 bits take)."""
    query, database, query_labels, db_labels = random_problem(8, num_queries=9, num_items=70,
                                                              num_bits=300)
    aps = ref_stable_aps(ref_distances(query, database), ref_relevance(query_labels, db_labels),
                         top_k)
    radix = mean_average_precision(query, database, query_labels, db_labels, top_k=top_k,
                                   backend="numpy")
    # The compiled kernels hold these distances as uint16.
    compiled = mean_average_precision(query, database, query_labels, db_labels, top_k=top_k,
                                      backend="numba")
    monkeypatch.setattr(backends, "_distance_dtype", lambda num_bits: np.uint32)
    comparison = mean_average_precision(query, database, query_labels, db_labels, top_k=top_k,
                                        backend="numpy")
    assert comparison == pytest.approx(radix, abs=1e-12)
    assert radix == pytest.approx(ref_mean(aps, "exclude"), abs=1e-12)
    assert compiled == radix


# ------------------------------------------------------------------------- expected mAP


def tiny_tie_problem():
    """3 queries, 6 items, 2-bit codes: tie groups of sizes up to 4 (4608 joint orders)."""
    database = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, 1], [1, 0]])
    db_labels = np.array([0, 1, 0, 1, 1, 2])
    query = np.array([[0, 0], [1, 1], [0, 1]])
    query_labels = np.array([1, 0, 2])
    return query, database, query_labels, db_labels


@pytest.mark.parametrize("top_k", [None, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("empty_queries", ["exclude", "zero"])
@BACKENDS
def test_expected_map_equals_exact_enumeration(top_k, empty_queries, backend):
    query, database, query_labels, db_labels = tiny_tie_problem()
    distances = ref_distances(query, database)
    relevance = ref_relevance(query_labels, db_labels)
    per_query = [[ref_ap_of_order(order, relevance[q], top_k) for order in tie_orders(row)]
                 for q, row in enumerate(distances)]
    # The mean over the counted queries is not linear in the per-query APs when whether a
    # query counts is random (top_k cuts a tie group), so enumerate the joint orders.
    means = [ref_mean(combination, empty_queries)
             for combination in itertools.product(*per_query)]
    defined = [m for m in means if not np.isnan(m)]
    expected = np.mean(defined) if defined else float("nan")
    result = average_precisions(query, database, query_labels, db_labels, top_k=top_k,
                                ties="expected", empty_queries=empty_queries, backend=backend)
    if np.isnan(expected):
        assert np.isnan(result.mean)
    else:
        assert result.mean == pytest.approx(expected, abs=1e-12)
    for q, aps in enumerate(per_query):
        counted = [ap for ap in aps if ap is not None]
        assert result.inclusion_probability[q] == pytest.approx(
            1.0 if empty_queries == "zero" else len(counted) / len(aps), abs=1e-12)
        if empty_queries == "zero":
            assert result.values[q] == pytest.approx(np.mean([ap or 0.0 for ap in aps]))
        elif counted:
            assert result.values[q] == pytest.approx(np.mean(counted), abs=1e-12)


def monte_carlo_map(distances, relevance, top_k, empty_queries, draws, rng):
    """Mean and standard error of mAP with random orders inside tie groups."""
    samples = []
    for _ in range(draws):
        tie_break = rng.random(distances.shape)
        aps = [ref_ap_of_order(np.lexsort((tie_break[q], distances[q])), relevance[q], top_k)
               for q in range(len(distances))]
        samples.append(ref_mean(aps, empty_queries))
    samples = np.array(samples)
    return samples.mean(), samples.std(ddof=1) / np.sqrt(draws)


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("top_k,empty_queries", [(None, "exclude"), (None, "zero"),
                                                 (15, "exclude"), (15, "zero")])
@BACKENDS
def test_expected_map_matches_monte_carlo(multi_label, top_k, empty_queries, backend):
    query, database, query_labels, db_labels = random_problem(
        11, num_queries=12, num_items=120, num_bits=8, multi_label=multi_label)
    distances = ref_distances(query, database)
    relevance = ref_relevance(query_labels, db_labels)
    estimate, standard_error = monte_carlo_map(distances, relevance, top_k, empty_queries,
                                               draws=300, rng=np.random.default_rng(0))
    expected = mean_average_precision(query, database, query_labels, db_labels, top_k=top_k,
                                      ties="expected", empty_queries=empty_queries, backend=backend)
    assert standard_error > 0  # the ties do matter here
    assert abs(expected - estimate) < 4 * standard_error
    stable = mean_average_precision(query, database, query_labels, db_labels, top_k=top_k,
                                    empty_queries=empty_queries, backend=backend)
    assert expected != stable


def test_expected_at_k_beyond_database_is_expected_at_all():
    query, database, query_labels, db_labels = random_problem(12)
    at_all = mean_average_precision(query, database, query_labels, db_labels, ties="expected")
    for top_k in (300, 301):
        assert mean_average_precision(query, database, query_labels, db_labels, top_k=top_k,
                                      ties="expected") == pytest.approx(at_all, abs=1e-14)


def test_expected_equals_stable_without_ties():
    """Codes with 0..6 leading ones are all at different distances from the zero query."""
    num_bits = 6
    database = (np.arange(num_bits)[None, :] < np.arange(num_bits + 1)[::-1, None]).astype(int)
    labels = np.array([1, 0, 1, 1, 0, 0, 1])
    query = np.zeros((1, num_bits), np.int64)
    for top_k in (None, 2, 3):
        assert mean_average_precision(query, database, [1], labels, top_k=top_k,
                                      ties="expected") == pytest.approx(
            mean_average_precision(query, database, [1], labels, top_k=top_k), abs=1e-14)


def test_mean_weights_equal_enumeration_of_inclusion_patterns():
    """E[mean over counted queries | some counts] for independent random inclusions."""
    rng = np.random.default_rng(3)
    for inclusion in (rng.random(7), np.array([1.0, 0.0, 0.3, 0.9, 0.5, 1.0]),
                      np.array([0.2, 0.7, 0.0])):
        values = rng.random(inclusion.size)
        numerator = probability_any = 0.0
        for pattern in itertools.product([0, 1], repeat=inclusion.size):
            pattern = np.array(pattern, bool)
            probability = np.prod(np.where(pattern, inclusion, 1 - inclusion))
            if pattern.any():
                numerator += probability * values[pattern].mean()
                probability_any += probability
        weights = mean_weights(inclusion)
        assert np.dot(weights, values) == pytest.approx(numerator / probability_any, abs=1e-12)
    # Many uncertain queries: the weights still sum to 1 (the deconvolution stays stable).
    weights = mean_weights(rng.random(2000))
    assert weights.sum() == pytest.approx(1.0, abs=1e-12) and (weights > 0).all()


# -------------------------------------------------------------- radius precision, PR curve


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("radius", [0, 1, 2, 5, 16, 40])
@BACKENDS
def test_precision_within_radius_matches_reference(multi_label, radius, backend):
    query, database, query_labels, db_labels = random_problem(
        20 + radius, num_bits=16, multi_label=multi_label)
    distances = ref_distances(query, database)
    relevance = ref_relevance(query_labels, db_labels)
    precisions, empty = [], 0
    for q in range(len(query)):
        ball = distances[q] <= radius
        if ball.sum() == 0:
            empty += 1
            precisions.append(0.0)
        else:
            precisions.append(relevance[q][ball].sum() / ball.sum())
    result = precision_within_hamming_radius(query, database, query_labels, db_labels,
                                             radius=radius, backend=backend)
    assert result.mean_precision == pytest.approx(np.mean(precisions), abs=1e-12)
    assert result.num_empty == empty
    if radius == 0:
        assert empty > 0  # the empty-ball rule is exercised
    np.testing.assert_allclose(result.precisions, precisions, rtol=0, atol=1e-12)


@pytest.mark.parametrize("empty_queries", ["exclude", "zero"])
@BACKENDS
def test_precision_recall_curve_matches_reference(empty_queries, backend):
    query, database, query_labels, db_labels = random_problem(30, num_bits=8)
    distances = ref_distances(query, database)
    relevance = ref_relevance(query_labels, db_labels)
    counted = [q for q in range(len(query))
               if empty_queries == "zero" or relevance[q].any()]
    precision = np.zeros(9)
    recall = np.zeros(9)
    for radius in range(9):
        for q in counted:
            ball = distances[q] <= radius
            hits = relevance[q][ball].sum()
            precision[radius] += hits / ball.sum() if ball.any() else 0.0
            recall[radius] += hits / relevance[q].sum() if relevance[q].any() else 0.0
    curve = precision_recall_curve(query, database, query_labels, db_labels,
                                   empty_queries=empty_queries, backend=backend)
    np.testing.assert_array_equal(curve.radius, np.arange(9))
    np.testing.assert_allclose(curve.precision, precision / len(counted), rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.recall, recall / len(counted), rtol=0, atol=1e-12)
    assert curve.num_excluded == len(query) - len(counted)
    assert curve.recall[-1] == pytest.approx(1.0 if empty_queries == "exclude" else
                                             len([q for q in counted if relevance[q].any()])
                                             / len(counted))


# ----------------------------------------------------------------- inner-product ranking


@pytest.mark.parametrize("top_k", [None, 10])
@BACKENDS
def test_inner_product_map_matches_reference(top_k, backend):
    query, database, query_labels, db_labels = random_problem(40, num_bits=8)
    inner_products = query @ database.T
    aps = ref_stable_aps(-inner_products, ref_relevance(query_labels, db_labels), top_k)
    result = inner_product_map(query, database, query_labels, db_labels, top_k=top_k,
                               backend=backend)
    assert result == pytest.approx(ref_mean(aps, "exclude"), abs=1e-12)
    assert result != mean_average_precision(query, database, query_labels, db_labels,
                                            top_k=top_k, backend=backend)


# ------------------------------------------------------------------ multi-hot label dtypes


@pytest.mark.parametrize("num_classes", [4, 70])  # 70: label masks span two 64-bit words
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, bool, np.uint8, np.int32])
@BACKENDS
def test_multi_hot_labels_of_any_dtype_give_the_integer_results(dtype, num_classes, backend):
    """Float (or bool, or any integer) 0/1 matrices are the same labels as int64 ones."""
    query, database, query_labels, db_labels = random_problem(
        70 + num_classes, num_items=200, multi_label=True, num_classes=num_classes)
    labels = (query_labels.astype(dtype), db_labels.astype(dtype))
    for kwargs in ({}, {"top_k": 25}, {"ties": "expected"}, {"ties": "expected", "top_k": 25},
                   {"empty_queries": "zero"}):
        reference = average_precisions(query, database, query_labels, db_labels,
                                       backend=backend, **kwargs)
        result = average_precisions(query, database, *labels, backend=backend, **kwargs)
        np.testing.assert_array_equal(result.values, reference.values)
        assert result.mean == reference.mean or (np.isnan(result.mean)
                                                 and np.isnan(reference.mean))
    assert mean_average_precision(query, database, *labels, backend=backend) == \
        mean_average_precision(query, database, query_labels, db_labels, backend=backend)
    assert inner_product_map(query, database, *labels, backend=backend) == \
        inner_product_map(query, database, query_labels, db_labels, backend=backend)
    np.testing.assert_array_equal(
        precision_within_hamming_radius(query, database, *labels, backend=backend).precisions,
        precision_within_hamming_radius(query, database, query_labels, db_labels,
                                        backend=backend).precisions)
    curve = precision_recall_curve(query, database, *labels, backend=backend)
    reference_curve = precision_recall_curve(query, database, query_labels, db_labels,
                                             backend=backend)
    np.testing.assert_array_equal(curve.precision, reference_curve.precision)
    np.testing.assert_array_equal(curve.recall, reference_curve.recall)
    # Mixed dtypes on the two sides are fine too.
    assert mean_average_precision(query, database, labels[0], db_labels, backend=backend) == \
        mean_average_precision(query, database, query_labels, db_labels, backend=backend)


def test_float_multi_hot_labels_must_be_exactly_zero_or_one():
    query, database, query_labels, db_labels = random_problem(80, num_items=30,
                                                              multi_label=True)
    query_labels, db_labels = query_labels.astype(float), db_labels.astype(float)
    half = query_labels.copy()
    half[3, 2] = 0.5
    with pytest.raises(ValueError, match=r"query_labels is 2-D, so it must be multi-hot.*"
                                         r"found 0\.5 at \[3, 2\]") as error:
        mean_average_precision(query, database, half, db_labels)
    assert "2-D multi-hot matrix [N, C] of 0/1 values" in str(error.value)
    with_nan = db_labels.copy()
    with_nan[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"db_labels is 2-D.*found nan at \[7, 1\]"):
        mean_average_precision(query, database, query_labels, with_nan)
    with pytest.raises(ValueError, match=r"db_labels is 2-D.*found 2\.0"):
        precision_within_hamming_radius(query, database, query_labels, 2 * db_labels)
    with pytest.raises(ValueError, match=r"query_labels is 2-D.*found -1"):
        precision_recall_curve(query, database, -query_labels.astype(np.int64), db_labels)


def test_labels_of_the_wrong_rank_or_dtype_name_the_argument_and_the_accepted_forms():
    query, database, query_labels, db_labels = random_problem(81, num_items=30,
                                                              multi_label=True)
    accepted = ("1-D integer class ids [N], or a 2-D multi-hot matrix [N, C] of 0/1 values "
                "with a bool, integer or float dtype")
    cases = [
        ("query_labels", r"query_labels must be .* got a 3-D array of shape \(40, 4, 1\)",
         (query_labels[:, :, None].astype(float), db_labels)),
        ("db_labels", r"db_labels must be .* got a 0-D array",
         (query_labels, np.float64(1.0))),
        ("query_labels", r"query_labels is 1-D, so it must hold integer class ids, got dtype "
                         r"float64", (np.zeros(40), np.zeros(30))),
        ("db_labels", r"db_labels is 2-D, so it must be multi-hot with a bool, integer or float "
                      r"dtype, got dtype <U\d+", (query_labels, db_labels.astype(str))),
        ("query_labels", r"query_labels must be .* not a regular array",
         ([[0, 1]] * 39 + [[0]], db_labels)),
    ]
    for name, pattern, labels in cases:
        with pytest.raises(ValueError, match=pattern) as error:
            mean_average_precision(query, database, *labels)
        message = str(error.value)
        assert name in message and accepted in message and "--" not in message
    with pytest.raises(ValueError, match=r"db_labels has 29 rows but db_bits has 30 \(one label "
                                         r"row per code row\)"):
        mean_average_precision(query, database, query_labels.astype(float),
                               db_labels[:-1].astype(float))


# ---------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_value_errors_naming_the_argument():
    query, database, query_labels, db_labels = random_problem(50, num_items=30)
    call = mean_average_precision
    with pytest.raises(ValueError, match="query_bits has 8 bits.*db_bits has 9"):
        call(query, np.zeros((30, 9), int), query_labels, db_labels)
    with pytest.raises(ValueError, match="query_bits has 1 bytes.*db_bits has 2"):
        call(pack_bits(query), np.zeros((30, 2), np.uint8), query_labels, db_labels,
             packed=True)
    with pytest.raises(ValueError, match="query_labels has 39 rows but query_bits has 40"):
        call(query, database, query_labels[:-1], db_labels)
    with pytest.raises(ValueError, match="db_labels has 31 rows but db_bits has 30"):
        call(query, database, query_labels, np.append(db_labels, 0))
    with pytest.raises(ValueError, match=r"ties must be one of \['stable', 'expected'\]"):
        call(query, database, query_labels, db_labels, ties="random")
    with pytest.raises(ValueError, match=r"empty_queries must be one of \['exclude', 'zero'\]"):
        call(query, database, query_labels, db_labels, empty_queries="skip")
    with pytest.raises(ValueError, match="empty_queries must be one of"):
        precision_recall_curve(query, database, query_labels, db_labels, empty_queries=None)
    with pytest.raises(ValueError, match="backend must be one of"):
        call(query, database, query_labels, db_labels, backend="torch")
    with pytest.raises(ValueError, match="query_bits must hold only 0 and 1"):
        call(2 * query - 1, database, query_labels, db_labels)
    with pytest.raises(ValueError, match="db_bits must hold only 0 and 1"):
        call(query, database + 1, query_labels, db_labels)
    with pytest.raises(ValueError, match="db_bits must have an integer or bool dtype"):
        call(query, database.astype(float), query_labels, db_labels)
    with pytest.raises(ValueError, match=r"query_bits must be a matrix"):
        call(query[0], database, query_labels[:1], db_labels)
    with pytest.raises(ValueError, match="db_bits must be packed codes"):
        call(pack_bits(query), database, query_labels, db_labels, packed=True)
    with pytest.raises(ValueError, match="query_labels and db_labels must both be"):
        call(query, database, np.eye(4, dtype=int)[query_labels % 4], db_labels)
    with pytest.raises(ValueError, match="query_labels is 2-D, so it must be multi-hot"):
        call(query, database, 2 * np.eye(4, dtype=int)[query_labels % 4],
             np.eye(4, dtype=int)[db_labels])
    with pytest.raises(ValueError, match="top_k must be None or a positive integer"):
        call(query, database, query_labels, db_labels, top_k=0)
    with pytest.raises(ValueError, match="packed must be True or False"):
        call(query, database, query_labels, db_labels, packed="auto")
    with pytest.raises(ValueError, match="radius must be a non-negative integer"):
        precision_within_hamming_radius(query, database, query_labels, db_labels, radius=-1)
    with pytest.raises(ValueError, match="chunk_size must be None or a positive integer"):
        call(query, database, query_labels, db_labels, chunk_size=0)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        call(query, database, query_labels, db_labels, num_threads=0)
    with pytest.raises(ValueError, match="query_packed has 1 bytes.*db_packed has 2"):
        hamming_distances(pack_bits(query), np.zeros((3, 2), np.uint8))


# ------------------------------------------------------------- compiled kernels vs NumPy


@pytest.mark.parametrize("num_bits", [8, 13, 64, 70, 128, 300])
@pytest.mark.parametrize("multi_label", [False, True])
def test_compiled_kernels_equal_the_numpy_path_bit_for_bit(num_bits, multi_label):
    """Several 64-bit words, padding bits, uint16 distances (300 bits), two label-mask words
    (70 classes): every metric is identical, not just close (the kernels add the precisions
    in rank order, as the NumPy path does)."""
    query, database, query_labels, db_labels = random_problem(
        80 + num_bits, num_queries=23, num_items=211, num_bits=num_bits,
        multi_label=multi_label, num_classes=70 if multi_label else 4)
    args = (query, database, query_labels, db_labels)
    for top_k in (None, 1, 7, 1000):
        for ties in ("stable", "expected"):
            for empty_queries in ("exclude", "zero"):
                results = [average_precisions(*args, top_k=top_k, ties=ties, backend=backend,
                                              empty_queries=empty_queries)
                           for backend in ("numpy", "numba")]
                np.testing.assert_array_equal(results[1].values, results[0].values)
                np.testing.assert_array_equal(results[1].inclusion_probability,
                                              results[0].inclusion_probability)
                assert results[1].mean == results[0].mean or np.isnan(results[0].mean)
        assert inner_product_map(*args, top_k=top_k, backend="numba") == \
            inner_product_map(*args, top_k=top_k, backend="numpy")
    for radius in (0, 2, num_bits // 3):
        np.testing.assert_array_equal(
            precision_within_hamming_radius(*args, radius=radius, backend="numba").precisions,
            precision_within_hamming_radius(*args, radius=radius, backend="numpy").precisions)
    curves = [precision_recall_curve(*args, backend=backend) for backend in ("numpy", "numba")]
    np.testing.assert_array_equal(curves[1].precision, curves[0].precision)
    np.testing.assert_array_equal(curves[1].recall, curves[0].recall)


def test_auto_backend_uses_numba_for_large_problems_when_installed(monkeypatch):
    query, database, query_labels, db_labels = random_problem(62, num_items=50)
    large = backends.AUTO_COMPILED_MIN_PAIRS
    assert backends.resolve_backend("auto", large) == "numba"
    assert backends.resolve_backend("auto", large - 1) == "numpy"  # compiling costs more
    monkeypatch.setattr(backends, "AUTO_COMPILED_MIN_PAIRS", 1)
    calls = []
    original = ap_module.compiled_ranking
    monkeypatch.setattr(ap_module, "compiled_ranking",
                        lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    compiled = mean_average_precision(query, database, query_labels, db_labels)
    assert calls  # "auto" ran the kernels
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` fail
    assert backends.resolve_backend("auto", large) == "numpy"
    assert mean_average_precision(query, database, query_labels, db_labels) == compiled
    with pytest.raises(ImportError, match=r'pip install "nac_tf\[fast\]"'):
        mean_average_precision(query, database, query_labels, db_labels, backend="numba")


def test_compiled_kernels_called_from_several_threads_at_once():
    """Numba's workqueue threading layer aborts the process on concurrent parallel launches;
    the kernels' launch lock makes concurrent callers wait instead."""
    query, database, query_labels, db_labels = random_problem(63, num_items=2000,
                                                              num_bits=16)
    serial = average_precisions(query, database, query_labels, db_labels, backend="numba")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: average_precisions(
            query, database, query_labels, db_labels, backend="numba", num_threads=2),
            range(8)))
    for result in results:
        np.testing.assert_array_equal(result.values, serial.values)


# --------------------------------------------------------------------------------- FAISS


def test_faiss_backend_matches_numpy():
    pytest.importorskip("faiss")
    query, database, query_labels, db_labels = random_problem(60, num_bits=16, num_items=500)
    packed_query, packed_db = pack_bits(query), pack_bits(database)
    np.testing.assert_array_equal(
        hamming_distances(packed_query, packed_db, chunk_size=7, backend="faiss"),
        hamming_distances(packed_query, packed_db))
    for kwargs in ({}, {"top_k": 20}, {"ties": "expected"}, {"ties": "expected", "top_k": 20}):
        numpy_result = average_precisions(query, database, query_labels, db_labels, **kwargs)
        faiss_result = average_precisions(query, database, query_labels, db_labels,
                                          backend="faiss", **kwargs)
        np.testing.assert_array_equal(faiss_result.values, numpy_result.values)
    np.testing.assert_array_equal(
        precision_within_hamming_radius(query, database, query_labels, db_labels,
                                        backend="faiss").precisions,
        precision_within_hamming_radius(query, database, query_labels, db_labels).precisions)


def test_missing_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    query, database, query_labels, db_labels = random_problem(61, num_items=20)
    with pytest.raises(ImportError, match=r'pip install "nac_tf\[faiss\]"'):
        mean_average_precision(query, database, query_labels, db_labels, backend="faiss")
