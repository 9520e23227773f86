"""Encoders and heads: shapes, parameter counts, forward math, BatchNorm, paths and cloning.

Forward passes are checked against an independent float64 NumPy implementation written from
the architecture definitions (PyTorch-style symmetric padding, BatchNorm with epsilon 1e-5,
biased batch variance in training mode). Tolerance: float32 against float64 through up to
11 conv layers, |diff| <= 1e-4 + 1e-4 * |reference| (observed errors are ~1e-6).
Big networks are only built on tiny inputs, so the file runs in seconds.
"""
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from nac_tf.config import ENCODERS
from nac_tf.models import (
    BATCH_NORM_PATH_PATTERN, ProjectionHead, build_encoder, clone_encoder, clone_head)
from nac_tf.models.resnet import build_resnet
from nac_tf.models.small_cnn import small_cnn
from nac_tf.models.vgg import vgg16_bn
from nac_tf.specs.encoders import ENCODER_SPECS, FAMILIES

EPS = 1e-5
RTOL = ATOL = 1e-4


# ------------------------------------------------------------------ NumPy reference (float64)
def np_conv(x, kernel, stride, pad, bias=None):
    """Cross-correlation, NHWC, kernel [kh, kw, cin, cout], symmetric zero padding `pad`."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + stride * (out_h - 1) + 1, stride)
            cols = slice(j, j + stride * (out_w - 1) + 1, stride)
            out += x[:, rows, cols] @ kernel[i, j]
    return out if bias is None else out + bias


def np_batch_norm(x, gamma, beta, moving_mean, moving_variance, training):
    axes = tuple(range(x.ndim - 1))
    mean, var = (x.mean(axes), x.var(axes)) if training else (moving_mean, moving_variance)
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def np_max_pool_3x3_stride_2_pad_1(x):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    out_h, out_w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    return np.max([x[:, i:i + 2 * (out_h - 1) + 1:2, j:j + 2 * (out_w - 1) + 1:2]
                   for i in range(3) for j in range(3)], axis=0)


def relu(x):
    return np.maximum(x, 0.0)


def weights64(model, layer_name):
    return [w.astype(np.float64) for w in model.get_layer(layer_name).get_weights()]


def conv_bn(model, x, prefix_conv, prefix_bn, stride, pad, training):
    (kernel,) = weights64(model, prefix_conv)
    return np_batch_norm(np_conv(x, kernel, stride, pad), *weights64(model, prefix_bn),
                         training=training)


def reference_small_cnn(model, x, training):
    """conv32 s1 -> conv64 s2 -> conv128 s2 (3x3, pad 1, BN, ReLU) -> mean over H, W."""
    for index, stride in ((1, 1), (2, 2), (3, 2)):
        x = relu(conv_bn(model, x, f"conv{index}", f"conv{index}_bn", stride, 1, training))
    return x.mean(axis=(1, 2))


def reference_resnet(model, x, block_type, blocks_per_stage, stem):
    """ResNet v1.5 in inference mode; stage s > 1 downsamples in its first block."""
    if stem == "cifar":
        x = relu(conv_bn(model, x, "stem_conv", "stem_bn", 1, 1, False))
    else:
        x = relu(conv_bn(model, x, "stem_conv", "stem_bn", 2, 3, False))
        x = np_max_pool_3x3_stride_2_pad_1(x)
    for stage, num_blocks in enumerate(blocks_per_stage, start=1):
        for index in range(num_blocks):
            p = f"stage{stage}_block{index}"
            stride = 2 if stage > 1 and index == 0 else 1
            if block_type == "basic":
                y = relu(conv_bn(model, x, f"{p}_conv1", f"{p}_bn1", stride, 1, False))
                y = conv_bn(model, y, f"{p}_conv2", f"{p}_bn2", 1, 1, False)
            else:  # v1.5: the stride sits on the 3x3 convolution.
                y = relu(conv_bn(model, x, f"{p}_conv1", f"{p}_bn1", 1, 0, False))
                y = relu(conv_bn(model, y, f"{p}_conv2", f"{p}_bn2", stride, 1, False))
                y = conv_bn(model, y, f"{p}_conv3", f"{p}_bn3", 1, 0, False)
            if stride == 1 and x.shape[-1] == y.shape[-1]:
                shortcut = x
            else:
                shortcut = conv_bn(model, x, f"{p}_shortcut_conv", f"{p}_shortcut_bn",
                                   stride, 0, False)
            x = relu(y + shortcut)
    return x.mean(axis=(1, 2))


def reference_head(head, h, training):
    """Dense -> [BN] -> ReLU -> Dense, divided by sqrt(D) when the head scales."""
    w = [v.astype(np.float64) for v in head.get_weights()]
    if head.use_batch_norm:
        kernel, gamma, beta, mm, mv, out_kernel, out_bias = w
        x = np_batch_norm(h @ kernel, gamma, beta, mm, mv, training)
    else:
        kernel, bias, out_kernel, out_bias = w
        x = h @ kernel + bias
    a = relu(x) @ out_kernel + out_bias
    return a / math.sqrt(out_kernel.shape[1]) if head.scale_by_sqrt_dim else a


def batch_norm_layers(model):
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def randomize_batch_norm(layers, seed):
    """Non-trivial gamma, beta and moving statistics, so inference mode is really tested."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        n = layer.gamma.shape[0]
        layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                           rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL, atol=ATOL)


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


