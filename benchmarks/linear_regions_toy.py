"""Experiment (Fig. 1): linear regions of a 2-layer width-4 ReLU network on 2-D data, before and
after NAC training.

    python benchmarks/linear_regions_toy.py [--seeds=0,1,2,3,4] [--steps=2000]
        [--flip_prob=0.1] [--view_noise=0.05] [--head_inits=pytorch,keras]

Setting. Data: 1 000 points of scikit-learn's two moons (noise 0.1, data seed 0), standardised
per coordinate. The network of Fig. 1 is 2 -> 4 -> 4 with ReLU units in both layers; here it is
NAC's own projection head (`nac_tf.methods.NAC`, head_hidden_dim = code_dim = 4) over an
identity encoder, so the code c = 1[a > 0] is the activation pattern of the network's last
layer and training uses the library's NAC step unchanged: the loss of Eq. 19 on tanh(a), the
noisy channel with flip probability p and the inference network (the same 2 -> 4 -> 4 shape,
reading the other view). Views: each point plus independent Gaussian noise N(0, view_noise^2)
per coordinate (the only augmentation that makes sense for 2-D points). Adam, batch of 256
points (512 rows), `--steps` steps.

Measured for every seed at initialisation and after training (library:
`nac_tf.experiments.linear_regions`): distinct activation patterns of both layers on the data
(regions holding data) and on a 400 x 400 grid over the data's bounding box, distinct last-layer
codewords, and the mean pairwise Hamming distance between the data's patterns. Writes
results/linear_regions/ (results.json, results.md, fig1_linear_regions.png). Runs in about a
minute on a CPU.
"""
import argparse
import os
import time

import numpy as np

from experiments import RESULTS_DIR, markdown_table, write_report

EXPERIMENT = "linear_regions"
WIDTH = 4
STATISTICS = ("regions_on_data", "regions_on_grid", "codewords_on_data", "codewords_on_grid",
              "mean_hamming_distance", "last_layer_mean_hamming_distance")


def two_moons(num_points, seed):
    """Standardised two moons [N, 2] (float32)."""
    from sklearn.datasets import make_moons

    points, _ = make_moons(num_points, noise=0.1, random_state=seed)
    return ((points - points.mean(0)) / points.std(0)).astype(np.float32)


