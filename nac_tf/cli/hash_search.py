"""nac-hash-search: queries a hash index built by nac-hash-index (docs/search.md).

    nac-hash-search --index_dir=DIR [--k=10]
        (--images=PATH | --dataset=NAME [--data_dir=...] [--split=queries] [--seed=0]
         [--image_size=0] | --codes=PATH.npy)
        [--ef_search=0] [--nprobe=0] [--saved_model=DIR | --model_dir=RUN]
        [--output=PATH.jsonl (default: stdout)] [--html=PATH] [--report_queries=20]
    python -m nac_tf.cli.hash_search ...

Queries are images (a folder, one file or an .npz with x, as for nac-hash-index; a dataset
split), encoded by the index's model (the one recorded in the index; --saved_model or
--model_dir may name it elsewhere, and must have its fingerprint), or packed codes
(uint8 [Q, ceil(bits / 8)], the export's hash_codes). Writes one JSON line per query:

    {"query": i, "name": ..., "label": ..., "results": [{"id", "distance", "label", "path"}],
     "average_precision": ...}

(label, path where known; average_precision, the AP@all of exact Hamming ranking over the
whole index, where the queries and the index have labels). --html writes a self-contained
report of the first --report_queries queries: each query image beside its k results. Flags
are checked before TensorFlow is imported (which a search with --codes never needs); a bad
flag or input (codes of another width, k larger than the index, a missing or damaged
index) exits with code 2 and one line `error: --flag: ...`.
"""
import contextlib
import json
import logging
import os
import sys

import numpy as np
from absl import flags

from nac_tf.cli import checks, common
from nac_tf.cli.hash_index import (check_collection_flags, check_model_flags, command_main,
                                   define_collection_flags, define_model_flags, flag_error,
                                   model_image_size, open_collection)
from nac_tf.config import ConfigError
from nac_tf.errors import cannot_read, cannot_write
from nac_tf.search import engines

DEFAULT_REPORT_QUERIES = 20


def define_flags(flag_values=flags.FLAGS):
    flags.DEFINE_string("index_dir", "", "Directory of the index (nac-hash-index).",
                        flag_values=flag_values)
    flags.DEFINE_integer("k", 10, "Results per query.", flag_values=flag_values)
    define_collection_flags(flag_values, "queries", "The query images")
    flags.DEFINE_string("codes", "", "The queries as packed codes: a .npy of uint8 "
                        "[Q, ceil(bits / 8)] (the export's hash_codes).",
                        flag_values=flag_values)
    define_model_flags(flag_values, " to encode the queries with (default: the index's "
                       "own; its fingerprint must be the index's)")
    for parameter in engines.PARAMETERS:
        if parameter.search_time:
            flags.DEFINE_integer(parameter.name, 0, f"{parameter.help} 0: the index's.",
                                 flag_values=flag_values)
    flags.DEFINE_string("output", "", "JSON lines file; empty: stdout.",
                        flag_values=flag_values)
    flags.DEFINE_string("html", "", "Also write the HTML report here.", flag_values=flag_values)
    flags.DEFINE_integer("report_queries", DEFAULT_REPORT_QUERIES, "Queries shown in the "
                         "HTML report (the first ones); 0: all.", flag_values=flag_values)


def validate_flags(values=flags.FLAGS):
    """The settings of the command line `values` (absl FlagValues), with the index loaded
    and the --codes read; ConfigError naming the first unusable flag."""
    from nac_tf.search import HashIndex  # noqa: PLC0415

    if not values.index_dir:
        raise ConfigError("index_dir", "is required: a directory written by nac-hash-index")
    try:
        index = HashIndex.load(values.index_dir)
    except ConfigError as error:
        raise flag_error(error, {"directory": "index_dir", "kind": "index_dir"}) from None
    k = checks.check_int("k", values.k, 1)
    if k > index.size:
        raise ConfigError("k", f"{k} is larger than the index's {index.size} items")
    overrides = {p.name: checks.check_int(p.name, getattr(values, p.name), 0,
                                          " (0: the index's)")
                 for p in engines.PARAMETERS if p.search_time and getattr(values, p.name)}
    engines.search_parameters(index.kind, index.parameters, overrides)
    collection = check_collection_flags(values, alternatives=("codes",))
    model = check_model_flags(values, required=False)
    if model["fingerprint"] not in (None, index.fingerprint):
        raise ConfigError(model["flag"], f"is another model than the one that made the "
                          f"codes of the index in {values.index_dir!r} (its fingerprint "
                          "differs)")
    if "codes" in collection:
        collection["codes"] = _read_codes(values.codes, index.code_bits)
    return {"index_dir": values.index_dir, "index": index, "k": k, "overrides": overrides,
            "collection": collection, "model": model, "batch_size": values.batch_size,
            "output": checks.output_path("output", values.output, "") if values.output
            else None,
            "html": checks.output_path("html", values.html, "") if values.html else None,
            "report_queries": checks.check_int("report_queries", values.report_queries, 0,
                                               " (0: all)")}


