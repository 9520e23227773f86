"""Linear-region counts against independent float64 references written from the definitions.

References: a per-unit, per-point Python loop for the network (no matrix products), Python
sets of tuples for distinct patterns, a double loop over pairs for the mean Hamming distance,
and for one hidden layer the exact number of regions of a line arrangement in a box (Euler's
formula). Counts are integers and must match exactly; means are compared with rtol 1e-12
(float64, the library sums integers and divides once).
"""
import itertools

import keras
import numpy as np
import pytest

from nac_tf.experiments import linear_regions as lr


def _random_layers(rng, widths, bias_scale=0.5):
    return [(rng.normal(size=(n_in, n_out)), bias_scale * rng.normal(size=n_out))
            for n_in, n_out in zip(widths[:-1], widths[1:])]


def _loop_patterns(layers, points, last_layer_only=False):
    """1[a > 0] of every unit, evaluated one unit and one point at a time."""
    rows = []
    for x in np.asarray(points, dtype=np.float64):
        h, bits = list(x), []
        for w, b in layers:
            a = [sum(h[i] * w[i][j] for i in range(len(h))) + b[j] for j in range(len(b))]
            bits.append([value > 0.0 for value in a])
            h = [max(value, 0.0) for value in a]
        rows.append(tuple(bits[-1]) if last_layer_only else tuple(itertools.chain(*bits)))
    return rows


def _loop_mean_hamming(rows):
    n = len(rows)
    if n == 1:
        return 0.0
    total = 0
    for i in range(n):
        for j in range(i + 1, n):
            total += sum(a != b for a, b in zip(rows[i], rows[j]))
    return total / (n * (n - 1) / 2)


@pytest.mark.parametrize("widths", [(2, 4), (2, 4, 4), (3, 5, 2, 3)])
@pytest.mark.parametrize("last_layer_only", [False, True])
def test_patterns_counts_and_hamming_match_loops(widths, last_layer_only):
    rng = np.random.default_rng(sum(widths))
    layers = _random_layers(rng, widths)
    points = rng.normal(size=(150, widths[0]))
    patterns = lr.activation_patterns(layers, points, last_layer_only=last_layer_only)
    reference = _loop_patterns(layers, points, last_layer_only)
    assert [tuple(row) for row in patterns] == reference
    assert lr.count_distinct_patterns(patterns) == len(set(reference))
    np.testing.assert_allclose(lr.mean_hamming_distance(patterns), _loop_mean_hamming(reference),
                               rtol=1e-12)


def test_grid_count_of_two_layer_net_matches_loop():
    # Fig. 1's network, 2 -> 4 -> 4, on a 60 x 60 grid classified by the unit-by-unit loop.
    rng = np.random.default_rng(7)
    layers = _random_layers(rng, (2, 4, 4))
    box = ((-2.0, 1.5), (-1.0, 2.5))
    grid = lr.grid_points(box, 60)
    counts = lr.region_statistics(layers, grid, box, resolution=60)
    for last_layer_only, key in ((False, "regions_on_grid"), (True, "codewords_on_grid")):
        assert counts[key] == len(set(_loop_patterns(layers, grid, last_layer_only)))
    # The grid spans the closed box, x fastest.
    assert grid.shape == (3600, 2)
    np.testing.assert_array_equal(grid[0], [-2.0, -1.0])
    np.testing.assert_array_equal(grid[59], [1.5, -1.0])
    np.testing.assert_array_equal(grid[-1], [1.5, 2.5])


def _arrangement_regions_in_box(layer, half_width):
    """Exact regions of the lines w_j . x + b_j = 0 inside the open box (-s, s)^2 for lines in
    general position: 1 + (lines crossing the box) + (crossings inside the box), by Euler's
    formula (each line adds 1 + the number of earlier lines it crosses inside the box).
    Also returns the smallest distance between any two "features" (crossings, the points where
    lines meet the boundary, the corners) so the caller can insist the grid resolves them."""
    w, b = layer
    lines = [(w[:, j], b[j]) for j in range(w.shape[1])]
    s = half_width
    corners = [np.array(c) for c in itertools.product((-s, s), repeat=2)]
    features, crossing_lines = list(corners), 0
    for normal, offset in lines:
        # Where the line meets the four sides of the box.
        hits = []
        for axis in (0, 1):
            for side in (-s, s):
                other = 1 - axis
                if normal[other] != 0:
                    point = np.empty(2)
                    point[axis] = side
                    point[other] = -(offset + normal[axis] * side) / normal[other]
                    if abs(point[other]) < s:
                        hits.append(point)
        if hits:
            crossing_lines += 1
            features.extend(hits)
    crossings = 0
    for (n1, o1), (n2, o2) in itertools.combinations(lines, 2):
        point = np.linalg.solve(np.stack([n1, n2]), -np.array([o1, o2]))
        if np.all(np.abs(point) < s):
            crossings += 1
            features.append(point)
    separation = min(np.linalg.norm(p - q) for p, q in itertools.combinations(features, 2))
    angles = [abs(np.arctan2(n1[1], n1[0]) - np.arctan2(n2[1], n2[0])) % np.pi
              for (n1, _), (n2, _) in itertools.combinations(lines, 2)]
    smallest_angle = min(min(a, np.pi - a) for a in angles)
    return 1 + crossing_lines + crossings, separation, smallest_angle


