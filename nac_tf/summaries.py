"""What the trainer writes to TensorBoard besides the step scalars (a run's tensorboard/).

- `views/pairs`: NUM_VIEW_PAIRS augmented view pairs of the first global batch, view 1 and
  view 2 side by side ([S, 2S] images), once, at step 0 of a new run: what the networks are
  trained on, from the trainer's own input pipeline.
- `codes/pre_activations`: a histogram of the projection head's outputs a, whose signs are
  the hash codes, on a fixed probe of the first PROBE_SIZE training images, computed as the
  exported `hash_codes` signature computes them (evaluation preprocessing, inference mode),
  at step 0 of a new run and at every log step.
- `final/<metric>`: the final evaluation's headline metrics and their random-initialisation
  baselines, under their results.json names (`final/knn_top1`,
  `final/random_init_knn_top1`, ...), at the last step.

Every function writes to the default summary writer at its default step, as tf.summary's
own functions do (`with writer.as_default(step=step): ...`).
"""
import tensorflow as tf

from nac_tf.data.pipeline import first_view_pairs
from nac_tf.export import build_export_module

NUM_VIEW_PAIRS = 4
# A few hundred images give a smooth histogram at the cost of one inference pass per log
# step.
PROBE_SIZE = 256
FINAL_METRICS = ("knn_top1", "linear_top1", "mlp_top1", "map_all", "map_all_expected_ties",
                 "precision_radius2")


def write_view_pairs(source, augmenter, global_batch_size, seed, count=NUM_VIEW_PAIRS):
    """`views/pairs`: the first `count` view pairs of global batch 0, view 1 | view 2."""
    view1, view2 = first_view_pairs(source, augmenter, global_batch_size, count, seed=seed)
    # Views are float32 in [0, 1] (the per-channel normalisation is inside the encoder),
    # which is what tf.summary.image expects.
    pairs = tf.concat([view1, view2], axis=2)
    tf.summary.image("views/pairs", pairs, max_outputs=int(pairs.shape[0]))


class CodeHistogram:
    """`codes/pre_activations` of a method's online networks on fixed probe images."""

    def __init__(self, method, image_size, images):
        self._module = build_export_module(method, image_size)
        self._images = tf.constant(images)
        # One traced function for the forward pass and the histogram: run eagerly, the
        # histogram's bucketing alone took longer than the forward pass (quickstart: 10 ms
        # against 6 ms; traced, both together take 6 ms). The step is an argument so that
        # it is traced once; the networks' current weights are read on every call.
        self._write = tf.function(self._histogram)

    def _histogram(self, images, step):
        tf.summary.histogram("codes/pre_activations", self._module.pre_activations(images),
                             step=step)

    def write(self):
        step = tf.summary.experimental.get_step()
        if step is None:
            raise ValueError("CodeHistogram.write needs a default step: call it inside "
                             "`with writer.as_default(step=step)`")
        self._write(self._images, tf.cast(step, tf.int64))


def final_metrics(results):
    """{name: value} of FINAL_METRICS and their `random_init_` baselines found in
    `results` (a results.json dict)."""
    names = [prefix + name for name in FINAL_METRICS for prefix in ("", "random_init_")]
    return {name: float(results[name]) for name in names if name in results}


def write_final_metrics(results):
    """`final/<name>` scalars of `final_metrics(results)`."""
    for name, value in final_metrics(results).items():
        tf.summary.scalar("final/" + name, value)
