"""Paper Table 5: a VAE whose encoder starts from random weights or from a pretraining run,
fine-tuned with the decoder; test-set negative ELBO, KL and importance-sampled log-likelihood.

One command per row of the table (`nac_tf.experiments.vae`, protocol in docs/protocols.md
section 3):

    python benchmarks/vae_pretrained.py --init=random --model_dir=RUN [...]   # random init.
    python benchmarks/vae_pretrained.py --init=run --model_dir=RUN [...]      # pretrained

`--init=random` builds the encoder of RUN's architecture and input normalisation with fresh
weights (or, without --model_dir, `--encoder` for images of `--image_size`); `--init=run`
restores RUN's latest checkpoint. The encoder is then followed by a new linear layer to the
posterior mean and log-variance and fine-tuned through it with Adam at `--encoder_lr`, the
linear layer and the decoder at `--head_lr`. Results go to results/vae/<--name>/ (JSON and
markdown with the exact command), and results/vae/results.md gathers every row recorded so
far into one table (Table 5). Training checkpoints every `--checkpoint_every` steps under
runs/vae/<--name>/: the same command resumes a killed run from its last checkpoint, with the
batches it had not seen yet.

CPU-scale Table 5 (results/vae/results.md, docs/results.md). The paper trains a ResNet-18
VAE for 100 epochs on CIFAR-10; at CPU scale the encoders are the `resnet_tiny` ones of the
Table 1 runs of benchmarks/reproduce_paper.py (NAC p = 0.1, SimCLR, MoCo-v2; 1 000 LARS steps
on the 40 000 training images of the bit-exact CIFAR-10 split, `--experiment=linear`), and
the VAE trains on the same 40 000 images for 2 000 steps of batch 128 (6.4 epochs) and is
tested on 2 000 of the split's 10 000 held-out images with K = 100 importance samples. The
settings are the same for every row and were not tuned:

    python benchmarks/reproduce_paper.py --experiment=linear \
        --retrain_missing=nac_p0.1,simclr,moco_v2   # the three encoders (about 35 minutes)
    SPLIT=runs/experiments/cifar10_exact_split_1000_0.npz
    RUNS=runs/experiments/linear
    COMMON="--dataset=npz --data_dir=$SPLIT --steps=2000 --latent_dim=128 --encoder_lr=1e-4 \
        --head_lr=1e-3 --importance_samples=100 --eval_images=2000"
    python benchmarks/vae_pretrained.py --init=random --model_dir=$RUNS/nac_p0.1_s0_1000steps \
        --name=random $COMMON
    python benchmarks/vae_pretrained.py --init=run --model_dir=$RUNS/nac_p0.1_s0_1000steps \
        --name=nac $COMMON
    python benchmarks/vae_pretrained.py --init=run --model_dir=$RUNS/simclr_s0_1000steps \
        --name=simclr $COMMON
    python benchmarks/vae_pretrained.py --init=run --model_dir=$RUNS/moco_v2_s0_1000steps \
        --name=moco_v2 $COMMON

With the full-size recipes (`nac-train --config=cifar10_simclr|cifar10_moco_v2|cifar10_nac`,
ResNet-50, 1 000 epochs) the same commands take `--model_dir` of those runs and
`--dataset=cifar10` (or `--dataset=npz --data_dir=../shared/data/cifar10.npz`).

Smoke run (seconds; digits are 8-bit too, replicated to RGB):

    python benchmarks/vae_pretrained.py --init=random --encoder=small_cnn --dataset=digits \
        --image_size=8 --steps=20 --checkpoint_every=10 --latent_dim=8 --importance_samples=16 \
        --name=smoke_digits
"""
import argparse
import math
import os
import time

import numpy as np

