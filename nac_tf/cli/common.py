"""What every nac_tf command shares: absl parsing, help, flag errors and exit codes.

Exit codes of every command: 0 done (also after `--help`); 2 a flag, or what it names, is
unusable: one line `error: --flag: ...` on stderr, no traceback, nothing written. The
trainer adds its own (`nac_tf.cli.train`).

absl itself answers a parse error with "FATAL Flags parsing error" and exit code 1, and
`--help` with exit code 1; `parse_flags` makes both follow the rules above. Nothing here
imports TensorFlow until a command calls `import_tensorflow`, which sets TensorFlow's logging
from absl's `--verbosity` first.

The library's messages (Python loggers under "nac_tf") are the commands' progress lines:
`print_library_messages` prints them on stdout as plain lines, at absl's `--verbosity`
(default: INFO), warnings through absl's handler as every absl program's.
"""
import contextlib
import logging
import os
import re
import sys
import tempfile
import time

from nac_tf.cli.configs import expand_config_args
from nac_tf.config import ConfigError
from nac_tf.errors import cannot_write

FLAG_ERROR_EXIT_CODE = 2
_SHORT_HELP = frozenset({"-h", "-?", "--help", "-help", "--helpshort", "-helpshort"})
_FULL_HELP = frozenset({"--helpfull", "-helpfull"})


# A log line of TensorFlow's C++ libraries: absl's format ("I0000 00:00:1712345678.123456
# 4242 port.cc:153] ...", the month and day 0000 before absl::InitializeLog, which
# TensorFlow never calls; absl's Python logging writes the same format), or TensorFlow's
# older own ("2025-01-31 12:00:00.123456: I path/file.cc:42] ...").
_CPP_LOG_LINE = re.compile(
    rb"(?:([IWEF])\d{4} \d\d:\d\d:[\d.]+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )\S+:\d+\] ")
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written"
_SEVERITIES = b"IWEF"  # TF_CPP_MIN_LOG_LEVEL 0 .. 3
DEFAULT_TENSORFLOW_LOG_LEVEL = 2  # errors only


def tensorflow_log_level(verbosity):
    """TF_CPP_MIN_LOG_LEVEL for absl's --verbosity: 0 (INFO) for 0 and above, 1 (WARNING)
    for -1, 2 (ERROR) for -2, 3 (FATAL) for -3 and below."""
    return min(3, max(0, -int(verbosity)))


def keeps_log_line(line, min_level):
    """Whether TF_CPP_MIN_LOG_LEVEL=`min_level` lets this stderr line (bytes) through: C++
    log lines below the level and absl's notice about its own initialisation are dropped,
    everything else is kept."""
    if min_level <= 0:
        return True
    if line.startswith(_ABSL_NOTICE):
        return False
    match = _CPP_LOG_LINE.match(line)
    if match is None:
        return True
    severity = (match.group(1) or match.group(2))[0]
    return _SEVERITIES.index(severity) >= min_level


@contextlib.contextmanager
def _stderr_at_log_level(min_level):
    """Drops what `keeps_log_line` drops from everything written to file descriptor 2 in
    the block (C++ code writes there directly, not through sys.stderr), and writes the
    rest on when the block ends.

    The text is held in a temporary file rather than a pipe read by a thread: the C++ code
    that loads with TensorFlow runs while holding Python's GIL, so a reader thread could
    not drain a full pipe and the import would block. The cost: if the process is killed
    inside the block (a C++ abort while TensorFlow loads), what it wrote there is lost;
    --verbosity=0 imports without the filter.
    """
    sys.stderr.flush()
    try:
        original = os.dup(2)
    except OSError:  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(original, 2)
            os.close(original)
            captured.seek(0)
            kept = b"".join(line for line in captured.read().splitlines(keepends=True)
                            if keeps_log_line(line, min_level))
            if kept:
                os.write(2, kept)


