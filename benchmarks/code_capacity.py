"""Experiment: how many distinct codewords NAC learns, against the noisy channel's capacity.

    python benchmarks/code_capacity.py [--steps=600] [--code_dims=16,64,128]
        [--flip_probs=0.05,0.1,0.2,0.3,0.4,0.45] [--seed=0] [--lars_rule=simclr]
        [--head_init=keras] [--learning_rate=2.0] [--head_scale_by_sqrt_dim=true]
        [--batch_norm=sync]

NAC sends its code c in {-1, 1}^D through D binary symmetric channels with flip probability p
and maximises a lower bound on I(X; C~). Whatever the encoder does, I(X; C~) <= I(C; C~) <=
D (1 - H(p)) bits, the channel's capacity: 68 bits for D = 128 at p = 0.1 but only 3.7 bits at
p = 0.4 (the paper's hashing setting) and 0.9 bits at p = 0.45. This script pretrains NAC on
scikit-learn's digits (small CNN, the quickstart's recipe, `--steps` LARS steps) for every
(D, p), then encodes all 1 198 training images and counts their distinct codewords, the
plug-in entropy of the codeword distribution, the kNN top-1 of h and the Hamming mAP@all of
the codes; it writes results/code_capacity/ (JSON, markdown, PNG). Settings other than the
defaults (LARS rule, head initialisation, learning rate) make an ablation, written to
results/code_capacity_<setting>/.

Runs are recorded as they finish (results/code_capacity/runs/); running the command again
skips recorded runs, so an interrupted sweep continues.
"""
import argparse
import os

import numpy as np

from experiments import (RESULTS_DIR, RunRegistry, channel_capacity_bits, codeword_distribution,
                         exported_model_of_run, markdown_table, write_report)

EXPERIMENT = "code_capacity"


