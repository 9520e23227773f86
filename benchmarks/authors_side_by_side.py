"""The authors' training loop and nac_tf's, side by side over a run on CIFAR-10.

    pip install -e .[parity]
    python benchmarks/authors_side_by_side.py --authors_dir=PATH [--steps=300]

PATH is your own checkout of the NAC authors' code (yookoon/nac); the project never ships
it. Each setting trains the same network (resnet_tiny, 128-bit codes, batch 256, LARS, the
same warm-up + cosine learning rates, seed 0) twice on the same training images:

- through the authors' loop: their `train` (plain NAC, SimCLR) or `train_moco_symmetric`
  (NAC-MQ) called on their `CIFAR10Pair` views (torchvision, PIL) with their LARS, on a
  torch module equal to nac_tf's resnet_tiny in their `Model` (`torch_models`); `.cuda()`
  is made a no-op while it runs;
- through nac_tf (`nac_tf.training.pretrain`), with the method settings of the CPU-scale
  tables, twice: with nac_tf's defaults, and with the options that reproduce the authors'
  code (`authors_code.matching_options`: per-view BatchNorm, their LARS rule, PyTorch's
  initialisation of the heads, and NAC-MQ's beta division and doubled likelihood; the
  parity harness, benchmarks/authors_parity.py, shows that their steps are then equal).

Along the run, on each step's batch of first views: the mean squared norm of the relaxed
codes tanh(a) (NAC, NAC-MQ), the fraction of distinct codewords and the bit balance
(`nac_tf.code_statistics`, the same definitions on both sides). At the end, the same nac_tf
code evaluates both networks' outputs: kNN top-1 of the features (test against training
images) and, on the hashing split, the Hamming mAP@all of the codes and the distinct
codewords of the database. Settings: Table 1's (the linear split: NAC p = 0.1, NAC-MQ,
SimCLR at lr 3) and Table 3's (the hashing split: NAC p = 0.4 at lr 0.5, SimCLR at lr 3, the
learning rates its validation queries selected). One plot per setting, both overlaid.

Each finished run is recorded (results/authors_side_by_side/runs/), so the same command
continues an interrupted set; a run cut short starts again (nac_tf's from its checkpoints,
the authors' from its last saved chunk of `--chunk_steps`).
"""
import argparse
import itertools
import os
import time

import numpy as np

from authors_code import import_authors, matching_options, running_on_cpu
from experiments import (CIFAR10_ARCHIVE, RESULTS_DIR, RUNS_DIR, RunRegistry,
                         cifar10_exact_split, markdown_table, write_json, write_report)
from reproduce_paper import LABELS, METHOD_SETTINGS, base_config

EXPERIMENT = "authors_side_by_side"
# The statistics along the run, per step, on both sides.
CURVES = ("code_norm_sq", "distinct_code_fraction", "bit_balance")
CURVE_TITLES = {"code_norm_sq": "mean ||tanh(a)||^2 (both views)",
                "distinct_code_fraction": "distinct codewords / batch (first views)",
                "bit_balance": "bit balance (first views)"}
# The curves that are fractions, drawn on [0, 1] so that settings compare at a glance.
FRACTION_CURVES = ("distinct_code_fraction", "bit_balance")
# The runs of each setting: nac_tf with its defaults, nac_tf with the options that reproduce
# the authors' code (`authors_code.matching_options`), and the authors' loop.
NAC_TF_LOOPS = ("nac_tf", "nac_tf_matching")
LOOPS = NAC_TF_LOOPS + ("authors",)
LOOP_LABELS = {"nac_tf": "nac_tf (defaults)",
               "nac_tf_matching": "nac_tf (the authors' options)",
               "authors": "the authors' code"}
# setting: (split, the tables' method key, peak learning rate, the authors' loop arguments)
SETTINGS = {
    "table1_nac": ("linear", "nac_p0.1", 3.0, dict(loop="train", objective="nac")),
    "table1_nac_mq": ("linear", "nac_mq", 3.0,
                      dict(loop="train_moco_symmetric", objective="nac")),
    "table1_simclr": ("linear", "simclr", 3.0, dict(loop="train", objective="simclr")),
    "table3_nac": ("hashing", "nac_p0.4", 0.5, dict(loop="train", objective="nac")),
    "table3_simclr": ("hashing", "simclr", 3.0, dict(loop="train", objective="simclr")),
}


