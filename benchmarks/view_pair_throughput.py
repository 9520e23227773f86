"""Benchmark (not a test): view pairs per second per core of `ViewPairAugmenter`.

    python benchmarks/view_pair_throughput.py [--implementation=new] [--sizes=32,224]
        [--batch_sizes=256,32] [--batches=40,12] [--warmup=3] [--threads=1]

Two settings, each through `nac_tf.data.pipeline.make_pretrain_dataset` (the training
input: indexed gather from an in-memory array, augmenter in the parallel map, prefetch):
  32 px:  SimCLR's CIFAR recipe (`cifar_recipe(32)`) on random 32 × 32 uint8 images;
  224 px: MoCo-v2's ImageNet recipe with blur (`imagenet_recipe(224)`) on random
          256 × 256 uint8 images.
TensorFlow and tf.data are restricted to `--threads` threads (default 1), and the rate is
reported both per wall-clock second and per CPU second of the process (the latter is the
per-core figure that other jobs on the machine do not disturb).

--implementation: `new` (the module in this tree), `old`, or a comma-separated sequence
such as `old,new,old,new`, each run in its own subprocess one after the other; a summary
and a final JSON line follow.

`old` exists only for comparing with the keras-cv implementation that `nac_tf/data/views.py`
replaced: it writes `git show <--old_ref>:nac_tf/data/views.py` to a temporary directory
(never into the repository) and imports it with `--keras_cv_dir` first on sys.path.
keras-cv is not a dependency of nac_tf; provide it for this comparison only, without its
dependencies:
    pip install --target /tmp/kcv --no-deps keras-cv==0.9.0

Measured on a shared 2-core machine (TF 2.21, one thread, old,new,old,new, 60 and 16
batches): 32 px old 3 015, new 11 406 pairs per CPU second; 224 px old 48, new 143.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, os.pardir)
sys.path.insert(0, ROOT)

# Input image side for each view size: CIFAR-sized inputs at 32, 256 px at 224.
INPUT_SIZE = {32: 32}
DEFAULT_INPUT = 256


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--implementation", default="new",
                        help="new, old, or a comma-separated sequence (e.g. old,new,old,new)")
    parser.add_argument("--sizes", default="32,224", help="view sizes, comma-separated")
    parser.add_argument("--batch_sizes", default="256,32",
                        help="images per batch for each size")
    parser.add_argument("--batches", default="40,12", help="timed batches for each size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow and tf.data threads (1: per-core figures)")
    parser.add_argument("--old_ref", default="d95749a",
                        help="git revision of the old (keras-cv) views.py")
    parser.add_argument("--keras_cv_dir", default="/tmp/kcv",
                        help="directory holding keras_cv for --implementation=old")
    args = parser.parse_args(argv)
    args.implementations = [name.strip() for name in args.implementation.split(",")]
    if not args.implementations or set(args.implementations) - {"old", "new"}:
        parser.error(f"--implementation must name old and/or new; received "
                     f"{args.implementation!r}")
    args.size_list = [int(v) for v in args.sizes.split(",")]
    args.batch_size_list = [int(v) for v in args.batch_sizes.split(",")]
    args.batches_list = [int(v) for v in args.batches.split(",")]
    if not len(args.size_list) == len(args.batch_size_list) == len(args.batches_list):
        parser.error("--sizes, --batch_sizes and --batches need one value per size")
    return args


def load_views(implementation, args):
    """The views module to measure: this tree's, or the old one from git with keras-cv."""
    if implementation == "new":
        from nac_tf.data import views
        return views
    if not os.path.isdir(os.path.join(args.keras_cv_dir, "keras_cv")):
        sys.exit(f"--implementation=old needs keras-cv in --keras_cv_dir={args.keras_cv_dir}: "
                 f"pip install --target {args.keras_cv_dir} --no-deps keras-cv==0.9.0")
    source = subprocess.run(["git", "-C", ROOT, "show", f"{args.old_ref}:nac_tf/data/views.py"],
                            check=True, capture_output=True, text=True).stdout
    sys.path.insert(0, args.keras_cv_dir)
    with tempfile.TemporaryDirectory(prefix="old_views_") as directory:
        path = os.path.join(directory, "old_views.py")
        with open(path, "w") as handle:
            handle.write(source)
        spec = importlib.util.spec_from_file_location("old_views", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def measure(views, size, batch_size, batches, warmup, threads):
    import numpy as np
    import tensorflow as tf

    from nac_tf.data import pipeline, sources

    input_size = INPUT_SIZE.get(size, DEFAULT_INPUT)
    recipe = views.cifar_recipe(size) if size <= 64 else views.imagenet_recipe(size)
    augmenter = views.ViewPairAugmenter(recipe, seed=0)
    count = max(4 * batch_size, 64)
    images = np.random.default_rng(0).integers(0, 256, (count, input_size, input_size, 3),
                                               dtype=np.uint8)
    labels = np.zeros(count, np.int64)
    source = sources.ArrayImageSource("benchmark", images, labels, images[:2], labels[:2])
    dataset = pipeline.make_pretrain_dataset(source, augmenter, batch_size, seed=0)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = threads
    dataset = dataset.with_options(options)
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        view1, view2 = next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert view1.shape == (batch_size, size, size, 3) and view2.dtype == tf.float32
    pairs = batches * batch_size
    return {"size": size, "input_size": input_size, "batch_size": batch_size,
            "batches": batches, "pairs_per_second": pairs / wall,
            "pairs_per_cpu_second": pairs / cpu, "cpu_per_wall": cpu / wall}


def run_one(implementation, args):
    """Measure one implementation in this process; prints lines and returns the results."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    views = load_views(implementation, args)
    results = []
    for size, batch_size, batches in zip(args.size_list, args.batch_size_list,
                                         args.batches_list):
        result = measure(views, size, batch_size, batches, args.warmup, args.threads)
        result["implementation"] = implementation
        print(f"{implementation:>3} {size:>4} px (input {result['input_size']} px, batch "
              f"{batch_size}, {batches} batches): {result['pairs_per_second']:8.1f} pairs/s, "
              f"{result['pairs_per_cpu_second']:8.1f} pairs/CPU-s "
              f"(CPU/wall {result['cpu_per_wall']:.2f})", flush=True)
        results.append(result)
    return results


def main():
    args = parse_args()
    if len(args.implementations) == 1:
        results = run_one(args.implementations[0], args)
    else:
        # One subprocess per run: the old module imports keras-cv, which must not be loaded
        # when the new one is measured, and every run starts from a fresh TensorFlow.
        results = []
        base = [f"--sizes={args.sizes}", f"--batch_sizes={args.batch_sizes}",
                f"--batches={args.batches}", f"--warmup={args.warmup}",
                f"--threads={args.threads}", f"--old_ref={args.old_ref}",
                f"--keras_cv_dir={args.keras_cv_dir}"]
        for implementation in args.implementations:
            process = subprocess.run(
                [sys.executable, os.path.abspath(__file__), f"--implementation={implementation}"]
                + base, check=True, capture_output=True, text=True)
            lines = process.stdout.strip().splitlines()
            for line in lines[:-1]:
                print(line, flush=True)
            results.extend(json.loads(lines[-1])["runs"])
        print("\nsummary (pairs per CPU second; mean over runs):")
        for size in args.size_list:
            means = {}
            for implementation in ("old", "new"):
                rates = [r["pairs_per_cpu_second"] for r in results
                         if r["implementation"] == implementation and r["size"] == size]
                if rates:
                    means[implementation] = sum(rates) / len(rates)
            text = ", ".join(f"{name} {rate:.1f}" for name, rate in means.items())
            if len(means) == 2:
                text += f", new/old {means['new'] / means['old']:.2f}"
            print(f"  {size:>4} px: {text}")
    print(json.dumps({"threads": args.threads, "runs": results}))


if __name__ == "__main__":
    main()
