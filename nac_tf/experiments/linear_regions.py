"""Linear regions of a ReLU MLP on data: activation patterns, their count and Hamming spread.

Sec. 2 / Figure 1 of the paper: a ReLU network is linear on each region where its activation
pattern (which units are on) is constant, and NAC maximises the number of such regions that
the data fall into. Sec. 3: the code of a layer is c = 1[a > 0] of its pre-activations a, and
the Hamming distance between two inputs' codewords counts the unit boundaries between them
(an effective number of regions traversed).

Conventions (shared with `nac_tf.code_statistics`): a unit is on when a > 0 strictly, so
a = 0 is the off bit. Every layer of `layers` is a ReLU layer whose pattern counts, the last
one included: in NAC the last layer is the projection head whose pre-activations give the code
(the code is sgn(a) rather than relu(a), but the zero level set, hence the pattern, is the
same). Positive rescaling of a layer's output (the head's 1/sqrt(D)) changes no pattern.

Counting distinct patterns counts the regions of the partition by patterns. For one hidden
layer these are exactly the linear regions (intersections of half-planes are convex, hence
connected); deeper, a pattern's region can be disconnected, so the count is a lower bound on
the number of connected linear regions that contain data.

Pure NumPy functions in float64: patterns are exact up to the float64 evaluation of a.
"""
import numpy as np


def _check_points(points, input_dim=None):
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"`points` must be a non-empty matrix [N, input_dim]; received shape "
                         f"{points.shape}.")
    if input_dim is not None and points.shape[1] != input_dim:
        raise ValueError(f"`points` must have the network's input width {input_dim}; received "
                         f"shape {points.shape}.")
    return points


def _check_layers(layers):
    """`layers` as a list of float64 (W [in, out], b [out]) with matching widths."""
    layers = [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
              for w, b in layers]
    if not layers:
        raise ValueError("`layers` must hold at least one (W, b) pair; received none.")
    for index, (w, b) in enumerate(layers):
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise ValueError(f"`layers[{index}]` must be (W [in, out], b [out]); received "
                             f"shapes {w.shape} and {b.shape}.")
        if index > 0 and w.shape[0] != layers[index - 1][0].shape[1]:
            raise ValueError(f"`layers[{index}]` takes {w.shape[0]} inputs but layer "
                             f"{index - 1} has {layers[index - 1][0].shape[1]} units.")
    return layers


def dense_layer_weights(model_or_layers):
    """[(W, b)] in float64 of the Dense layers of a Keras model (or of a list of Dense layers),
    in order; a Dense layer without bias gets b = 0.

    Only Dense layers carry weights in a ReLU MLP; any other layer with weights (BatchNorm,
    convolutions) would change the pre-activations, so it is refused. The caller asserts
    that the activations are ReLU (or that only the signs of the last layer matter).
    """
    import keras

    layers = (list(model_or_layers) if isinstance(model_or_layers, (list, tuple))
              else list(model_or_layers._flatten_layers(include_self=False, recursive=True)))
    weights = []
    for layer in layers:
        if isinstance(layer, keras.layers.Dense):
            # A Dense layer with a built-in activation other than ReLU would feed the next
            # layer something else than relu(a).
            if layer.activation not in (keras.activations.relu, keras.activations.linear):
                raise ValueError(f"`model_or_layers`: Dense layer {layer.name!r} has activation "
                                 f"{layer.activation.__name__!r}; only relu or linear apply.")
            kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float64)
            bias = (np.asarray(keras.ops.convert_to_numpy(layer.bias), dtype=np.float64)
                    if layer.use_bias else np.zeros(kernel.shape[1]))
            weights.append((kernel, bias))
        elif layer.weights and not isinstance(layer, (keras.Model, keras.layers.InputLayer)):
            raise ValueError(f"`model_or_layers` must hold Dense layers only; layer "
                             f"{layer.name!r} ({type(layer).__name__}) has weights.")
    if not weights:
        raise ValueError("`model_or_layers` has no Dense layer.")
    return weights


def pre_activations(layers, points):
    """Pre-activations a_l [N, units_l] of every layer of the ReLU MLP `layers` at `points`.

    h_0 = x, a_l = h_{l-1} W_l + b_l, h_l = relu(a_l) (Sec. 2).
    """
    layers = _check_layers(layers)
    h = _check_points(points, layers[0][0].shape[0])
    outputs = []
    for w, b in layers:
        a = h @ w + b
        outputs.append(a)
        h = np.maximum(a, 0.0)
    return outputs