# ------------------------------------------------------------------------------ the data
def training_source(split, archive):
    """(dataset, data_dir) of nac_tf for `split`, and its ImageSource."""
    from nac_tf.data.catalog import load_source

    if split == "hashing":
        dataset, data_dir = "cifar10_hashing", archive
    else:
        dataset, data_dir = "npz", cifar10_exact_split(RUNS_DIR, archive=archive)
    return dataset, data_dir, load_source(dataset, data_dir=data_dir, seed=0)


def nac_tf_config(args, registry, setting, loop, dataset, data_dir, warmup_epochs):
    """The nac_tf run `loop` ("nac_tf": its defaults, "nac_tf_matching": the options that
    reproduce the authors' code, their head initialisation included) of `setting`."""
    _, key, learning_rate, _ = SETTINGS[setting]
    method_settings = dict(METHOD_SETTINGS[key], learning_rate=learning_rate)
    if loop == "nac_tf_matching":
        method_settings.update(matching_options(method_settings["method"], from_scratch=True))
    return base_config(
        args, 0, dataset=dataset, data_dir=data_dir, warmup_epochs=warmup_epochs,
        model_dir=registry.model_dir(run_names(setting, args.steps)[loop]),
        log_every_steps=args.log_every_steps, checkpoint_every_steps=args.chunk_steps,
        evaluate=False, **method_settings)


# ---------------------------------------------------------------------- the statistics
def batch_statistics(first_view_pre_activations, both_views_pre_activations=None):
    """The CURVES of one step (`nac_tf.code_statistics` on the first views' a; the squared
    norm of tanh(a) over both views, where given)."""
    from nac_tf.code_statistics import activation_code_statistics

    statistics = {k: float(v) for k, v in activation_code_statistics(
        np.asarray(first_view_pre_activations, np.float32)).items()
        if k in CURVES}
    if both_views_pre_activations is not None:
        codes = np.tanh(np.asarray(both_views_pre_activations, np.float64))
        statistics["code_norm_sq"] = float(np.mean(np.sum(codes * codes, axis=1)))
    return statistics


def tensorboard_curves(model_dir):
    """{step: {name: value}} of the CURVES nac_tf's trainer logged (TensorBoard scalars)."""
    import tensorflow as tf

    curves = {}
    directory = os.path.join(model_dir, "tensorboard")
    for file in sorted(os.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, file)):
            for value in event.summary.value:
                if value.tag in CURVES:
                    curves.setdefault(int(event.step), {})[value.tag] = float(
                        tf.make_ndarray(value.tensor))
    return curves


def final_evaluation(features_and_codes, source):
    """kNN top-1 of the features and, with a retrieval protocol, Hamming mAP@all of the
    codes and the database's distinct codewords: the same nac_tf code for both sides.
    `features_and_codes(images)` -> (features, packed codes) of uint8 images."""
    from nac_tf.evaluation import retrieval
    from nac_tf.evaluation.knn import knn_accuracy

    train_features, _ = features_and_codes(source.train_images)
    test_features, _ = features_and_codes(source.test_images)
    result = {"knn_top1": knn_accuracy(train_features, source.train_labels, test_features,
                                       source.test_labels, source.num_classes)}
    arrays = source.retrieval
    if arrays is not None:
        _, query_codes = features_and_codes(arrays.query_images)
        _, database_codes = features_and_codes(arrays.database_images)
        result["map_all"] = float(retrieval.mean_average_precision(
            query_codes, database_codes, arrays.query_labels, arrays.database_labels,
            packed=True))
        result["database_distinct_codewords"] = int(len(np.unique(database_codes, axis=0)))
    return result


