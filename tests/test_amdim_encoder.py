"""The AMDIM encoder and embedding networks (nac_tf/models/amdim.py; AMDIM paper Sec. 3.6).

The forward passes are checked against an independent float64 NumPy implementation written
from the layer list of the authors' encoder (no padding, mean-pool shortcuts zero-padded in
channels, no ReLU after the sum, BN epsilon 1e-5 with biased batch variance in training).
Tolerance: float32 against float64, |diff| <= 1e-4 + 1e-4 * |reference| (observed ~1e-6).
Everything but the parameter count of amdim_small runs on tiny widths (ndf 2-4).
"""
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.export import ExportModule
from nac_tf.models import (
    BATCH_NORM_PATH_PATTERN, ProjectionHead, build_encoder, clone_encoder,
    load_encoder_weights)
from nac_tf.models.amdim import (
    AMDIM_SIZES, AMDIMEmbedding, amdim_feature_channels, amdim_feature_maps, build_amdim)

EPS = 1e-5
TOL = 1e-4


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=TOL, atol=TOL)


# ------------------------------------------------------------------ NumPy reference (float64)
def np_conv_valid(x, kernel, stride, bias=None):
    """Cross-correlation without padding, NHWC, kernel [k, k, cin, cout]."""
    k = kernel.shape[0]
    out = (x.shape[1] - k) // stride + 1
    y = np.zeros((x.shape[0], out, out, kernel.shape[3]))
    for i in range(k):
        for j in range(k):
            y += x[:, i:i + stride * (out - 1) + 1:stride,
                   j:j + stride * (out - 1) + 1:stride] @ kernel[i, j]
    return y if bias is None else y + bias


def np_mean_pool(x, k, stride):
    out = (x.shape[1] - k) // stride + 1
    return np.mean([x[:, i:i + stride * (out - 1) + 1:stride, j:j + stride * (out - 1) + 1:stride]
                    for i in range(k) for j in range(k)], axis=0)


def np_batch_norm_train(x, gamma, beta):
    axes = tuple(range(x.ndim - 1))
    return (x - x.mean(axes)) / np.sqrt(x.var(axes) + EPS) * gamma + beta


def relu(x):
    return np.maximum(x, 0.0)


def w64(model, name):
    return [w.astype(np.float64) for w in model.get_layer(name).get_weights()]


def authors_layout(size, ndf, nrkhs, ndepth):
    """The authors' Encoder layer list for `size`, as (kind, arguments): "conv" is their
    Conv3x3 (n_out, kernel, stride, reflection pad), "block" their ConvResBlock
    (n_out, width, stride, depth; a lone ConvResNxN is a block of depth 1), "bn" the
    optional BatchNorm on the 7x7 map, "out_bn" the BatchNorm always on f1."""
    if size == 32:
        return [("conv", (ndf, 3, 1, 0)), ("block", (ndf, 1, 1, 1)),
                ("block", (2 * ndf, 4, 2, ndepth)), ("block", (4 * ndf, 2, 2, ndepth)),
                ("bn", ()), ("block", (4 * ndf, 3, 1, ndepth)),
                ("block", (4 * ndf, 3, 1, ndepth)), ("block", (nrkhs, 3, 1, 1)), ("out_bn", ())]
    stem = [("conv", (ndf, 3, 1, 0))]
    if size == 128:
        stem = [("conv", (ndf, 5, 2, 2))] + stem
    return stem + [
        ("block", (2 * ndf, 4, 2, ndepth)), ("block", (4 * ndf, 4, 2, ndepth)),
        ("block", (8 * ndf, 2, 2, ndepth)), ("bn", ()), ("block", (8 * ndf, 3, 1, ndepth)),
        ("block", (8 * ndf, 3, 1, ndepth)), ("block", (nrkhs, 3, 1, 1)), ("out_bn", ())]


