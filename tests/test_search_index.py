"""HashIndex (nac_tf.search.index), its files (index_files), its collections (collections)
and the model fingerprint (nac_tf.export), on the session's tiny export of a NAC run on
8 px digits with 16-bit codes (tests/conftest.py): many items share a code, so the order of
ties is under test on real codes.
"""
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from nac_tf import run_directory
from nac_tf.data import catalog
from nac_tf.export import load_exported_model, read_export_metadata
from nac_tf.search import HashIndex, collections, index_files
from nac_tf.settings import ConfigError


@pytest.fixture(scope="module")
def digits():
    return catalog.load_source("digits", image_size=8, seed=0)


@pytest.fixture(scope="module")
def model(tiny_export):
    return load_exported_model(tiny_export.path)


@pytest.fixture(scope="module")
def saved(tiny_export, digits, tmp_path_factory):
    """The index of the training images, built into a directory by the export's path."""
    directory = str(tmp_path_factory.mktemp("index") / "digits")
    HashIndex.build(tiny_export.path, digits.train_images, labels=digits.train_labels,
                    directory=directory)
    return directory


def brute_force(query_codes, db_codes, k):
    """The k first items of a stable sort of the Hamming distances of unpacked bits."""
    query_bits, db_bits = np.unpackbits(query_codes, axis=1), np.unpackbits(db_codes, axis=1)
    distances = (query_bits[:, None, :] != db_bits[None, :, :]).sum(axis=2)
    ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(distances, ids, axis=1)


