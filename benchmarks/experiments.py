"""Shared machinery of the experiment scripts in this folder (not part of the package).

An experiment is a set of named pretraining runs plus the analysis that turns them into a
table and plots. Each run stores one record (`<results dir>/runs/<name>.json`) when it has
finished and been evaluated; the scripts skip runs that have a record, and a run that was
interrupted resumes from the checkpoints in its run directory (under `runs/experiments/`, not
committed). Records are committed with the results, so a sweep longer than one sitting
continues where it stopped: only the run in progress is lost when its checkpoints are.

Every script writes `results.json`, `results.md` (with the exact command) and PNG plots into
its folder under `results/`.
"""
import json
import math
import os
import shlex
import sys
import time

import numpy as np

from nac_tf import run_directory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "results")
RUNS_DIR = os.path.join(REPO, "runs", "experiments")
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
CIFAR10_ARCHIVE = os.path.join(SHARED_DATA, "cifar10.npz")


def command_line():
    """The command that is running, as a user would type it from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    return " ".join(["python", shlex.quote(script)] + [shlex.quote(a) for a in sys.argv[1:]])


def write_json(path, payload):
    """`nac_tf.run_directory.write_json` (write, then rename: an interrupted script never
    leaves a truncated file), creating the folder first."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    run_directory.write_json(path, payload)


def binary_entropy_bits(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def channel_capacity_bits(flip_prob, code_dim):
    """Capacity of D independent binary symmetric channels with flip probability p:
    D (1 - H(p)) bits, an upper bound on I(X; C~) whatever the encoder does."""
    return code_dim * (1.0 - binary_entropy_bits(flip_prob))


def cifar10_exact_split(work_dir, held_out_per_class=1000, seed=0, archive=CIFAR10_ARCHIVE):
    """An .npz of the 50 000 bit-exact CIFAR-10 training images split into train and a
    seeded held-out test set (`held_out_per_class` per class); the archive's own test images
    are mostly JPEG-degraded (see the data README), so they are not used here."""
    path = os.path.join(work_dir, f"cifar10_exact_split_{held_out_per_class}_{seed}.npz")
    if os.path.exists(path):
        return path
    if not os.path.exists(archive):
        sys.exit(f"CIFAR-10 archive not found at {archive}")
    with np.load(archive) as data:
        images, labels = data["x_train"], data["y_train"]
    rng = np.random.default_rng(seed)
    test_index = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), held_out_per_class, replace=False)
        for c in range(10)])
    train_mask = np.ones(len(labels), bool)
    train_mask[test_index] = False
    os.makedirs(work_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, x_train=images[train_mask], y_train=labels[train_mask],
             x_test=images[test_index], y_test=labels[test_index])
    os.replace(tmp, path)
    return path


def exported_model_of_run(model_dir):
    """The online networks of a finished run, wrapped as the trainer's evaluation wraps them
    (`ExportedModel` over the export module): the codes a SavedModel client would get."""
    from nac_tf.export import ExportedModel, build_export_module
    from nac_tf.run_directory import read_run_config, restore_pretrained_method

    _, statistics = read_run_config(model_dir)
    _, method = restore_pretrained_method(model_dir)
    return ExportedModel.from_module(build_export_module(
        method, statistics["image_size"], statistics))


def codeword_distribution(packed_codes):
    """{"distinct_codewords", "codeword_entropy_bits", "largest_codeword_share"} of packed
    hash codes [N, D / 8]."""
    _, counts = np.unique(packed_codes, axis=0, return_counts=True)
    frequencies = counts / counts.sum()
    return {"distinct_codewords": int(len(counts)),
            "codeword_entropy_bits": float(-np.sum(frequencies * np.log2(frequencies))),
            "largest_codeword_share": float(frequencies.max())}


