"""nac-export: exports a pretraining run as a SavedModel with the signatures of `nac_tf.export`.

    nac-export --model_dir=runs/x [--export_dir=runs/x/saved_model]
        [--checkpoint=runs/x/checkpoints/ckpt-100] [--overwrite]
    python -m nac_tf.cli.export ...

Signatures: features (= serving_default), hash_codes, codes; all take uint8 images
[N, H, W, 3]. Flags are checked before TensorFlow is imported; a bad flag exits with code 2
and one line `error: --flag: ...`, as does a --checkpoint that turns out not to fit the run
(or to be damaged) and an --export_dir that cannot be written (a full disk).
"""
import os

from absl import flags

from nac_tf import run_directory
from nac_tf.cli import common
from nac_tf.config import ConfigError


def define_flags(flag_values=flags.FLAGS):
    flags.DEFINE_string("model_dir", "", "Pretraining run directory (flags.json, "
                        "input_statistics.json, checkpoints/).", flag_values=flag_values)
    flags.DEFINE_string("export_dir", "", "Where to write the SavedModel; empty: "
                        "<model_dir>/saved_model.", flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "", "Checkpoint prefix to export (e.g. "
                        "<model_dir>/checkpoints/ckpt-100); empty: the latest one.",
                        flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace a previous SavedModel in --export_dir.",
                      flag_values=flag_values)


def validate_flags(model_dir, export_dir, checkpoint, overwrite):
    """(model_dir, export_dir, checkpoint or None), or ConfigError naming the bad flag."""
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
    export_dir = export_dir or run_directory.path_in(model_dir, run_directory.SAVED_MODEL_DIR)
    try:
        run_directory.check_export_dir(export_dir, overwrite)
    except FileExistsError as error:
        raise ConfigError("export_dir", str(error)) from None
    return model_dir, export_dir, checkpoint or None


def main(argv):
    common.reject_arguments(argv)
    FLAGS = flags.FLAGS
    try:
        model_dir, export_dir, checkpoint = validate_flags(
            FLAGS.model_dir, FLAGS.export_dir, FLAGS.checkpoint, FLAGS.overwrite)
    except ConfigError as error:
        common.exit_with_flag_error(error)
    # Heavy imports only once the flags are known to be usable.
    tf = common.import_tensorflow()
    from nac_tf.export import SIGNATURES, export_saved_model, read_export_metadata

    try:
        path = export_saved_model(model_dir, export_dir, checkpoint=checkpoint,
                                  overwrite=FLAGS.overwrite)
    except ConfigError as error:  # a damaged checkpoint or one of another run, a full disk
        common.exit_with_flag_error(error)
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


def run(argv=None):
    """The `nac-export` console script."""
    common.run(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
    run()
