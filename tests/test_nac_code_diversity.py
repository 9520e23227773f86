"""How many codewords NAC learns on a small setting, against what its channel can carry.

D binary symmetric channels with flip probability p carry at most D (1 - H(p)) bits, and N
images need at most log2 N bits to be told apart. These tests pretrain NAC briefly (small
CNN on scikit-learn's digits, the quickstart's recipe, D = 128) and require the entropy of
the training images' codewords to reach 3/4 of min(D (1 - H(p)), log2 N): a code that uses
most of what the channel can carry. At p = 0.1 it does. At p = 0.4 (the paper's hashing
setting, 3.7 bits) the codes collapse onto a few codewords (under 1 bit at lr 2), the known
failure of results/code_capacity/ (benchmarks/code_capacity.py). Why (docs/results.md, "Why
NAC's bits become copies of one another at high p"): for codes as small as these runs keep, the
objective couples two bits only with weight (1 - 2p)^2 (0.04 at p = 0.4), so the bits are
free to repeat one another, and here they end up carrying less than the channel allows. On
CIFAR-10 the same happens, and ten times the tables' budget does not undo it: after 10 000
steps NAC's p = 0.4 codes keep 1.8 effective bits of 128 (results/hashing_long/). That
case is a strict xfail: it is reported as failing, and turns the suite red the day the
collapse is fixed, so the marker goes with the fix.
"""
import math

import numpy as np
import pytest

from nac_tf.config import PretrainConfig

STEPS = 600
CODE_DIM = 128


def _entropy_bits(packed_codes):
    _, counts = np.unique(packed_codes, axis=0, return_counts=True)
    frequencies = counts / counts.sum()
    return float(-np.sum(frequencies * np.log2(frequencies)))


def _capacity_bits(p, code_dim):
    return code_dim * (1 + p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _trained_code_entropy(tmp_path, flip_prob):
    from nac_tf.data.catalog import load_source
    from nac_tf.export import ExportedModel, build_export_module
    from nac_tf.run_directory import read_run_config, restore_pretrained_method
    from nac_tf.training import pretrain

    config = PretrainConfig(
        method="nac", dataset="digits", image_size=8, encoder="small_cnn", batch_size=128,
        train_steps=STEPS, learning_rate=2.0, warmup_epochs=10, flip_prob=flip_prob,
        code_dim=CODE_DIM, crop_area_min=0.4, flip=False, jitter_prob=0.0,
        grayscale_prob=0.0, evaluate=False, checkpoint_every_steps=STEPS,
        log_every_steps=STEPS, model_dir=str(tmp_path / f"p{flip_prob}"))
    pretrain(config)
    _, statistics = read_run_config(config.model_dir)
    _, method = restore_pretrained_method(config.model_dir)
    model = ExportedModel.from_module(build_export_module(
        method, statistics["image_size"], statistics))
    images = load_source("digits", seed=config.seed).train_images
    return _entropy_bits(model.hash_codes(images)), len(images)


@pytest.mark.slow
@pytest.mark.parametrize("flip_prob", [
    0.1,
    pytest.param(0.4, marks=pytest.mark.xfail(
        strict=True, reason="NAC's codes collapse at p = 0.4 (under 1 of the 3.7 bits the "
                            "channel carries; results/code_capacity/), and on CIFAR-10 stay "
                            "nearly copies after 10 000 steps (results/hashing_long/)")),
])
def test_code_entropy_reaches_three_quarters_of_the_channel_limit(tmp_path, flip_prob):
    entropy, num_images = _trained_code_entropy(tmp_path, flip_prob)
    limit = min(_capacity_bits(flip_prob, CODE_DIM), math.log2(num_images))
    assert entropy >= 0.75 * limit, (
        f"codeword entropy {entropy:.2f} bits < 3/4 of min(capacity, log2 N) = {limit:.2f} bits "
        f"at p = {flip_prob}")