def code_bit_statistics(packed_codes, code_dim):
    """How redundant the bits of packed hash codes [N, D / 8] are across the images:
    {"effective_bits": participation ratio (sum of eigenvalues)^2 / sum of squares of the
    ±1 bits' covariance matrix (D for independent balanced bits, 1 when every bit repeats
    one), "mean_abs_bit_correlation": mean |correlation| over pairs of non-constant bits,
    "constant_bits": bits with one value on every image}."""
    bits = np.unpackbits(packed_codes, axis=1)[:, :code_dim].astype(np.float64) * 2.0 - 1.0
    covariance = np.cov(bits, rowvar=False)
    variances = np.diag(covariance)
    live = variances > 0
    eigenvalues = np.linalg.eigvalsh(covariance)
    statistics = {"constant_bits": int(np.sum(~live)),
                  "effective_bits": float(eigenvalues.sum() ** 2 / np.sum(eigenvalues ** 2))
                  if variances.sum() > 0 else 0.0,
                  "mean_abs_bit_correlation": float("nan")}
    if live.sum() > 1:
        scale = np.sqrt(variances[live])
        correlation = covariance[np.ix_(live, live)] / np.outer(scale, scale)
        off_diagonal = ~np.eye(int(live.sum()), dtype=bool)
        statistics["mean_abs_bit_correlation"] = float(np.abs(correlation[off_diagonal]).mean())
    return statistics


def authors_hash_map(query_packed, database_packed, query_labels, database_labels,
                     num_classes, chunk=500):
    """mAP@all as the NAC authors' `hash_utils.mean_average_precision` computes it (their
    run_hash.py: R = the database size), reproduced step by step:

    - codes: float32 {0, 1} bits (their `(out > 0).float()`); labels: float32 one-hot rows;
    - ranking: `sim = gallery_hash @ query_hash.T` (float32 inner products, the number of
      shared 1-bits, NOT Hamming distance), `np.argsort(-sim, axis=0)` with NumPy's default
      (unstable) sort, so items of equal inner product come in the order that sort leaves;
    - relevance: the query's one-hot row with its zeros set to -1, compared element-wise
      with the item's: relevant when any position matches (a shared class);
    - AP = sum(precision@rank x relevant) / (relevant items), queries without a relevant
      item left out of the mean.

    Queries are processed `chunk` at a time: argsort along axis 0 sorts every column by
    itself, so a column's order does not depend on which other columns are in the matrix.
    """
    gallery = np.unpackbits(database_packed, axis=1).astype(np.float32)
    gallery_target = np.eye(num_classes, dtype=np.float32)[database_labels]
    query_target = np.eye(num_classes, dtype=np.float32)[query_labels]
    ranks = np.arange(1, len(gallery) + 1, dtype=np.float64)
    precisions = []
    for start in range(0, len(query_packed), chunk):
        query = np.unpackbits(query_packed[start:start + chunk], axis=1).astype(np.float32)
        ids = np.argsort(-np.dot(gallery, query.T), axis=0)
        for column in range(ids.shape[1]):
            label = query_target[start + column].copy()
            label[label == 0] = -1
            match = np.sum(gallery_target[ids[:, column]] == label, axis=1) > 0
            relevant = np.sum(match)
            if relevant:
                precisions.append(np.sum(np.cumsum(match) / ranks * match) / relevant)
    return float(np.mean(precisions))


