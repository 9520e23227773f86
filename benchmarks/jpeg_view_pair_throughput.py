"""Benchmark (not a test): 224 px view pairs per CPU second from JPEG files, by decoding strategy.

    python benchmarks/jpeg_view_pair_throughput.py [--images=192] [--width=500] [--height=375]
        [--batch_size=32] [--batches=12] [--warmup=2] [--threads=1] [--json]

ImageNet-like JPEG files (default 500 x 375, quality 90, smooth random content, in a
temporary directory) go through MoCo-v2's recipe at 224 px (`imagenet_recipe(224)`), one
tf.data pipeline per row, TensorFlow restricted to `--threads` threads; rates are per CPU
second of the process (the per-core figure), and per wall second:

  library, full recipe        nac_tf's streamed path (`make_pretrain_dataset` on a
                              `StreamImageSource` of decoded files, `uniform_size=False`, as
                              the ImageNet loader makes it): every image cropped at its own
                              resolution (both views), batched, then colour + blur;
  library, crop only          the same with the colour, grayscale and blur stages off: the
                              host's share under --augment_on=device;
  square resize first, ...    the streamed path before 2026-12-01: each decoded image resized
                              to 224 x 224 (`sources.resize_square`), batched, then the batch
                              crop (full recipe, and crop only);
  fused decode-and-crop       per view, `tf.image.extract_jpeg_shape` then
                              `tf.image.decode_and_crop_jpeg` of the view's window only
                              (libjpeg skips the IDCT outside it), then the views' resampling
                              (crop only).

The colour stages' own rate (what --augment_on=device moves off the host) follows from the
first two rows: 1 / (1 / full - 1 / crop only).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=192, help="JPEG files to make")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--batch_size", type=int, default=32,
                        help="images per batch of this input pipeline")
    parser.add_argument("--global_batch_size", type=int, default=0,
                        help="measure one pipeline's share of a larger global batch (a "
                             "multiple of --batch_size; 0: the same as --batch_size): every "
                             "random draw is made for the whole global batch")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow and tf.data threads (1: per-core figures)")
    parser.add_argument("--json", action="store_true", help="one JSON line at the end")
    return parser.parse_args(argv)


def write_jpegs(directory, count, width, height, quality, tf):
    """Smooth random images (low-resolution noise, upsampled, plus fine noise): JPEG sizes
    like photographs' rather than like white noise's."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.random((1, height // 16, width // 16, 3)).astype(np.float32)
        image = tf.image.resize(coarse, (height, width), method="bicubic")[0] * 255.0
        image += rng.normal(0.0, 6.0, image.shape).astype(np.float32)
        image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        path = os.path.join(directory, f"{i:05d}.jpg")
        tf.io.write_file(path, tf.io.encode_jpeg(image, quality=quality))
        paths.append(path)
    return paths


