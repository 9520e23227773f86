"""Scaled reproductions of the paper's CIFAR-10 results on CPU: Table 3, Table 1, Fig. 4.

    python benchmarks/reproduce_paper.py --experiment=hashing      # Table 3 (+ trajectories)
    python benchmarks/reproduce_paper.py --experiment=linear       # Table 1
    python benchmarks/reproduce_paper.py --experiment=flip_sweep   # Fig. 4
    python benchmarks/reproduce_paper.py --experiment=nac_ablations  # NAC p = 0.4 variants
    python benchmarks/reproduce_paper.py --experiment=all [--seeds=0,1] [--steps=N]

Every method of one table gets the same budget: the same encoder (`resnet_tiny`, a
ResNet with the CIFAR stem, 128-d representation), batch 256, number of LARS steps, learning
rate schedule and augmentation (the paper's CIFAR recipe), and the paper's hyperparameters
(weight decay 1e-6, D = 128; SimCLR tau = 0.5, MoCo-v2 tau = 0.2; NAC p = 0.4 for hashing,
0.1 for classification). The one setting chosen here is the hashing table's peak learning
rate, per method, from `--learning_rates` (the paper's 3.0 and a lower 0.5), by a validation
mAP on database images; no test image or query ever chose a setting. The linear table uses
the paper's 3.0. One deviation from the linear protocol, for every
method alike: the linear probe trains on the frozen features of unaugmented images (the
protocol's crop + flip runs the encoder over the training set in each of 100 epochs of 5
fits, hours per run on 2 CPU cores).

- hashing (paper Table 3): the CIFAR-10 retrieval split of the real archive
  (`--dataset=cifar10_hashing`: train + test pooled, 1 000 queries per class, the other
  50 000 images the database, 500 training images per class drawn from it; seeded), NAC
  (p = 0.4) against SimCLR and MoCo-v2 sign codes; Hamming mAP@all with ties in database
  order and the tie-independent expected mAP, plus the number of distinct codewords in the
  database. NAC and SimCLR also evaluate during training (kNN and 1 000-query mAP every
  `steps / 5` steps), which gives the trajectory plot.
- linear (paper Table 1): the 50 000 bit-exact training images, 1 000 per class held out
  (seeded) as the test set, NAC (p = 0.1), NAC-MQ, SimCLR, MoCo-v2, and AMDIM (its own
  encoder, optimiser and views, `amdim_xs`, at the same steps and batch); linear top-1 (the
  protocol: SGD + Nesterov, lr searched on a validation split of the training set; on
  unaugmented features, see above) and kNN top-1.
- flip_sweep (paper Fig. 4): NAC on the retrieval split with p in {0.05, 0.1, 0.2, 0.3,
  0.4, 0.45} at the learning rate the hashing table selected for NAC; linear top-1 (trained
  on the 5 000 training images, tested on the 10 000 queries) and Hamming mAP@all against
  p. The p = 0.4 run is the hashing table's NAC run (so this experiment runs that table
  first).
- nac_ablations: NAC (p = 0.4) on the hashing protocol with one setting changed at a time
  (no sqrt(D) division, the authors' LARS rule, PyTorch head initialisation, per-view
  BatchNorm), and SimCLR at NAC's effective temperature.

Runs are recorded in results/<experiment>/runs/ as they finish, so the same command
continues an interrupted set (see benchmarks/experiments.py). Results: results/<experiment>/.
"""
import argparse
import os

import numpy as np

from experiments import (CIFAR10_ARCHIVE, RESULTS_DIR, RUNS_DIR, RunRegistry,
                         authors_hash_map, channel_capacity_bits, cifar10_exact_split, code_bit_statistics,
                         codeword_distribution, exported_model_of_run, markdown_table,
                         write_report)
from nac_tf.evaluation.monitor import validation_split