from experiments import RESULTS_DIR, RUNS_DIR, markdown_table, write_json, write_report


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", choices=("random", "run"), required=True)
    parser.add_argument("--model_dir", default="", help="pretraining run directory")
    parser.add_argument("--encoder", default="resnet18",
                        help="encoder for --init=random without --model_dir")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--image_size", type=int, default=0,
                        help="image size without --model_dir (0: the dataset's)")
    parser.add_argument("--epochs", type=float, default=100.0)
    parser.add_argument("--steps", type=int, default=0, help="overrides --epochs when > 0")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--latent_dim", type=int, default=128)
    parser.add_argument("--decoder_width", type=int, default=64)
    parser.add_argument("--encoder_lr", type=float, default=1e-4)
    parser.add_argument("--head_lr", type=float, default=1e-3)
    parser.add_argument("--importance_samples", type=int, default=1000)
    parser.add_argument("--eval_batch_size", type=int, default=100)
    parser.add_argument("--eval_images", type=int, default=0, help="0: the whole test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="", help="results/vae/<name>/ (default: --init)")
    parser.add_argument("--checkpoint_every", type=int, default=500,
                        help="steps between training checkpoints (runs/vae/<name>/)")
    args = parser.parse_args()
    for name in ("steps", "eval_images"):
        if getattr(args, name) < 0:
            parser.error(f"--{name}={getattr(args, name)} must be >= 0")
    for name in ("batch_size", "latent_dim", "decoder_width", "importance_samples",
                 "eval_batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be a positive integer")
    if args.epochs <= 0 and not args.steps:
        parser.error(f"--epochs={args.epochs} must be > 0 (or set --steps)")
    args.name = args.name or args.init
    return args


def build_model(args):
    """(VAE, image size, description of the encoder's initialisation)."""
    from nac_tf.data.catalog import dataset_statistics, load_source
    from nac_tf.experiments.vae import PretrainedEncoderVAE, encoder_of_run, random_encoder
    from nac_tf.specs.datasets import dataset_spec

    if args.model_dir:
        encoder, statistics = encoder_of_run(args.model_dir, pretrained=args.init == "run")
        image_size = int(statistics["image_size"])
        described = f"{args.init} ({args.model_dir})"
    elif args.init == "run":
        raise SystemExit("--init=run needs --model_dir")
    else:
        image_size = args.image_size or dataset_spec(args.dataset).image_size
        source = load_source(args.dataset, args.data_dir or None, image_size or None)
        image_size = image_size or source.image_shape[0]
        mean, std = dataset_statistics(args.dataset, source)
        encoder = random_encoder(args.encoder, image_size, mean, std,
                                 stem="cifar" if image_size <= 64 else "imagenet")
        described = f"random ({args.encoder})"
    vae = PretrainedEncoderVAE(encoder, args.latent_dim, (image_size, image_size, 3),
                               decoder_width=args.decoder_width, seed=args.seed)
    return vae, image_size, described


def main():
    args = parse_args()
    import keras
    import tensorflow as tf

    from nac_tf.data.catalog import load_source
    from nac_tf.data.pipeline import evaluation_images
    from nac_tf.experiments.vae import evaluate_vae

    keras.utils.set_random_seed(args.seed)
    vae, image_size, described = build_model(args)
    source = load_source(args.dataset, args.data_dir or None, image_size)
    if not source.has_arrays:
        raise SystemExit(f"--dataset={args.dataset} is streamed; use an array dataset")
    train, test = source.train_images, source.test_images
    if args.eval_images:
        test = test[:args.eval_images]
    steps = args.steps or math.ceil(args.epochs * len(train) / args.batch_size)
    vae.compile(encoder_optimizer=keras.optimizers.Adam(args.encoder_lr),
                optimizer=keras.optimizers.Adam(args.head_lr))
    done, checkpoint = restore_training(
        vae, os.path.join(os.path.dirname(RUNS_DIR), "vae", args.name), vars(args))
    # uint8 in memory, [0, 1] floats (resized to the encoder's size if needed) per batch. The
    # order is a function of the seed alone: each chunk of training (and a resumed run) skips
    # the batches already seen (every `fit` call starts a new pass over its dataset).
    def batches(skip):
        return (tf.data.Dataset.from_tensor_slices(train).shuffle(len(train), seed=args.seed)
                .repeat().batch(args.batch_size, drop_remainder=True).skip(skip)
                .map(lambda x: evaluation_images(x, image_size)).prefetch(2))

    start = time.time()
    losses = []
    while done < steps:
        chunk = min(args.checkpoint_every, steps - done)
        history = vae.fit(batches(done), steps_per_epoch=chunk, epochs=1, verbose=2)
        losses.append(float(history.history["loss"][-1]))
        done += chunk
        checkpoint.step.assign(done)
        checkpoint.manager.save(checkpoint_number=done)
        print(f"step {done}/{steps}: checkpoint saved", flush=True)
    train_seconds = time.time() - start
    test_images = evaluation_images(test, image_size).numpy()
    result = evaluate_vae(vae, test_images, args.eval_batch_size, args.importance_samples)
    payload = {"init": described, "dataset": args.dataset, "image_size": image_size,
               "train_steps": steps, "train_images": int(len(train)),
               "final_train_loss": losses[-1] if losses else None,
               "train_seconds": round(train_seconds, 1), "test": result,
               "settings": vars(args)}
    rows = [[described, f"{result['log_likelihood']:.1f}", f"{result['bits_per_dim']:.3f}",
             f"{result['negative_elbo']:.1f}", f"{result['kl']:.2f}"]]
    body = (f"{steps} steps of batch {args.batch_size} on {len(train)} {args.dataset} "
            f"training images ({image_size} px); test: {len(test)} images, "
            f"K = {args.importance_samples} importance samples. Nats per image.\n\n"
            + markdown_table(["encoder", "log-likelihood (IS)", "bits/dim", "negative ELBO",
                              "KL"], rows))
    write_report(os.path.join("vae", args.name), payload, body,
                 f"VAE with a {args.init} encoder (paper Table 5 protocol)")
    write_table()
    print(np.round([result["log_likelihood"], result["negative_elbo"], result["kl"]], 2))


def restore_training(vae, directory, settings):
    """(steps done, checkpoint) of the VAE's training under `directory`: the latest
    checkpoint restored (model, both optimizers, the z-sampling seed), or 0 for a new run.
    A directory made by other settings is refused (its checkpoints belong to another run)."""
    import json

    import tensorflow as tf

    path = os.path.join(directory, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(key for key in settings if key != "eval_images"
                         and before.get(key) != settings[key])
        if changed:
            raise SystemExit(f"{directory} holds a run with other settings ("
                             + ", ".join(f"--{k}: {before.get(k)!r} then, {settings[k]!r} now"
                                         for k in changed)
                             + "); use another --name or delete the directory")
    else:
        write_json(path, settings)
    # The seed generator's state is listed on its own: tracking through the model does not
    # restore it, and without it a resumed run would draw other z.
    checkpoint = tf.train.Checkpoint(vae=vae, encoder_optimizer=vae.encoder_optimizer,
                                     optimizer=vae.optimizer,
                                     z_seed_state=vae.seed_generator.state,
                                     step=tf.Variable(0, dtype=tf.int64))
    checkpoint.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
    if checkpoint.manager.latest_checkpoint:
        checkpoint.restore(checkpoint.manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resumed from {checkpoint.manager.latest_checkpoint}", flush=True)
    return int(checkpoint.step.numpy()), checkpoint


# Table 5's rows in the paper's order: (results/vae/<name>, label, the paper's log-likelihood
# and KL with a ResNet-18 trained for 100 epochs; nats per image).
TABLE5_ROWS = (("random", "random init.", -3202, 33.0),
               ("simclr", "SimCLR + fine-tune", -3174, 38.9),
               ("moco_v2", "MoCo-v2 + fine-tune", -3103, 32.2),
               ("nac", "NAC + fine-tune", -2865, 71.8))


def write_table():
    """results/vae/results.md and results.json: every recorded Table 5 row side by side, each
    with the command that made it (the rows are separate runs, so there is no single
    command to regenerate the table)."""
    import json

    rows, recorded = [], {}
    for name, label, paper_ll, paper_kl in TABLE5_ROWS:
        path = os.path.join(RESULTS_DIR, "vae", name, "results.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            record = json.load(f)
        recorded[name] = record
        test = record["test"]
        rows.append([label, f"{test['log_likelihood']:.1f}", f"{test['bits_per_dim']:.3f}",
                     f"{test['negative_elbo']:.1f}", f"{test['kl']:.2f}",
                     f"{record['train_seconds'] / 60:.0f}", f"{paper_ll}", f"{paper_kl}"])
    if not rows:
        return
    first = next(iter(recorded.values()))
    out = os.path.join(RESULTS_DIR, "vae")
    write_json(os.path.join(out, "results.json"), {"rows": recorded})
    commands = "\n".join(record["command"] for record in recorded.values())
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("# Table 5 at CPU scale: VAEs with pretrained encoders\n\n"
                f"{first['train_steps']} steps of batch {first['settings']['batch_size']} per "
                f"row on the {first['train_images']} training images of the CIFAR-10 split; "
                f"test: {first['test']['num_images']} held-out images, "
                f"K = {first['test']['importance_samples']} importance samples; nats per "
                "image. The paper's columns: ResNet-18, 100 epochs.\n\n"
                + markdown_table(["encoder", "log-likelihood (IS)", "bits/dim",
                                  "negative ELBO", "KL", "train minutes",
                                  "paper log-likelihood", "paper KL"], rows)
                + "\n\nThe rows' commands (from the repository root):\n\n```bash\n"
                + commands + "\n```\n")


if __name__ == "__main__":
    main()