# ------------------------------------------------------------------ shapes and sizes
# A layer that only the builders of one family name so (nac_tf.specs.encoders.FAMILIES).
FAMILY_LAYERS = {"resnet": "stage1_block0_add", "vgg": "block1_pool", "small_cnn": "conv1_relu",
                 "amdim": "f5"}
# The representation widths of the architectures' papers (ResNet: He et al. 2016, Table 1; VGG:
# the last conv block's channels; AMDIM: nrkhs of its Sec. 4 and Table 2) and of nac_tf's own
# small encoders.
WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet_tiny": 128,
          "vgg16_bn": 512, "vgg16": 512, "small_cnn": 128, "amdim_small": 1024,
          "amdim_large": 2048, "amdim_xs": 256}


# amdim_large (111M parameters) takes several seconds to build on a loaded 2-core CPU; its
# layout is amdim_small's, tested at full size in tests/test_amdim_encoder.py.
@pytest.mark.parametrize("spec", [spec for spec in ENCODER_SPECS if spec.name != "amdim_large"],
                         ids=lambda spec: spec.name)
def test_encoder_specs_agree_with_the_built_encoders(spec):
    encoder = build_encoder(spec.name, (32, 32, 3))
    h = encoder(images((2, 32, 32, 3)), training=False)
    assert tuple(h.shape) == (2, WIDTHS[spec.name]) == (2, encoder.output_shape[-1])
    assert np.all(np.isfinite(h))
    names = {layer.name for layer in encoder.layers}
    assert {family for family, layer in FAMILY_LAYERS.items() if layer in names} == {spec.family}
    assert set(FAMILY_LAYERS) == set(FAMILIES)


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("name, stem, expected", [
    # torchvision counts minus the 1000-way fc layer (weights + biases).
    ("resnet18", "imagenet", 11_689_512 - 513_000),
    ("resnet34", "imagenet", 21_797_672 - 513_000),
    ("resnet50", "imagenet", 25_557_032 - 2_049_000),
    # The CIFAR stem swaps the 7x7x3x64 stem kernel for a 3x3x3x64 one.
    ("resnet18", "cifar", 11_689_512 - 513_000 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64),
])
def test_resnet_parameter_counts(name, stem, expected):
    assert trainable_count(build_encoder(name, (32, 32, 3), stem=stem)) == expected


def test_vgg16_bn_parameter_count_from_layer_config():
    config = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]
    expected, bn_channels, in_channels = 0, 0, 3
    for item in config:
        if item != "M":
            # 3x3 kernel + conv bias + BN gamma and beta.
            expected += 9 * in_channels * item + item + 2 * item
            bn_channels += item
            in_channels = item
    model = build_encoder("vgg16_bn", (32, 32, 3))
    assert trainable_count(model) == expected == 14_723_136  # torchvision vgg16_bn.features
    assert sum(int(np.prod(v.shape)) for v in model.non_trainable_weights) == 2 * bn_channels
    assert len([l for l in model.layers if isinstance(l, keras.layers.Conv2D)]) == 13
    assert len([l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]) == 5


def spatial(model, layer_name):
    return tuple(model.get_layer(layer_name).output.shape[1:3])


def test_cifar_stem_keeps_resolution_until_stage_2():
    model = build_encoder("resnet18", (32, 32, 3), stem="cifar")
    assert spatial(model, "stem_relu") == (32, 32)
    assert spatial(model, "stage1_block1_out") == (32, 32)
    assert spatial(model, "stage2_block0_out") == (16, 16)
    assert spatial(model, "stage3_block1_out") == (8, 8)
    assert spatial(model, "stage4_block1_out") == (4, 4)
    assert not [l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]