def test_search_equals_brute_force_on_real_codes_with_ties_after_save_and_load(
        saved, model, digits):
    index = HashIndex.load(saved)
    assert (index.size, index.code_bits, index.kind, index.engine) == (1198, 16, "flat",
                                                                       "faiss")
    assert index.fingerprint == read_export_metadata(model.export_dir)["weights_sha256"]
    np.testing.assert_array_equal(index.codes, model.hash_codes(digits.train_images))
    np.testing.assert_array_equal(index.labels, digits.train_labels)
    expected = brute_force(model.hash_codes(digits.test_images), index.codes, 15)
    # Ties: in most queries the 15th item's distance is shared beyond the 15th rank.
    distances = brute_force(model.hash_codes(digits.test_images), index.codes, 1198)[1]
    assert np.mean(distances[:, 14] == distances[:, 15]) > 0.5
    own = HashIndex.from_codes(index.codes, 16, engine="nac_tf")
    for searched in (index.search(images=digits.test_images, k=15),
                     own.search(codes=model.hash_codes(digits.test_images), k=15)):
        np.testing.assert_array_equal(searched.ids, expected[0])
        np.testing.assert_array_equal(searched.distances, expected[1])
    whole = index.search(codes=index.codes[:3], k=index.size)
    np.testing.assert_array_equal(np.sort(whole.ids, axis=1), np.tile(np.arange(1198), (3, 1)))
    with open(os.path.join(saved, index_files.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest["parts"] == [{"source": "arrays", "shape": [1198, 8, 8, 3], "count": 1198,
                                  "first_id": 0, "sha256": manifest["parts"][0]["sha256"]}]
    assert manifest["model"] == {"saved_model": os.path.abspath(model.export_dir)}
    assert sorted(os.listdir(saved)) == ["codes-1.npy", "index.json", "labels-1.npy"]


def test_add_continues_the_ids_and_a_save_replaces_every_file(saved, model, digits, tmp_path):
    index = HashIndex.load(saved)
    index.add(digits.test_images[:40], labels=digits.test_labels[:40])
    assert index.size == 1238 and index.parts[1]["first_id"] == 1198
    directory = str(tmp_path / "copy")
    index.save(directory)
    index.add_codes(model.hash_codes(digits.test_images[40:50]), digits.test_labels[40:50],
                    fingerprint=index.fingerprint)
    index.save(directory)
    assert sorted(os.listdir(directory)) == ["codes-2.npy", "index.json", "labels-2.npy"]
    loaded = HashIndex.load(directory)
    assert loaded.size == 1248 and len(loaded.parts) == 3
    np.testing.assert_array_equal(loaded.codes[1198:], model.hash_codes(digits.test_images[:50]))
    np.testing.assert_array_equal(loaded.labels[1198:], digits.test_labels[:50])
    result = loaded.search(images=digits.test_images[:5], k=1)
    np.testing.assert_array_equal(result.distances, np.zeros((5, 1)))  # they are indexed


def test_without_faiss_a_flat_index_runs_on_the_own_kernel_and_hnsw_is_refused(
        saved, model, digits, monkeypatch):
    expected = HashIndex.load(saved).search(codes=model.hash_codes(digits.test_images), k=12)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails
    index = HashIndex.load(saved)
    assert index.engine == "nac_tf"
    searched = index.search(codes=model.hash_codes(digits.test_images), k=12)
    np.testing.assert_array_equal(searched.ids, expected.ids)
    np.testing.assert_array_equal(searched.distances, expected.distances)
    with pytest.raises(ConfigError, match=re.escape('kind: a hnsw index needs FAISS: pip '
                                                    'install "nac_tf[faiss]"')):
        HashIndex.build(model, digits.test_images, kind="hnsw")


def test_hnsw_and_ivf_indexes_are_saved_with_their_faiss_files(model, digits, tmp_path):
    codes = model.hash_codes(digits.train_images)
    for kind in ("hnsw", "ivf"):
        index = HashIndex.from_codes(codes, 16, kind=kind, params={"ef_search": 100}
                                     if kind == "hnsw" else {"nprobe": 30})
        before = index.search(codes=codes[:20], k=5)
        index.save(str(tmp_path / kind))
        assert os.path.isfile(tmp_path / kind / "engine-1.faiss")
        loaded = HashIndex.load(str(tmp_path / kind))
        assert loaded.parameters == index.parameters and loaded.memory_bytes() > codes.nbytes
        after = loaded.search(codes=codes[:20], k=5)
        np.testing.assert_array_equal(after.distances, before.distances)
        np.testing.assert_array_equal(after.distances[:, 0], 0)  # each finds itself


def test_fingerprint_of_the_export_and_its_run_directory_agree_and_another_model_is_refused(
        tiny_run, model, saved, digits):
    # An index built from the run directory: its restored networks are the export's.
    from_directory = HashIndex.build(tiny_run.model_dir, digits.test_images[:50])
    assert from_directory.fingerprint == model.fingerprint and len(model.fingerprint) == 64
    assert from_directory.model_location == {
        "model_dir": os.path.abspath(tiny_run.model_dir),
        "checkpoint": run_directory.intact_checkpoint(tiny_run.model_dir)}
    np.testing.assert_array_equal(from_directory.codes, model.hash_codes(digits.test_images[:50]))
    from_run = from_directory.model()
    index = HashIndex.load(saved)
    index.search(images=digits.test_images[:2], k=3, model=from_run)  # the same model
    weight = from_run.module.encoder.weights[0]
    weight.assign(weight + 1e-3)  # another model: one weight changed in memory
    assert from_run.fingerprint != model.fingerprint
    for call in (lambda: index.search(images=digits.test_images[:2], k=3, model=from_run),
                 lambda: index.add(digits.test_images[:2], digits.test_labels[:2],
                                   model=from_run)):
        with pytest.raises(ConfigError) as error:
            call()
        assert error.value.field == "model" and "codes of another model" in error.value.reason
    with pytest.raises(ConfigError, match="fingerprint: codes of another model"):
        index.add_codes(index.codes[:2], index.labels[:2], fingerprint=from_run.fingerprint)


@pytest.fixture(scope="module")
def index(saved):
    return HashIndex.load(saved)


BAD_CALLS = {
    "k below 1": (lambda i, d: i.search(codes=i.codes[:2], k=0), "k", "must be a positive"),
    "k above the size": (lambda i, d: i.search(codes=i.codes[:2], k=1199), "k",
                         "1199 is larger than the index's 1198 items"),
    "codes of another width": (lambda i, d: i.search(codes=np.zeros((2, 4), np.uint8)),
                               "codes", "have 4 bytes per code; this index holds 16-bit "
                               "codes (2 bytes per code)"),
    "unpacked bits": (lambda i, d: i.search(codes=np.zeros((2, 16), bool)), "codes",
                      "must be packed codes uint8 [N, 2]"),
    "float images": (lambda i, d: i.search(images=d.test_images / 255.0), "images",
                     "must be uint8 [N, H, W, 3]; got float64 [599, 8, 8, 3] (convert"),
    "grey images": (lambda i, d: i.search(images=d.test_images[..., 0]), "images",
                    "must be uint8 [N, H, W, 3]; got uint8 [599, 8, 8]"),
    "images and codes": (lambda i, d: i.search(images=d.test_images, codes=i.codes), "images",
                         "exactly one"),
    "empty collection": (lambda i, d: HashIndex.build(i.model(), np.zeros((0, 8, 8, 3),
                                                                          np.uint8)),
                         "images", "holds no images (an empty collection)"),
    "labels of another length": (lambda i, d: HashIndex.from_codes(i.codes, 16,
                                                                   labels=i.labels[:5]),
                                 "labels", "must be integer class ids [1198]"),
    "no codes": (lambda i, d: HashIndex.from_codes(np.zeros((0, 2), np.uint8), 16), "packed",
                 "hold no codes (an empty collection)"),
    "width against code_bits": (lambda i, d: HashIndex.from_codes(i.codes, 24), "packed",
                                "have 2 bytes per code; this index holds 24-bit codes"),
    "parameter of another kind": (lambda i, d: i.search(codes=i.codes[:1], nprobe=3),
                                  "nprobe", "applies to ivf indexes; this index is flat"),
    "not a model": (lambda i, d: HashIndex.build("/nonexistent", d.test_images), "model",
                    "is neither an export"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_inputs_are_refused_naming_the_parameter(case, index, digits):
    call, name, words = BAD_CALLS[case]
    with pytest.raises(ConfigError) as error:
        call(index, digits)
    assert error.value.field == name and words in error.value.reason, str(error.value)


def test_missing_and_damaged_indexes_are_refused(saved, tmp_path):
    with pytest.raises(ConfigError, match="holds no hash index"):
        HashIndex.load(str(tmp_path))
    damaged = shutil.copytree(saved, tmp_path / "damaged")
    np.save(damaged / "codes-1.npy", np.zeros((5, 2), np.uint8))
    with pytest.raises(ConfigError, match=r"damaged hash index \(codes uint8 \[5, 2\]"):
        HashIndex.load(str(damaged))
    (damaged / "index.json").write_text("{")
    with pytest.raises(ConfigError, match="damaged hash index .index.json is not JSON"):
        HashIndex.load(str(damaged))


def test_an_interrupted_build_continues_from_its_chunks_to_the_same_index(
        tiny_export, digits, monkeypatch, tmp_path):
    build = dict(model=tiny_export.path, images=digits.train_images,
                 labels=digits.train_labels, batch_size=16)  # chunks of 256 images
    HashIndex.build(**build, directory=str(tmp_path / "whole"))
    written, stop_after = [], [2]
    original = index_files.PartialBuild.write

    class Killed(Exception):
        pass

    def write_then_stop(partial, chunk, codes):
        original(partial, chunk, codes)
        written.append(chunk)
        if len(written) in stop_after:
            raise Killed  # as a kill between two chunks
    monkeypatch.setattr(index_files.PartialBuild, "write", write_then_stop)
    with pytest.raises(Killed):
        HashIndex.build(**build, directory=str(tmp_path / "resumed"))
    assert sorted(os.listdir(tmp_path / "resumed" / "partial")) == [
        "chunk-000000.npy", "chunk-000001.npy", "state.json"]
    with pytest.raises(ConfigError, match="unfinished build of another collection or with "
                                          r"other settings \(it differs in collection\)"):
        HashIndex.build(**dict(build, images=digits.test_images, labels=None),
                        directory=str(tmp_path / "resumed"))
    written.clear()
    stop_after.clear()
    HashIndex.build(**build, directory=str(tmp_path / "resumed"))
    assert written == [2, 3, 4]  # only the chunks that were missing
    for name in ("index.json", "codes-1.npy", "labels-1.npy"):
        assert (tmp_path / "resumed" / name).read_bytes() == \
            (tmp_path / "whole" / name).read_bytes(), name
    assert sorted(os.listdir(tmp_path / "resumed")) == ["codes-1.npy", "index.json",
                                                        "labels-1.npy"]
    # The same build again finds the finished index: nothing is encoded.
    assert HashIndex.build(**build, directory=str(tmp_path / "resumed")).size == 1198
    assert written == [2, 3, 4]


def _write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


def test_collections_of_files_and_archives(model, digits, tmp_path):
    images = digits.test_images
    folder = tmp_path / "photos"
    _write_png(str(folder / "b.png"), images[0])
    _write_png(str(folder / "a" / "z.png"), images[1])
    _write_png(str(folder / "c.png"), np.repeat(np.repeat(images[2], 2, 0), 2, 1))  # 16 px
    (folder / "notes.txt").write_text("not an image")
    collection = collections.path_collection(str(folder))
    assert [collection.name(i) for i in range(3)] == ["a/z.png", "b.png", "c.png"]
    index = HashIndex.from_codes(model.hash_codes(images[:50]), 16)
    index.model_location = {"saved_model": model.export_dir}
    index.fingerprint = model.fingerprint
    expected = np.concatenate([model.hash_codes(images[1:2]), model.hash_codes(images[0:1]),
                               model.hash_codes(collection.images(2, 3)[0][None])])
    np.testing.assert_array_equal(index.encode(collection, batch_size=2), expected)
    assert collections.path_collection(str(folder / "b.png")).paths == [str(folder / "b.png")]
    np.savez(tmp_path / "set.npz", x=images[:4], y=digits.test_labels[:4])
    archive = collections.path_collection(str(tmp_path / "set.npz"))
    np.testing.assert_array_equal(archive.labels, digits.test_labels[:4])
    np.testing.assert_array_equal(archive.images_at([3])[0], images[3])
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    broken = collections.path_collection(str(folder))
    with pytest.raises(ConfigError) as error:
        index.encode(broken)
    assert error.value.field == "images"
    assert error.value.reason.startswith(f"cannot decode image {str(folder / 'broken.png')!r}")
    np.savez(tmp_path / "bad.npz", x=images[:4, ..., 0])
    for path, words in ((tmp_path / "bad.npz", "key x must be uint8 [N, H, W, 3]"),
                        (tmp_path / "empty", "holds no image files (an empty collection)")):
        os.makedirs(tmp_path / "empty", exist_ok=True)
        with pytest.raises(ConfigError, match=re.escape(words)):
            collections.path_collection(str(path))