class RunRegistry:
    """Named pretraining runs of one experiment, each recorded once it has finished.

    `run(name, config, analyse)`: returns the stored record of `name`, or pretrains
    `config` (resuming its checkpoints), calls `analyse(config, results)` for extra numbers,
    stores {"config", "results", "analysis", "wall_seconds"} and returns it. With
    `retrain_missing=True`, a stored record whose trained model is no longer on disk (a new
    machine: runs/ is not committed) is trained again and replaced, for experiments that
    reuse the model itself (the VAE table fine-tunes the linear table's encoders). With
    `reanalyse=True`, a stored record whose trained model is still on disk gets its analysis
    computed again (for numbers added to an experiment after its runs finished).
    """

    def __init__(self, experiment, reanalyse=False):
        self.experiment = experiment
        self.reanalyse = reanalyse
        self.records_dir = os.path.join(RESULTS_DIR, experiment, "runs")
        self.runs_dir = os.path.join(RUNS_DIR, experiment)

    def model_dir(self, name):
        return os.path.join(self.runs_dir, name)

    def record_path(self, name):
        return os.path.join(self.records_dir, name + ".json")

    def load(self, name):
        path = self.record_path(name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def state_dir(self, name):
        """Where `save_state` keeps the run state of `name`, committed with the results."""
        return os.path.join(RESULTS_DIR, self.experiment, "run_state", name)

    def save_state(self, name):
        """Copies the small state of run `name` (its JSON files and its newest intact
        checkpoint) from its run directory into `state_dir(name)`, replacing what was there:
        for runs longer than one sitting, which must continue on a fresh clone (runs/ is not
        committed). Returns the checkpoint's step (None: nothing to save)."""
        import shutil

        model_dir = self.model_dir(name)
        prefix = run_directory.intact_checkpoint(model_dir) if os.path.isdir(model_dir) \
            else None
        if prefix is None:
            return None
        state = self.state_dir(name)
        staging = state + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(os.path.join(staging, run_directory.CHECKPOINT_DIR))
        for file in os.listdir(model_dir):
            if file.endswith(".json"):
                shutil.copy2(os.path.join(model_dir, file), staging)
        for file in os.listdir(os.path.dirname(prefix)):
            if file.startswith(os.path.basename(prefix) + "."):
                shutil.copy2(os.path.join(os.path.dirname(prefix), file),
                             os.path.join(staging, run_directory.CHECKPOINT_DIR))
        # The old state goes only once the new one is complete.
        shutil.rmtree(state, ignore_errors=True)
        os.replace(staging, state)
        step = run_directory.checkpoint_step(prefix)
        print(f"[{self.experiment}] {name}: run state of step {step} saved in "
              f"{os.path.relpath(state, REPO)}", flush=True)
        return step

    def restore_state(self, name, config):
        """Copies the saved state of `name` into its run directory when that has no
        checkpoint (a fresh clone, another machine); flags.json takes this machine's
        model_dir and data_dir (the same archive, elsewhere)."""
        import shutil

        state, model_dir = self.state_dir(name), self.model_dir(name)
        if not os.path.isdir(state) or run_directory.checkpoint_steps(model_dir):
            return
        shutil.copytree(state, model_dir, dirs_exist_ok=True)
        flags = run_directory.read_run_json(model_dir, run_directory.FLAGS_FILE)
        flags.update(model_dir=config.model_dir, data_dir=config.data_dir)
        run_directory.write_json(run_directory.path_in(model_dir, run_directory.FLAGS_FILE),
                                 flags)
        print(f"[{self.experiment}] {name}: continuing from the saved run state "
              f"{os.path.relpath(state, REPO)}", flush=True)

    def run(self, name, config, analyse=None, retrain_missing=False, stop_requested=None,
            keep_state=False):
        """`stop_requested`: polled between steps (`nac_tf.training.pretrain`); the run
        then checkpoints and raises TrainingInterrupted. `keep_state`: the run continues
        from, and leaves, its state in `state_dir(name)` (`restore_state`, `save_state`)."""
        record = self.load(name)
        if record is not None and retrain_missing and not os.path.isdir(self.model_dir(name)):
            print(f"[{self.experiment}] {name}: recorded, but its model is not on disk",
                  flush=True)
            record = None
        if record is not None:
            if self.reanalyse and analyse and os.path.isdir(self.model_dir(name)):
                print(f"[{self.experiment}] {name}: recorded, analysing again", flush=True)
                record["analysis"] = analyse(config, record["results"])
                write_json(self.record_path(name), record)
            else:
                print(f"[{self.experiment}] {name}: recorded, skipped", flush=True)
            return record
        from nac_tf.training import pretrain

        print(f"[{self.experiment}] {name}: training", flush=True)
        start = time.time()
        if keep_state:
            self.restore_state(name, config)
        try:
            results = pretrain(config, stop_requested=stop_requested)
        finally:
            if keep_state:
                self.save_state(name)
        analysis = analyse(config, results) if analyse else {}
        record = {"name": name, "config": config.to_dict(), "results": results,
                  "analysis": analysis, "wall_seconds": round(time.time() - start, 1)}
        write_json(self.record_path(name), record)
        return record


def write_report(experiment, payload, markdown_body, title):
    """results.json and results.md (title, exact command, body) of an experiment."""
    out = os.path.join(RESULTS_DIR, experiment)
    command = command_line()
    write_json(os.path.join(out, "results.json"), dict(payload, command=command))
    text = f"# {title}\n\nRegenerate (from the repository root):\n\n```bash\n{command}\n```\n\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + markdown_body.rstrip() + "\n")
    print(f"wrote {os.path.relpath(out, REPO)}/results.json and results.md")
    return out


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
