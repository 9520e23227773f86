"""The weight map of the parity harness (benchmarks/parity_layout.py), without torch: array
layouts checked against the operations they must preserve (a convolution tap, a dense
product), and the layer names of nac_tf's encoders."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from parity_layout import (images_to_torch, resnet_keras_layer, to_keras,  # noqa: E402
                           to_torch, vgg_keras_layers)


def test_conv_and_dense_layouts_preserve_the_operation():
    rng = np.random.default_rng(0)
    oihw = rng.normal(size=(4, 3, 3, 2))  # out 4, in 3, 3x2 window
    hwio = to_keras(oihw, "conv")
    assert hwio.shape == (3, 2, 3, 4)
    patch = rng.normal(size=(3, 3, 2))  # torch's CHW patch
    torch_out = np.einsum("oihw,ihw->o", oihw, patch)
    keras_out = np.einsum("hwio,hwi->o", hwio, patch.transpose(1, 2, 0))
    np.testing.assert_allclose(keras_out, torch_out, rtol=1e-14)
    np.testing.assert_array_equal(to_torch(hwio, "conv"), oihw)
    weight, x = rng.normal(size=(5, 7)), rng.normal(size=7)  # torch Linear: [out, in]
    np.testing.assert_allclose(x @ to_keras(weight, "dense"), weight @ x, rtol=1e-14)
    np.testing.assert_array_equal(to_torch(to_keras(weight, "dense"), "dense"), weight)
    images = rng.normal(size=(2, 4, 5, 3))
    assert images_to_torch(images)[1, 2, 3, 4] == images[1, 3, 4, 2]
    with pytest.raises(ValueError, match="layout"):
        to_keras(weight, "matrix")


def test_layer_names_follow_nac_tf_encoders():
    assert resnet_keras_layer("0") == ("stem_conv", "conv")
    assert resnet_keras_layer("1") == ("stem_bn", "bn")
    assert resnet_keras_layer("3.2.conv3") == ("stage1_block2_conv3", "conv")
    assert resnet_keras_layer("6.0.bn1") == ("stage4_block0_bn1", "bn")
    assert resnet_keras_layer("4.0.downsample.0") == ("stage2_block0_shortcut_conv", "conv")
    assert resnet_keras_layer("4.0.downsample.1") == ("stage2_block0_shortcut_bn", "bn")
    with pytest.raises(ValueError, match="7"):
        resnet_keras_layer("7")
    kinds = ["conv", "bn", "relu", "conv", "bn", "relu", "pool", "conv", "bn", "relu"]
    assert vgg_keras_layers(kinds) == {
        0: ("block1_conv1", "conv"), 1: ("block1_bn1", "bn"), 3: ("block1_conv2", "conv"),
        4: ("block1_bn2", "bn"), 7: ("block2_conv1", "conv"), 8: ("block2_bn1", "bn")}