FLIP_SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.45)
METHOD_SETTINGS = {
    "nac_p0.4": dict(method="nac", flip_prob=0.4),
    "nac_p0.1": dict(method="nac", flip_prob=0.1),
    "nac_mq": dict(method="nac_mq", flip_prob=0.1, queue_size=12800, momentum=0.99),
    "simclr": dict(method="simclr", temperature=0.5),
    "moco_v2": dict(method="moco_v2", temperature=0.2, queue_size=12800, momentum=0.99),
    # AMDIM with its own recipe (configs/cifar10_amdim.flags) on the shared budget: the
    # encoder must expose 5x5 and 7x7 maps, so it is amdim_xs, whose training step costs
    # about resnet_tiny's; Adam and the step decay at the authors' fractions of training.
    "amdim": dict(method="amdim", encoder="amdim_xs", optimizer="adam", learning_rate=2e-4,
                  adam_beta1=0.8, adam_beta2=0.999, weight_decay=1e-5,
                  lr_schedule="warmup_step", lr_decay_fractions="0.8333333,0.9333333",
                  lr_decay_factor=0.2, augmentation="amdim",
                  # AMDIM's second protocol too (results/linear/runs/amdim_*.json).
                  mlp_eval_epochs=100),
}
LABELS = {"nac_p0.4": "NAC (p = 0.4)", "nac_p0.1": "NAC (p = 0.1)", "nac_mq": "NAC-MQ (p = 0.1)",
          "simclr": "SimCLR (sign codes)", "moco_v2": "MoCo-v2 (sign codes)",
          "amdim": "AMDIM (amdim_xs)"}
LINEAR_METHODS = ("nac_p0.1", "nac_mq", "simclr", "moco_v2", "amdim")