def _read_codes(path, code_bits):
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ConfigError("codes", cannot_read(path, error)) from None
    code_bytes = -(-code_bits // 8)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != code_bytes:
        raise ConfigError("codes", f"{path!r} holds {codes.dtype} {list(codes.shape)}; the "
                          f"index holds {code_bits}-bit codes: uint8 [Q, {code_bytes}] "
                          "packed as the export's hash_codes")
    if not len(codes):
        raise ConfigError("codes", f"{path!r} holds no codes")
    return codes


def _queries(settings):
    """(query collection or None, packed query codes)."""
    index, model = settings["index"], settings["model"]
    if "codes" in settings["collection"]:
        return None, settings["collection"]["codes"]
    from nac_tf.search.index import resolve_model  # noqa: PLC0415

    exported = resolve_model(model["model"], model["checkpoint"])[0] if model["model"] \
        else None
    location = {model["flag"]: model["model"]} if model["model"] else index.model_location
    if not location:
        raise ConfigError("saved_model", "the index records no model; pass the one that made "
                          "its codes")
    collection = open_collection(settings["collection"], model_image_size(location))
    return collection, index.encode(collection, exported, settings["batch_size"],
                                    progress=True)


def _comparable_labels(index, collection):
    """Whether queries and items have labels of one kind (class ids, or multi-hot rows of
    one width), so that relevance is defined."""
    return collection is not None and collection.labels is not None \
        and index.labels is not None and collection.labels.shape[1:] == index.labels.shape[1:]


def _average_precisions(index, collection, codes):
    """AP@all of exact Hamming ranking per query ([Q], NaN for a query with no relevant
    item), or None without comparable labels."""
    from nac_tf.evaluation.retrieval import average_precisions  # noqa: PLC0415

    if not _comparable_labels(index, collection):
        return None
    return average_precisions(codes, index.codes, collection.labels, index.labels,
                              packed=True).values


class _ItemImages:
    """The images of index items by id, read again from the collections they came from."""

    def __init__(self, index):
        from nac_tf.search.collections import open_collection as reopen  # noqa: PLC0415

        self.index, self.reopen, self.opened = index, reopen, {}

    def __call__(self, item):
        for number, part in enumerate(self.index.parts):
            if part["first_id"] <= item < part["first_id"] + part["count"]:
                break
        else:
            return None
        if number not in self.opened:
            paths = self.index.paths[part["first_id"]:part["first_id"] + part["count"]] \
                if self.index.paths is not None else None
            try:
                self.opened[number] = self.reopen(part, paths)
            except ConfigError as error:
                logging.getLogger(__name__).warning("No thumbnails of items %d..%d: %s",
                                                    part["first_id"],
                                                    part["first_id"] + part["count"] - 1,
                                                    error.reason)
                self.opened[number] = None
        collection = self.opened[number]
        return None if collection is None \
            else collection.images_at([item - part["first_id"]])[0]


def _query_lines(index, collection, result, precisions):
    from nac_tf.search.collections import label_text  # noqa: PLC0415

    names = index.class_names
    for q in range(len(result.ids)):
        line = {"query": q, "name": collection.name(q, "query")
                if collection is not None else f"query {q}"}
        if collection is not None and collection.labels is not None:
            line["label"] = label_text(collection.labels[q], collection.class_names)
        line["results"] = []
        for item, distance in zip(result.ids[q], result.distances[q]):
            if item < 0:
                continue
            entry = {"id": int(item), "distance": int(distance)}
            if index.labels is not None:
                entry["label"] = label_text(index.labels[item], names)
            if index.paths is not None and index.paths[item] is not None:
                entry["path"] = index.paths[item]
            line["results"].append(entry)
        if precisions is not None:
            value = precisions[q]
            line["average_precision"] = None if np.isnan(value) else float(value)
        yield line


def _write_report(settings, collection, lines):
    from nac_tf.search.collections import shares_label  # noqa: PLC0415
    from nac_tf.search.html_report import (ReportQuery, ReportResult,  # noqa: PLC0415
                                           write_search_report)

    index, count = settings["index"], settings["report_queries"]
    lines = lines[:count] if count else lines
    images = _ItemImages(index)
    comparable = _comparable_labels(index, collection)
    queries = []
    for line in lines:
        q = line["query"]
        results = []
        for entry in line["results"]:
            relevant = None
            if comparable:
                relevant = bool(shares_label(collection.labels[q],
                                             index.labels[[entry["id"]]])[0])
            results.append(ReportResult(entry["id"], entry["distance"], images(entry["id"]),
                                        entry.get("label"), relevant, entry.get("path")))
        queries.append(ReportQuery(
            line["name"], collection.images_at([q])[0] if collection is not None else None,
            results, line.get("label"), line.get("average_precision")))
    parameters = dict(index.parameters, **settings["overrides"])
    location = index.model_location or {}
    details = {"index": os.path.abspath(settings["index_dir"]), "items": index.size,
               "kind": index.kind, "engine": index.engine,
               "parameters": ", ".join(f"{k}={v}" for k, v in parameters.items()) or "none",
               "code bits": index.code_bits, "k": settings["k"],
               "model": location.get("saved_model") or location.get("checkpoint")
               or "not recorded",
               "queries": f"{len(lines)} of {_described(settings['collection'])}"}
    write_search_report(settings["html"], queries,
                        f"Hash search: {len(lines)} queries, {settings['k']} results each",
                        details)


def _described(collection):
    """The query collection's flags as text."""
    if "dataset" in collection:
        return f"{collection['dataset']}, split {collection['split']}"
    return next(iter(collection.values())) if "images" in collection else "the codes given"


def search(settings, out):
    index = settings["index"]
    collection, codes = _queries(settings)
    result = index.search(codes=codes, k=settings["k"], **settings["overrides"])
    lines = list(_query_lines(index, collection, result,
                              _average_precisions(index, collection, codes)))
    for line in lines:
        out.write(json.dumps(line) + "\n")
    out.flush()
    if settings["html"]:
        _write_report(settings, collection, lines)
    return lines


def execute(values=flags.FLAGS):
    """The command on parsed flags `values`: check them, search, write the JSON lines (and
    the report); returns the lines. Errors are ConfigErrors naming the flag."""
    renamed = {"directory": "index_dir"}
    try:
        settings = validate_flags(values)
        renamed.update(model=settings["model"]["flag"],
                       images=next(iter(settings["collection"])))
        if settings["output"] is None:
            _messages_to_stderr()
        if "codes" not in settings["collection"] or settings["html"]:
            common.import_tensorflow()
        try:
            out = open(settings["output"], "w") if settings["output"] else sys.stdout
        except OSError as error:
            raise ConfigError("output", cannot_write(settings["output"], error)) from None
        with out if settings["output"] else contextlib.nullcontext(out):
            lines = search(settings, out)
    except ConfigError as error:
        raise flag_error(error, renamed) from None
    print(f"{len(lines)} queries, {settings['k']} results each: "
          f"{settings['output'] or 'stdout'}"
          + (f"; report: {settings['html']}" if settings["html"] else ""),
          file=sys.stderr if settings["output"] is None else sys.stdout)
    return lines


main = command_main(execute)


def _messages_to_stderr():
    """The JSON lines own stdout: the library's progress lines go to stderr instead."""
    for handler in logging.getLogger("nac_tf").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def run(argv=None):
    """The `nac-hash-search` console script."""
    common.run(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
    run()