def view_pairs(points, steps, batch_size, view_noise, seed):
    """(view1, view2) batches: the same `batch_size` sampled points, each view with its own
    N(0, view_noise^2) noise, one batch per step; drawn up front so a seed fixes everything."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(points), size=(steps, batch_size))
    clean = points[index]
    noise = view_noise * rng.standard_normal((2,) + clean.shape).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((clean + noise[0], clean + noise[1]))
    return dataset.repeat()


def build_nac(seed, flip_prob, head_init):
    """NAC with an identity encoder: the projection head is the 2 -> 4 -> 4 ReLU network."""
    import keras

    from nac_tf.methods import MethodConfig, build_method

    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential([keras.Input((2,)), keras.layers.Identity()], name="encoder")
    method = build_method(
        "nac", encoder,
        MethodConfig(code_dim=WIDTH, head_hidden_dim=WIDTH, seed=seed, head_init=head_init),
        flip_prob=flip_prob)
    method.build_networks((2,))
    return method


def network_weights(method):
    from nac_tf.experiments.linear_regions import dense_layer_weights

    return dense_layer_weights(method.projection_head)


def run_one(points, seed, head_init, args):
    import keras

    from nac_tf.experiments.linear_regions import region_statistics

    method = build_nac(seed, args.flip_prob, head_init)
    before_weights = network_weights(method)
    before = region_statistics(before_weights, points, resolution=args.resolution)
    method.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    start = time.time()
    history = method.fit(view_pairs(points, args.steps, args.batch_size, args.view_noise, seed),
                         steps_per_epoch=args.steps, epochs=1, verbose=0)
    after_weights = network_weights(method)
    after = region_statistics(after_weights, points, resolution=args.resolution)
    logs = {key: float(values[-1]) for key, values in history.history.items()}
    print(f"[{EXPERIMENT}] {head_init} seed {seed}: regions on data {before['regions_on_data']}"
          f" -> {after['regions_on_data']}, codewords {before['codewords_on_data']} -> "
          f"{after['codewords_on_data']} ({time.time() - start:.1f} s)", flush=True)
    return {"seed": seed, "head_init": head_init, "init": before, "trained": after,
            "final_logs": logs, "train_seconds": round(time.time() - start, 1),
            "weights": {"init": [[w.tolist(), b.tolist()] for w, b in before_weights],
                        "trained": [[w.tolist(), b.tolist()] for w, b in after_weights]}}


def summary(runs):
    """{statistic: {"init": (mean, std), "trained": (mean, std)}} over seeds."""
    out = {}
    for name in STATISTICS:
        out[name] = {}
        for stage in ("init", "trained"):
            values = np.array([run[stage][name] for run in runs], dtype=np.float64)
            out[name][stage] = [float(values.mean()), float(values.std())]
    out["runs_with_more_regions_on_data"] = int(sum(
        run["trained"]["regions_on_data"] > run["init"]["regions_on_data"] for run in runs))
    out["num_runs"] = len(runs)
    return out


def draw_figure(points, panels, path, resolution=300):
    """Fig. 1: each panel shades the regions (one colour per activation pattern) and draws the
    zero level set of every unit: first-layer lines solid, second-layer bent lines dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nac_tf.experiments.linear_regions import (activation_patterns, bounding_box,
                                                   grid_points, pre_activations)

    box = bounding_box(points)
    grid = grid_points(box, resolution)
    rows = list(dict.fromkeys(row for row, _, _, _ in panels))
    figure, axes = plt.subplots(len(rows), 2, figsize=(9, 4.3 * len(rows)), squeeze=False)
    colours = plt.get_cmap("tab20")
    for row_name, column, layers, title in panels:
        axis = axes[rows.index(row_name), column]
        patterns = activation_patterns(layers, grid)
        _, region_id = np.unique(patterns, axis=0, return_inverse=True)
        # A fixed shuffle of the region ids so neighbouring regions get unrelated colours.
        shuffled = np.random.default_rng(0).permutation(region_id.max() + 1)[region_id.ravel()]
        image = colours((shuffled % 20) / 19.0).reshape(resolution, resolution, 4)
        axis.imshow(image, origin="lower", extent=(*box[0], *box[1]), alpha=0.45,
                    interpolation="nearest", aspect="auto")
        gx = grid[:, 0].reshape(resolution, resolution)
        gy = grid[:, 1].reshape(resolution, resolution)
        for layer_index, a in enumerate(pre_activations(layers, grid)):
            for unit in range(a.shape[1]):
                values = a[:, unit].reshape(resolution, resolution)
                if values.min() < 0.0 < values.max():
                    axis.contour(gx, gy, values, levels=[0.0], colors="k",
                                 linewidths=1.0 if layer_index == 0 else 1.4,
                                 linestyles="solid" if layer_index == 0 else "dashed")
        axis.scatter(points[:, 0], points[:, 1], s=2, c="k", alpha=0.5)
        axis.set_title(title, fontsize=9)
        axis.set_xlim(*box[0])
        axis.set_ylim(*box[1])
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("2 -> 4 -> 4 ReLU network on two moons: activation boundaries (solid: "
                    "layer 1, dashed: layer 2)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _cell(pair, digits):
    mean, std = pair
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(args, results):
    lines = [
        "Two moons (1 000 points, standardised); network 2 -> 4 -> 4 ReLU = NAC's projection "
        "head over an identity encoder; the code is the last layer's pattern. Views: "
        f"Gaussian noise sigma = {args.view_noise}; NAC (Eq. 19) with flip probability "
        f"p = {args.flip_prob}, Adam lr {args.learning_rate}, batch {args.batch_size}, "
        f"{args.steps} steps. Grid: {args.resolution} x {args.resolution} over the data's "
        "bounding box. Mean ± std over seeds " + ", ".join(map(str, args.seeds)) + ".",
        "",
        "Regions = distinct activation patterns of both layers (8 bits); codewords = distinct "
        "last-layer patterns (4 bits, at most 16); Hamming = mean over pairs of data points "
        "(bits).",
    ]
    header = ["head init", "stage", "regions on data", "regions on grid", "codewords on data",
              "codewords on grid", "Hamming (8 bits)", "Hamming (code, 4 bits)"]
    rows = []
    for head_init, block in results["summary"].items():
        for stage in ("init", "trained"):
            rows.append([head_init, stage] + [
                _cell(block[name][stage], 1 if "hamming" not in name else 2)
                for name in STATISTICS])
    lines += ["", markdown_table(header, rows), "", "Per seed (init -> trained):", ""]
    per_seed = []
    for run in results["runs"]:
        per_seed.append([run["head_init"], run["seed"]] + [
            f"{run['init'][name]:.3g} -> {run['trained'][name]:.3g}" for name in STATISTICS])
    lines.append(markdown_table(["head init", "seed"] + header[2:], per_seed))
    lines += ["", "![Fig. 1](fig1_linear_regions.png)"]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--flip_prob", type=float, default=0.1)
    parser.add_argument("--view_noise", type=float, default=0.05)
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--num_points", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=400)
    parser.add_argument("--head_inits", default="pytorch,keras")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    head_inits = args.head_inits.split(",")

    points = two_moons(args.num_points, seed=0)
    runs = [run_one(points, seed, head_init, args) for head_init in head_inits
            for seed in args.seeds]
    results = {
        "settings": {key: value for key, value in vars(args).items()},
        "summary": {h: summary([r for r in runs if r["head_init"] == h]) for h in head_inits},
        "runs": runs,
    }
    out = os.path.join(RESULTS_DIR, EXPERIMENT)
    os.makedirs(out, exist_ok=True)
    first = args.seeds[0]
    panels = []
    for head_init in head_inits:
        run = next(r for r in runs if r["head_init"] == head_init and r["seed"] == first)
        for column, stage in enumerate(("init", "trained")):
            layers = [(np.array(w), np.array(b)) for w, b in run["weights"][stage]]
            stats = run[stage]
            panels.append((head_init, column, layers,
                           f"{head_init} init, seed {first}, {stage}: "
                           f"{stats['regions_on_data']} regions on data, "
                           f"{stats['codewords_on_data']} codewords"))
    draw_figure(points, panels, os.path.join(out, "fig1_linear_regions.png"))
    write_report(EXPERIMENT, results, markdown(args, results),
                 "Fig. 1 at toy scale: linear regions of a 2-layer width-4 ReLU network, "
                 "before and after NAC")


if __name__ == "__main__":
    main()