def run_names(setting, steps):
    """{loop: run name} of `setting` at `steps` steps, for every one of LOOPS."""
    return {loop: f"{setting}_{loop}_{steps}steps" for loop in LOOPS}


def run_records(registry, setting, steps):
    """{loop: (curves, final)} of `setting`'s recorded runs; None until all are recorded."""
    records = {loop: registry.load(name) for loop, name in run_names(setting, steps).items()}
    if not all(records.values()):
        return None
    return {loop: _curves_and_final(record) for loop, record in records.items()}


def _curves_and_final(record):
    part = record.get("analysis", record)  # nac_tf's records keep them in their analysis
    return part["curves"], part["final"]


# ---------------------------------------------------------------------- nac_tf's side
def run_nac_tf(args, registry, config, source):
    name = os.path.basename(config.model_dir)

    def analyse(config, results):
        from experiments import exported_model_of_run

        model = exported_model_of_run(config.model_dir)

        def features_and_codes(images):
            from nac_tf.evaluation.evaluators import embed
            return embed(model, images), embed(model, images, output="hash_codes")

        curves = tensorboard_curves(config.model_dir)
        return {"curves": {str(step): curves[step] for step in sorted(curves)},
                "final": final_evaluation(features_and_codes, source)}

    return registry.run(name, config, analyse)


# ---------------------------------------------------------------- the authors' side
class _Batches:
    """`steps` batches of a DataLoader, cycling over epochs, as the one-epoch loader their
    loop iterates (it asks for its length)."""

    def __init__(self, loader, steps):
        self.loader, self.steps = loader, steps

    def __len__(self):
        return self.steps

    def __iter__(self):
        return itertools.islice(itertools.chain.from_iterable(
            iter(self.loader) for _ in itertools.count()), self.steps)


