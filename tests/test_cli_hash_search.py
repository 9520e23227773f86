"""nac-hash-index and nac-hash-search (nac_tf.cli.hash_index, nac_tf.cli.hash_search) on the
session's tiny export (16-bit codes of 8 px digits): the quickstart's path (index the
training images, search with the test images, --html), a build killed with SIGKILL and
continued, and every bad input of the commands. Commands cost a TensorFlow import each
(5-10 s), so the real subprocesses are few and run concurrently; the bad inputs run the
commands' `execute` in this process on their own absl FlagValues.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags

from nac_tf.cli import common, hash_index, hash_search
from nac_tf.export import METADATA_FILE, load_exported_model
from nac_tf.search import HashIndex, collections
from nac_tf.settings import ConfigError

from test_bad_input import _error_lines
from test_search_index import brute_force

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_ENV = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
# A real nac-hash-index whose chunks are written slowly, so it can be killed mid-encoding.
SLOW_BUILD = ("import sys, time\n"
              "from nac_tf.search import index_files\n"
              "write = index_files.PartialBuild.write\n"
              "def slow(self, chunk, codes):\n"
              "    write(self, chunk, codes)\n"
              "    time.sleep(2)\n"
              "index_files.PartialBuild.write = slow\n"
              "from nac_tf.cli.hash_index import run\n"
              "run(['nac-hash-index'] + sys.argv[1:])\n")


def _start(args, module=None, python_args=()):
    command = [sys.executable, *python_args] + (["-m", module] if module else ["-c", SLOW_BUILD])
    return subprocess.Popen(command + list(args), cwd=REPO, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process, timeout=240):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export.path


@pytest.fixture(scope="module")
def model(export):
    return load_exported_model(export)


@pytest.fixture(scope="module")
def digits_index(export, tmp_path_factory):
    """The index nac-hash-index --dataset=digits --split=train --batch_size=16 makes,
    built in this process without interruption."""
    directory = str(tmp_path_factory.mktemp("cli") / "uninterrupted")
    HashIndex.build(export, collections.dataset_collection("digits", "train", image_size=8),
                    batch_size=16, directory=directory)
    return directory


def test_killed_build_continues_and_the_search_equals_brute_force_with_its_report(
        export, model, digits_index, tmp_path):
    directory = str(tmp_path / "index")
    build = [f"--index_dir={directory}", f"--saved_model={export}", "--dataset=digits",
             "--split=train", "--batch_size=16"]  # 5 chunks of 256 images
    killed = _start(build)
    report = str(tmp_path / "report.html")
    search = _start([f"--index_dir={digits_index}", "--dataset=digits", "--split=test",
                     "--k=10", f"--html={report}"], module="nac_tf.cli.hash_search")
    first_chunk = os.path.join(directory, "partial", "chunk-000000.npy")
    deadline = time.time() + 180
    while not os.path.exists(first_chunk) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    code, _, stderr = _finish(killed)
    assert code == -signal.SIGKILL, stderr[-2000:]
    chunks = [name for name in os.listdir(os.path.join(directory, "partial"))
              if name.startswith("chunk-")]
    assert 1 <= len(chunks) < 5 and not os.path.exists(os.path.join(directory, "index.json"))

    code, stdout, stderr = _finish(_start(build, module="nac_tf.cli.hash_index"))
    assert code == 0, stderr[-3000:]
    assert f"{len(chunks) * 256} of 1198 images were encoded already" in stdout, stdout
    assert "Indexed 1198 images" in stdout
    for name in ("index.json", "codes-1.npy"):  # the uninterrupted build's files, exactly
        with open(os.path.join(directory, name), "rb") as resumed, \
                open(os.path.join(digits_index, name), "rb") as whole:
            assert resumed.read() == whole.read(), name
    assert sorted(os.listdir(directory)) == ["codes-1.npy", "index.json", "labels-1.npy"]

    code, stdout, stderr = _finish(search)
    assert code == 0, stderr[-3000:]
    lines = [json.loads(line) for line in stdout.splitlines()]  # stdout: JSON lines only
    test_images = collections.dataset_collection("digits", "test", image_size=8)
    index = HashIndex.load(digits_index)
    ids, distances = brute_force(model.hash_codes(test_images.array), index.codes, 10)
    assert [line["query"] for line in lines] == list(range(599))
    assert [[r["id"] for r in line["results"]] for line in lines] == ids.tolist()
    assert [[r["distance"] for r in line["results"]] for line in lines] == distances.tolist()
    assert lines[0]["name"] == "query 0" and lines[0]["label"] == str(test_images.labels[0])
    assert lines[0]["results"][0]["label"] == str(index.labels[ids[0, 0]])
    assert 0 < lines[0]["average_precision"] <= 1
    with open(report) as f:
        page = f.read()
    cells = re.findall(r'<td class="result[^"]*" data-id="(\d+)" data-distance="(\d+)"', page)
    assert len(cells) == 20 * 10  # the first --report_queries=20 queries, k = 10 each
    assert [int(i) for i, _ in cells] == ids[:20].ravel().tolist()
    assert page.count('<img class="query') == 20 and page.count('class="thumbnail') >= 200
    assert "report: " + report in stderr


def _values(command, *args):
    values = flags.FlagValues()
    command.define_flags(values)
    values(["command", *args])
    return values


def _error(command, *args):
    with pytest.raises(ConfigError) as error:
        command.execute(_values(command, *args))
    return common.flag_error_message(error.value)


@pytest.fixture
def fake_exports(tmp_path, export):
    """Directories that pass the --saved_model check: one of the same model (its metadata)
    and one of another (another fingerprint). No TensorFlow is needed to refuse the latter."""
    paths = {}
    with open(os.path.join(export, "assets", METADATA_FILE)) as f:
        metadata = json.load(f)
    for name, fingerprint in (("same", metadata["weights_sha256"]), ("other", "0" * 64)):
        path = tmp_path / name
        (path / "assets").mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"")
        (path / "assets" / METADATA_FILE).write_text(
            json.dumps(dict(metadata, weights_sha256=fingerprint)))
        paths[name] = str(path)
    return paths


def test_bad_inputs_give_one_line_naming_the_flag(digits_index, export, fake_exports,
                                                  tmp_path):
    # A copy: the failed append leaves its unfinished build there, to be continued.
    digits_index = str(shutil.copytree(digits_index, tmp_path / "index"))
    index = f"--index_dir={digits_index}"
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "wide.npy", np.zeros((3, 4), np.uint8))
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "index.json").write_text("{")
    cases = [
        (hash_index, [index, f"--saved_model={fake_exports['other']}", "--dataset=digits",
                      "--split=train"],
         f"--saved_model: the index in {digits_index!r} holds codes of another model"),
        (hash_index, [f"--index_dir={tmp_path / 'new'}", f"--saved_model={export}",
                      f"--images={tmp_path / 'empty'}"],
         f"--images: {str(tmp_path / 'empty')!r} holds no image files (an empty collection)"),
        (hash_index, [index, f"--saved_model={export}", "--dataset=digits", "--split=test"],
         "--append: "),
        (hash_index, [index, "--append", f"--images={folder}"],
         f"--images: cannot decode image {str(folder / 'broken.png')!r}"),
        (hash_index, [f"--index_dir={tmp_path / 'new'}", f"--saved_model={export}",
                      "--dataset=digits", "--index=hnsw", "--nprobe=3"],
         "--nprobe: applies to ivf indexes; --index is hnsw"),
        (hash_index, [index, f"--saved_model={export}", "--dataset=digits", "--index=ivf"],
         f"--index: {digits_index!r} holds a flat index"),
        (hash_index, [f"--index_dir={tmp_path / 'new'}", f"--saved_model={export}",
                      f"--model_dir={tmp_path}", "--dataset=digits"],
         "--model_dir: give --saved_model or --model_dir, not both"),
        (hash_search, [index, f"--codes={tmp_path / 'wide.npy'}"],
         "--codes: {!r} holds uint8 [3, 4]; the index holds 16-bit codes: uint8 [Q, 2]".format(
             str(tmp_path / "wide.npy"))),
        (hash_search, [index, "--dataset=digits", "--k=1199"],
         "--k: 1199 is larger than the index's 1198 items"),
        (hash_search, [index, f"--images={folder}"],
         f"--images: cannot decode image {str(folder / 'broken.png')!r}"),
        (hash_search, [f"--index_dir={tmp_path / 'missing'}", "--dataset=digits"],
         f"--index_dir: {str(tmp_path / 'missing')!r} is not a directory holding a hash "
         "index"),
        (hash_search, [f"--index_dir={tmp_path / 'damaged'}", "--dataset=digits"],
         f"--index_dir: {str(tmp_path / 'damaged')!r} holds a damaged hash index"),
        (hash_search, [index, "--dataset=digits", "--nprobe=2"],
         "--nprobe: applies to ivf indexes; this index is flat"),
        (hash_search, [index, "--dataset=digits", f"--saved_model={fake_exports['other']}"],
         "--saved_model: is another model than the one that made the codes"),
        (hash_search, [index, "--dataset=digits", f"--images={folder}"],
         "--images: give exactly one of --dataset or --images or --codes"),
    ]
    for command, args, words in cases:
        message = _error(command, *args)
        assert message.startswith(words), (args, message)
    assert not os.path.exists(tmp_path / "new")  # nothing was written


def test_rerun_does_nothing_and_append_adds_another_collection(digits_index, export,
                                                               fake_exports, tmp_path,
                                                               capsys):
    directory = str(shutil.copytree(digits_index, tmp_path / "index"))
    same = [f"--index_dir={directory}", f"--saved_model={fake_exports['same']}",
            "--dataset=digits", "--split=train"]
    hash_index.execute(_values(hash_index, *same))
    assert "Nothing to do: the index in" in capsys.readouterr().out
    add = [f"--index_dir={directory}", "--dataset=digits", "--split=test", "--append"]
    hash_index.execute(_values(hash_index, *add))
    assert "Added 599 images" in capsys.readouterr().out
    index = HashIndex.load(directory)
    assert index.size == 1797 and [part["split"] for part in index.parts] == ["train", "test"]
    hash_index.execute(_values(hash_index, *add))
    assert "Nothing to do" in capsys.readouterr().out
    output = tmp_path / "results.jsonl"
    lines = hash_search.execute(_values(hash_search, f"--index_dir={directory}",
                                        "--dataset=digits", "--split=test", "--k=1",
                                        f"--output={output}"))
    assert [line["results"][0]["distance"] for line in lines] == [0] * 599  # all indexed
    assert output.read_text().splitlines() == [json.dumps(line) for line in lines]


def test_codes_search_needs_no_tensorflow_and_a_bad_flag_exits_2(digits_index, tmp_path):
    codes = HashIndex.load(digits_index).codes[:3]
    np.save(tmp_path / "codes.npy", codes)
    np.save(tmp_path / "wide.npy", np.zeros((3, 4), np.uint8))
    good = _start([f"--index_dir={digits_index}", f"--codes={tmp_path / 'codes.npy'}",
                   "--k=2"], module="nac_tf.cli.hash_search", python_args=("-X", "importtime"))
    bad = _start([f"--index_dir={digits_index}", f"--codes={tmp_path / 'wide.npy'}"],
                 module="nac_tf.cli.hash_search", python_args=("-X", "importtime"))
    results = {}
    for name, process in (("good", good), ("bad", bad)):
        results[name] = _finish(process, timeout=120)
        assert not any(line.rstrip().endswith("| tensorflow")
                       for line in results[name][2].splitlines()), name
    code, stdout, stderr = results["good"]
    assert code == 0, stderr[-2000:]
    assert [json.loads(line)["results"][0]["distance"] for line in stdout.splitlines()] == \
        [0, 0, 0]
    code, stdout, stderr = results["bad"]
    assert code == 2 and _error_lines(stderr) == [
        f"error: --codes: {str(tmp_path / 'wide.npy')!r} holds uint8 [3, 4]; the index holds "
        "16-bit codes: uint8 [Q, 2] packed as the export's hash_codes"], stderr[-2000:]
