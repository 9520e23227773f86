"""Table 3 at the paper's step count: NAC (p = 0.4) and SimCLR, 10 000 LARS steps.

    python benchmarks/hashing_long_runs.py [--methods=nac_p0.4,simclr] [--steps=10000]

The paper's hashing result comes from 10 000 steps (2 000 epochs of the 5 000 training
images); the CPU-scale Table 3 (`reproduce_paper.py --experiment=hashing`) stops at 1 000.
These runs are that table's selected runs trained ten times longer: the same method
settings, learning rate (each method's, as the 1 000-step table selected it on validation
queries), batch, encoder, views and seed, the warm-up still 5 % of training. Every
`--eval_every_steps` steps the trainer scores the current networks on the 1 000 validation
queries of that table's protocol (`eval_queries=validation`: database images that are not
pretraining images, against the rest of the database; never the real queries) and on the
kNN; the final row is the protocol's evaluation at the last step.

A run takes hours on 2 CPU cores. Ctrl-C or SIGTERM checkpoints the current step; the same
command continues. Each run's small state (its JSON files and newest checkpoint, ~3 MB) is
copied into results/hashing_long/run_state/ whenever the script stops, and a fresh clone
continues from there. Until every run has finished the report shows the trajectories so far.
Results: results/hashing_long/.
"""
import argparse
import json
import os
import signal
import sys

from experiments import (CIFAR10_ARCHIVE, RESULTS_DIR, RunRegistry, markdown_table,
                         write_report)
from nac_tf import run_directory
import reproduce_paper
from reproduce_paper import (AUTHORS_METRIC_NOTE, EFFECTIVE_BITS_NOTE, LABELS, METHOD_SETTINGS,
                             analysis_cell, codeword_analysis, hashing_config)

EXPERIMENT = "hashing_long"
METHODS = ("nac_p0.4", "simclr")


def selected_learning_rate(key):
    """The peak learning rate the 1 000-step Table 3 selected for `key` (its record)."""
    with open(os.path.join(RESULTS_DIR, "hashing", "results.json")) as f:
        selected = json.load(f)["selected_runs"][key][0]
    return RunRegistry("hashing").load(selected)["config"]["learning_rate"], selected


def run_name(key, learning_rate, steps, seed=0):
    return reproduce_paper.hashing_run_name(key, seed, steps, learning_rate)


def trajectory_of(registry, name):
    """The evaluations during training of run `name` so far: from its record when it has
    finished, else from its run directory or saved state."""
    record = registry.load(name)
    if record is not None:
        return record["results"].get("trajectory") or []
    for directory in (registry.model_dir(name), registry.state_dir(name)):
        if os.path.exists(run_directory.path_in(directory, run_directory.TRAJECTORY_FILE)):
            return run_directory.read_trajectory(directory)
    return []