def codeword_statistics(config, results):
    """Distinct codewords and their plug-in entropy over all training images."""
    from nac_tf.data.catalog import load_source

    model = exported_model_of_run(config.model_dir)
    bits = model.hash_codes(load_source(config.dataset, seed=config.seed).train_images)
    return {"num_images": int(len(bits)), **codeword_distribution(bits)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--code_dims", default="16,64,128")
    parser.add_argument("--flip_probs", default="0.05,0.1,0.2,0.3,0.4,0.45")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lars_rule", default="simclr")
    parser.add_argument("--head_init", default="keras")
    parser.add_argument("--learning_rate", type=float, default=2.0)
    parser.add_argument("--head_scale_by_sqrt_dim", default="true", choices=("true", "false"))
    parser.add_argument("--batch_norm", default="sync", choices=("sync", "per_view"))
    parser.add_argument("--summarize", action="store_true",
                        help="only collect every results/code_capacity*/ run at D = 128 into "
                             "results/code_capacity/ablations.md")
    args = parser.parse_args()
    if args.summarize:
        summarize_ablations()
        return
    defaults = (("lars_rule", "simclr"), ("head_init", "keras"), ("learning_rate", 2.0),
                ("head_scale_by_sqrt_dim", "true"), ("batch_norm", "sync"), ("steps", 600))
    changed = [f"{name}_{getattr(args, name)}" for name, default in defaults
               if getattr(args, name) != default]
    experiment = "_".join([EXPERIMENT] + changed)
    code_dims = [int(d) for d in args.code_dims.split(",")]
    flip_probs = [float(p) for p in args.flip_probs.split(",")]

    from nac_tf.config import PretrainConfig

    registry = RunRegistry(experiment)
    rows, records = [], []
    for code_dim in code_dims:
        for p in flip_probs:
            name = f"D{code_dim}_p{p}_s{args.seed}_{args.steps}steps"
            # The quickstart's recipe (configs/quickstart.flags) with D and p varied.
            config = PretrainConfig(
                method="nac", dataset="digits", image_size=8, encoder="small_cnn",
                batch_size=128, train_steps=args.steps, learning_rate=args.learning_rate,
                warmup_epochs=10, lars_rule=args.lars_rule, head_init=args.head_init,
                head_scale_by_sqrt_dim=args.head_scale_by_sqrt_dim == "true",
                batch_norm=args.batch_norm,
                flip_prob=p, code_dim=code_dim, crop_area_min=0.4, flip=False,
                jitter_prob=0.0, grayscale_prob=0.0, knn_k=20, linear_eval_epochs=0,
                checkpoint_every_steps=args.steps, log_every_steps=50, seed=args.seed,
                model_dir=registry.model_dir(name))
            record = registry.run(name, config, codeword_statistics)
            analysis, results = record["analysis"], record["results"]
            capacity = channel_capacity_bits(p, code_dim)
            records.append({"code_dim": code_dim, "flip_prob": p,
                            "capacity_bits": capacity, **analysis,
                            "knn_top1": results["knn_top1"], "map_all": results["map_all"],
                            "final_batch_distinct_fraction":
                                results["final_metrics"]["distinct_code_fraction"]})
            rows.append([code_dim, p, f"{capacity:.2f}", analysis["distinct_codewords"],
                         f"{analysis['codeword_entropy_bits']:.2f}",
                         f"{analysis['largest_codeword_share']:.3f}",
                         f"{results['knn_top1']:.3f}", f"{results['map_all']:.3f}"])

    num_images = records[0]["num_images"]
    table = markdown_table(
        ["D", "p", "capacity D(1-H(p)) bits", f"distinct codewords (of {num_images})",
         "codeword entropy (bits)", "largest codeword share", "kNN top-1 (h)",
         "Hamming mAP@all"], rows)
    body = (f"NAC, small CNN on scikit-learn's digits ({num_images} training images, "
            f"{args.steps} LARS steps of batch 128, lr {args.learning_rate}, LARS rule "
            f"{args.lars_rule}, head initialisation {args.head_init}, head outputs / sqrt(D) "
            f"{args.head_scale_by_sqrt_dim}, BatchNorm {args.batch_norm}, seed {args.seed}); "
            "codewords counted over "
            "all training images; kNN (k = 20) and mAP: test images query the training "
            f"images.\n\n{table}\n\n![codewords against p](code_capacity.png)\n")
    write_report(experiment, {"steps": args.steps, "seed": args.seed,
                              "learning_rate": args.learning_rate, "lars_rule": args.lars_rule,
                              "head_init": args.head_init,
                              "head_scale_by_sqrt_dim": args.head_scale_by_sqrt_dim,
                              "batch_norm": args.batch_norm, "runs": records}, body,
                 "Distinct codewords against the channel's capacity")
    plot(records, code_dims, num_images, experiment)


def summarize_ablations(code_dim=128):
    """One table of every setting (results/code_capacity*/) at D = `code_dim`."""
    import glob
    import json

    rows, summary = [], []
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, EXPERIMENT + "*", "results.json"))):
        with open(path) as f:
            report = json.load(f)
        setting = os.path.basename(os.path.dirname(path))[len(EXPERIMENT) + 1:] or "defaults"
        by_p = {r["flip_prob"]: r for r in report["runs"] if r["code_dim"] == code_dim}
        if 0.1 not in by_p or 0.4 not in by_p:
            continue
        cells = [setting.replace("_", " ")]
        for p in (0.1, 0.4):
            r = by_p[p]
            # max(0, .): a single codeword has entropy -0.0 in floating point.
            cells.append(f"{max(0.0, r['codeword_entropy_bits']):.2f} / {r['map_all']:.3f} / "
                         f"{r['knn_top1']:.3f}")
        rows.append(cells)
        summary.append({"setting": setting, "command": report["command"],
                        "runs": [by_p[0.1], by_p[0.4]]})
    table = markdown_table(
        ["setting (changed from the defaults)", "p = 0.1: entropy (bits) / mAP / kNN",
         "p = 0.4: entropy (bits) / mAP / kNN"], rows)
    body = (f"D = {code_dim}, one seed; defaults: 600 LARS steps of batch 128 at lr 2, LARS rule "
            "simclr, Keras head initialisation, head outputs / sqrt(D), synchronized "
            "BatchNorm. The channel carries at most 68 bits at p = 0.1 and 3.7 bits at "
            "p = 0.4; log2 of the 1 198 images is 10.2 bits. Each setting's own table and "
            "command: results/code_capacity_<setting>/results.md.\n\n" + table + "\n")
    out = os.path.join(RESULTS_DIR, EXPERIMENT)
    from experiments import command_line, write_json
    write_json(os.path.join(out, "ablations.json"),
               {"command": command_line(), "code_dim": code_dim, "settings": summary})
    with open(os.path.join(out, "ablations.md"), "w") as f:
        f.write("# Code collapse at p = 0.4: ablations on digits\n\nRegenerate: "
                f"`{command_line()}` (after the runs of each setting)\n\n" + body)
    print(f"wrote {os.path.relpath(out)}/ablations.md")


def plot(records, code_dims, num_images, experiment):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, code_dim in enumerate(code_dims):
        rows = [r for r in records if r["code_dim"] == code_dim]
        ps = [r["flip_prob"] for r in rows]
        color = f"C{index}"
        left.plot(ps, [r["codeword_entropy_bits"] for r in rows], "o-", color=color,
                  label=f"D = {code_dim}: codeword entropy")
        dense = np.linspace(min(ps), max(ps), 100)
        left.plot(dense, [min(channel_capacity_bits(p, code_dim), np.log2(num_images))
                          for p in dense], "--", color=color,
                  label=f"D = {code_dim}: min(capacity, log2 N)")
        right.plot(ps, [r["map_all"] for r in rows], "o-", color=color, label=f"D = {code_dim}")
    left.set_xlabel("flip probability p")
    left.set_ylabel("bits")
    left.set_title("Entropy of the learned codewords vs. channel capacity")
    left.legend(fontsize=7)
    right.set_xlabel("flip probability p")
    right.set_ylabel("Hamming mAP@all")
    right.set_title("Retrieval with the codes")
    right.legend(fontsize=8)
    figure.tight_layout()
    path = os.path.join(RESULTS_DIR, experiment, "code_capacity.png")
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
