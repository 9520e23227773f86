"""The engines of a hash index (nac_tf.search.engines): exact flat search on FAISS, on
nac_tf's own compiled kernel and on its NumPy fallback against a brute-force Hamming ranking
with ties in id order; the approximate kinds; the parameters and their defaults; the
engines without FAISS or Numba. No TensorFlow here.
"""
import sys

import numpy as np
import pytest

from nac_tf.search import engines
from nac_tf.settings import ConfigError

EXACT_ENGINES = pytest.mark.parametrize("engine", ["faiss", "nac_tf", "numpy"])


def brute_force(query_bits, db_bits, k):
    """(ids, distances) of the k first items of a stable sort of the Hamming distances,
    counted bit by bit."""
    distances = (query_bits[:, None, :] != db_bits[None, :, :]).sum(axis=2)
    ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(distances, ids, axis=1)


def exact_engine(engine, code_bytes):
    """An empty exact engine: FAISS, the own kernel (Numba), or the own engine with Numba
    made unimportable (its NumPy fallback)."""
    return engines.make_engine("flat", code_bytes, {}, "nac_tf" if engine == "numpy"
                               else engine)


def search(engine_name, engine, packed, k, monkeypatch):
    if engine_name == "numpy":  # `import ... hamming_kernels` now fails as without Numba
        monkeypatch.setitem(sys.modules, "nac_tf.evaluation.retrieval.hamming_kernels", None)
    return engines.search_engine(engine, packed, k)


@EXACT_ENGINES
@pytest.mark.parametrize("bits, items, k", [(8, 400, 25), (12, 300, 300), (72, 200, 7),
                                            (130, 90, 1)])