def plot(curves, short_runs, path):
    """Validation mAP, kNN and the distinct codewords of the training batch against step,
    one line per method; the 1 000-step selected run's final validation mAP and kNN as a
    marker."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for index, (key, trajectory) in enumerate(curves.items()):
        steps = [entry["step"] for entry in trajectory]
        for axis, metric in zip(axes, ("map_all", "knn_top1", "distinct_code_fraction")):
            axis.plot(steps, [100 * entry[metric] for entry in trajectory], "o-",
                      markersize=3, color=f"C{index}", label=LABELS[key])
        short = short_runs[key]
        axes[0].plot([1000], [100 * short["analysis"]["validation_map_all"]], "s",
                     color=f"C{index}", markersize=8, fillstyle="none",
                     label=f"{LABELS[key]}, the 1 000-step run (its schedule ends there)")
        axes[1].plot([1000], [100 * short["results"]["knn_top1"]], "s", color=f"C{index}",
                     markersize=8, fillstyle="none")
    for axis, title in zip(axes, ("Hamming mAP@all (%), 1 000 validation queries",
                                  "kNN top-1 (%), queries vs. training images",
                                  "distinct codewords in a training batch of 256 (%)")):
        axis.set_xlabel("LARS step (batch 256)")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    # In the codeword panel, where the curves leave room (the mAP curves cross the middle).
    axes[2].legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="center right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def report(args, registry, names, short_runs):
    curves = {key: trajectory_of(registry, names[key]) for key in args.methods}
    step_count = f"{args.steps:,}".replace(",", " ")
    records = {key: registry.load(names[key]) for key in args.methods}
    rows = []
    for key in args.methods:
        for label, record in ((f"{LABELS[key]}, 1 000 steps", short_runs[key]),
                              (f"{LABELS[key]}, {step_count} steps", records[key])):
            if record is None:
                done = curves[key][-1]["step"] if curves[key] else 0
                rows.append([label, f"in progress: step {done} of {step_count}"] + [""] * 8)
                continue
            results, analysis = record["results"], record["analysis"]
            rows.append([label, record["config"]["learning_rate"]] + [
                f"{100 * value:.1f}" for value in (
                    analysis["validation_map_all"], results["map_all"],
                    results["map_all_expected_ties"], analysis["authors_map_all"],
                    results["knn_top1"], results["linear_top1"])]
                + [analysis["database_distinct_codewords"],
                   analysis_cell([record], "database_effective_bits")])
    table = markdown_table(
        ["run", "lr", "validation mAP (%)", "mAP@all (%), stable ties",
         "mAP@all (%), expected ties", "mAP@all (%), the authors' ranking", "kNN top-1 (%)",
         "linear top-1 (%)", "distinct codewords in the database",
         "effective bits (database)"], rows)
    trajectory_rows = []
    steps = sorted({entry["step"] for curve in curves.values() for entry in curve})
    for step in steps:
        row = [step]
        for key in args.methods:
            entry = next((e for e in curves[key] if e["step"] == step), None)
            row += ([f"{100 * entry['map_all']:.1f}", f"{100 * entry['knn_top1']:.1f}"]
                    if entry else ["", ""])
        trajectory_rows.append(row)
    trajectory = markdown_table(
        ["step"] + [f"{LABELS[key]} {metric}" for key in args.methods
                    for metric in ("validation mAP (%)", "kNN (%)")], trajectory_rows)
    body = (f"The selected runs of the 1 000-step Table 3 (results/hashing) trained for "
            f"{step_count} LARS steps of batch 256: CIFAR-10 retrieval split, resnet_tiny, "
            "128-bit codes, each method at the learning rate the 1 000-step table selected "
            "on validation queries, warm-up 5 % of training, seed 0. The trajectory is "
            f"measured every {args.eval_every_steps} steps on the 1 000 validation queries "
            "(database images that are not training images, against the rest of the "
            "database); the table's protocol columns are the 10 000 real queries at the "
            "last step. The 1 000-step runs' cosine schedule ends at step 1 000, so their "
            "marker is not a point of the long runs' curves. In the database's codes: "
            + EFFECTIVE_BITS_NOTE + ".\n\n"
            + table + "\n\n"
            + AUTHORS_METRIC_NOTE + "\n\n![validation mAP and kNN during training]"
            "(trajectories.png)\n\nEvery evaluation during training:\n\n" + trajectory + "\n")
    write_report(EXPERIMENT, {"steps": args.steps, "eval_every_steps": args.eval_every_steps,
                              "runs": {key: names[key] for key in args.methods},
                              "finished": {key: records[key] is not None
                                           for key in args.methods},
                              "trajectories": curves, "records": records}, body,
                 f"Table 3 at {step_count} steps: NAC (p = 0.4) and SimCLR")
    plot(curves, short_runs, os.path.join(RESULTS_DIR, EXPERIMENT, "trajectories.png"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="the runs, in the order they train: " + ", ".join(METHODS))
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--eval_every_steps", type=int, default=500)
    parser.add_argument("--checkpoint_every_steps", type=int, default=250)
    parser.add_argument("--archive", default=CIFAR10_ARCHIVE)
    parser.add_argument("--report_only", action="store_true",
                        help="write the report from what has run so far, train nothing")
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"--methods: {', '.join(sorted(unknown))} not among {', '.join(METHODS)}")
    if not os.path.exists(args.archive):
        parser.error(f"--archive: {args.archive} does not exist (the CIFAR-10 .npz archive)")
    # What hashing_config reads of the 1 000-step table's arguments.
    args.batch_size, args.linear_eval_epochs = 256, 100

    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signum
        print(f"{signal.Signals(signum).name}: stopping after the current step with a "
              "checkpoint", file=sys.stderr, flush=True)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)

    registry = RunRegistry(EXPERIMENT)
    names, short_runs = {}, {}
    for key in args.methods:
        learning_rate, short_name = selected_learning_rate(key)
        short_runs[key] = RunRegistry("hashing").load(short_name)
        names[key] = run_name(key, learning_rate, args.steps)
    if not args.report_only:
        from nac_tf.training import TrainingInterrupted

        for key in args.methods:
            learning_rate = short_runs[key]["config"]["learning_rate"]
            config = hashing_config(args, registry, names[key], 0,
                                    dict(METHOD_SETTINGS[key], learning_rate=learning_rate),
                                    evaluate_during_training=True).replace(
                eval_every_steps=args.eval_every_steps, eval_queries="validation",
                checkpoint_every_steps=args.checkpoint_every_steps)
            try:
                registry.run(names[key], config, codeword_analysis,
                             stop_requested=lambda: stop["signal"] is not None,
                             keep_state=True)
            except TrainingInterrupted as error:
                print(f"{names[key]}: {error}", file=sys.stderr)
                report(args, registry, names, short_runs)
                sys.exit(128 + stop["signal"])
    report(args, registry, names, short_runs)


if __name__ == "__main__":
    main()