def reference_amdim(model, x, size, ndf, nrkhs, ndepth, use_bn):
    """All activations of the authors' layer list, in training mode (batch statistics)."""
    acts, stem_index, block_index = [], 0, 0 if size == 32 else 1
    for kind, args in authors_layout(size, ndf, nrkhs, ndepth):
        if kind == "conv":
            stem_index += 1
            _, k, stride, pad = args
            if pad:
                x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
            x = relu(np_conv_valid(x, *w64(model, f"stem_conv{stem_index}")[:1], stride,
                                   w64(model, f"stem_conv{stem_index}")[1]))
        elif kind == "block":
            n_out, width, stride, depth = args
            for u in range(depth):
                p = f"block{block_index}_unit{u}"
                k, s = (width, stride) if u == 0 else (1, 1)
                h = np_conv_valid(x, w64(model, f"{p}_conv1")[0], s)
                if use_bn:
                    h = np_batch_norm_train(h, *w64(model, f"{p}_bn1")[:2])
                h = np_conv_valid(relu(h), w64(model, f"{p}_conv2")[0], 1)
                shortcut = np_mean_pool(x, k, s)
                shortcut = np.pad(shortcut, ((0, 0),) * 3 + ((0, n_out - x.shape[-1]),))
                x = h + shortcut
            block_index += 1
        elif kind == "bn":
            if use_bn:
                x = np_batch_norm_train(x, *w64(model, "f7_bn")[:2])
        else:
            x = np_batch_norm_train(x, *w64(model, "f1_bn")[:2])
        acts.append(x)
    return acts


def dim2layer(acts):
    """The authors' choice of feature maps: the last activation of each spatial size."""
    return {a.shape[1]: a for a in acts}