def run_authors(args, registry, setting, config, source, authors):
    """Their loop for `args.steps` steps on the training images of `source`, saved every
    `chunk_steps` steps; {"curves", "final", "wall_seconds"}."""
    import torch

    import torch_models

    name = run_names(setting, args.steps)["authors"]
    record = registry.load(name)
    if record is not None:
        print(f"[{EXPERIMENT}] {name}: recorded, skipped", flush=True)
        return record
    split, key, learning_rate, loop = SETTINGS[setting]
    torch.manual_seed(0)
    np.random.seed(0)
    flip_prob = config.flip_prob if config.method in ("nac", "nac_mq") else 0.0
    # Their run.py: the inference network (VI) exists for the NAC objective.
    net = torch_models.authors_model(authors.model, config.encoder, config.code_dim,
                                     vi=loop["objective"] == "nac")
    momentum = queue = pointer = None
    if loop["loop"] == "train_moco_symmetric":
        momentum = torch_models.authors_model(authors.model, config.encoder, config.code_dim,
                                              vi=True)
        momentum.load_state_dict(net.state_dict())
        for parameter in momentum.parameters():
            parameter.requires_grad = False
        # As their run.py sets it up: small random keys, a pointer at 0.
        queue = config.queue_init_scale * torch.randn(config.code_dim, config.queue_size)
        pointer = torch.zeros(1, dtype=torch.long)
    optimizer = authors.lars.LARS(net.parameters(), lr=learning_rate,
                                  weight_decay=config.weight_decay)
    schedule = nac_tf_schedule(config, source)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: float(schedule(step)) / learning_rate)

    pairs = authors.utils.CIFAR10Pair.__new__(authors.utils.CIFAR10Pair)
    pairs.data, pairs.targets = source.train_images, [int(y) for y in source.train_labels]
    pairs.transform, pairs.target_transform = authors.utils.train_transform, None
    loader = torch.utils.data.DataLoader(
        # In this process: a worker forked from a process running TensorFlow's thread pools
        # is not safe.
        pairs, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=0,
        generator=torch.Generator().manual_seed(0))

    calls = []
    net.register_forward_hook(lambda module, inputs, outputs: calls.append(
        outputs[1].detach().numpy().copy()))
    state_path = os.path.join(registry.model_dir(name), "state.pt")
    curves, step, seconds = {}, 0, 0.0
    if os.path.exists(state_path):
        state = torch.load(state_path, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if momentum is not None:
            momentum.load_state_dict(state["momentum"])
            queue, pointer = state["queue"], state["pointer"]
        torch.set_rng_state(state["rng"])
        curves, step, seconds = state["curves"], state["step"], state["seconds"]
        print(f"[{EXPERIMENT}] {name}: continuing at step {step}", flush=True)
    else:
        print(f"[{EXPERIMENT}] {name}: training", flush=True)
    # The first views are the first call of their `train` and the second call of
    # `train_moco_symmetric` (which runs the shuffled second views first).
    first_call = 0 if loop["loop"] == "train" else 1
    while step < args.steps:
        chunk = min(args.chunk_steps, args.steps - step)
        calls.clear()
        start = time.time()
        with running_on_cpu(authors):
            if loop["loop"] == "train":
                authors.train.train(net, _Batches(loader, chunk), optimizer,
                                    config.temperature if config.method == "simclr" else 0.5,
                                    loop["objective"], flip_prob, scheduler, 1, 1)
            else:
                authors.train.train_moco_symmetric(
                    net, momentum, queue, pointer, _Batches(loader, chunk), optimizer,
                    0.5, loop["objective"], flip_prob, scheduler, config.momentum,
                    config.queue_size, config.l2_weight, 1, 1)
        seconds += time.time() - start
        for index in range(chunk):
            first, second = calls[2 * index + first_call], calls[2 * index + 1 - first_call]
            logged = step + index + 1  # nac_tf's step numbering: after the update
            if logged % args.log_every_steps == 0:
                both = np.concatenate([first, second]) if flip_prob else None
                curves[str(logged)] = batch_statistics(first, both)
        step += chunk
        os.makedirs(os.path.dirname(state_path), exist_ok=True)
        torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "momentum": momentum.state_dict() if momentum is not None else None,
                    "queue": queue, "pointer": pointer, "rng": torch.get_rng_state(),
                    "curves": curves, "step": step, "seconds": seconds},
                   state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        print(f"[{EXPERIMENT}] {name}: step {step}/{args.steps}", flush=True)

    net.eval()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)

    def features_and_codes(images):
        # Their test_transform (ToTensor, their Normalize) on whole batches.
        features, codes = [], []
        with torch.no_grad():
            for start in range(0, len(images), 1000):
                x = torch.from_numpy(images[start:start + 1000]).permute(0, 3, 1, 2)
                feature, out, _ = net((x.float() / 255.0 - mean) / std)
                features.append(feature.numpy())
                codes.append(np.packbits(out.numpy() > 0, axis=1))
        return np.concatenate(features), np.concatenate(codes)

    calls.clear()
    record = {"name": name, "setting": setting, "curves": curves,
              "final": final_evaluation(features_and_codes, source),
              "wall_seconds": round(seconds, 1)}
    write_json(registry.record_path(name), record)
    return record


def nac_tf_schedule(config, source):
    """nac_tf's learning rate at each step (`nac_tf.recipes`): their LambdaLR follows it."""
    from nac_tf.recipes import learning_rate_schedule, schedule_lengths

    _, total, warmup = schedule_lengths(config, source.num_train)
    return learning_rate_schedule(config, config.learning_rate, total, warmup)


