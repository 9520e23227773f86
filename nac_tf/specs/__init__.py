"""What nac_tf knows about each encoder and each dataset, one record per name.

- `encoders`: `EncoderSpec` (family, builder, representation width, input statistics) and
  `ENCODER_SPECS`, from which `nac_tf.config.ENCODERS`, `nac_tf.models.build_encoder` and
  the checks on encoders derive.
- `datasets`: `DatasetSpec` (loader, what data_dir holds, TFDS source files, multi-label,
  streamed, default resolution and input statistics) and `DATASET_SPECS`, from which
  `nac_tf.config.DATASETS`, `nac_tf.data.catalog.load_source` and the data checks derive.

Nothing here imports TensorFlow (a builder or loader is named by "module:function" and
imported by `resolve` only when called), so the command line checks its settings against
these tables before paying for TensorFlow. These modules import nothing else of nac_tf
besides `nac_tf.errors`, so every other module may import them.
"""
import importlib


def resolve(path):
    """The function named by "package.module:function", its module imported now."""
    module, _, function = path.partition(":")
    return getattr(importlib.import_module(module), function)


def names_where(specs, predicate):
    """The names of the records of `specs` that satisfy `predicate`, in table order."""
    return tuple(spec.name for spec in specs if predicate(spec))


def spec_named(specs, name, unknown):
    """The record of `specs` called `name`; ValueError(`unknown`) when there is none."""
    for spec in specs:
        if spec.name == name:
            return spec
    raise ValueError(unknown)
