"""The Python API (`import nac_tf`) and the README's example of it, run as written."""
import contextlib
import io
import os
import re

import numpy as np

import nac_tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_example():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_every_exported_name_resolves():
    for name in nac_tf.__all__:
        assert getattr(nac_tf, name) is not None, name
        assert name in dir(nac_tf)
    assert nac_tf.PretrainConfig is nac_tf.config.PretrainConfig
    assert nac_tf.mean_average_precision is nac_tf.evaluation.retrieval.mean_average_precision
    try:
        nac_tf.no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("nac_tf.no_such_name did not raise AttributeError")


def test_readme_example_runs():
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 14, "the README promises a short example"
    # The example as written, with 3 steps instead of 1 800.
    assert code.count("train_steps=1800") == 1
    code = code.replace("train_steps=1800", "train_steps=3")
    namespace = {}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md (Python API)", "exec"), namespace)
    model = namespace["model"]
    assert int(model.optimizer.iterations.numpy()) == 3
    printed = re.search(r"Hamming mAP@all: (\S+)", output.getvalue())
    assert printed and 0.0 <= float(printed.group(1)) <= 1.0, output.getvalue()[-2000:]
    # The in-memory wrapper serves what the method computes: packed 64-bit codes.
    digits = namespace["digits"]
    codes = namespace["codes"](digits.test_images[:5])
    assert codes.shape == (5, 8) and codes.dtype == np.uint8
