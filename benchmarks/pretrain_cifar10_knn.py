"""Benchmark (not a test): brief NAC and SimCLR pretraining on real CIFAR-10, on CPU.

    python benchmarks/pretrain_cifar10_knn.py [--steps=300] [--batch_size=256] [--linear_eval_epochs=30] [--learning_rate=2]

Reads ../shared/data/cifar10.npz (beside the checkout), builds a seeded split of the 50 000
bit-exact training images (1 000 per class held out as the kNN test set, the rest for
pretraining and as the kNN memory bank; the archive's test images are mostly JPEG-degraded,
see its README), pretrains a small ResNet (`resnet_tiny`) with NAC and with SimCLR for the same
number of steps, and prints the kNN top-1 accuracy (cosine, k = 200) of both encoders and of
the same encoder at its random initialisation; also the linear-probe top-1 and the 128-bit
Hamming mAP@all of the hash codes (test split queries the training split), as the trainer's
final evaluation reports them.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHIVE = os.path.join(HERE, "..", "..", "shared", "data", "cifar10.npz")


def make_split(archive, out_path, held_out_per_class=1000, seed=0):
    with np.load(archive) as data:
        images, labels = data["x_train"], data["y_train"]
    rng = np.random.default_rng(seed)
    test_index = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), held_out_per_class, replace=False)
        for c in range(10)])
    train_mask = np.ones(len(labels), bool)
    train_mask[test_index] = False
    np.savez(out_path, x_train=images[train_mask], y_train=labels[train_mask],
             x_test=images[test_index], y_test=labels[test_index])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--encoder", default="resnet_tiny")
    parser.add_argument("--archive", default=ARCHIVE)
    parser.add_argument("--work_dir", default="")
    parser.add_argument("--linear_eval_epochs", type=int, default=30)
    parser.add_argument("--learning_rate", type=float, default=2.0)
    args = parser.parse_args()
    if not os.path.exists(args.archive):
        sys.exit(f"CIFAR-10 archive not found at {args.archive}")

    from nac_tf.config import PretrainConfig
    from nac_tf.training import pretrain

    work = args.work_dir or tempfile.mkdtemp(prefix="nac_bench_")
    split = os.path.join(work, "cifar10_split.npz")
    if not os.path.exists(split):
        start = time.time()
        make_split(args.archive, split)
        print(f"split written in {time.time() - start:.1f} s: {split}")

    common = dict(dataset="npz", data_dir=split, encoder=args.encoder, stem="cifar",
                  batch_size=args.batch_size, train_steps=args.steps,
                  learning_rate=args.learning_rate,
                  warmup_epochs=0.5, code_dim=128, checkpoint_every_steps=args.steps,
                  log_every_steps=50, seed=0, linear_eval_epochs=args.linear_eval_epochs)
    rows = []
    for method, extra in (("nac", dict(flip_prob=0.1)), ("simclr", dict(temperature=0.5))):
        config = PretrainConfig(method=method, model_dir=os.path.join(work, method),
                                **common, **extra)
        start = time.time()
        results = pretrain(config)
        rows.append((method, results, time.time() - start))

    print("\nCIFAR-10, {} pretraining steps of batch {} with {} on CPU (seeded split of the "
          "bit-exact training images: {} train, {} held out)".format(
              args.steps, args.batch_size, args.encoder, rows[0][1]["num_train"],
              rows[0][1]["num_test"]))
    metrics = ("knn_top1", "linear_top1", "map_all")
    print(f"{'encoder':<14}" + "".join(f"{m:>13}" for m in metrics) + f"{'wall s':>9}")
    print(f"{'random init':<14}" + "".join(
        f"{rows[0][1]['random_init_' + m]:>13.4f}" for m in metrics))
    for method, results, seconds in rows:
        print(f"{method:<14}" + "".join(f"{results[m]:>13.4f}" for m in metrics)
              + f"{seconds:>9.0f}")
    print(json.dumps({m: {k: r[k] for k in ("final_metrics",) + metrics
                          + tuple("random_init_" + x for x in metrics)}
                      for m, r, _ in rows}, indent=2))


if __name__ == "__main__":
    main()