# --------------------------------------------------------------------------- report
def plot(setting, runs, path):
    """One panel per curve, the three loops overlaid; the final kNN in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in CURVES if any(c in v for v in runs["authors"][0].values())]
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.9))
    for axis, curve in zip(np.atleast_1d(axes), names):
        for index, loop in enumerate(LOOPS):
            curves = runs[loop][0]
            steps = sorted(int(s) for s in curves if curve in curves[s])
            axis.plot(steps, [curves[str(s)][curve] for s in steps], f"C{index}-",
                      label=LOOP_LABELS[loop], linewidth=1)
        axis.set_title(CURVE_TITLES[curve], fontsize=9)
        if curve in FRACTION_CURVES:
            axis.set_ylim(0, 1.05)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    split, key, learning_rate, _ = SETTINGS[setting]
    figure.suptitle(f"{LABELS[key]}, {split} split, lr {learning_rate:g}\nfinal kNN top-1: "
                    + ", ".join(f"{LOOP_LABELS[loop]} {100 * runs[loop][1]['knn_top1']:.1f} %"
                                for loop in LOOPS), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def report(args, settings):
    rows = []
    for setting, runs in settings.items():
        split, key, learning_rate, _ = SETTINGS[setting]
        for loop in LOOPS:
            curves, final = runs[loop]
            last = curves[max(curves, key=int)]
            rows.append([f"{LABELS[key]}, {split}, lr {learning_rate:g}", LOOP_LABELS[loop]] + [
                f"{last[c]:.3f}" if c in last else "" for c in CURVES] + [
                f"{100 * final['knn_top1']:.1f}",
                f"{100 * final['map_all']:.1f}" if "map_all" in final else "",
                final.get("database_distinct_codewords", "")])
        plot(setting, runs, os.path.join(RESULTS_DIR, EXPERIMENT, f"{setting}.png"))
    table = markdown_table(["setting", "loop", "last mean squared norm of tanh(a)",
                            "last distinct / batch", "last bit balance", "kNN top-1 (%)",
                            "mAP@all (%)", "database codewords"], rows)
    body = (f"{args.steps} LARS steps of batch 256 per run, resnet_tiny, seed 0; the last "
            "step's batch statistics, then the final networks evaluated by the same nac_tf "
            "code. nac_tf runs twice: with its defaults, and with the options that reproduce "
            "the authors' code (" + ", ".join(
                f"`--{k}={v}`" for k, v in matching_options("nac_mq", True).items())
            + "; the NAC-MQ ones for NAC-MQ only).\n\n" + table + "\n\n" + "\n".join(
                f"![{setting}]({setting}.png)" for setting in settings) + "\n")
    write_report(EXPERIMENT, {"steps": args.steps, "runs": {
        setting: {loop: {"curves": curves, "final": final}
                  for loop, (curves, final) in runs.items()}
        for setting, runs in settings.items()}}, body,
        "The authors' loop and nac_tf's, side by side")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors_dir", required=True,
                        help="your checkout of the NAC authors' code (yookoon/nac)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="the runs, in order: " + ", ".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log_every_steps", type=int, default=10)
    parser.add_argument("--chunk_steps", type=int, default=50,
                        help="steps between saves of the authors' run (and nac_tf's "
                             "checkpoints)")
    parser.add_argument("--archive", default=CIFAR10_ARCHIVE)
    args = parser.parse_args()
    args.settings = args.settings.split(",")
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        parser.error(f"--settings: {', '.join(sorted(unknown))} not among "
                     + ", ".join(SETTINGS))
    if not os.path.exists(args.archive):
        parser.error(f"--archive: {args.archive} does not exist (the CIFAR-10 .npz archive)")
    authors = import_authors(args.authors_dir)
    # What base_config reads of the tables' arguments.
    args.batch_size, args.linear_eval_epochs = 256, 0

    registry = RunRegistry(EXPERIMENT)
    for setting in args.settings:
        dataset, data_dir, source = training_source(SETTINGS[setting][0], args.archive)
        # The tables' warm-up: 5 % of training.
        warmup_epochs = 0.05 * args.steps / (source.num_train // args.batch_size)
        configs = {loop: nac_tf_config(args, registry, setting, loop, dataset, data_dir,
                                       warmup_epochs) for loop in NAC_TF_LOOPS}
        for config in configs.values():
            run_nac_tf(args, registry, config, source)
        # The method's hyperparameters and schedule are the same in both nac_tf configs.
        run_authors(args, registry, setting, configs["nac_tf"], source, authors)
    # Every setting with all its runs recorded at this step count, whichever command ran it.
    settings = {setting: runs for setting in SETTINGS
                for runs in [run_records(registry, setting, args.steps)] if runs}
    report(args, settings)


if __name__ == "__main__":
    main()
