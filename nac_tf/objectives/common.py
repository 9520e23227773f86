"""What every objective shares: the checks of its arguments and the row conventions.

Shapes and dtypes are checked here; a value that is a setting (flip_prob, a temperature, ...)
is checked by its declaration (`check_setting`), so its range is written once.
"""
import numbers

import keras
from keras import ops


def is_python_number(value):
    """Whether `value` is a Python or NumPy real number (not a bool, not a tensor)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_view_pairs(name, x):
    """`x` must be a matrix [2K, D]; an odd static row count cannot hold view pairs."""
    if len(x.shape) != 2:
        raise ValueError(
            f"`{name}` must be a matrix [2K, D] (first views then second views); received "
            f"shape {tuple(x.shape)}.")
    rows = x.shape[0]
    if rows is not None and rows % 2 != 0:
        raise ValueError(
            f"`{name}` must have an even number of rows 2K (K first views then the K second "
            f"views); received {rows} rows.")


def check_same_shape(name, x, reference_name, reference):
    if len(x.shape) != len(reference.shape) or any(
            a is not None and b is not None and a != b for a, b in zip(x.shape, reference.shape)):
        raise ValueError(
            f"`{name}` must have the shape of `{reference_name}` {tuple(reference.shape)}; "
            f"received shape {tuple(x.shape)}.")


def check_same_width(name, x, reference_name, reference):
    if len(x.shape) != 2 or (
            x.shape[1] is not None and reference.shape[1] is not None
            and x.shape[1] != reference.shape[1]):
        raise ValueError(
            f"`{name}` must be a matrix [M, D] with the code width D={reference.shape[1]} of "
            f"`{reference_name}`; received shape {tuple(x.shape)}.")


def as_float(x, dtype):
    return ops.cast(ops.convert_to_tensor(x), dtype)


def scalar(value, dtype):
    """A scalar in `dtype`; Python numbers are converted directly, not through float32."""
    if is_python_number(value):
        return ops.convert_to_tensor(value, dtype=dtype)
    return ops.cast(value, dtype)


def compute_dtype(x):
    """The dtype of a floating input, float32 for anything else (e.g. int or numpy lists)."""
    dtype = keras.backend.standardize_dtype(ops.convert_to_tensor(x).dtype)
    return dtype if "float" in dtype else "float32"


def other_view(x):
    """Rows reordered so that row i holds row pi(i) = (i + K) mod 2K (swap the two halves)."""
    # A roll by K is the half swap for N = 2K and works for a dynamic N inside tf.function.
    return ops.roll(x, shift=ops.shape(x)[0] // 2, axis=0)


def check_setting(setting, value, name=None):
    """`setting.check(value, name)` (ConfigError naming `name`, default the setting's) for a
    Python number; tensors (e.g. a scheduled p) cannot be checked without running the graph
    and are trusted."""
    if is_python_number(value):
        setting.check(value, name)