def activation_patterns(layers, points, last_layer_only=False):
    """Boolean patterns [N, units] (1[a > 0], Sec. 3) of all layers concatenated in order, or
    of the last layer only (the code c of NAC's head)."""
    outputs = pre_activations(layers, points)
    if last_layer_only:
        outputs = outputs[-1:]
    return np.concatenate(outputs, axis=1) > 0.0


def _check_patterns(patterns):
    patterns = np.asarray(patterns)
    if patterns.ndim != 2 or patterns.shape[0] == 0:
        raise ValueError(f"`patterns` must be a non-empty matrix [N, units]; received shape "
                         f"{patterns.shape}.")
    if patterns.dtype != bool:
        raise ValueError(f"`patterns` must be boolean (1[a > 0]); received dtype "
                         f"{patterns.dtype}.")
    return patterns


def count_distinct_patterns(patterns):
    """Number of distinct rows of boolean `patterns` [N, units]: the regions holding the points."""
    return int(np.unique(_check_patterns(patterns), axis=0).shape[0])


def mean_hamming_distance(patterns):
    """Mean Hamming distance (in bits, not divided by the width) over the pairs i < j.

    Exact: bit d differs on n1_d * n0_d of the N (N - 1) / 2 pairs (n1_d points have it on,
    n0_d off), so the mean is sum_d n1_d n0_d / (N (N - 1) / 2), in integers then one
    division. 0 for a single point.
    """
    patterns = _check_patterns(patterns)
    n = patterns.shape[0]
    if n == 1:
        return 0.0
    on = np.count_nonzero(patterns, axis=0).astype(np.int64)
    differing_pairs = int(np.sum(on * (n - on)))
    return differing_pairs / (n * (n - 1) / 2)


def grid_points(box, resolution):
    """`resolution` x `resolution` points [resolution^2, 2] evenly spaced over the closed box
    ((x_min, x_max), (y_min, y_max)), x varying fastest (row-major images)."""
    (x_min, x_max), (y_min, y_max) = box
    if not (x_min < x_max and y_min < y_max):
        raise ValueError(f"`box` must be ((x_min, x_max), (y_min, y_max)) with min < max; "
                         f"received box={box!r}.")
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 2:
        raise ValueError(f"`resolution` must be an integer >= 2; received {resolution!r}.")
    xs = np.linspace(x_min, x_max, int(resolution))
    ys = np.linspace(y_min, y_max, int(resolution))
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def bounding_box(points):
    """((x_min, x_max), (y_min, y_max)) of 2-D `points`."""
    points = _check_points(points, 2)
    return tuple((float(points[:, k].min()), float(points[:, k].max())) for k in range(2))


def region_statistics(layers, points, box=None, resolution=400):
    """The Fig. 1 numbers of a ReLU MLP on data `points`:

      regions_on_data: distinct patterns of all layers over the points;
      codewords_on_data: distinct last-layer patterns (NAC's codewords);
      mean_hamming_distance / last_layer_mean_hamming_distance: mean over point pairs of the
        Hamming distance between all-layer / last-layer patterns (bits);
      regions_on_grid, codewords_on_grid: the same counts on a `resolution`^2 grid over
        `box` (2-D inputs only; default the points' bounding box).
    """
    all_layers = activation_patterns(layers, points)
    last = activation_patterns(layers, points, last_layer_only=True)
    statistics = {
        "num_points": int(all_layers.shape[0]),
        "regions_on_data": count_distinct_patterns(all_layers),
        "codewords_on_data": count_distinct_patterns(last),
        "mean_hamming_distance": mean_hamming_distance(all_layers),
        "last_layer_mean_hamming_distance": mean_hamming_distance(last),
    }
    if np.asarray(points).shape[1] == 2:
        box = bounding_box(points) if box is None else box
        grid = grid_points(box, resolution)
        statistics["regions_on_grid"] = count_distinct_patterns(
            activation_patterns(layers, grid))
        statistics["codewords_on_grid"] = count_distinct_patterns(
            activation_patterns(layers, grid, last_layer_only=True))
    return statistics
