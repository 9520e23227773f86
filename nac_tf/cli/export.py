"""nac-export: exports a pretraining run as a SavedModel with the signatures of `nac_tf.export`,
and/or as a Keras model file (`nac_tf.keras_export`).

    nac-export --model_dir=runs/x [--export_dir=runs/x/saved_model]
        [--keras=runs/x/encoder.keras] [--checkpoint=runs/x/checkpoints/ckpt-100]
        [--overwrite]
    python -m nac_tf.cli.export ...

It writes what is named: --export_dir a SavedModel, --keras a .keras file (both, from the
same checkpoint, when both are given); with neither, the SavedModel at
<model_dir>/saved_model. SavedModel signatures: features (= serving_default), hash_codes,
codes; the Keras model's outputs: features, codes; all take uint8 images [N, H, W, 3].
Flags are checked before TensorFlow is imported; a bad flag exits with code 2 and one line
`error: --flag: ...`, as does a --checkpoint that turns out not to fit the run (or to be
damaged) and an --export_dir or --keras that cannot be written (a full disk).
"""
import os

from absl import flags

from nac_tf import run_directory
from nac_tf.cli import common
from nac_tf.config import ConfigError
from nac_tf.keras_export import KERAS_SUFFIX, check_keras_path


def define_flags(flag_values=flags.FLAGS):
    flags.DEFINE_string("model_dir", "", "Pretraining run directory (flags.json, "
                        "input_statistics.json, checkpoints/).", flag_values=flag_values)
    flags.DEFINE_string("export_dir", "", "Where to write the SavedModel; empty: "
                        "<model_dir>/saved_model, unless --keras is given (then none).",
                        flag_values=flag_values)
    flags.DEFINE_string("keras", "", f"Write the encoder, its preprocessing and the codes as "
                        f"a Keras model file here (ending in {KERAS_SUFFIX}; "
                        "keras.saving.load_model opens it without nac_tf).",
                        flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "", "Checkpoint prefix to export (e.g. "
                        "<model_dir>/checkpoints/ckpt-100); empty: the latest one.",
                        flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace a previous SavedModel in --export_dir "
                      "and a previous --keras file.",
                      flag_values=flag_values)


def validate_flags(model_dir, export_dir, checkpoint, overwrite, keras=""):
    """(model_dir, export_dir or None, keras or None, checkpoint or None): what to write, or
    ConfigError naming the bad flag."""
    if not model_dir:
        raise ConfigError("model_dir", "is required (the pretraining run directory)")
    if not os.path.isdir(model_dir):
        raise ConfigError("model_dir", f"{model_dir!r} is not a directory")
    missing = run_directory.missing_run_files(model_dir)
    if missing:
        raise ConfigError("model_dir", f"{model_dir!r} is not a pretraining run directory "
                          f"({', '.join(missing)} missing)")
    if checkpoint:
        if not os.path.isfile(checkpoint + ".index"):
            raise ConfigError("checkpoint", f"{checkpoint!r} is not a checkpoint prefix "
                              f"({checkpoint}.index does not exist)")
    elif run_directory.latest_checkpoint(model_dir) is None:
        raise ConfigError("model_dir", f"{model_dir!r} has no checkpoint in "
                          f"{run_directory.CHECKPOINT_DIR}/; train first, or pass --checkpoint")
    if keras:
        check_keras_path(keras, overwrite, field="keras")
        if export_dir and os.path.abspath(export_dir) == os.path.abspath(keras):
            raise ConfigError("keras", f"{keras!r} is also --export_dir; give each its own "
                                       "path")
    elif not export_dir:
        export_dir = run_directory.path_in(model_dir, run_directory.SAVED_MODEL_DIR)
    if export_dir:
        try:
            run_directory.check_export_dir(export_dir, overwrite)
        except FileExistsError as error:
            raise ConfigError("export_dir", str(error)) from None
    return model_dir, export_dir or None, keras or None, checkpoint or None


def main(argv):
    common.reject_arguments(argv)
    FLAGS = flags.FLAGS
    try:
        model_dir, export_dir, keras_path, checkpoint = validate_flags(
            FLAGS.model_dir, FLAGS.export_dir, FLAGS.checkpoint, FLAGS.overwrite, FLAGS.keras)
    except ConfigError as error:
        common.exit_with_flag_error(error)
    # Heavy imports only once the flags are known to be usable.
    common.import_tensorflow()
    try:
        if export_dir:
            checkpoint = _export_saved_model(model_dir, export_dir, checkpoint)
        if keras_path:
            _export_keras_model(model_dir, keras_path, checkpoint)
    except ConfigError as error:  # a damaged checkpoint or one of another run, a full disk
        common.exit_with_flag_error(error)


def _export_saved_model(model_dir, export_dir, checkpoint):
    """Writes and describes the SavedModel; returns the checkpoint it was made from."""
    import tensorflow as tf

    from nac_tf.export import SIGNATURES, export_saved_model, read_export_metadata

    path = export_saved_model(model_dir, export_dir, checkpoint=checkpoint,
                              overwrite=flags.FLAGS.overwrite)
    metadata = read_export_metadata(path)
    print(f"Exported {metadata['method']} from {metadata['checkpoint']} (training image "
          f"size {metadata['image_size']}, {metadata['code_dim']}-bit codes)")
    # Listed from the reloaded SavedModel, so what is printed is what was written.
    loaded = tf.saved_model.load(path)
    print("Signatures (input images: uint8 [N, H, W, 3], any H x W):")
    for name in SIGNATURES:
        outputs = loaded.signatures[name].structured_outputs
        described = ", ".join(f"{key} {spec.dtype.name} {spec.shape.as_list()}"
                              for key, spec in sorted(outputs.items()))
        print(f"  {name}: {described}")
    print(f"Export path: {path}")
    return metadata["checkpoint"]


def _export_keras_model(model_dir, keras_path, checkpoint):
    """Writes the .keras file (the library logs what it exported) and describes it."""
    import keras

    from nac_tf.keras_export import export_keras_model

    try:
        path = export_keras_model(model_dir, keras_path, checkpoint=checkpoint,
                                  overwrite=flags.FLAGS.overwrite)
    except ConfigError as error:
        if error.field != "path":
            raise
        raise ConfigError("keras", error.reason) from None
    # Described from the reloaded file, so what is printed is what was written.
    model = keras.saving.load_model(path)
    described = ", ".join(f"{key} {tensor.dtype} {list(tensor.shape)}"
                          for key, tensor in sorted(model.output.items()))
    print(f"Keras model (input images: uint8 [N, H, W, 3], any H x W): {described}")
    print("Built-in Keras layers only: keras.saving.load_model opens it without nac_tf.")
    print(f"Keras model path: {path}")


def run(argv=None):
    """The `nac-export` console script."""
    common.run(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
    run()