def test_exact_flat_equals_brute_force_with_ties_in_id_order(engine, bits, items, k,
                                                             monkeypatch):
    rng = np.random.default_rng(bits)
    # 8 and 12 bits over hundreds of items: most distances are shared by many items.
    db_bits = rng.integers(0, 2, (items, bits))
    query_bits = np.concatenate([rng.integers(0, 2, (20, bits)), db_bits[:5]])
    index = exact_engine(engine, -(-bits // 8))
    index.add(np.packbits(db_bits[:items // 3], axis=1))  # added in two parts
    index.add(np.packbits(db_bits[items // 3:], axis=1))
    ids, distances = search(engine, index, np.packbits(query_bits, axis=1), k, monkeypatch)
    expected_ids, expected_distances = brute_force(query_bits, db_bits, k)
    assert ids.dtype == np.int64 and distances.dtype == np.int32
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(distances, expected_distances)
    assert index.memory_bytes() >= items * -(-bits // 8)


def test_sorted_results_orders_by_distance_then_id_with_missing_last():
    ids = np.array([[7, 3, -1, 5, 1], [2, -1, -1, 0, 9]])
    distances = np.array([[2, 2, 2147483647, 1, 2], [0, -1, 7, 0, 3]])
    sorted_ids, sorted_distances = engines.sorted_results(ids, distances)
    np.testing.assert_array_equal(sorted_ids, [[5, 1, 3, 7, -1], [0, 2, 9, -1, -1]])
    np.testing.assert_array_equal(sorted_distances, [[1, 2, 2, 2, -1], [0, 0, 3, -1, -1]])


def _near(rng, centres, per_centre, flips):
    """Codes near the rows of `centres`, each bit flipped with probability `flips`."""
    codes = np.repeat(centres, per_centre, axis=0)
    return codes ^ (rng.random(codes.shape) < flips)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_return_true_distances_sorted_and_mostly_the_exact_set(kind):
    rng = np.random.default_rng(1)
    centres = rng.integers(0, 2, (40, 64))
    db_bits, query_bits = _near(rng, centres, 50, 0.08), _near(rng, centres, 1, 0.08)
    packed, queries = np.packbits(db_bits, axis=1), np.packbits(query_bits, axis=1)
    parameters = engines.resolve_parameters(kind, len(packed))
    index = engines.make_engine(kind, 8, parameters)
    index.add(packed)
    ids, distances = engines.search_engine(index, queries, 10)
    found = ids >= 0
    true = (query_bits[:, None, :] != db_bits[ids]).sum(axis=2)
    np.testing.assert_array_equal(distances[found], true[found])
    order = np.lexsort((ids, distances), axis=1)
    np.testing.assert_array_equal(order, np.tile(np.arange(10), (len(ids), 1)))
    # Recall by distance (ties make the ids of an exact answer one choice of several).
    exact_distances = brute_force(query_bits, db_bits, 10)[1]
    assert np.mean(distances[:, -1] <= exact_distances[:, -1]) >= 0.9
    # Searching every list (ivf) or a wide beam (hnsw) is exact on these codes.
    wide = {"ivf": {"nprobe": parameters.get("nlist")}, "hnsw": {"ef_search": 2000}}[kind]
    ids, distances = engines.search_engine(index, queries, 10, wide)
    np.testing.assert_array_equal(distances, exact_distances)
    assert index.memory_bytes() > packed.nbytes


def test_default_parameters_follow_the_documented_rule():
    assert engines.default_parameters("flat", 10) == {}
    assert engines.default_parameters("hnsw", 1198) == {"m": 16, "ef_construction": 128,
                                                        "ef_search": 176}
    assert engines.default_parameters("hnsw", 1_000_000) == {"m": 32, "ef_construction": 256,
                                                             "ef_search": 320}
    assert engines.default_parameters("hnsw", 10) == {"m": 16, "ef_construction": 128,
                                                      "ef_search": 64}
    # sqrt(N) lists, but at least 39 training codes per list.
    assert engines.default_parameters("ivf", 50_000) == {"nlist": 224, "nprobe": 28}
    assert engines.default_parameters("ivf", 1198) == {"nlist": 30, "nprobe": 4}
    assert engines.default_parameters("ivf", 20) == {"nlist": 1, "nprobe": 1}
    assert engines.resolve_parameters("ivf", 5000, {"nlist": 0, "nprobe": 3}) == {
        "nlist": 71, "nprobe": 3}
    assert engines.search_parameters("hnsw", {"m": 16, "ef_construction": 128,
                                              "ef_search": 64}, {"ef_search": 0}) == {
        "ef_search": 64}


@pytest.mark.parametrize("call, name, words", [
    (lambda: engines.resolve_parameters("annoy", 10), "kind", "not one of: flat, hnsw, ivf"),
    (lambda: engines.resolve_parameters("hnsw", 10, {"nprobe": 2}), "nprobe",
     "applies to ivf indexes; this index is hnsw"),
    (lambda: engines.resolve_parameters("ivf", 10, {"depth": 2}), "depth",
     "is not a parameter of any index kind"),
    (lambda: engines.resolve_parameters("ivf", 100, {"nlist": 101}), "nlist",
     "101 lists need at least as many codes; the collection has 100"),
    (lambda: engines.resolve_parameters("hnsw", 100, {"m": -1}), "m",
     "must be a positive integer"),
    (lambda: engines.search_parameters("ivf", {"nlist": 2, "nprobe": 1}, {"nlist": 3}),
     "nlist", "applies to ivf indexes"),
])
def test_bad_parameters_are_refused_naming_them(call, name, words):
    with pytest.raises(ConfigError) as error:
        call()
    assert error.value.field == name and words in error.value.reason


def test_without_faiss_flat_runs_on_the_own_kernel_and_the_others_name_the_extra(
        monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails
    assert engines.default_engine("flat") == "nac_tf"
    assert isinstance(engines.make_engine("flat", 2, {}), engines.ExactEngine)
    for kind in ("hnsw", "ivf"):
        with pytest.raises(ConfigError) as error:
            engines.make_engine(kind, 2, engines.default_parameters(kind, 100))
        assert error.value.reason == f'a {kind} index needs FAISS: pip install "nac_tf[faiss]"'
    with pytest.raises(ConfigError, match="runs flat indexes only"):
        engines.make_engine("hnsw", 2, {}, engine="nac_tf")
