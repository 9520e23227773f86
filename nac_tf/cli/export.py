"""nac-export: exports a pretraining run as a SavedModel with the signatures of `nac_tf.export`.

    nac-export --model_dir=runs/x [--export_dir=runs/x/saved_model]
        [--checkpoint=runs/x/checkpoints/ckpt-100] [--overwrite]
    python -m nac_tf.cli.export ...

Signatures: features (= serving_default), hash_codes, codes; all take uint8 images
[N, H, W, 3]. Flags are checked before TensorFlow is imported; a bad flag exits with code 2
and one line `error: --flag: ...`.
"""
import os

from absl import flags

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


_RUN_FILES = ("flags.json", "input_statistics.json")


def _latest_checkpoint_prefix(checkpoint_dir):
    """The latest prefix named by checkpoints/checkpoint, read without TensorFlow."""
    state = os.path.join(checkpoint_dir, "checkpoint")
    if not os.path.isfile(state):
        return None
    with open(state) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model_checkpoint_path":
                path = value.strip().strip('"')
                return path if os.path.isabs(path) else os.path.join(checkpoint_dir, path)
    return None


def validate_flags(model_dir, export_dir, checkpoint, overwrite):
    """(model_dir, export_dir, checkpoint or None), or ConfigError naming the bad flag."""
    if not model_dir:
        raise ConfigError("model_dir", "is required (the pretraining run directory)")
    if not os.path.isdir(model_dir):
        raise ConfigError("model_dir", f"{model_dir!r} is not a directory")
    missing = [name for name in _RUN_FILES if not os.path.isfile(os.path.join(model_dir, name))]
    if missing:
        raise ConfigError("model_dir", f"{model_dir!r} is not a pretraining run directory "
                          f"({', '.join(missing)} missing)")
    if checkpoint:
        if not os.path.isfile(checkpoint + ".index"):
            raise ConfigError("checkpoint", f"{checkpoint!r} is not a checkpoint prefix "
                              f"({checkpoint}.index does not exist)")
    else:
        latest = _latest_checkpoint_prefix(os.path.join(model_dir, "checkpoints"))
        if latest is None or not os.path.isfile(latest + ".index"):
            raise ConfigError("model_dir", f"{model_dir!r} has no checkpoint in checkpoints/; "
                              "train first, or pass --checkpoint")
    export_dir = export_dir or os.path.join(model_dir, "saved_model")
    if os.path.exists(export_dir):
        if not os.path.isdir(export_dir):
            raise ConfigError("export_dir", f"{export_dir!r} exists and is not a directory")
        if os.listdir(export_dir):
            if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
                raise ConfigError("export_dir", f"{export_dir!r} is not empty and holds no "
                                  "SavedModel; choose another directory")
            if not overwrite:
                raise ConfigError("export_dir", f"{export_dir!r} already holds a SavedModel; "
                                  "pass --overwrite to replace it")
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

    path = export_saved_model(model_dir, export_dir, checkpoint=checkpoint,
                              overwrite=FLAGS.overwrite)
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
