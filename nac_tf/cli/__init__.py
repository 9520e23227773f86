"""The command-line programs of nac_tf: absl parsing, flags, flag errors and exit codes.

| command (console script) | module | what it does |
| --- | --- | --- |
| `nac-train` | `nac_tf.cli.train` | pretrains (`nac_tf.training.pretrain`) from a config, flags |
| `nac-export` | `nac_tf.cli.export` | exports a run as a SavedModel (`nac_tf.export`) |
| `nac-linear-eval` | `nac_tf.cli.linear_eval` | linear evaluation and kNN of a SavedModel |
| `nac-hash-retrieval` | `nac_tf.cli.hash_retrieval` | hash-code retrieval metrics of a SavedModel |

Each also runs as `python -m nac_tf.cli.<module>`, and each has `--help`.

Only this package reads absl flags, prints `error: --flag: ...` and chooses exit codes
(`common`); the library raises ValueError / TypeError (`nac_tf.config.ConfigError` names
the flag of a PretrainConfig field) and never exits. `configs` resolves `--config=NAME`
and `--flagfile=PATH`; `checks` holds the argument checks of the evaluation commands.
Importing any module here does not import TensorFlow: flags are checked first, and
`--help` answers at once.
"""
