"""The trainer's TensorBoard summaries beyond the step scalars: final metrics, the histogram
of the code pre-activations, the augmented view pairs (nac_tf.summaries)."""
import collections
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from nac_tf.data.pipeline import first_view_pairs
from nac_tf.data.sources import load_digits_source
from nac_tf.data.views import ViewPairAugmenter
from nac_tf.export import build_export_module
from nac_tf.summaries import FINAL_METRICS, NUM_VIEW_PAIRS, PROBE_SIZE, final_metrics
from nac_tf.run_directory import restore_pretrained_method
from nac_tf.evaluation.pretraining import summary_table
from nac_tf.recipes import augmentation_config

IMAGE_SIZE = 8
CODE_DIM = 16


@pytest.fixture(scope="module")
def run(tiny_run):
    """(config, results, {tag: [(step, tensor)]}) of the session's evaluated tiny run
    (tests/conftest.py: 6 steps, summaries every 2, linear and MLP probes of 1 epoch)."""
    config, results = tiny_run.config, tiny_run.results
    assert (config.image_size, config.code_dim) == (IMAGE_SIZE, CODE_DIM)
    assert (config.mlp_eval_epochs, config.linear_eval_augment) == (1, False)
    with open(os.path.join(config.model_dir, "results.json")) as f:
        assert json.load(f) == results
    directory = os.path.join(config.model_dir, "tensorboard")
    (events_file,) = os.listdir(directory)  # one writer for the whole run
    summaries = collections.defaultdict(list)
    for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, events_file)):
        for value in event.summary.value:
            summaries[value.tag].append((event.step, tf.make_ndarray(value.tensor)))
    return config, results, summaries


def test_final_metrics_are_the_results_at_the_last_step(run):
    _, results, summaries = run
    expected = final_metrics(results)
    for name in FINAL_METRICS:  # the digits run evaluates all of them, and the baselines
        assert name in expected and "random_init_" + name in expected
    written = {tag[len("final/"):]: values for tag, values in summaries.items()
               if tag.startswith("final/")}
    assert sorted(written) == sorted(expected)
    for name, value in expected.items():
        (step, tensor), = written[name]
        assert step == results["steps"] == 6
        assert float(tensor) == pytest.approx(value, rel=1e-6)  # stored as float32


def test_final_report_has_the_mlp_probe_beside_the_linear_one(run):
    # mlp_eval_epochs=1: AMDIM's MLP evaluation in results.json and the printed summary.
    _, results, _ = run
    for prefix in ("", "random_init_"):
        assert 0.0 <= results[prefix + "mlp_top1"] <= 1.0
        assert 0.0 <= results[prefix + "linear_top1"] <= 1.0
        mlp = results[prefix + "mlp"]
        assert mlp["top1"] == results[prefix + "mlp_top1"]
        assert (mlp["config"]["hidden_dim"], mlp["config"]["dropout"]) == (1024, 0.2)
        assert mlp["config"]["epochs"] == 1 and mlp["config"]["augment"] is False
        assert set(mlp["validation_top1"]) == {"0.01", "0.1", "1.0"}
    rows = {line.split()[0]: line.split()[1:] for line in summary_table(results).splitlines()}
    assert [float(value) for value in rows["mlp_top1"]] == pytest.approx(
        [results["mlp_top1"], results["random_init_mlp_top1"]], abs=5e-5)


def test_code_histogram_summarises_the_probe_pre_activations(run):
    config, _, summaries = run
    histograms = summaries["codes/pre_activations"]
    assert [step for step, _ in histograms] == [0, 2, 4, 6]  # the start, every log step
    digits = load_digits_source(image_size=IMAGE_SIZE, seed=config.seed)
    probe = digits.train_images[:PROBE_SIZE]
    for _, buckets in histograms:
        # [bucket, (left edge, right edge, count)]: every value of a [256, 16] batch.
        assert buckets.ndim == 2 and buckets.shape[1] == 3
        assert buckets[:, 2].sum() == len(probe) * CODE_DIM
    # The last histogram is of the final networks' a on the probe, as the export sees them.
    _, method = restore_pretrained_method(config.model_dir)
    a = build_export_module(method, IMAGE_SIZE).pre_activations(tf.constant(probe)).numpy()
    last = histograms[-1][1]
    assert last[0, 0] == pytest.approx(a.min(), abs=1e-5)
    assert last[-1, 1] == pytest.approx(a.max(), abs=1e-5)
    assert not np.array_equal(histograms[0][1], last)  # training moved them


def test_view_pairs_are_the_first_training_views_side_by_side(run):
    config, _, summaries = run
    (step, tensor), = summaries["views/pairs"]  # once, at the start
    assert step == 0
    # tf.summary.image stores [width, height, PNG, PNG, ...].
    width, height, *pngs = tensor
    assert (int(width), int(height), len(pngs)) == (2 * IMAGE_SIZE, IMAGE_SIZE, NUM_VIEW_PAIRS)
    images = np.stack([tf.io.decode_png(png).numpy() for png in pngs])
    assert images.shape == (NUM_VIEW_PAIRS, IMAGE_SIZE, 2 * IMAGE_SIZE, 3)
    digits = load_digits_source(image_size=IMAGE_SIZE, seed=config.seed)
    augmenter = ViewPairAugmenter(augmentation_config(config, IMAGE_SIZE), seed=config.seed)
    view1, view2 = first_view_pairs(digits, augmenter, config.batch_size, NUM_VIEW_PAIRS,
                                    seed=config.seed)
    # PNGs hold uint8 levels of the [0, 1] views.
    expected = np.concatenate([view1, view2], axis=2) * 255
    np.testing.assert_allclose(images, expected, rtol=0, atol=1.0)
    assert not np.array_equal(images[..., :IMAGE_SIZE, :], images[..., IMAGE_SIZE:, :])
