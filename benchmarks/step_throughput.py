"""Benchmark (not a test): images per second of the real training step.

    python benchmarks/step_throughput.py --method=nac --encoder=resnet50 --batch_size=32 \\
        --steps=10 [--image_size=32] [--precision=float32] [--jit_compile] \\
        [--steps_per_loop=1] [--warmup_steps=2] [--threads=0] [--baseline=bare --rounds=3]
        [--json]

Times the trainer's own step function (`nac_tf.training.step_loop`: the replica step under
the run's strategy, `steps_per_loop` steps per tf.function call) on a method built and
compiled as `nac-train` builds it (`method_from_config`, `compile_method`: LARS, the
precision policy), fed a constant pair of random views, so the input pipeline costs
nothing here (benchmarks/view_pair_throughput.py measures it). An image counts once, though
the step runs the networks on both of its views. `--method=bare` is the encoder alone with
a trivial loss (the mean square of h over both views) on the same base class: the floor a
method's heads and objective add to. `--baseline=METHOD` builds that method too, in the
same process, and alternates the two in `--rounds` rounds of `--steps` steps each, so that
their ratio (`overhead_vs_baseline`, from the median round of each) is measured under the
same conditions.

It also prints the step's FLOPs per image, counted by TensorFlow's profiler on the graph of
one step (convolutions, matrix products and their gradients, forward and backward, both
views), and the fraction of the machine's peak that the measured speed achieves; the peak
is an estimate from /proc/cpuinfo, printed with its assumptions. Run it on an idle machine:
the numbers of two settings are only comparable from runs in a row on the same machine.

The last line is one JSON object (`--json`: only that line) with images_per_second,
seconds_per_step, method, encoder, batch_size, image_size, precision, jit_compile,
steps_per_loop, steps, flops_per_image, peak_flops, peak_fraction.
"""
import argparse
import json
import math
import os
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from nac_tf.config import ENCODERS, METHODS, PRECISIONS  # noqa: E402 (no TensorFlow)

