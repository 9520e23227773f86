"""nac_tf: Neural Activation Coding (Park, Lee, Kim, Blei, ICML 2021) in TensorFlow / Keras 3.

What a notebook needs, importable from here (README, "Python API"):

- `PretrainConfig`: every setting of a pretraining run (`nac_tf.config`).
- `pretrain(config)`: a whole run into `config.model_dir`, as `nac-train` does.
- `load_source(dataset, ...)`: a dataset as an `ImageSource` (`nac_tf.data.catalog`).
- `method_for_run(config, source)`: the method as a compiled keras.Model for `model.fit`,
  and `view_pair_dataset(config, source)`: its input, batches of two augmented views
  (`nac_tf.recipes`).
- `export_saved_model(model_dir, export_dir)`, `load_exported_model(export_dir)` and
  `ExportedModel` (also `ExportedModel.from_method(model)` for a model in memory):
  `features`, `hash_codes` and `codes` of uint8 images (`nac_tf.export`).
- `HashIndex`: a searchable index of a collection's hash codes (`nac_tf.search`;
  docs/search.md).
- `export_keras_model(model_dir, path)`: the encoder as a .keras file that
  `keras.saving.load_model` opens without nac_tf, and `keras_encoder_model(model)`, that
  keras.Model of a model in memory (`nac_tf.keras_export`).
- the retrieval metrics of `nac_tf.evaluation.retrieval`: `mean_average_precision`,
  `average_precisions`, `precision_within_hamming_radius`, `precision_recall_curve`,
  `hamming_distances`, `inner_product_map`.

They are imported on first use, so `import nac_tf` (and the commands' help) does not import
TensorFlow. The library reports progress through Python's `logging` (loggers under
"nac_tf"); `logging.basicConfig(level=logging.INFO)` shows it, the commands print it.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "PretrainConfig": "nac_tf.config",
    "pretrain": "nac_tf.training",
    "method_for_run": "nac_tf.recipes",
    "view_pair_dataset": "nac_tf.recipes",
    "load_source": "nac_tf.data.catalog",
    "ExportedModel": "nac_tf.export",
    "export_saved_model": "nac_tf.export",
    "load_exported_model": "nac_tf.export",
    "HashIndex": "nac_tf.search",
    "export_keras_model": "nac_tf.keras_export",
    "keras_encoder_model": "nac_tf.keras_export",
    "mean_average_precision": "nac_tf.evaluation.retrieval",
    "average_precisions": "nac_tf.evaluation.retrieval",
    "precision_within_hamming_radius": "nac_tf.evaluation.retrieval",
    "precision_recall_curve": "nac_tf.evaluation.retrieval",
    "hamming_distances": "nac_tf.evaluation.retrieval",
    "inner_product_map": "nac_tf.evaluation.retrieval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'nac_tf' has no attribute {name!r}")
    module, attribute = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