def main():
    args = parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    from nac_tf.data import pipeline, sources, views
    from nac_tf.data.views.colour import Planes
    from nac_tf.data.views.draws import Draws
    from nac_tf.data.views.geometry import crop_windows, resized_crop

    recipe = views.imagenet_recipe(224)
    crop_only_recipe = views.AugmentationConfig(
        image_size=224, crop_area=recipe.crop_area, aspect_ratio=recipe.aspect_ratio,
        flip=True, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    size = recipe.image_size
    key = views.seed_key(0)

    def options(dataset):
        settings = tf.data.Options()
        settings.threading.private_threadpool_size = args.threads
        settings.threading.max_intra_op_parallelism = args.threads
        return dataset.with_options(settings)

    def files(paths):
        return tf.data.Dataset.from_tensor_slices(paths).repeat()

    def library_path(paths, config, square_first=False):
        """make_pretrain_dataset on a stream of decoded images (resized to size x size
        first, as before, with `square_first`)."""
        def decode(path):
            image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
            if square_first:
                image = sources.resize_square(image, size)
            return image, tf.constant(0, tf.int64)

        def make_train(input_context=None):
            return files(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)

        source = sources.StreamImageSource(
            "jpeg", make_train, make_train, num_train=len(paths), num_test=len(paths),
            num_classes=1, image_shape=(size, size, 3), uniform_size=square_first)
        augmenter = views.ViewPairAugmenter(config, seed=0)
        global_batch = args.global_batch_size or args.batch_size
        shares = global_batch // args.batch_size
        context = tf.distribute.InputContext(num_input_pipelines=shares, input_pipeline_id=0,
                                             num_replicas_in_sync=shares)
        return pipeline.make_pretrain_dataset(source, augmenter, global_batch, context, seed=0)

    def view_windows(index, view, height, width):
        """One view's RandomResizedCrop window on an image of the given size."""
        draws = Draws(views.fold_in(key, index, view), 0, 1, 1)
        return [w[0] for w in crop_windows(draws, height, width, recipe.crop_area,
                                           recipe.aspect_ratio)]

    def resample(crop, flip):
        """The crop [h, w, 3] resampled to size x size by the views' own op."""
        shape = tf.shape(crop)
        window = (tf.zeros([1], tf.int32), tf.zeros([1], tf.int32), shape[:1], shape[1:2])
        return Planes(resized_crop(crop[None], window, size, flip)).images()[0]

    def fused(index, path):
        data = tf.io.read_file(path)
        shape = tf.image.extract_jpeg_shape(data)
        pair = []
        for view in (1, 2):
            top, left, h, w = view_windows(index, view, shape[0], shape[1])
            crop = tf.image.decode_and_crop_jpeg(data, tf.stack([top, left, h, w]), channels=3)
            pair.append(resample(crop, tf.constant([view == 2])))
        return tuple(pair)

    def per_image(paths, function):
        dataset = tf.data.Dataset.zip(tf.data.Dataset.counter(), files(paths))
        dataset = dataset.map(function, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.batch(args.batch_size).prefetch(tf.data.AUTOTUNE)

    def measure(dataset):
        iterator = iter(options(dataset))
        for _ in range(args.warmup):
            next(iterator)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.batches):
            view1, view2 = next(iterator)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert view1.shape == (args.batch_size, size, size, 3), view1.shape
        pairs = args.batches * args.batch_size
        return {"pairs_per_cpu_second": pairs / cpu, "pairs_per_second": pairs / wall}

    with tempfile.TemporaryDirectory(prefix="jpeg_bench_") as directory:
        paths = write_jpegs(directory, args.images, args.width, args.height, args.quality, tf)
        mean_bytes = float(np.mean([os.path.getsize(p) for p in paths]))
        print(f"{args.images} JPEG files {args.width}x{args.height} (quality {args.quality}, "
              f"{mean_bytes / 1024:.0f} KiB on average); view {size} px, batch "
              f"{args.batch_size} (of a global batch of "
              f"{args.global_batch_size or args.batch_size}), {args.batches} batches, "
              f"{args.threads} thread(s); load "
              f"average before: {os.getloadavg()[0]:.2f}", flush=True)
        rows = {}
        for name, dataset in (
                ("library, full recipe", library_path(paths, recipe)),
                ("library, crop only", library_path(paths, crop_only_recipe)),
                ("square resize first, full recipe", library_path(paths, recipe, True)),
                ("square resize first, crop only",
                 library_path(paths, crop_only_recipe, True)),
                ("fused decode-and-crop, crop only", per_image(paths, fused))):
            rows[name] = measure(dataset)
            print(f"{name:34s} {rows[name]['pairs_per_cpu_second']:8.1f} pairs/CPU-s "
                  f"{rows[name]['pairs_per_second']:8.1f} pairs/s", flush=True)
    full = rows["library, full recipe"]["pairs_per_cpu_second"]
    crop = rows["library, crop only"]["pairs_per_cpu_second"]
    colour = 1.0 / (1.0 / full - 1.0 / crop) if crop > full else float("inf")
    print(f"{'colour stages alone (derived)':34s} {colour:8.1f} pairs/CPU-s")
    if args.json:
        print(json.dumps({"threads": args.threads, "width": args.width, "height": args.height,
                          "mean_jpeg_bytes": mean_bytes, "rows": rows,
                          "colour_pairs_per_cpu_second": colour}))


if __name__ == "__main__":
    main()