BARE = "bare"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="nac", choices=METHODS + (BARE,))
    parser.add_argument("--encoder", default="resnet50", choices=ENCODERS)
    parser.add_argument("--batch_size", type=int, default=32, help="images per step")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--jit_compile", action="store_true", help="XLA-compile the step")
    parser.add_argument("--steps_per_loop", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup_steps", type=int, default=2,
                        help="untimed steps first (the first one traces the step)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads (0: TensorFlow's default, one per core)")
    parser.add_argument("--code_dim", type=int, default=128)
    parser.add_argument("--baseline", default="", choices=("",) + METHODS + (BARE,),
                        help="a second method timed in alternation with --method")
    parser.add_argument("--rounds", type=int, default=1,
                        help="timed rounds of --steps steps (alternating with --baseline)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    for name in ("batch_size", "image_size", "steps_per_loop", "steps", "code_dim", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    if args.warmup_steps < 1:
        parser.error("--warmup_steps must be >= 1 (the first step traces the function)")
    return args


# ------------------------------------------------------------------------ the machine

def cpu_description():
    """(model name, vendor, flags, nominal GHz or None, logical cores) from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "unknown", "unknown", set(), None, os.cpu_count() or 1

    def field(name):
        match = re.search(rf"^{name}\s*:\s*(.+)$", text, re.MULTILINE)
        return match.group(1).strip() if match else ""

    ghz = None
    if field("cpu MHz"):
        ghz = float(field("cpu MHz")) / 1000.0
    elif field("bogomips"):
        ghz = float(field("bogomips")) / 2000.0  # BogoMIPS is twice the TSC rate on x86
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return field("model name"), field("vendor_id"), set(field("flags").split()), ghz, cores


def estimate_peak_flops(precision):
    """(peak FLOP/s, how it was estimated) for the CPU this process may run on.

    cores x clock x FLOPs per cycle and core, the last from the vector units the flags
    imply: AMD with AVX-512 (Zen 4) runs 512-bit FMAs on two 256-bit pipes: 32 float32
    FLOPs per cycle; Intel with AVX-512: two 512-bit FMA units, 64; AVX2 + FMA: 32;
    otherwise SSE, 8. With avx512_bf16 a bfloat16 dot product (VDPBF16PS) does twice the
    float32 work per instruction, so mixed_bfloat16's peak is doubled. The clock is the
    nominal one /proc/cpuinfo gives (turbo is not counted).
    """
    model, vendor, flags, ghz, cores = cpu_description()
    if ghz is None:
        return None, "no clock rate in /proc/cpuinfo: peak unknown"
    if "avx512f" in flags:
        per_cycle = 32 if vendor == "AuthenticAMD" else 64
        unit = ("AVX-512 on two 256-bit FMA pipes" if vendor == "AuthenticAMD"
                else "two 512-bit FMA units")
    elif "avx2" in flags and "fma" in flags:
        per_cycle, unit = 32, "two 256-bit FMA units"
    else:
        per_cycle, unit = 8, "SSE"
    if precision == "mixed_bfloat16" and "avx512_bf16" in flags:
        per_cycle *= 2
        unit += ", x2 for bfloat16 dot products (avx512_bf16)"
    peak = cores * ghz * 1e9 * per_cycle
    how = (f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({unit}); {model}")
    return peak, how


# ------------------------------------------------------------------------ the step

def build(args, method_name):
    """(strategy, method, run_steps, iterator, views) of `method_name` as the trainer builds
    them."""
    import keras
    import tensorflow as tf

    from nac_tf import distribute
    from nac_tf.config import PretrainConfig
    from nac_tf.methods.base import MethodConfig, PairLoss, TwoViewMethod
    from nac_tf.methods.from_config import method_from_config
    from nac_tf.models import build_encoder
    from nac_tf.recipes import compile_method
    from nac_tf.training import step_loop

    class BareEncoder(TwoViewMethod):
        """The encoder with a trivial loss: what every method's step costs at least."""

        def view_pair_loss(self, view1, view2, training):
            h = self.forward_views(lambda images: self.encoder(images, training=training),
                                   view1, view2)
            h = keras.ops.cast(h, "float32")
            return PairLoss(keras.ops.mean(h * h), {})

    keras.utils.set_random_seed(0)
    if args.precision != "float32":
        keras.config.set_dtype_policy(args.precision)
    config = PretrainConfig(
        method="nac" if method_name == BARE else method_name, encoder=args.encoder,
        batch_size=args.batch_size, code_dim=args.code_dim, precision=args.precision,
        jit_compile=args.jit_compile, steps_per_loop=args.steps_per_loop,
        queue_size=max(2 * args.batch_size, (4096 // (2 * args.batch_size)) * 2 * args.batch_size),
        learning_rate=0.1)
    size = args.image_size
    statistics = {"image_size": size, "mean": [0.5] * 3, "std": [0.25] * 3}
    strategy = distribute.make_strategy("auto")
    total = args.warmup_steps + args.steps + args.steps_per_loop
    with strategy.scope():
        if method_name == BARE:
            encoder = build_encoder(args.encoder, (size, size, 3), stem="cifar" if size <= 64
                                    else "imagenet", mean=statistics["mean"],
                                    std=statistics["std"])
            method = BareEncoder(encoder, MethodConfig(), name="bare")
            method.build_networks((size, size, 3))
        else:
            method = method_from_config(config, statistics)
        compile_method(method, config, total_steps=10 * total, warmup_steps=total)
    rng = tf.random.Generator.from_seed(0)
    views = tuple(rng.uniform((args.batch_size, size, size, 3)) for _ in range(2))
    dataset = tf.data.Dataset.from_tensors(views).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    return strategy, method, step_loop(strategy, method, args.jit_compile), iterator, views


def _graph_flops(function, *specs):
    """FLOPs of `function`'s graph, counted by TensorFlow's profiler (ops without registered
    FLOP statistics, such as element-wise ones, count 0)."""
    import logging

    import tensorflow as tf

    graph = tf.function(function).get_concrete_function(*specs).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the profiler's TF1 deprecation notices
    try:
        return int(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)
    finally:
        logger.setLevel(level)


def count_flops(strategy, method, views):
    """(FLOPs of one training step on the batch `views`, FLOPs of the encoder's forward pass
    on one view of it). Their ratio is about 6 when the step's count is complete: forward
    and backward (about twice the forward) on two views."""
    import tensorflow as tf

    spec = tf.TensorSpec(views[0].shape, views[0].dtype)
    step = _graph_flops(lambda v1, v2: strategy.run(method.train_step, args=((v1, v2),)),
                        spec, spec)
    forward = _graph_flops(lambda images: method.encoder(images, training=False), spec)
    return step, forward


def time_rounds(runners, args):
    """Per runner ((run_steps, iterator) pairs), the seconds of each of `args.rounds` rounds
    of `args.steps` steps (rounded up to whole loops), the runners alternating round by
    round after their warm-up; and the steps of a round."""
    import tensorflow as tf

    loops = math.ceil(args.steps / args.steps_per_loop)
    per_loop = tf.constant(args.steps_per_loop)
    for run_steps, iterator in runners:
        for _ in range(math.ceil(args.warmup_steps / args.steps_per_loop)):
            float(run_steps(iterator, per_loop)["loss"])
    seconds = [[] for _ in runners]
    for _ in range(args.rounds):
        for index, (run_steps, iterator) in enumerate(runners):
            start = time.perf_counter()
            for _ in range(loops):
                logs = run_steps(iterator, per_loop)
            float(logs["loss"])  # waits for the last step
            seconds[index].append(time.perf_counter() - start)
    return seconds, loops * args.steps_per_loop


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from nac_tf.precision import resolve_precision

    args.precision, reason = resolve_precision(args.precision)
    if reason:
        print(f"precision auto: {args.precision} ({reason})")
    strategy, method, run_steps, iterator, views = build(args, args.method)
    step_flops, forward_flops = count_flops(strategy, method, views)
    flops = step_flops / args.batch_size
    runners = [(run_steps, iterator)]
    if args.baseline:
        runners.append(build(args, args.baseline)[2:4])
    rounds, steps = time_rounds(runners, args)
    seconds = float(np.median(rounds[0]))
    images_per_second = steps * args.batch_size / seconds
    peak, how = estimate_peak_flops(args.precision)
    achieved = images_per_second * flops
    result = {
        "images_per_second": round(images_per_second, 3),
        "seconds_per_step": round(seconds / steps, 5),
        "method": args.method, "encoder": args.encoder, "batch_size": args.batch_size,
        "image_size": args.image_size, "precision": args.precision,
        "jit_compile": args.jit_compile, "steps_per_loop": args.steps_per_loop,
        "steps": steps * args.rounds, "threads": args.threads or None,
        "flops_per_image": flops, "encoder_forward_flops_per_image":
            forward_flops / args.batch_size, "achieved_flops": round(achieved),
        "peak_flops": peak, "peak_fraction": round(achieved / peak, 4) if peak else None,
        "peak_estimate": how, "tensorflow": tf.__version__,
        "round_seconds": [round(s, 4) for s in rounds[0]],
    }
    if args.baseline:
        baseline_seconds = float(np.median(rounds[1]))
        result.update({
            "baseline": args.baseline,
            "baseline_images_per_second": round(steps * args.batch_size / baseline_seconds, 3),
            "baseline_round_seconds": [round(s, 4) for s in rounds[1]],
            "overhead_vs_baseline": round(seconds / baseline_seconds - 1.0, 4)})
    if not args.json:
        print(f"{args.method} / {args.encoder}, batch {args.batch_size} at {args.image_size} px, "
              f"{args.precision}{', XLA' if args.jit_compile else ''}, "
              f"{args.steps_per_loop} step(s) per call")
        print(f"  {images_per_second:.2f} images/s, {seconds / steps:.4f} s per step "
              f"(median of {args.rounds} round(s) of {steps} steps, after "
              f"{args.warmup_steps} warm-up)")
        if args.baseline:
            print(f"  {args.baseline}, alternating: {result['baseline_images_per_second']:.2f} "
                  f"images/s; {args.method} takes {100 * result['overhead_vs_baseline']:+.1f} % "
                  "time per step")
        print(f"  {flops / 1e9:.3f} GFLOP per image per step (counted: forward and backward, "
              f"both views; {step_flops / forward_flops:.2f} x the encoder's forward pass of "
              f"one view) -> {achieved / 1e9:.1f} GFLOP/s")
        if peak:
            print(f"  {100 * achieved / peak:.1f} % of the estimated peak {peak / 1e9:.0f} "
                  f"GFLOP/s = {how}")
        else:
            print(f"  peak: {how}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
