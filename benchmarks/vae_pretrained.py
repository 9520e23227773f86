"""Paper Table 5: a VAE whose encoder starts from random weights or from a pretraining run,
fine-tuned with the decoder; test-set negative ELBO, KL and importance-sampled log-likelihood.

One command per row of the table (`nac_tf.vae`, protocol in docs/protocols.md section 3):

    python benchmarks/vae_pretrained.py --init=random --model_dir=RUN [...]   # random init.
    python benchmarks/vae_pretrained.py --init=run --model_dir=RUN [...]      # pretrained

`--init=random` builds the encoder of RUN's architecture and input normalisation with fresh
weights (or, without --model_dir, `--encoder` for images of `--image_size`); `--init=run`
restores RUN's latest checkpoint. The encoder is then followed by a new linear layer to the
posterior mean and log-variance and fine-tuned through it with Adam at `--encoder_lr`, the
linear layer and the decoder at `--head_lr`. Results go to results/vae/<--name>/ (JSON and
markdown with the exact command).

CPU-scale Table 5 (not run yet). The paper trains a ResNet-18 VAE for 100 epochs on
CIFAR-10; at CPU scale the encoders are the `resnet_tiny` ones of the Table 1 runs of
benchmarks/reproduce_paper.py (NAC p = 0.1, SimCLR, MoCo-v2; 1 000 LARS steps on the 49 000
bit-exact CIFAR-10 training images, `--experiment=linear`), and the VAE trains and is tested
on the same split (its 10 000 held-out images are the test set):

    python benchmarks/reproduce_paper.py --experiment=linear   # makes the three runs
    SPLIT=runs/experiments/cifar10_exact_split_1000_0.npz
    RUNS=runs/experiments/linear
    COMMON="--dataset=npz --data_dir=$SPLIT --epochs=100 --latent_dim=128 --encoder_lr=1e-4 \
        --head_lr=1e-3 --importance_samples=1000"
    python benchmarks/vae_pretrained.py --init=random --model_dir=$RUNS/nac_p0.1_s0_1000steps \
        --name=random $COMMON
    python benchmarks/vae_pretrained.py --init=run --model_dir=$RUNS/simclr_s0_1000steps \
        --name=simclr $COMMON
    python benchmarks/vae_pretrained.py --init=run --model_dir=$RUNS/moco_v2_s0_1000steps \
        --name=moco_v2 $COMMON
    python benchmarks/vae_pretrained.py --init=run --model_dir=$RUNS/nac_p0.1_s0_1000steps \
        --name=nac $COMMON

With the full-size recipes (`nac-train --config=cifar10_simclr|cifar10_moco_v2|cifar10_nac`,
ResNet-50, 1 000 epochs) the same commands take `--model_dir` of those runs and
`--dataset=cifar10` (or `--dataset=npz --data_dir=../shared/data/cifar10.npz`).

Smoke run (seconds; digits are 8-bit too, replicated to RGB):

    python benchmarks/vae_pretrained.py --init=random --encoder=small_cnn --dataset=digits \
        --image_size=8 --steps=20 --latent_dim=8 --importance_samples=16 --name=smoke_digits
"""
import argparse
import math
import os
import time

import numpy as np

from experiments import markdown_table, write_report


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
    return parser.parse_args()


def build_model(args):
    """(VAE, image size, description of the encoder's initialisation)."""
    from nac_tf.data.catalog import DATASET_DEFAULTS, dataset_statistics, load_source
    from nac_tf.vae import PretrainedEncoderVAE, encoder_of_run, random_encoder

    if args.model_dir:
        encoder, statistics = encoder_of_run(args.model_dir, pretrained=args.init == "run")
        image_size = int(statistics["image_size"])
        described = f"{args.init} ({args.model_dir})"
    elif args.init == "run":
        raise SystemExit("--init=run needs --model_dir")
    else:
        image_size = args.image_size or DATASET_DEFAULTS[args.dataset].image_size
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
    from nac_tf.vae import evaluate_vae

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
    # uint8 in memory, [0, 1] floats (resized to the encoder's size if needed) per batch.
    data = (tf.data.Dataset.from_tensor_slices(train).shuffle(len(train), seed=args.seed)
            .repeat().batch(args.batch_size, drop_remainder=True)
            .map(lambda x: evaluation_images(x, image_size)).prefetch(2))
    start = time.time()
    history = vae.fit(data, steps_per_epoch=steps, epochs=1, verbose=2)
    train_seconds = time.time() - start
    test_images = evaluation_images(test, image_size).numpy()
    result = evaluate_vae(vae, test_images, args.eval_batch_size, args.importance_samples)
    payload = {"init": described, "dataset": args.dataset, "image_size": image_size,
               "train_steps": steps, "train_images": int(len(train)),
               "final_train_loss": float(history.history["loss"][-1]),
               "train_seconds": round(train_seconds, 1), "test": result,
               "settings": vars(args)}
    rows = [[described, f"{result['log_likelihood']:.1f}", f"{result['bits_per_dim']:.3f}",
             f"{result['negative_elbo']:.1f}", f"{result['kl']:.2f}"]]
    body = (f"{steps} steps of batch {args.batch_size} on {len(train)} {args.dataset} "
            f"training images ({image_size} px); test: {len(test)} images, "
            f"K = {args.importance_samples} importance samples. Nats per image.\n\n"
            + markdown_table(["encoder", "log-likelihood (IS)", "bits/dim", "negative ELBO",
                              "KL"], rows))
    name = args.name or args.init
    write_report(os.path.join("vae", name), payload, body,
                 f"VAE with a {args.init} encoder (paper Table 5 protocol)")
    print(np.round([result["log_likelihood"], result["negative_elbo"], result["kl"]], 2))


if __name__ == "__main__":
    main()