def test_imagenet_stem_reduces_by_four():
    model = build_encoder("resnet18", (64, 64, 3), stem="imagenet")
    assert spatial(model, "stem_relu") == (32, 32)
    assert spatial(model, "stem_pool") == (16, 16)
    assert spatial(model, "stage1_block1_out") == (16, 16)
    assert spatial(model, "stage4_block1_out") == (2, 2)


def test_resnet50_bottleneck_is_v1_5_with_4x_expansion():
    model = build_encoder("resnet50", (32, 32, 3), stem="cifar")
    # v1.5: the downsampling block keeps the resolution in its 1x1 and strides in the 3x3.
    assert spatial(model, "stage2_block0_conv1") == (32, 32)
    assert spatial(model, "stage2_block0_conv2") == (16, 16)
    assert model.get_layer("stage1_block0_out").output.shape[-1] == 256
    assert model.get_layer("stage4_block2_out").output.shape[1:] == (4, 4, 2048)


@pytest.mark.parametrize("size", [8, 16])
def test_small_cnn_works_on_tiny_inputs(size):
    model = small_cnn((size, size, 1))
    assert spatial(model, "conv3_relu") == (size // 4, size // 4)
    assert tuple(model(images((3, size, size, 1)), training=False).shape) == (3, 128)


# ------------------------------------------------------------------ forward math
@pytest.mark.parametrize("block_type, blocks, widths, stem, size", [
    ("basic", [1, 1, 1, 1], [16, 32, 64, 128], "cifar", 16),     # = resnet_tiny
    ("basic", [1, 1, 1, 1], [16, 32, 64, 128], "imagenet", 32),
    ("bottleneck", [2, 1], [4, 8], "cifar", 8),
    ("bottleneck", [1, 1], [4, 8], "imagenet", 18),              # odd sizes after the stem
])
def test_resnet_matches_numpy_reference(block_type, blocks, widths, stem, size):
    model = build_resnet(block_type, blocks, widths, (size, size, 3), stem=stem)
    randomize_batch_norm(batch_norm_layers(model), seed=1)
    x = images((3, size, size, 3))
    expected = reference_resnet(model, x.astype(np.float64), block_type, blocks, stem)
    assert_close(model(x, training=False), expected)


def test_resnet_tiny_registry_entry_is_the_tiny_basic_resnet():
    model = build_encoder("resnet_tiny", (16, 16, 3))
    randomize_batch_norm(batch_norm_layers(model), seed=2)
    x = images((2, 16, 16, 3))
    expected = reference_resnet(model, x.astype(np.float64), "basic", [1, 1, 1, 1], "cifar")
    assert_close(model(x, training=False), expected)
    assert [model.get_layer(f"stage{s}_block0_conv1").filters for s in range(1, 5)] == [
        16, 32, 64, 128]


@pytest.mark.parametrize("size", [8, 16])
def test_small_cnn_batch_norm_training_and_inference_match_reference(size):
    model = small_cnn((size, size, 3), batch_norm_momentum=0.8)
    randomize_batch_norm(batch_norm_layers(model), seed=3)
    x = images((4, size, size, 3), seed=4)
    x64 = x.astype(np.float64)
    inference = reference_small_cnn(model, x64, training=False)
    training = reference_small_cnn(model, x64, training=True)
    assert np.abs(training - inference).max() > 1e-2  # the two modes really differ
    assert_close(model(x, training=False), inference)
    old_moving_mean = model.get_layer("conv1_bn").moving_mean.numpy().astype(np.float64)
    assert_close(model(x, training=True), training)
    # Keras momentum semantics: moving = momentum * moving + (1 - momentum) * batch mean.
    (kernel,) = weights64(model, "conv1")
    batch_mean = np_conv(x64, kernel, 1, 1).mean(axis=(0, 1, 2))
    assert_close(model.get_layer("conv1_bn").moving_mean.numpy(),
                 0.8 * old_moving_mean + 0.2 * batch_mean)


def test_zero_init_residual_zeroes_last_batch_norm_of_every_block():
    for block_type, last in (("basic", "bn2"), ("bottleneck", "bn3")):
        for zero_init in (False, True):
            model = build_resnet(block_type, [1, 1], [4, 8], (8, 8, 3),
                                 zero_init_residual=zero_init)
            for layer in batch_norm_layers(model):
                is_last = layer.name.endswith(f"_{last}") and "shortcut" not in layer.name
                expected = 0.0 if (zero_init and is_last) else 1.0
                np.testing.assert_array_equal(layer.gamma.numpy(), expected,
                                              err_msg=layer.name)


# ------------------------------------------------------------------ input normalisation
def test_normalization_layer_is_applied_inside_the_model():
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    normalized = build_encoder("small_cnn", (8, 8, 3), mean=mean, std=std)
    plain = build_encoder("small_cnn", (8, 8, 3))
    # The normalisation holds constants, so both models have the same weight list.
    plain.set_weights(normalized.get_weights())
    x = images((2, 8, 8, 3))
    expected_input = (x.astype(np.float64) - mean) / std
    layer_out = keras.Model(normalized.input, normalized.get_layer("input_normalization").output)
    assert_close(layer_out(x), expected_input)
    assert_close(normalized(x, training=False),
                 np.asarray(plain(expected_input.astype(np.float32), training=False)))
    assert "input_normalization" not in [l.name for l in plain.layers]


def test_normalization_broadcasts_scalars_and_rejects_bad_values():
    model = build_encoder("small_cnn", (8, 8, 1), mean=0.5, std=0.25)
    layer_out = keras.Model(model.input, model.get_layer("input_normalization").output)
    x = images((1, 8, 8, 1))
    assert_close(layer_out(x), (x.astype(np.float64) - 0.5) / 0.25)
    with pytest.raises(ValueError, match="mean"):
        build_encoder("small_cnn", (8, 8, 1), mean=[0.1, 0.2, 0.3], std=[0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="std"):
        build_encoder("small_cnn", (8, 8, 3), mean=[0.1, 0.2, 0.3], std=[0.2, 0.0, 0.2])


# ------------------------------------------------------------------ variable paths
@pytest.mark.parametrize("name", ["resnet_tiny", "vgg16_bn", "small_cnn"])
def test_variable_paths_are_unique_prefixed_and_mark_batch_norm(name):
    model = build_encoder(name, (32, 32, 3))
    paths = [v.path for v in model.weights]
    assert len(set(paths)) == len(paths)
    assert all(p.startswith("encoder/") for p in paths)
    bn_paths = {v.path for layer in batch_norm_layers(model) for v in layer.weights}
    assert bn_paths, "the encoder has BatchNorm layers"
    matched = {p for p in paths if re.search(BATCH_NORM_PATH_PATTERN, p)}
    assert matched == bn_paths
    for path in bn_paths:
        layer_segment = path.split("/")[-2]
        assert re.fullmatch(r"(.*_)?bn\d*", layer_segment), path


def test_vgg16_paths_and_clone_have_no_batch_norm_and_keep_the_channel_reversal():
    model = build_encoder("vgg16", (32, 32, 3))
    paths = [v.path for v in model.weights]
    assert len(set(paths)) == len(paths) == 26
    assert all(p.startswith("encoder/block") for p in paths)
    assert not [p for p in paths if re.search(BATCH_NORM_PATH_PATTERN, p)]
    copy = clone_encoder(model, name="momentum_encoder")
    assert [(type(l), l.name) for l in copy.layers] == [(type(l), l.name) for l in model.layers]
    for target, source in zip(copy.weights, model.weights):
        target.assign(source)
    x = images((1, 32, 32, 3))
    np.testing.assert_array_equal(copy(x, training=False), model(x, training=False))


def test_resnet_paths_follow_the_documented_layout():
    paths = {v.path for v in build_encoder("resnet_tiny", (16, 16, 3)).weights}
    assert {"encoder/stem_conv/kernel", "encoder/stage1_block0_conv1/kernel",
            "encoder/stage1_block0_bn1/gamma", "encoder/stage2_block0_shortcut_bn/beta"} <= paths


def test_model_names_that_look_like_batch_norm_are_rejected():
    for bad in ("vgg16_bn", "net_bn2", "batch_norm_net"):
        with pytest.raises(ValueError, match="name"):
            build_encoder("small_cnn", (8, 8, 3), model_name=bad)
    assert vgg16_bn((32, 32, 3)).name == "vgg16"


# ------------------------------------------------------------------ BatchNorm options
@pytest.mark.parametrize("synchronized", [False, True])
def test_batch_norm_options_propagate(synchronized):
    for name in ("resnet_tiny", "vgg16_bn", "small_cnn"):
        model = build_encoder(name, (32, 32, 3), synchronized_batch_norm=synchronized,
                              batch_norm_momentum=0.97)
        layers = batch_norm_layers(model)
        assert layers and all(l.synchronized is synchronized for l in layers)
        assert all(l.momentum == 0.97 and l.epsilon == EPS for l in layers)
    head = ProjectionHead(8, 4, use_batch_norm=True, synchronized_batch_norm=synchronized)
    head.build((None, 6))
    assert head.hidden_bn.synchronized is synchronized


@pytest.mark.parametrize("synchronized", [False, True])
def test_synchronized_batch_norm_uses_global_batch_statistics(synchronized,
                                                              two_replica_strategy):
    strategy = two_replica_strategy
    with strategy.scope():
        model = small_cnn((8, 8, 3), synchronized_batch_norm=synchronized)
    x = images((4, 8, 8, 3), seed=5)
    x[2:] += 2.0  # the two replicas see batches with different statistics
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(x[2 * context.replica_id_in_sync_group:
                                      2 * context.replica_id_in_sync_group + 2]))
    outputs = strategy.run(tf.function(lambda images: model(images, training=True)),
                           args=(per_replica,))
    actual = np.concatenate([o.numpy() for o in strategy.experimental_local_results(outputs)])
    x64 = x.astype(np.float64)
    global_stats = reference_small_cnn(model, x64, training=True)
    local_stats = np.concatenate([reference_small_cnn(model, x64[:2], training=True),
                                  reference_small_cnn(model, x64[2:], training=True)])
    assert np.abs(global_stats - local_stats).max() > 1e-2
    assert_close(actual, global_stats if synchronized else local_stats)


# ------------------------------------------------------------------ heads
@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_projection_head_matches_numpy_reference(use_batch_norm):
    head = ProjectionHead(16, 8, use_batch_norm=use_batch_norm, name="projection_head")
    head.build((None, 12))
    if use_batch_norm:
        randomize_batch_norm([head.hidden_bn], seed=6)
    h = np.random.default_rng(7).normal(size=(5, 12)).astype(np.float32)
    for training in (False, True):
        assert_close(head(h, training=training), reference_head(head, h.astype(np.float64),
                                                                training))
    paths = [v.path for v in head.weights]
    assert paths[0] == "projection_head/hidden_dense/kernel"
    assert [p for p in paths if re.search(BATCH_NORM_PATH_PATTERN, p)] == (
        [p for p in paths if "/hidden_bn/" in p])
    assert len(paths) == (7 if use_batch_norm else 4)


def test_projection_head_divides_by_sqrt_output_dim():
    scaled = ProjectionHead(32)  # default output_dim = 128, scale_by_sqrt_dim = True
    unscaled = ProjectionHead(32, scale_by_sqrt_dim=False)
    scaled.build((None, 20))
    unscaled.build((None, 20))
    unscaled.set_weights(scaled.get_weights())
    h = np.random.default_rng(8).normal(size=(4, 20)).astype(np.float32)
    a_scaled, a_unscaled = np.asarray(scaled(h)), np.asarray(unscaled(h))
    assert a_scaled.shape == (4, 128)
    np.testing.assert_allclose(a_scaled * math.sqrt(128), a_unscaled, rtol=1e-5, atol=1e-6)
    assert np.abs(a_unscaled).max() > 1e-3


def test_projection_head_config_round_trip_and_clone():
    head = ProjectionHead(16, 8, use_batch_norm=True, synchronized_batch_norm=True,
                          scale_by_sqrt_dim=False, name="inference_network")
    config = head.get_config()
    assert ProjectionHead.from_config(config).get_config() == config
    assert not clone_head(head).built  # an unbuilt head clones unbuilt
    head.build((None, 12))
    copy = clone_head(head, name="momentum_inference_network")
    assert copy.built and copy.get_config() == dict(config, name="momentum_inference_network")
    assert [v.shape for v in copy.weights] == [v.shape for v in head.weights]
    assert not {id(v) for v in copy.weights} & {id(v) for v in head.weights}
    assert all(v.path.startswith("momentum_inference_network/") for v in copy.weights)
    copy.set_weights(head.get_weights())
    h = np.random.default_rng(9).normal(size=(3, 12)).astype(np.float32)
    np.testing.assert_array_equal(copy(h), head(h))


def test_projection_head_pytorch_initialisation_is_torch_linear_default():
    """--head_init=pytorch: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in both
    Dense layers (torch.nn.Linear's reset_parameters); keras: Glorot kernel, zero bias."""
    keras.utils.set_random_seed(3)
    head = ProjectionHead(256, 128, initializer="pytorch")
    head.build((None, 512))
    for dense, fan_in in ((head.hidden_dense, 512), (head.output_dense, 256)):
        limit = 1.0 / math.sqrt(fan_in)
        for weights in (dense.kernel.numpy(), dense.bias.numpy()):
            assert np.abs(weights).max() <= limit
            # Uniform on [-l, l]: the largest |w| of n draws is within l (1 - 20/n) of l
            # (failure probability ~e^-20), and the std is l / sqrt(3) within 5 %.
            assert np.abs(weights).max() >= limit * (1 - 20.0 / weights.size)
            if weights.size > 1000:
                np.testing.assert_allclose(weights.std(), limit / math.sqrt(3), rtol=0.05)
    default = ProjectionHead(256, 128)
    default.build((None, 512))
    assert default.initializer == "keras"
    assert not np.any(default.output_dense.bias.numpy())
    assert np.abs(default.hidden_dense.kernel.numpy()).max() > 1.0 / math.sqrt(512)
    assert ProjectionHead.from_config(head.get_config()).initializer == "pytorch"
    with pytest.raises(ValueError, match="initializer"):
        ProjectionHead(16, initializer="xavier")


def test_projection_head_rejects_bad_sizes():
    with pytest.raises(ValueError, match="hidden_dim"):
        ProjectionHead(0)
    with pytest.raises(ValueError, match="output_dim"):
        ProjectionHead(16, output_dim=-3)


# ------------------------------------------------------------------ cloning
def test_clone_encoder_has_same_architecture_and_separate_variables():
    encoder = build_encoder("resnet_tiny", (16, 16, 3))
    copy = clone_encoder(encoder, name="momentum_encoder")
    assert copy.name == "momentum_encoder"
    assert [(type(l), l.name) for l in copy.layers] == [(type(l), l.name) for l in encoder.layers]
    assert [v.shape for v in copy.weights] == [v.shape for v in encoder.weights]
    assert [v.path.replace("momentum_encoder/", "encoder/", 1) for v in copy.weights] == [
        v.path for v in encoder.weights]
    assert not {id(v) for v in copy.weights} & {id(v) for v in encoder.weights}
    randomize_batch_norm(batch_norm_layers(encoder), seed=10)
    x = images((2, 16, 16, 3))
    assert np.abs(np.asarray(copy(x, training=False) - encoder(x, training=False))).max() > 1e-4
    for target, source in zip(copy.weights, encoder.weights):
        target.assign(source)
    np.testing.assert_array_equal(copy(x, training=False), encoder(x, training=False))
    copy.weights[0].assign(copy.weights[0] + 1.0)  # the original is unaffected
    assert not np.allclose(copy.weights[0].numpy(), encoder.weights[0].numpy())


def test_keras_clone_model_also_works():
    encoder = build_encoder("small_cnn", (8, 8, 3))
    copy = keras.models.clone_model(encoder)
    assert [v.shape for v in copy.weights] == [v.shape for v in encoder.weights]
    copy.set_weights(encoder.get_weights())
    x = images((2, 8, 8, 3))
    np.testing.assert_array_equal(copy(x, training=False), encoder(x, training=False))


# ------------------------------------------------------------------ argument errors
def test_unknown_encoder_name_lists_the_accepted_names():
    with pytest.raises(ValueError) as error:
        build_encoder("resnet101", (32, 32, 3))
    message = str(error.value)
    assert "encoder" in message and "resnet101" in message
    assert all(name in message for name in ENCODERS)


def test_bad_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="stem.*cifar.*imagenet"):
        build_encoder("resnet18", (32, 32, 3), stem="tiny")
    with pytest.raises(ValueError, match="stem"):
        build_encoder("small_cnn", (8, 8, 3), stem="imagnet")
    for name in ("vgg16_bn", "vgg16"):
        with pytest.raises(ValueError, match="zero_init_residual"):
            build_encoder(name, (32, 32, 3), zero_init_residual=True)
    with pytest.raises(ValueError, match="batch_norm_momentum"):
        build_encoder("small_cnn", (8, 8, 3), batch_norm_momentum=1.0)
    with pytest.raises(ValueError, match="input_shape"):
        build_encoder("small_cnn", (8, 8))