def import_tensorflow():
    """Imports TensorFlow for a command (after its flags are checked) and returns it, with
    TensorFlow's C++ and Python logging set from absl's --verbosity.

    Without --verbosity: TF_CPP_MIN_LOG_LEVEL from the environment, else 2 (errors only),
    and absl's Python logging at WARNING (TensorFlow's checkpoint writer logs "Sharding
    callback duration" at INFO on every save). --verbosity=N sets TF_CPP_MIN_LOG_LEVEL to
    `tensorflow_log_level(N)`, so --verbosity=0 shows TensorFlow's INFO logs.

    TensorFlow reads TF_CPP_MIN_LOG_LEVEL once it has loaded, but the libraries it loads
    log a few INFO lines before that, whatever the variable says (TensorFlow 2.21: the
    oneDNN notice of port.cc and cudart_stub.cc's "Could not find cuda drivers", twice,
    each time after absl's "WARNING: All log messages before absl::InitializeLog() ...").
    absl's C++ log level cannot be set from the environment, so the import runs with
    stderr filtered to the chosen level (`keeps_log_line`).
    """
    from absl import flags
    from absl import logging as absl_logging

    verbosity = flags.FLAGS["verbosity"]
    if verbosity.present:
        level = tensorflow_log_level(verbosity.value)
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(level)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(DEFAULT_TENSORFLOW_LOG_LEVEL))
        try:
            level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
        except ValueError:  # TensorFlow reads a non-number as 0
            level = 0
        absl_logging.set_verbosity(absl_logging.WARNING)
    if "tensorflow" in sys.modules or level <= 0:  # imported already, or nothing to drop
        import tensorflow as tf
    else:
        with _stderr_at_log_level(level):
            import tensorflow as tf
    # TensorFlow's Python logger (retracing warnings of the linear probe's fits, ...)
    # follows the same level: INFO, WARNING, ERROR, FATAL.
    logging.getLogger("tensorflow").setLevel(logging.INFO + 10 * min(3, max(0, level)))
    return tf


class _BelowWarning(logging.Filter):
    def filter(self, record):
        return record.levelno < logging.WARNING


class _ToAbslHandler(logging.Handler):
    """Hands records to absl's handler, as propagating to the root logger would."""

    def emit(self, record):
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().handle(record)


def print_library_messages():
    """The library's log messages (logger "nac_tf") as a command shows them: INFO and DEBUG
    as plain lines on stdout (what the command reports as it goes), WARNING and above
    through absl's handler (stderr, absl's format). The level is absl's `--verbosity` when
    given (-1 WARNING: quiet; 1 DEBUG), else INFO; a level given with absl's
    `--logger_levels=nac_tf:...` stays."""
    from absl import flags
    from absl import logging as absl_logging

    library = logging.getLogger("nac_tf")
    if getattr(library, "_nac_tf_command_handlers", False):
        return
    plain = logging.StreamHandler(sys.stdout)
    plain.setFormatter(logging.Formatter("%(message)s"))
    plain.addFilter(_BelowWarning())
    warnings = _ToAbslHandler(logging.WARNING)
    library.addHandler(plain)
    library.addHandler(warnings)
    library.propagate = False  # absl's handler on the root logger would repeat them
    library._nac_tf_command_handlers = True
    verbosity = flags.FLAGS["verbosity"]
    if library.level == logging.NOTSET:
        library.setLevel(absl_logging.converter.absl_to_standard(verbosity.value)
                         if verbosity.present else logging.INFO)


def define_evaluation_data_flags(flag_values, dataset_help, image_size_help, seed_help):
    """The flags both evaluation commands share (SavedModel, dataset, data_dir, image_size,
    seed), with the help texts that differ per command; returns `define(kind, name,
    default, help_text)` for the command's own flags."""
    from absl import flags

    def define(kind, name, default, help_text):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)

    define("string", "saved_model", "", "SavedModel directory written by nac-export.")
    define("string", "dataset", "", dataset_help)
    define("string", "data_dir", "", "Where the dataset is (see nac_tf.data.catalog."
           "load_source); unused for digits, optional for cifar10(_hashing).")
    define("integer", "image_size", 0, image_size_help)
    define("integer", "seed", 0, seed_help)
    return define


def evaluation_data_settings(refuse=None):
    """The flags of `define_evaluation_data_flags`, checked: {"saved_model" (absolute),
    "metadata", "dataset", "data_dir", "image_size", "seed"}, or ConfigError naming the
    first unusable one. `refuse`: datasets the command cannot evaluate (`check_dataset`)."""
    from absl import flags

    from nac_tf.cli import checks

    values = flags.FLAGS
    metadata = checks.check_saved_model(values.saved_model)
    checks.check_dataset(values.dataset, values.data_dir, refuse=refuse)
    return {"saved_model": os.path.abspath(values.saved_model), "metadata": metadata,
            "dataset": values.dataset, "data_dir": values.data_dir,
            "image_size": checks.check_int("image_size", values.image_size, 0,
                                           " (0: the SavedModel's training size)"),
            "seed": checks.check_int("seed", values.seed, 0)}


def evaluation_report_header(tool, settings, source):
    """What every evaluation report starts with: the command, the SavedModel and the data it
    was evaluated on (`evaluation_data_settings`, and the loaded `source`)."""
    return {"tool": tool, "saved_model": settings["saved_model"],
            "dataset": settings["dataset"], "data_dir": settings["data_dir"] or None,
            "seed": settings["seed"], "image_size": int(source.image_shape[0]),
            "num_train": source.num_train, "num_test": source.num_test}