def randomize(model, seed):
    """Random weights everywhere, including the zero-initialised second convolutions, and
    random BN gamma / beta, so every path of the forward pass is exercised."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for v in layer.weights:
            if v.trainable:
                scale = 0.5 if v.name in ("gamma", "beta") else 1.0 / math.sqrt(
                    max(1, int(np.prod(v.shape[:-1]))))
                base = 1.0 if v.name == "gamma" else 0.0
                v.assign(base + rng.uniform(-scale, scale, v.shape))


# ------------------------------------------------------------------ layout and forward math
@pytest.mark.parametrize("size, use_bn", [(32, True), (32, False), (64, True), (128, False)])
def test_forward_matches_the_authors_layout(size, use_bn):
    ndf, nrkhs, ndepth = 2, 20, 2
    model = build_amdim((size, size, 3), ndf=ndf, nrkhs=nrkhs, ndepth=ndepth,
                        use_batch_norm=use_bn)
    randomize(model, seed=size)
    # 8 images: BatchNorm in training mode on very few rows amplifies float32 rounding.
    x = images((8, size, size, 3), seed=1)
    acts = reference_amdim(model, x.astype(np.float64), size, ndf, nrkhs, ndepth, use_bn)
    features = dim2layer(acts)
    f1, f5, f7 = amdim_feature_maps(model)(x, training=True)
    top = 4 * ndf if size == 32 else 8 * ndf
    assert tuple(f1.shape) == (8, nrkhs)
    assert tuple(f5.shape) == (8, 5, 5, top) and tuple(f7.shape) == (8, 7, 7, top)
    assert amdim_feature_channels(model) == (nrkhs, top, top)
    assert_close(f1, features[1].reshape(8, nrkhs))
    assert_close(f5, features[5])
    assert_close(f7, features[7])
    assert_close(model(x, training=True), features[1].reshape(8, nrkhs))


def test_spatial_sizes_follow_the_authors_layers():
    def spatial(model, name):
        return model.get_layer(name).output.shape[1]

    small = build_amdim((32, 32, 3), ndf=2, nrkhs=8, ndepth=2)
    assert [spatial(small, n) for n in ("stem_relu1", "block0_unit0_add", "block1_unit1_add",
                                        "block2_unit1_add", "f7", "f5", "block4_unit1_add",
                                        "f1_bn")] == [30, 30, 14, 7, 7, 5, 3, 1]
    large = build_amdim((128, 128, 3), ndf=2, nrkhs=16, ndepth=2)
    assert [spatial(large, n) for n in ("stem_pad", "stem_relu1", "stem_relu2",
                                        "block1_unit1_add", "block2_unit1_add",
                                        "block3_unit1_add", "f5", "f1_bn")] == [
        132, 64, 62, 30, 14, 7, 5, 1]
    # No padding anywhere but the 128 px stem's reflection: every conv and pool is "valid".
    for model in (small, large):
        for layer in model.layers:
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.AveragePooling2D)):
                assert layer.padding == "valid", layer.name


def test_reflection_padding_does_not_repeat_the_edge():
    model = build_amdim((128, 128, 1), ndf=1, nrkhs=8, ndepth=1)
    pad = keras.Model(model.input, model.get_layer("stem_pad").output)
    x = np.arange(128 * 128, dtype=np.float32).reshape(1, 128, 128, 1)
    expected = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(pad(x), expected)
    assert expected[0, 0, 2, 0] == x[0, 2, 0, 0]  # PyTorch "reflect", not "symmetric"


# ------------------------------------------------------------------ initialisation
def test_fixup_init_every_unit_starts_as_its_zero_padded_mean_pool_shortcut():
    keras.utils.set_random_seed(4)
    model = build_amdim((32, 32, 3), ndf=4, nrkhs=40, ndepth=2, init_scale=0.5)
    units = sorted({m.group(0) for layer in model.layers
                    for m in [re.match(r"block\d+_unit\d+", layer.name)] if m})
    probe = keras.Model(model.input, [
        out for u in units for out in (model.get_layer(f"{u}_add").output,
                                       model.get_layer(f"{u}_add").input[1],
                                       model.get_layer(f"{u}_relu1").output)])
    outputs = probe(images((2, 32, 32, 3), seed=2))
    for index, unit in enumerate(units):
        out, shortcut, hidden = (np.asarray(o) for o in outputs[3 * index:3 * index + 3])
        assert np.abs(hidden).max() > 1e-3, unit  # the branch computes something ...
        np.testing.assert_array_equal(out, shortcut, err_msg=unit)  # ... and adds zero
        conv1 = model.get_layer(f"{unit}_conv1").kernel.numpy()
        limit = 0.5 / math.sqrt(np.prod(conv1.shape[:3]))  # init_scale / sqrt(fan_in)
        assert limit * 0.9 < np.abs(conv1).max() <= limit, unit
        assert not np.any(model.get_layer(f"{unit}_conv2").kernel.numpy()), unit
    # The widening unit of block 1 (ndf -> 2 ndf): its new channels start at exactly zero,
    # its old ones are the 4x4 stride-2 mean pool of the input.
    first = units.index("block1_unit0")
    out = np.asarray(outputs[3 * first])
    block_input = keras.Model(model.input, model.get_layer("block0_unit0_add").output)(
        images((2, 32, 32, 3), seed=2))
    assert out.shape[-1] == 8 and not np.any(out[..., 4:])
    assert_close(out[..., :4], np_mean_pool(np.asarray(block_input, np.float64), 4, 2))


def test_stem_has_pytorch_default_init_with_bias():
    keras.utils.set_random_seed(5)
    model = build_amdim((32, 32, 3), ndf=64, nrkhs=256, ndepth=1)
    kernel, bias = model.get_layer("stem_conv1").get_weights()
    limit = 1.0 / math.sqrt(27)
    assert kernel.shape == (3, 3, 3, 64) and bias.shape == (64,)
    for w in (kernel, bias):
        assert limit * 0.8 < np.abs(w).max() <= limit


# ------------------------------------------------------------------ sizes and registry
def hand_count(size, ndf, nrkhs, ndepth, use_bn=False):
    """Trainable parameters from the layer list: stem kernels + biases, per unit a wxw conv
    n_in -> n_out and a 1x1 conv n_out -> n_out (no biases), BN gamma + beta."""
    total, channels = 0, 3
    for kind, args in authors_layout(size, ndf, nrkhs, ndepth):
        if kind == "conv":
            n_out, k = args[:2]
            total += k * k * channels * n_out + n_out
            channels = n_out
        elif kind == "block":
            n_out, width, _, depth = args
            for u in range(depth):
                k = width if u == 0 else 1
                total += k * k * channels * n_out + n_out * n_out + (2 * n_out if use_bn else 0)
                channels = n_out
        elif kind == "out_bn" or use_bn:
            total += 2 * channels
    return total


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_amdim_small_parameter_count():
    model = build_encoder("amdim_small", (32, 32, 3))
    assert trainable_count(model) == hand_count(32, 128, 1024, 10) == 27_760_128
    assert model.output_shape[-1] == 1024


@pytest.mark.parametrize("size, use_bn", [(32, True), (64, False), (128, True)])
def test_tiny_parameter_counts(size, use_bn):
    model = build_amdim((size, size, 3), ndf=2, nrkhs=24, ndepth=3, use_batch_norm=use_bn)
    assert trainable_count(model) == hand_count(size, 2, 24, 3, use_bn)


def test_registered_sizes_and_output_widths():
    assert AMDIM_SIZES["amdim_small"] == (128, 1024, 10)  # paper Sec. 4, CIFAR small
    assert AMDIM_SIZES["amdim_large"] == (256, 2048, 10)  # paper Table 2 caption
    model = build_encoder("amdim_xs", (32, 32, 3), stem="imagenet", model_name="encoder")
    assert amdim_feature_channels(model) == (256, 128, 128)
    assert model.get_layer("block1_unit0_conv1").filters == 64
    # The registered models follow the authors' default use_bn=0: BN on f1 only.
    assert [l.name for l in model.layers
            if isinstance(l, keras.layers.BatchNormalization)] == ["f1_bn"]


def test_batch_norm_options_propagate():
    model = build_amdim((64, 64, 3), ndf=2, nrkhs=16, ndepth=2, use_batch_norm=True,
                        synchronized_batch_norm=True, batch_norm_momentum=0.97)
    layers = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    # One per unit (3 down blocks and 2 stride-1 blocks of 2 units, the last unit), f7, f1.
    assert len(layers) == 5 * 2 + 1 + 2
    assert all(l.synchronized and l.momentum == 0.97 and l.epsilon == EPS for l in layers)
    phi = AMDIMEmbedding(8, use_batch_norm=True, synchronized_batch_norm=True,
                         batch_norm_momentum=0.97)
    assert phi.hidden_bn.synchronized and phi.output_bn.momentum == 0.97


def test_bad_arguments_name_them():
    with pytest.raises(ValueError, match="input_shape.*32, 64, 128"):
        build_amdim((48, 48, 3), ndf=2, nrkhs=8, ndepth=1)
    with pytest.raises(ValueError, match="input_shape"):
        build_amdim((32, 64, 3), ndf=2, nrkhs=8, ndepth=1)
    with pytest.raises(ValueError, match="nrkhs"):
        build_amdim((64, 64, 3), ndf=2, nrkhs=8, ndepth=1)  # below 8 ndf
    with pytest.raises(ValueError, match="ndepth"):
        build_amdim((32, 32, 3), ndf=2, nrkhs=8, ndepth=0)
    with pytest.raises(ValueError, match="init_scale"):
        build_amdim((32, 32, 3), ndf=2, nrkhs=8, ndepth=1, init_scale=0.0)
    with pytest.raises(ValueError, match="AMDIM"):
        amdim_feature_maps(build_encoder("small_cnn", (8, 8, 3)))


# ------------------------------------------------------------------ project machinery
def test_paths_clone_weights_file_and_saved_model(tmp_path):
    encoder = build_amdim((32, 32, 3), ndf=2, nrkhs=16, ndepth=2, use_batch_norm=True,
                          mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.3], name="encoder")
    randomize(encoder, seed=6)
    paths = [v.path for v in encoder.weights]
    assert len(set(paths)) == len(paths) and all(p.startswith("encoder/") for p in paths)
    bn_paths = {v.path for layer in encoder.layers
                if isinstance(layer, keras.layers.BatchNormalization) for v in layer.weights}
    assert {p for p in paths if re.search(BATCH_NORM_PATH_PATTERN, p)} == bn_paths
    assert "encoder/f1_bn/gamma" in bn_paths and "encoder/block1_unit0_bn1/beta" in bn_paths
    x = images((2, 32, 32, 3), seed=7)
    expected = np.asarray(encoder(x, training=False))

    copy = clone_encoder(encoder, name="momentum_encoder")
    assert [v.path.replace("momentum_encoder/", "encoder/", 1) for v in copy.weights] == paths
    assert np.abs(np.asarray(copy(x, training=False)) - expected).max() > 1e-4
    weights_file = str(tmp_path / "amdim.weights.h5")
    encoder.save_weights(weights_file)
    loaded = load_encoder_weights(copy, weights_file)
    assert not loaded.unused_layers
    np.testing.assert_array_equal(copy(x, training=False), expected)

    head = ProjectionHead(8, 4)
    head.build((None, 16))
    module = ExportModule(encoder, head, 32, "nac")
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures=module.signature_map())
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    pixels = (x * 255).round().astype(np.uint8)
    features = reloaded.signatures["features"](images=tf.constant(pixels))["features"]
    assert_close(features, np.asarray(encoder(pixels.astype(np.float32) / 255, training=False)))


# ------------------------------------------------------------------ embedding phi_5 / phi_7
def reference_embedding(layer, x, use_bn):
    w = {v.path.split("/", 1)[1]: v.numpy().astype(np.float64) for v in layer.weights}
    h = x @ w["hidden_conv/kernel"][0, 0]
    if use_bn:
        h = np_batch_norm_train(h, w["hidden_bn/gamma"], w["hidden_bn/beta"])
    y = relu(h) @ w["output_conv/kernel"][0, 0]
    y = y + x @ w["shortcut_conv/kernel"][0, 0] + w["shortcut_conv/bias"]
    return np_batch_norm_train(y, w["output_bn/gamma"], w["output_bn/beta"])


@pytest.mark.parametrize("use_bn", [False, True])
def test_embedding_matches_numpy_reference(use_bn):
    layer = AMDIMEmbedding(12, use_batch_norm=use_bn, name="phi_7")
    layer.build((None, 7, 7, 6))
    rng = np.random.default_rng(8)
    for v in layer.trainable_weights:
        v.assign(rng.normal(1.0 if v.name == "gamma" else 0.0, 0.5, v.shape))
    x = rng.normal(size=(3, 7, 7, 6)).astype(np.float32)
    out = layer(x, training=True)
    assert tuple(out.shape) == (3, 7, 7, 12)
    assert_close(out, reference_embedding(layer, x.astype(np.float64), use_bn))
    bn_paths = [v.path for v in layer.weights if re.search(BATCH_NORM_PATH_PATTERN, v.path)]
    assert len(bn_paths) == (8 if use_bn else 4)
    assert all(v.path.startswith("phi_7/") for v in layer.weights)
    config = layer.get_config()
    assert AMDIMEmbedding.from_config(config).get_config() == config


def test_embedding_init_starts_near_identity_through_the_shortcut():
    keras.utils.set_random_seed(9)
    wide = AMDIMEmbedding(48, name="phi_5")
    wide.build((None, 5, 5, 32))
    kernel = wide.shortcut_conv.kernel.numpy()[0, 0]
    np.testing.assert_array_equal(np.diag(kernel), 1.0)
    off_diagonal = kernel[~np.eye(32, 48, dtype=bool)]
    assert 0.009 < np.abs(off_diagonal).max() <= 0.01
    assert not np.any(wide.output_conv.kernel.numpy())
    bias_limit = 1.0 / math.sqrt(32)
    assert bias_limit * 0.5 < np.abs(wide.shortcut_conv.bias.numpy()).max() <= bias_limit
    hidden_limit = 1.0 / math.sqrt(32)
    assert np.abs(wide.hidden_conv.kernel.numpy()).max() <= hidden_limit
    # At init phi(x) = BN(x W_s + b): the residual branch contributes nothing.
    x = np.random.default_rng(10).normal(size=(4, 5, 5, 32)).astype(np.float32)
    shortcut = x.astype(np.float64) @ kernel + wide.shortcut_conv.bias.numpy()
    assert_close(wide(x, training=True), np_batch_norm_train(shortcut, 1.0, 0.0))
    narrow = AMDIMEmbedding(8)
    narrow.build((None, 5, 5, 32))
    narrow_kernel = narrow.shortcut_conv.kernel.numpy()
    assert np.abs(narrow_kernel).max() <= 1.0 / math.sqrt(32)
    assert np.abs(np.diag(narrow_kernel[0, 0])).max() < 1.0  # no identity when narrowing
    with pytest.raises(ValueError, match="output_dim"):
        AMDIMEmbedding(0)
