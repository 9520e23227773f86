"""nac-linear-eval and nac-hash-retrieval (nac_tf.cli.linear_eval, nac_tf.cli.hash_retrieval)
on a tiny exported run, and the library helpers they share (nac_tf.evaluation.exported_evaluation).

The commands run as subprocesses, as a user runs them; their JSON reports must hold exactly
the numbers the library functions give on the same SavedModel in this process.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nac_tf.data import catalog
from nac_tf.cli import checks
from nac_tf.cli import linear_eval as linear_eval_command
from nac_tf.evaluation import exported_evaluation, retrieval
from nac_tf.evaluation.knn import knn_accuracy
from nac_tf.evaluation.linear import (LinearEvalConfig, linear_evaluation,
                                      linear_evaluation_from_images)
from nac_tf.evaluation.mlp import MLPEvalConfig, mlp_evaluation
from nac_tf.evaluation.evaluators import (embed, float_image_encoder,
                                          queries_without_relevant_items, retrieval_report)
from nac_tf.export import METADATA_FILE, load_exported_model, read_export_metadata

from test_bad_input import _error_lines, _run_concurrently, unprivileged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINEAR_EVAL = "nac_tf.cli.linear_eval"
HASH_RETRIEVAL = "nac_tf.cli.hash_retrieval"
# Subprocesses do not get the conftest: set the backend and quiet TensorFlow explicitly.
SUBPROCESS_ENV = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
IMAGE_SIZE = 8
CODE_DIM = 16
BATCH = 256  # the commands' default --batch_size: the same slices give the same outputs


def _run(module, *args, timeout=300, python_args=()):
    return subprocess.run([sys.executable, *python_args, "-m", module, *args], cwd=REPO,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=timeout)


def _ok(result):
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def export_dir(tiny_run, tiny_export, tmp_path_factory):
    """A copy of the session's tiny NAC run's export (tests/conftest.py: small CNN on 8x8
    digits): the commands write their reports beside it."""
    assert (tiny_run.config.image_size, tiny_run.config.code_dim) == (IMAGE_SIZE, CODE_DIM)
    return shutil.copytree(tiny_export.path,
                           str(tmp_path_factory.mktemp("cli_evaluation") / "saved_model"))


@pytest.fixture(scope="module")
def model(export_dir):
    return load_exported_model(export_dir)


@pytest.fixture(scope="module")
def digits():
    return catalog.load_source("digits", image_size=IMAGE_SIZE, seed=0)


def _features(model, images):
    return embed(model, images, BATCH)


def _hash_codes(model, images):
    return embed(model, images, BATCH, "hash_codes")


def test_linear_eval_report_equals_the_library(export_dir, model, digits, tmp_path):
    # --classifier=both: the linear probe with its rate search, the kNN and the MLP probe
    # in one command (each command starts TensorFlow: ~10 s).
    result = _ok(_run(LINEAR_EVAL, f"--saved_model={export_dir}", "--dataset=digits",
                      "--epochs=3", "--learning_rates=0.1,1", "--knn_k=20",
                      "--classifier=both", "--mlp_learning_rates=0.1,1",
                      "--mlp_hidden_dim=32", "--mlp_dropout=0.1"))
    path = os.path.join(export_dir, "linear_eval_digits.json")  # the default output
    assert f"Report: {path}" in result.stdout and "Linear and MLP evaluation" in result.stdout
    assert "linear top-1" in result.stdout and "mlp top-1" in result.stdout
    with open(path) as f:
        report = json.load(f)

    assert report["tool"] == "linear_eval" and report["dataset"] == "digits"
    assert (report["num_train"], report["num_test"], report["num_classes"]) == (1198, 599, 10)
    assert report["image_size"] == IMAGE_SIZE and report["feature_dim"] == 128
    assert report["metadata"] == read_export_metadata(export_dir)
    assert report["protocol"]["linear"]["epochs"] == 3
    assert report["protocol"]["knn"] == {"k": 20, "temperature": 0.1}
    assert report["protocol"]["classifiers"] == ["linear", "mlp"]
    assert report["protocol"]["mlp"]["hidden_dim"] == 32
    for key in ("linear_top1", "knn_top1"):
        assert 0.0 <= report[key] <= 1.0
    assert report["linear_learning_rate"] in (0.1, 1.0)
    assert set(report["linear_validation_top1"]) == {"0.1", "1.0"}
    assert report["linear"]["num_validation"] == 120

    train, test = _features(model, digits.train_images), _features(model, digits.test_images)
    expected = linear_evaluation(train, digits.train_labels, test, digits.test_labels, 10,
                                 LinearEvalConfig(epochs=3, learning_rates=(0.1, 1.0)))
    assert report["linear"] == expected.to_dict()
    assert report["linear_top1"] == expected.top1
    assert report["linear_learning_rate"] == expected.learning_rate
    assert report["knn_top1"] == knn_accuracy(train, digits.train_labels, test,
                                              digits.test_labels, 10, k=20, temperature=0.1)
    expected = mlp_evaluation(train, digits.train_labels, test, digits.test_labels, 10,
                              MLPEvalConfig(epochs=3, learning_rates=(0.1, 1.0),
                                            hidden_dim=32, dropout=0.1))
    assert report["mlp"] == expected.to_dict()
    assert report["mlp_top1"] == expected.top1
    assert report["mlp_learning_rate"] == expected.learning_rate
    assert set(report["mlp_validation_top1"]) == {"0.1", "1.0"}

    # --classifier=mlp alone, in this process (a second subprocess costs ~10 s): the
    # command's evaluate() on the settings its flags give.
    mlp_only = str(tmp_path / "mlp.json")
    settings = dict(report, metadata=read_export_metadata(export_dir), image_size=0,
                    output=mlp_only, batch_size=BATCH, validation_fraction=0.1,
                    augment=False, knn_k=0, epochs=3, classifiers=("mlp",),
                    learning_rates=(0.1,),
                    mlp_learning_rates=(0.1, 1.0), mlp_hidden_dim=32, mlp_dropout=0.1)
    alone = exported_evaluation.json_ready(linear_eval_command.evaluate(settings))
    assert alone["linear_top1"] is None and "linear" not in alone
    assert alone["mlp"] == report["mlp"]  # the probes do not depend on each other


def test_linear_eval_augmented_equals_the_library(export_dir, model, digits, tmp_path):
    output = str(tmp_path / "augmented.json")
    _ok(_run(LINEAR_EVAL, f"--saved_model={export_dir}", "--dataset=digits", "--augment",
             "--epochs=1", "--learning_rates=0.5", "--knn_k=0", f"--output={output}"))
    with open(output) as f:
        report = json.load(f)
    assert report["knn_top1"] is None and report["linear_validation_top1"] == {}
    assert report["protocol"]["linear"]["augment"] is True
    config = LinearEvalConfig(epochs=1, learning_rates=(0.5,), augment=True)
    expected = linear_evaluation_from_images(
        float_image_encoder(model), digits.train_images, digits.train_labels,
        digits.test_images, digits.test_labels, 10, config, batch_size_encode=BATCH)
    assert report["linear"] == expected.to_dict()


def test_hash_retrieval_report_equals_the_library(export_dir, model, digits):
    result = _ok(_run(HASH_RETRIEVAL, f"--saved_model={export_dir}", "--dataset=digits",
                      "--top_k=50", "--authors_inner_product"))
    path = os.path.join(export_dir, "hash_retrieval_digits.json")
    assert f"Report: {path}" in result.stdout and "mAP@all" in result.stdout
    assert "inner-product" in result.stdout
    # The library's progress lines (logging), printed as plain lines by default.
    assert "Embedding the queries (599 images, hash_codes)" in result.stdout.splitlines()
    with open(path) as f:
        report = json.load(f)

    assert report["tool"] == "hash_retrieval" and report["code_bits"] == CODE_DIM
    assert (report["num_queries"], report["num_database"]) == (599, 1198)
    assert report["protocol"]["queries"] == "the test split"
    assert report["protocol"]["top_k"] == 50 and report["protocol"]["ties_at_k"] == "stable"
    assert report["protocol"]["empty_queries"] == "exclude"
    assert report["metadata"] == read_export_metadata(export_dir)
    assert report["num_excluded_queries"] == report["num_queries_without_relevant"] == 0
    assert 0 <= report["num_empty_radius2_balls"] <= 599
    for key in ("map_all", "map_all_expected_ties", "map_at_k", "precision_radius2"):
        assert 0.0 <= report[key] <= 1.0, key
    assert "NOT Hamming" in report["authors_inner_product"]["ranking"]

    queries = _hash_codes(model, digits.test_images)
    database = _hash_codes(model, digits.train_images)
    assert queries.shape == (599, CODE_DIM // 8) and queries.dtype == np.uint8
    args = (queries, database, digits.test_labels, digits.train_labels)
    assert report["map_all"] == retrieval.mean_average_precision(*args, packed=True)
    assert report["map_all_expected_ties"] == retrieval.mean_average_precision(
        *args, ties="expected", packed=True)
    assert report["map_at_k"] == retrieval.mean_average_precision(*args, top_k=50,
                                                                  packed=True)
    radius = retrieval.precision_within_hamming_radius(*args, radius=2, packed=True)
    assert report["precision_radius2"] == radius.mean_precision
    assert report["num_empty_radius2_balls"] == radius.num_empty
    curve = retrieval.precision_recall_curve(*args, packed=True)
    assert report["precision_recall_curve"]["radius"] == list(range(CODE_DIM + 1))
    assert report["precision_recall_curve"]["precision"] == curve.precision.tolist()
    assert report["precision_recall_curve"]["recall"] == curve.recall.tolist()
    assert report["precision_recall_curve"]["num_empty_balls"] == curve.num_empty_balls.tolist()
    assert report["authors_inner_product"]["map_all"] == retrieval.inner_product_map(
        *args, packed=True)
    assert report["authors_inner_product"]["map_at_k"] == retrieval.inner_product_map(
        *args, top_k=50, packed=True)

    pytest.importorskip("matplotlib")
    png = os.path.join(export_dir, "hash_retrieval_digits.png")
    assert report["plot"] == png
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_hash_retrieval_uses_the_hashing_protocol(export_dir, model, tmp_path):
    """cifar10_hashing from an .npz: 1 000 queries per class, 500 training images per class
    in the database (tiny 8x8 noise images: only the protocol's plumbing matters here)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 1500)
    rng.shuffle(labels)
    images = rng.integers(0, 256, (len(labels), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    archive = str(tmp_path / "cifar_like.npz")
    np.savez(archive, x_train=images[:12000], y_train=labels[:12000], x_test=images[12000:],
             y_test=labels[12000:])
    output = str(tmp_path / "cifar.json")
    result = _ok(_run(HASH_RETRIEVAL, f"--saved_model={export_dir}",
                      "--dataset=cifar10_hashing", f"--data_dir={archive}", "--seed=3",
                      "--ties=expected", "--top_k=100", "--empty_queries=zero", "--plot=none",
                      f"--output={output}", "--verbosity=-1"))
    # absl's --verbosity=-1 (warnings only) silences the progress lines, not the summary.
    assert "Embedding" not in result.stdout and "mAP@all" in result.stdout
    with open(output) as f:
        report = json.load(f)
    assert report["plot"] is None
    assert not os.path.exists(str(tmp_path / "cifar.png"))
    assert (report["num_queries"], report["num_database"]) == (10000, 5000)
    assert (report["num_train"], report["num_test"]) == (5000, 10000)
    assert "retrieval queries" in report["protocol"]["queries"]
    assert report["protocol"]["num_train"] == 5000

    source = catalog.load_source("cifar10_hashing", data_dir=archive, seed=3)
    arrays = source.retrieval
    args = (_hash_codes(model, arrays.query_images), _hash_codes(model, arrays.database_images),
            arrays.query_labels, arrays.database_labels)
    assert report["map_all"] == retrieval.mean_average_precision(
        *args, empty_queries="zero", packed=True)
    assert report["map_at_k"] == retrieval.mean_average_precision(
        *args, top_k=100, ties="expected", empty_queries="zero", packed=True)


def test_retrieval_metrics_count_and_exclude_queries_without_relevant_items():
    codes = np.packbits(np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool), axis=1)
    database = np.packbits(np.array([[0, 0, 0, 1], [1, 1, 1, 0]], bool), axis=1)
    query_labels, database_labels = np.array([0, 1, 2]), np.array([0, 1])  # class 2: none
    excluded = exported_evaluation.json_ready(retrieval_report(codes, database, query_labels,
                                                               database_labels))
    zero = exported_evaluation.json_ready(retrieval_report(codes, database, query_labels,
                                                           database_labels,
                                                           empty_queries="zero"))
    assert excluded["num_queries_without_relevant"] == zero["num_queries_without_relevant"] == 1
    assert excluded["num_excluded_queries"] == 1 and zero["num_excluded_queries"] == 0
    assert excluded["map_all"] == 1.0 and zero["map_all"] == pytest.approx(2 / 3)
    multi_hot = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert queries_without_relevant_items(multi_hot, multi_hot[:2]) == 1
    # Every query excluded: the mAP is NaN, written as JSON null.
    nothing = exported_evaluation.json_ready(retrieval_report(codes[2:], database,
                                                              query_labels[2:],
                                                              database_labels))
    assert nothing["map_all"] is None and nothing["precision_recall_curve"]["precision"][0] \
        is None
    json.dumps(nothing, allow_nan=False)


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError
    curve = {"precision": [1.0, 0.5], "recall": [0.5, 1.0]}
    with pytest.raises(ImportError, match=r'pip install "nac_tf\[plot\]"'):
        exported_evaluation.plot_precision_recall(curve, str(tmp_path / "pr.png"), "title")


def test_checks_mirror_the_package_without_tensorflow():
    assert checks.EXPORT_METADATA == os.path.join("assets", METADATA_FILE)
    # Importing them (as the commands do before checking flags) must not import TensorFlow:
    # one process imports them in turn and names the first after which TensorFlow is loaded.
    modules = ("nac_tf.cli.checks", "nac_tf.evaluation.exported_evaluation",
               "nac_tf.evaluation.evaluators",
               "nac_tf.cli.linear_eval", "nac_tf.cli.hash_retrieval", "nac_tf.cli.export")
    check = ("import importlib, sys\n"
             f"for module in {modules!r}:\n"
             "    importlib.import_module(module)\n"
             "    if 'tensorflow' in sys.modules:\n"
             "        sys.exit(module + ' imports TensorFlow')\n")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture
def fake_export(tmp_path):
    """A directory that passes the commands' --saved_model check, for flag tests (no TF)."""
    path = tmp_path / "export"
    (path / "assets").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")
    (path / "assets" / METADATA_FILE).write_text(json.dumps(
        {"method": "nac", "image_size": 8, "feature_dim": 128, "code_dim": 16}))
    # A SavedModel of something else: no nac_tf metadata.
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "saved_model.pb").write_bytes(b"")
    return str(path)


BAD_FLAGS = {
    "missing saved_model": (LINEAR_EVAL, ["--dataset=digits"], "--saved_model: is required"),
    "nonexistent saved_model": (HASH_RETRIEVAL, ["--saved_model={tmp}/nope",
                                                 "--dataset=digits"],
                                "--saved_model: "),
    "saved_model without metadata": (LINEAR_EVAL, ["--saved_model={tmp}/bare",
                                                    "--dataset=digits"],
                                     "has no assets/nac_tf_export.json"),
    "unknown dataset": (HASH_RETRIEVAL, ["--saved_model={export}", "--dataset=mnist"],
                        "--dataset: 'mnist' is not one of: digits, cifar10"),
    "flickr25k in linear_eval": (LINEAR_EVAL, ["--saved_model={export}", "--dataset=flickr25k"],
                                 "--dataset: flickr25k is multi-label"),
    "npz without data_dir": (HASH_RETRIEVAL, ["--saved_model={export}", "--dataset=npz"],
                             "--data_dir: dataset='npz' needs a data_dir"),
    "bad learning rate": (LINEAR_EVAL, ["--saved_model={export}", "--dataset=digits",
                                        "--learning_rates=0.1,-1"], "--learning_rates: "),
    "bad integer": (LINEAR_EVAL, ["--saved_model={export}", "--dataset=digits", "--epochs=x"],
                    "--epochs: "),
    "bad classifier": (LINEAR_EVAL, ["--saved_model={export}", "--dataset=digits",
                                     "--classifier=svm"],
                       "--classifier: 'svm' is not one of: linear, mlp, both"),
    "bad mlp_dropout": (LINEAR_EVAL, ["--saved_model={export}", "--dataset=digits",
                                      "--classifier=both", "--mlp_dropout=1"],
                        "--mlp_dropout: 1.0 must be a number in [0, 1)"),
    "bad top_k": (HASH_RETRIEVAL, ["--saved_model={export}", "--dataset=digits", "--top_k=0"],
                  "--top_k: "),
    "unknown flag": (HASH_RETRIEVAL, ["--saved_model={export}", "--dataset=digits",
                                      "--topk=5"], "--topk: unknown flag"),
    "positional argument": (LINEAR_EVAL, ["--saved_model={export}", "--dataset=digits",
                                          "digits"], "unexpected arguments 'digits'"),
    "missing flagfile": (LINEAR_EVAL, ["--flagfile={tmp}/none.flags"],
                         "--flagfile: '{tmp}/none.flags' is not a file"),
    # bare/saved_model.pb is a regular file: nothing can be written below it.
    "output below a file": (LINEAR_EVAL, ["--saved_model={export}", "--dataset=digits",
                                          "--output={tmp}/bare/saved_model.pb/report.json"],
                            "--output: cannot write '{tmp}/bare/saved_model.pb/report.json' "
                            "(Not a directory: '{tmp}/bare/saved_model.pb')"),
    "plot below a file": (HASH_RETRIEVAL, ["--saved_model={export}", "--dataset=digits",
                                           "--plot={tmp}/bare/saved_model.pb/pr.png"],
                          "--plot: cannot write '{tmp}/bare/saved_model.pb/pr.png' "
                          "(Not a directory: '{tmp}/bare/saved_model.pb')"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags_exit_2_naming_the_flag(case, fake_export, tmp_path):
    module, args, message = BAD_FLAGS[case]
    args = [arg.format(export=fake_export, tmp=tmp_path) for arg in args]
    message = message.format(tmp=tmp_path)
    # -X importtime lists every module imported: TensorFlow must not be among them.
    result = _run(module, *args, timeout=120, python_args=("-X", "importtime"))
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and message in errors[0], errors
    assert not any(line.rstrip().endswith("| tensorflow") for line in
                   result.stderr.splitlines()), "TensorFlow imported before the flag check"
    assert sorted(os.listdir(fake_export)) == ["assets", "saved_model.pb"]  # no report


def test_unwritable_report_paths_exit_2_before_the_evaluation(fake_export, tmp_path):
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    commands = {
        module: unprivileged(["-X", "importtime", "-m", module, f"--saved_model={fake_export}",
                              "--dataset=digits", f"--output={read_only / 'report.json'}"])
        for module in (LINEAR_EVAL, HASH_RETRIEVAL)}
    results = _run_concurrently(commands, timeout=120, env=SUBPROCESS_ENV)
    for module, (code, stderr) in results.items():
        assert code == 2, (module, stderr[-2000:])
        assert _error_lines(stderr) == [
            f"error: --output: cannot write {str(read_only / 'report.json')!r} (Permission "
            f"denied: {str(read_only)!r})"], (module, stderr[-2000:])
        assert not any(line.rstrip().endswith("| tensorflow") for line in
                       stderr.splitlines()), "TensorFlow imported before the flag check"
    assert os.listdir(read_only) == []