def base_config(args, seed, **changes):
    """The shared budget of every run (see the module docstring)."""
    from nac_tf.config import PretrainConfig

    fields = dict(encoder="resnet_tiny", stem="cifar", batch_size=args.batch_size,
                  train_steps=args.steps, learning_rate=3.0, learning_rate_scaling="none",
                  weight_decay=1e-6, code_dim=128, crop_area_min=0.08, blur_prob=0.0,
                  checkpoint_every_steps=max(args.steps // 10, 1), log_every_steps=25,
                  linear_eval_epochs=args.linear_eval_epochs,
                  linear_eval_augment=False, seed=seed)
    fields.update(changes)
    return PretrainConfig(**fields)


def hashing_config(args, registry, name, seed, settings, evaluate_during_training):
    steps_per_epoch = 5000 // args.batch_size
    # The authors' hashing schedule warms up for 5 % of training (100 of 2 000 epochs).
    warmup_epochs = 0.05 * args.steps / steps_per_epoch
    return base_config(
        args, seed, dataset="cifar10_hashing", data_dir=args.archive,
        warmup_epochs=warmup_epochs, model_dir=registry.model_dir(name),
        eval_every_steps=max(args.steps // 5, 1) if evaluate_during_training else 0,
        **settings)


# The validation retrieval task that chooses the learning rates: this many database images
# that are not pretraining images query the rest of the database
# (`nac_tf.evaluation.monitor.validation_split`); the protocol's queries are never touched.
VALIDATION_QUERIES = 1000


def random_init_model(config, source):
    """The run's networks at their initialisation (seeded as the trainer seeds them), as
    its evaluation wraps them: the random-init baseline's codes."""
    from nac_tf.export import ExportedModel
    from nac_tf.recipes import input_statistics_of, method_for_run, run_image_size

    method = method_for_run(config, source)
    return ExportedModel.from_method(method, input_statistics_of(
        config, source, run_image_size(config, source)))


def authors_metrics(model, arrays, database_codes, prefix=""):
    """mAP@all of the 10 000 protocol queries ranked as the NAC authors' hash_utils ranks
    them (`authors_hash_map`: inner product of {0, 1} codes, NumPy's unstable sort), and the
    same inner-product ranking with ties in database order (nac_tf's `inner_product_map`),
    so the two differ by the order within ties alone. Also the Hamming mAP@all, which checks
    that `model` is the network the run's results were computed with."""
    from nac_tf.evaluation import retrieval
    from nac_tf.evaluation.evaluators import embed

    query_codes = embed(model, arrays.query_images, output="hash_codes")
    labels = (arrays.query_labels, arrays.database_labels)
    num_classes = int(max(labels[0].max(), labels[1].max())) + 1
    return {prefix + "authors_map_all": authors_hash_map(query_codes, database_codes, *labels,
                                                         num_classes),
            prefix + "inner_product_map_all_stable": float(retrieval.inner_product_map(
                query_codes, database_codes, *labels, packed=True)),
            prefix + "map_all_recomputed": float(retrieval.mean_average_precision(
                query_codes, database_codes, *labels, packed=True))}


def codeword_analysis(config, results):
    """Distinct codewords of the retrieval database, how redundant their bits are, the
    validation mAP, and the authors' inner-product mAP of the run and of its networks at
    their initialisation (hashing runs)."""
    from nac_tf.data.catalog import load_source
    from nac_tf.evaluation import retrieval
    from nac_tf.evaluation.evaluators import embed

    model = exported_model_of_run(config.model_dir)
    source = load_source(config.dataset, data_dir=config.data_dir, seed=config.seed)
    arrays = source.retrieval
    codes = embed(model, arrays.database_images, output="hash_codes")
    distribution = codeword_distribution(codes)
    bit_statistics = code_bit_statistics(codes, config.code_dim)
    queries, database = validation_split(arrays, VALIDATION_QUERIES, config.seed)
    validation_map = retrieval.mean_average_precision(
        codes[queries], codes[database], arrays.database_labels[queries],
        arrays.database_labels[database], packed=True)
    initial = random_init_model(config, source)
    initial_codes = embed(initial, arrays.database_images, output="hash_codes")
    return {"database_distinct_codewords": distribution["distinct_codewords"],
            "database_codeword_entropy_bits": distribution["codeword_entropy_bits"],
            "database_size": int(len(codes)), "validation_map_all": float(validation_map),
            **{"database_" + key: value for key, value in bit_statistics.items()},
            **authors_metrics(model, arrays, codes),
            **authors_metrics(initial, arrays, initial_codes, prefix="random_init_")}


def analysis_cell(runs, key, digits=1):
    """The analysis value `key` of each run, joined by " / ", or "n/a" when a run was
    recorded before that number was added (see --reanalyse)."""
    values = [r["analysis"].get(key) for r in runs]
    if any(v is None for v in values):
        return "n/a"
    return " / ".join(f"{v:.{digits}f}" for v in values)


def mean_and_spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


# What the reports' "effective bits" is (`experiments.code_bit_statistics`).
EFFECTIVE_BITS_NOTE = ("effective bits, the participation ratio of the ±1 bits' covariance "
                       "(128 for independent balanced bits, 1 when all bits repeat one)")
AUTHORS_METRIC_NOTE = (
    "The authors' column is mAP@all computed as the NAC code's `hash_utils."
    "mean_average_precision` computes it (`experiments.authors_hash_map`): the codes as "
    "float32 {0, 1} bits (out > 0), the database ranked for each query by the inner product "
    "`gallery @ query.T` (the number of 1-bits both codes share; not Hamming distance, which "
    "also counts the shared 0-bits) with `np.argsort(-sim, axis=0)`, NumPy's default unstable "
    "sort, relevance as a shared class of one-hot labels, R = the whole database, queries "
    "without a relevant item left out. The paper's Table 3 numbers were computed this way.")


def hashing_run_name(key, seed, steps, learning_rate):
    return f"{key}_lr{learning_rate:g}_s{seed}_{steps}steps"


def run_hashing(args, seeds, write_report_files=True):
    """Every method at every candidate learning rate; per method and seed, the rate with the
    best validation mAP (`validation_split`) is the one reported. The experiments built on
    these runs (flip_sweep, nac_ablations) pass `write_report_files=False`, so the hashing
    report keeps the command that is its own."""
    registry = RunRegistry("hashing", reanalyse=args.reanalyse)
    records, candidates = {}, {}
    for seed in seeds:
        for key in args.hashing_methods:
            runs = []
            for learning_rate in args.learning_rates:
                name = hashing_run_name(key, seed, args.steps, learning_rate)
                config = hashing_config(
                    args, registry, name, seed,
                    dict(METHOD_SETTINGS[key], learning_rate=learning_rate),
                    evaluate_during_training=key in ("nac_p0.4", "simclr"))
                runs.append(registry.run(name, config, codeword_analysis))
            candidates.setdefault(key, []).extend(runs)
            best = max(runs, key=lambda r: r["analysis"]["validation_map_all"])
            records.setdefault(key, []).append(best)
    if not write_report_files:
        return records
    rows = []
    first = next(iter(records.values()))[0]["results"]
    def metrics(runs, prefix=""):
        return [mean_and_spread([r["results"].get(prefix + name) for r in runs])
                for name in ("map_all", "map_all_expected_ties", "knn_top1", "linear_top1")]

    def authors(runs, prefix=""):  # recorded by codeword_analysis (None: not analysed yet)
        return mean_and_spread([r["analysis"].get(prefix + "authors_map_all") for r in runs])

    rows.append(["random init (NAC network)", *metrics(records["nac_p0.4"], "random_init_"),
                 authors(records["nac_p0.4"], "random_init_"), "", ""])
    for key, runs in records.items():
        rows.append([LABELS[key], *metrics(runs), authors(runs),
                     " / ".join(str(r["analysis"]["database_distinct_codewords"]) for r in runs),
                     " / ".join(f"{r['wall_seconds'] / 60:.0f}" for r in runs)])
    table = markdown_table(
        ["method", "mAP@all (%), stable ties", "mAP@all (%), expected ties", "kNN top-1 (%)",
         "linear top-1 (%)", "mAP@all (%), the authors' inner-product ranking",
         "distinct codewords in the 50 000-image database", "wall minutes per run"], rows)
    selection = markdown_table(
        ["method", "lr", "seed", "validation mAP (%)", "mAP@all (%)", "distinct codewords",
         "codeword entropy (bits)", "effective bits", "selected"],
        [[LABELS[key], r["config"]["learning_rate"], r["config"]["seed"],
          f"{100 * r['analysis']['validation_map_all']:.1f}",
          f"{100 * r['results']['map_all']:.1f}",
          r["analysis"]["database_distinct_codewords"],
          analysis_cell([r], "database_codeword_entropy_bits"),
          analysis_cell([r], "database_effective_bits"),
          "yes" if any(r is chosen for chosen in records[key]) else ""]
         for key, runs in candidates.items() for r in runs])
    body = (f"CIFAR-10 retrieval split ({first['retrieval']['num_queries']} queries, "
            f"{first['retrieval']['num_database']} database images, 5 000 training images), "
            f"128-bit codes, resnet_tiny, {args.steps} LARS steps of batch {args.batch_size}, "
            f"seeds {', '.join(map(str, seeds))} (mean ± std over seeds; per-seed values "
            "separated by /). The pool is the archive's train and test images; 8 983 of its "
            "test images are JPEG-degraded (see the data README), spread over queries and "
            "database alike. Paper (VGG16, 10 000 steps of batch 1 000): NAC 40.5, SimCLR "
            "34.2, MoCo-v2 32.3. Each method's learning rate (LARS, peak) was chosen "
            f"from {', '.join(f'{lr:g}' for lr in args.learning_rates)} by the mAP@all of "
            f"{VALIDATION_QUERIES} validation queries drawn from the database images that are "
            "not training images, against the rest of the database (never the real "
            "queries):\n\n" + table + "\n\n" + AUTHORS_METRIC_NOTE + "\n\nAll runs:\n\n" + selection +
            "\n\n![kNN and mAP during training](trajectories.png)\n")
    write_report("hashing", {"steps": args.steps, "batch_size": args.batch_size,
                             "seeds": seeds, "learning_rates": args.learning_rates,
                             "selected_runs": {k: [r["name"] for r in v]
                                               for k, v in records.items()},
                             "runs": candidates}, body,
                 "Table 3 at CPU scale: 128-bit hash codes on CIFAR-10")
    plot_trajectories(records, os.path.join(RESULTS_DIR, "hashing", "trajectories.png"))
    return records


def run_linear(args, seeds):
    registry = RunRegistry("linear")
    split = cifar10_exact_split(RUNS_DIR, archive=args.archive)
    steps_per_epoch = 40000 // args.batch_size
    records = {}
    for seed in seeds:
        for key in LINEAR_METHODS:
            name = f"{key}_s{seed}_{args.steps}steps"
            config = base_config(
                args, seed, dataset="npz", data_dir=split,
                warmup_epochs=0.05 * args.steps / steps_per_epoch,
                model_dir=registry.model_dir(name), **METHOD_SETTINGS[key])
            records.setdefault(key, []).append(
                registry.run(name, config, retrain_missing=key in args.retrain_missing))
    def accuracies(runs, prefix=""):
        return [mean_and_spread([r["results"][f"{prefix}{metric}"] for r in runs])
                for metric in ("linear_top1", "knn_top1")]

    # The random networks of the two architectures first, then every method.
    rows = [[f"random init ({network} network)", *accuracies(records[key], "random_init_"), ""]
            for key, network in (("nac_p0.1", "NAC"), ("amdim", "AMDIM"))]
    for key, runs in records.items():
        rows.append([LABELS[key].replace(" (sign codes)", ""), *accuracies(runs),
                     " / ".join(f"{r['wall_seconds'] / 60:.0f}" for r in runs)])
    table = markdown_table(["method", "linear top-1 (%)", "kNN top-1 (%)",
                            "wall minutes per run"], rows)
    body = (f"The 50 000 bit-exact CIFAR-10 training images, 1 000 per class held out as the "
            f"test set (seeded), resnet_tiny, {args.steps} LARS steps of batch "
            f"{args.batch_size}, seeds {', '.join(map(str, seeds))}; AMDIM with its own encoder "
            "(amdim_xs, whose training step costs about resnet_tiny's), Adam and views "
            "(configs/cifar10_amdim.flags) on the same steps and batch. Paper (ResNet-50, "
            "1 000 epochs): NAC 93.9, NAC-MQ 93.8, SimCLR 92.8, MoCo-v2 91.6; AMDIM's paper "
            "(its small model, 300 epochs): 89.5.\n\n" + table + "\n")
    write_report("linear", {"steps": args.steps, "batch_size": args.batch_size,
                            "seeds": seeds, "runs": records}, body,
                 "Table 1 at CPU scale: linear evaluation on CIFAR-10")
    return records


def run_flip_sweep(args, seeds, hashing_records):
    """NAC at every p with the learning rate the hashing table selected for NAC (p = 0.4)
    on the validation queries; the p = 0.4 point is that run itself."""
    registry = RunRegistry("flip_sweep", reanalyse=args.reanalyse)
    records = {}
    for seed, selected in zip(seeds, hashing_records["nac_p0.4"]):
        learning_rate = selected["config"]["learning_rate"]
        for p in FLIP_SWEEP:
            if p == 0.4:
                record = selected
            else:
                name = f"nac_p{p}_lr{learning_rate:g}_s{seed}_{args.steps}steps"
                config = hashing_config(args, registry, name, seed,
                                        dict(method="nac", flip_prob=p,
                                             learning_rate=learning_rate),
                                        evaluate_during_training=False)
                record = registry.run(name, config, codeword_analysis)
            records.setdefault(p, []).append(record)
    rows = [[p, mean_and_spread([r["results"]["linear_top1"] for r in runs]),
             mean_and_spread([r["results"]["map_all"] for r in runs]),
             mean_and_spread([r["results"]["map_all_expected_ties"] for r in runs]),
             f"{channel_capacity_bits(p, 128):.1f}",
             " / ".join(str(r["analysis"]["database_distinct_codewords"]) for r in runs),
             analysis_cell(runs, "database_codeword_entropy_bits"),
             analysis_cell(runs, "database_effective_bits"),
             analysis_cell(runs, "database_mean_abs_bit_correlation", 2),
             f"{(1 - 2 * p) ** 2:.2f}"]
            for p, runs in records.items()]
    table = markdown_table(["p", "linear top-1 (%)", "mAP@all (%), stable ties",
                            "mAP@all (%), expected ties", "capacity D(1-H(p)) bits",
                            "distinct codewords", "codeword entropy (bits)",
                            "effective bits", "mean |bit correlation|",
                            "(1-2p)^2"], rows)
    body = (f"NAC on the CIFAR-10 retrieval split (the hashing table's data and budget: "
            f"resnet_tiny, {args.steps} steps of batch {args.batch_size}); linear top-1 "
            "trained on the 5 000 training images and tested on the 10 000 queries. Paper "
            "(ResNet-18): linear accuracy best at p = 0.1, nearest-neighbour search best at "
            "p = 0.4. Code statistics over the 50 000 database codes: codeword entropy (plug-in, "
            "at most log2 50 000 = 15.6 bits); " + EFFECTIVE_BITS_NOTE + "; the mean "
            "|correlation| between two bits. (1-2p)^2 is the weight the "
            "denominator of Eq. 19 puts on correlations between bits, relative to each bit's "
            "own variance, in its expansion for small codes (see docs/results.md).\n\n"
            + table + "\n\n![linear top-1, mAP and code statistics against p](flip_sweep.png)\n")
    write_report("flip_sweep", {"steps": args.steps, "batch_size": args.batch_size,
                                "seeds": seeds,
                                "runs": {str(p): r for p, r in records.items()}}, body,
                 "Fig. 4 at CPU scale: the flip probability")
    plot_flip_sweep(records, os.path.join(RESULTS_DIR, "flip_sweep", "flip_sweep.png"))
    return records


# NAC (p = 0.4) variants at the hashing table's budget and NAC learning rate, each one
# setting away from the table's run (the CIFAR-10 counterpart of the digits ablations of
# benchmarks/code_capacity.py). "simclr_matched_temperature" is SimCLR at NAC's effective
# temperature: NAC's similarity logits are beta z~.z_k, beta ||z||^2 cos for codes of equal
# norm, so 1 / (beta ||z||^2) with the final ||z||^2 of the table's NAC run.
NAC_ABLATIONS = {
    "simclr_matched_temperature": "SimCLR at NAC's effective temperature",
    "no_sqrt_dim": "NAC, head outputs not divided by sqrt(D)",
    "authors_lars": "NAC, the authors' LARS rule with PyTorch head initialisation",
    "head_init_pytorch": "NAC, PyTorch head initialisation",
    "batch_norm_per_view": "NAC, BatchNorm statistics per view",
}


def nac_effective_temperature(record):
    beta = 0.5 * np.log((1 - record["config"]["flip_prob"]) / record["config"]["flip_prob"])
    return float(1.0 / (beta * record["results"]["final_metrics"]["code_norm_sq"]))


def run_nac_ablations(args, seeds, hashing_records):
    registry = RunRegistry("nac_ablations", reanalyse=args.reanalyse)
    rows = []
    payload = {}
    for seed, nac, simclr in zip(seeds, hashing_records["nac_p0.4"], hashing_records["simclr"]):
        learning_rate = nac["config"]["learning_rate"]
        variants = {
            "simclr_matched_temperature": dict(
                METHOD_SETTINGS["simclr"], temperature=round(nac_effective_temperature(nac), 3),
                learning_rate=simclr["config"]["learning_rate"]),
            "no_sqrt_dim": dict(head_scale_by_sqrt_dim=False),
            "authors_lars": dict(lars_rule="authors", head_init="pytorch"),
            "head_init_pytorch": dict(head_init="pytorch"),
            "batch_norm_per_view": dict(batch_norm="per_view"),
        }
        for key in args.ablations:
            settings = variants[key]
            if "method" not in settings:
                settings = dict(METHOD_SETTINGS["nac_p0.4"], learning_rate=learning_rate,
                                **settings)
            name = f"{key}_s{seed}_{args.steps}steps"
            config = hashing_config(args, registry, name, seed, settings,
                                    evaluate_during_training=False)
            payload[name] = registry.run(name, config, codeword_analysis)
        for label, record in [("NAC (p = 0.4), the hashing table's run", nac),
                              ("SimCLR, the hashing table's run", simclr)] + [
                (NAC_ABLATIONS[key], payload[f"{key}_s{seed}_{args.steps}steps"])
                for key in args.ablations]:
            config, results, analysis = record["config"], record["results"], record["analysis"]
            changed = (f"tau {config['temperature']:g}" if config["method"] == "simclr"
                       else "")
            rows.append([label + (f" ({changed})" if changed else ""), seed,
                         f"{config['learning_rate']:g}",
                         f"{100 * results['map_all']:.1f}",
                         f"{100 * analysis['validation_map_all']:.1f}",
                         f"{100 * results['knn_top1']:.1f}", f"{100 * results['linear_top1']:.1f}",
                         analysis["database_distinct_codewords"],
                         analysis_cell([record], "database_codeword_entropy_bits"),
                         analysis_cell([record], "database_effective_bits"),
                         (f"{results['final_metrics']['code_norm_sq']:.2f}"
                          if "code_norm_sq" in results.get("final_metrics", {}) else "")])
    table = markdown_table(
        ["run", "seed", "lr", "mAP@all (%)", "validation mAP (%)", "kNN top-1 (%)",
         "linear top-1 (%)", "distinct codewords", "codeword entropy (bits)", "effective bits",
         "final ||z||^2 (of 128)"], rows)
    body = ("One setting changed at a time from the hashing table's NAC run (same data, "
            f"encoder, {args.steps} steps of batch {args.batch_size}, lr and seed), plus "
            "SimCLR at the temperature that matches NAC's similarity logits at the end of "
            "training (1 / (beta ||z||^2), see NAC_ABLATIONS in the script). Code statistics "
            "over the 50 000 database codes; mAP@all over the 10 000 queries (reported, not "
            "used to choose anything).\n\n" + table + "\n")
    write_report("nac_ablations", {"steps": args.steps, "batch_size": args.batch_size,
                                   "seeds": seeds, "runs": payload}, body,
                 "NAC at p = 0.4 on the CIFAR-10 hashing protocol: one setting at a time")


def plot_trajectories(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for index, (key, runs) in enumerate(records.items()):
        for run in runs:
            trajectory = run["results"].get("trajectory") or []
            if not trajectory:
                continue
            for axis, metric in zip(axes, ("knn_top1", "map_all")):
                steps = [entry["step"] for entry in trajectory]
                values = [entry.get(metric) for entry in trajectory]
                if metric == "knn_top1":
                    # The random-init kNN is the same measurement (all test images); its mAP
                    # is over all queries, not the monitor's subset, so it is not drawn.
                    steps = [0] + steps
                    values = [run["results"]["random_init_knn_top1"]] + values
                axis.plot(steps, values, "o-", color=f"C{index}", label=LABELS[key]
                          + f" lr {run['config']['learning_rate']:g} seed "
                          f"{run['config']['seed']}")
    for axis, title in zip(axes, ("kNN top-1 (queries vs. training images)",
                                  "Hamming mAP@all (fixed 1 000 queries)")):
        axis.set_xlabel("step")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def plot_flip_sweep(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = list(records)
    figure, (left, codes) = plt.subplots(1, 2, figsize=(11, 4))
    right = left.twinx()
    for axis, metric, color, label in ((left, "linear_top1", "C0", "linear top-1"),
                                       (right, "map_all", "C1", "Hamming mAP@all")):
        means = [np.mean([r["results"][metric] for r in records[p]]) for p in ps]
        axis.plot(ps, means, "o-", color=color, label=label)
        axis.set_ylabel(label, color=color)
    left.set_xlabel("flip probability p")
    left.set_title("NAC on the CIFAR-10 retrieval split", fontsize=10)
    dense = np.linspace(min(ps), max(ps), 100)
    codes.plot(dense, [min(channel_capacity_bits(p, 128), np.log2(50000)) for p in dense],
               "k--", label="min(capacity, log2 50 000)")
    for key, color, label in (("database_codeword_entropy_bits", "C2", "codeword entropy"),
                              ("database_effective_bits", "C3", "effective bits")):
        points = [(p, np.mean([r["analysis"][key] for r in records[p]])) for p in ps
                  if all(key in r["analysis"] for r in records[p])]
        if points:
            codes.plot(*zip(*points), "o-", color=color, label=label)
    codes.set_yscale("log")
    codes.set_xlabel("flip probability p")
    codes.set_ylabel("bits")
    codes.set_title("128-bit database codes", fontsize=10)
    codes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="all",
                        choices=("hashing", "linear", "flip_sweep", "nac_ablations", "all"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--linear_eval_epochs", type=int, default=100)
    parser.add_argument("--hashing_methods", default="nac_p0.4,simclr,moco_v2",
                        help="the hashing table's rows (a subset renders a partial table)")
    parser.add_argument("--learning_rates", default="0.5,3.0",
                        help="candidate peak LARS learning rates of the hashing table; each "
                             "method keeps the one with the best validation mAP")
    parser.add_argument("--archive", default=CIFAR10_ARCHIVE)
    parser.add_argument("--ablations", default=",".join(NAC_ABLATIONS),
                        help="the nac_ablations experiment's variants, in the order they run: "
                             + ", ".join(NAC_ABLATIONS))
    parser.add_argument("--reanalyse", action="store_true",
                        help="compute the codeword analysis again for recorded hashing and "
                             "flip-sweep runs whose models are still under runs/experiments/")
    parser.add_argument("--retrain_missing", default="",
                        help="linear-table methods (of " + ", ".join(LINEAR_METHODS) + ") whose "
                             "recorded runs are trained again when their models are not under "
                             "runs/experiments/linear/ (benchmarks/vae_pretrained.py fine-tunes "
                             "them)")
    args = parser.parse_args()
    if not os.path.exists(args.archive):
        parser.error(f"--archive: {args.archive} does not exist (the CIFAR-10 .npz archive)")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.learning_rates = [float(lr) for lr in args.learning_rates.split(",")]
    args.hashing_methods = args.hashing_methods.split(",")
    unknown = set(args.hashing_methods) - {"nac_p0.4", "simclr", "moco_v2"}
    if unknown:
        parser.error(f"--hashing_methods: {', '.join(sorted(unknown))} not among nac_p0.4, "
                     "simclr, moco_v2")
    if args.experiment in ("flip_sweep", "all") and "nac_p0.4" not in args.hashing_methods:
        parser.error("--hashing_methods must include nac_p0.4 for the flip sweep")
    if (args.experiment in ("nac_ablations", "all")
            and not {"nac_p0.4", "simclr"} <= set(args.hashing_methods)):
        parser.error("--hashing_methods must include nac_p0.4 and simclr for nac_ablations")
    args.retrain_missing = [key for key in args.retrain_missing.split(",") if key]
    unknown = set(args.retrain_missing) - set(LINEAR_METHODS)
    if unknown:
        parser.error(f"--retrain_missing: {', '.join(sorted(unknown))} not among "
                     + ", ".join(LINEAR_METHODS))
    args.ablations = args.ablations.split(",")
    unknown = set(args.ablations) - set(NAC_ABLATIONS)
    if unknown:
        parser.error(f"--ablations: {', '.join(sorted(unknown))} not among "
                     f"{', '.join(NAC_ABLATIONS)}")
    if args.experiment in ("hashing", "flip_sweep", "nac_ablations", "all"):
        hashing_records = run_hashing(
            args, seeds, write_report_files=args.experiment in ("hashing", "all"))
    if args.experiment in ("flip_sweep", "all"):
        run_flip_sweep(args, seeds, hashing_records)
    if args.experiment in ("linear", "all"):
        run_linear(args, seeds)
    if args.experiment in ("nac_ablations", "all"):
        run_nac_ablations(args, seeds, hashing_records)


if __name__ == "__main__":
    main()