def run(main, define_flags, doc, argv=None, configs=False):
    """A command's entry point: defines its flags on absl's FLAGS, parses `argv` (default
    sys.argv) with `parse_flags` and runs `main(remaining argv)` under absl's `app.run`.

    define_flags: `define_flags(flag_values)` of the command.
    doc: the text `--help` prints above the flags (the command module's docstring).
    configs: whether the command takes `--config=NAME` (the trainer).
    """
    from absl import app, flags

    before = set(flags.FLAGS)
    try:
        define_flags(flags.FLAGS)
    except flags.DuplicateFlagError:
        pass  # defined by an earlier run() in this process
    own = sorted(set(flags.FLAGS) - before)
    module = flags.FLAGS.find_module_defining_flag(own[0]) if own else None

    def main_with_messages(remaining):
        print_library_messages()
        return main(remaining)

    app.run(main_with_messages, argv=argv, flags_parser=lambda args: parse_flags(
        flags.FLAGS, args, doc=doc, help_module=module, configs=configs))


def parse_flags(flag_values, argv, doc=None, help_module=None, configs=False):
    """app.run's flags_parser: `--config` / `--flagfile` expanded (`expand_config_args`),
    then absl's parse; returns the remaining argv.

    `--help` (`-h`, `--helpshort`) prints `doc` and the flags of `help_module` (absl's name
    of the module that defined them), `--helpfull` every flag; both exit with 0. A parse
    error exits with code 2 and one `error: --flag: ...` line.
    """
    from absl import flags

    head = list(argv[1:])
    if "--" in head:
        head = head[:head.index("--")]
    if _FULL_HELP.intersection(head) or _SHORT_HELP.intersection(head):
        print_help(flag_values, doc, help_module, full=bool(_FULL_HELP.intersection(head)))
        sys.exit(0)
    try:
        return flag_values(expand_config_args(argv, allow_config=configs))
    except ConfigError as error:
        exit_with_flag_error(error)
    except flags.Error as error:
        exit_with_flag_error(_absl_error_message(error))


def print_help(flag_values, doc, module, full=False):
    """The command's help on stdout: `doc`, then its own flags (or every flag)."""
    parts = [doc.strip("\n")] if doc else []
    listing = flag_values.get_help() if full or module is None \
        else flag_values.module_help(module)
    if listing:
        parts.append(f"flags:\n{listing}")
    if not full:
        parts.append("Try --helpfull to get a list of all flags.")
    try:
        sys.stdout.write("\n\n".join(parts) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `nac-train --help | head`: the reader has left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not fail again


def _absl_error_message(error):
    message = str(error)
    # IllegalFlagValueError reads "flag --NAME=VALUE: REASON".
    match = re.match(r"flag --([\w.-]+)=(.*?): (.*)$", message, re.DOTALL)
    if match:
        name, value, reason = match.groups()
        return f"--{name}: {reason} (received {value!r})"
    name = getattr(error, "flagname", None)
    if name:
        return f"--{name}: unknown flag (--helpshort lists the flags)"
    return message


def flag_error_message(error):
    """The command line's words for `error`: a ConfigError names a setting, which is the
    flag of the same name (`--field: reason`); anything else is printed as it is."""
    if isinstance(error, ConfigError):
        return f"--{error.field}: {error.reason}"
    return str(error)


def exit_with_flag_error(error):
    """Prints `error: <message>` (`flag_error_message`) on stderr and exits with code 2."""
    print(f"error: {flag_error_message(error)}", file=sys.stderr)
    sys.exit(FLAG_ERROR_EXIT_CODE)


def reject_arguments(argv):
    """Exits with code 2 on positional arguments (a flag written without --)."""
    if len(argv) > 1:
        exit_with_flag_error(f"unexpected arguments {' '.join(argv[1:])!r}; every setting "
                             "is a --flag")


def run_report_tool(argv, validate_flags, evaluate, print_summary, finish=None):
    """An evaluation command's main: check the flags (exit 2 on a bad one), evaluate, add
    `finish`'s extras (e.g. a plot) to the report, write the JSON report and print its
    summary."""
    from nac_tf.evaluation.exported_evaluation import write_json

    reject_arguments(argv)
    try:
        settings = validate_flags()  # --output among them: checked before the evaluation
        import_tensorflow()
        started = time.time()
        report = evaluate(settings)
        report["seconds"] = round(time.time() - started, 2)
        if finish is not None:
            finish(report, settings)
        try:
            write_json(settings["output"], report)
        except OSError as error:  # writable when checked, but e.g. the disk is full now
            raise ConfigError("output", cannot_write(settings["output"], error)) from None
    except ConfigError as error:  # a flag, or what it names (e.g. a bad archive) once loaded
        exit_with_flag_error(error)
    print_summary(report, settings["output"])