def test_one_hidden_layer_grid_count_equals_exact_arrangement_count():
    # 4 random lines in the box (-1, 1)^2. Nets whose features (crossings, boundary hits,
    # corners) are closer than 0.15 or whose lines meet at under 15 degrees are skipped: they
    # can have slivers thinner than the grid. In the others every region is a convex polygon
    # with vertices >= 0.15 apart and no angle sharper than 15 degrees between lines, much
    # wider than the 801-point grid's spacing 0.0025.
    rng = np.random.default_rng(0)
    checked, exact_counts = 0, []
    while checked < 6:
        layer = _random_layers(rng, (2, 4), bias_scale=0.6)[0]
        exact, separation, angle = _arrangement_regions_in_box(layer, 1.0)
        if separation < 0.15 or angle < np.radians(15):
            continue
        box = ((-1.0, 1.0), (-1.0, 1.0))
        assert lr.region_statistics([layer], np.array(box).T, box, 801)["regions_on_grid"] \
            == exact
        checked += 1
        exact_counts.append(exact)
    # The checked arrangements are not all trivial: some have crossings inside the box.
    assert max(exact_counts) > 5


def test_all_points_in_one_region():
    # Every unit is on for points with positive coordinates: one pattern, distance 0.
    layers = [(np.eye(2), np.zeros(2)), (np.ones((2, 3)), np.ones(3))]
    points = np.random.default_rng(3).uniform(0.1, 1.0, size=(40, 2))
    stats = lr.region_statistics(layers, points, resolution=20)
    assert stats["regions_on_data"] == stats["codewords_on_data"] == 1
    assert stats["mean_hamming_distance"] == stats["last_layer_mean_hamming_distance"] == 0.0
    assert stats["regions_on_grid"] == stats["codewords_on_grid"] == 1


def test_duplicate_points_and_single_point():
    rng = np.random.default_rng(4)
    layers = _random_layers(rng, (2, 4, 4))
    base = rng.normal(size=(6, 2))
    points = base[[0, 1, 2, 0, 3, 4, 5, 5, 1]]
    patterns = lr.activation_patterns(layers, points)
    reference = _loop_patterns(layers, points)
    assert lr.count_distinct_patterns(patterns) == len(set(reference))
    assert lr.count_distinct_patterns(patterns) <= 6
    np.testing.assert_allclose(lr.mean_hamming_distance(patterns), _loop_mean_hamming(reference),
                               rtol=1e-12)
    assert lr.mean_hamming_distance(patterns[:1]) == 0.0
    assert lr.count_distinct_patterns(patterns[:1]) == 1


def test_zero_pre_activation_is_the_off_bit():
    # The unit x_0 - 1 is exactly 0 at x_0 = 1: off, like a negative value.
    layers = [(np.array([[1.0], [0.0]]), np.array([-1.0]))]
    patterns = lr.activation_patterns(layers, [[1.0, 5.0], [0.0, 0.0], [2.0, 0.0]])
    np.testing.assert_array_equal(patterns[:, 0], [False, False, True])


def test_keras_mlp_weights_give_its_pre_activations():
    rng = np.random.default_rng(5)
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(4, bias_initializer="random_normal")])
    layers = lr.dense_layer_weights(model)
    assert [w.shape for w, _ in layers] == [(2, 4), (4, 4)]
    points = rng.normal(size=(50, 2)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(points)).astype(np.float64)
    # float32 Keras against the float64 library: rounding of 2 small matrix products.
    np.testing.assert_allclose(lr.pre_activations(layers, points)[-1], expected,
                               rtol=1e-5, atol=1e-6)


def test_projection_head_weights_and_refused_layers():
    from nac_tf.models import ProjectionHead

    head = ProjectionHead(hidden_dim=4, output_dim=3, initializer="pytorch")
    points = np.random.default_rng(6).normal(size=(30, 2)).astype("float32")
    a = keras.ops.convert_to_numpy(head(points))
    layers = lr.dense_layer_weights(head)
    # The head divides by sqrt(3): a positive scale, so the signs (the code) agree.
    np.testing.assert_allclose(lr.pre_activations(layers, points)[-1] / np.sqrt(3.0), a,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lr.activation_patterns(layers, points, True), a > 0)
    # BatchNorm changes the pre-activations: refused, not skipped.
    normalised = ProjectionHead(hidden_dim=4, output_dim=3, use_batch_norm=True)
    normalised(points)
    with pytest.raises(ValueError, match="model_or_layers"):
        lr.dense_layer_weights(normalised)
    with pytest.raises(ValueError, match="model_or_layers"):
        lr.dense_layer_weights([keras.layers.Dense(2, activation="tanh")])


@pytest.mark.parametrize("call, match", [
    (lambda: lr.activation_patterns([], [[0.0, 0.0]]), "layers"),
    (lambda: lr.activation_patterns([(np.ones((2, 3)), np.ones(2))], [[0.0, 0.0]]), "layers"),
    (lambda: lr.activation_patterns([(np.ones((2, 3)), np.ones(3)), (np.ones((2, 1)), np.ones(1))],
                                    [[0.0, 0.0]]), "layers"),
    (lambda: lr.activation_patterns([(np.ones((3, 3)), np.ones(3))], [[0.0, 0.0]]), "points"),
    (lambda: lr.count_distinct_patterns(np.ones((2, 2))), "patterns"),
    (lambda: lr.mean_hamming_distance(np.zeros((0, 2), bool)), "patterns"),
    (lambda: lr.grid_points(((1.0, 0.0), (0.0, 1.0)), 10), "box"),
    (lambda: lr.grid_points(((0.0, 1.0), (0.0, 1.0)), 1), "resolution"),
])
def test_bad_arguments_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
