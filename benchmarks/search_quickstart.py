"""The search commands on the quickstart run, checked end to end (not a test: it needs the
trained quickstart run, about a minute of training).

    python benchmarks/search_quickstart.py [--work_dir=runs/search_quickstart]

In --work_dir: `nac-train --config=quickstart` (skipped when the run is finished), then
`nac-export`, `nac-hash-index` over the digits' training images and `nac-hash-search` with
the test images and --html, each as a user types it. Checks that every command exits 0, that
the JSON lines equal a brute-force NumPy Hamming ranking of the export's codes (ties in id
order), that the mean of the queries' average precisions is the mAP@all the trainer
reported, and renders the report in headless Chromium (Debian's chromium) to a PNG.
Writes results/search_quickstart/results.json, results.md and report.png.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from experiments import REPO, write_report  # noqa: E402

EXPERIMENT = "search_quickstart"
K = 10
CHROMIUM = "/usr/bin/chromium"
# The options a headless Chromium needs on a machine without network or display.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run")


def run(command, cwd, stdout=None):
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, stdout=stdout or subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} exited with {result.returncode}:\n"
                         f"{result.stderr[-2000:]}")
    return result


def brute_force(query_codes, database_codes, k):
    """(ids, distances) of the k nearest database codes, ties in id order."""
    distances = np.unpackbits(query_codes[:, None, :] ^ database_codes[None, :, :],
                              axis=2).sum(axis=2)
    ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(distances, ids, axis=1)


def screenshot(html, png, width=1400, height=900):
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        f"--window-size={width},{height}", f"--screenshot={png}",
                        "file://" + os.path.abspath(html)],
                       check=True, capture_output=True, timeout=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=os.path.join(REPO, "runs", "search_quickstart"))
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    run_dir, cwd = "runs/quickstart", args.work_dir
    saved_model, index_dir = f"{run_dir}/saved_model", f"{run_dir}/index"
    html, jsonl = f"{run_dir}/search.html", f"{run_dir}/search.jsonl"
    run(["nac-train", "--config=quickstart"], cwd)
    if not os.path.isdir(os.path.join(cwd, saved_model)):
        run(["nac-export", f"--model_dir={run_dir}"], cwd)
    commands = [
        ["nac-hash-index", f"--index_dir={index_dir}", f"--saved_model={saved_model}",
         "--dataset=digits", "--split=train"],
        ["nac-hash-search", f"--index_dir={index_dir}", "--dataset=digits", "--split=test",
         f"--k={K}", f"--html={html}", f"--output={jsonl}"]]
    for command in commands:
        run(command, cwd)

    from nac_tf.data.catalog import load_source
    from nac_tf.export import load_exported_model

    model = load_exported_model(os.path.join(cwd, saved_model))
    digits = load_source("digits", image_size=model.metadata["image_size"])
    ids, distances = brute_force(model.hash_codes(digits.test_images),
                                 model.hash_codes(digits.train_images), K)
    with open(os.path.join(cwd, jsonl)) as f:
        lines = [json.loads(line) for line in f]
    found_ids = np.array([[r["id"] for r in line["results"]] for line in lines])
    found_distances = np.array([[r["distance"] for r in line["results"]] for line in lines])
    equal = bool(np.array_equal(found_ids, ids) and np.array_equal(found_distances, distances))
    with open(os.path.join(cwd, run_dir, "results.json")) as f:
        trained = json.load(f)
    aps = [line["average_precision"] for line in lines
           if line.get("average_precision") is not None]
    out = os.path.join(REPO, "results", EXPERIMENT)
    os.makedirs(out, exist_ok=True)
    screenshot(os.path.join(cwd, html), os.path.join(out, "report.png"))
    payload = {"queries": len(lines), "database": int(len(digits.train_images)), "k": K,
               "code_bits": int(model.metadata["code_dim"]),
               "equal_to_brute_force": equal,
               "mean_average_precision_of_search": float(np.mean(aps)),
               "map_all_reported_by_training": trained["map_all"],
               "html_bytes": os.path.getsize(os.path.join(cwd, html)),
               "commands": [" ".join(c) for c in commands]}
    body = (f"The quickstart run's {payload['queries']} test digits searched against its "
            f"{payload['database']} training digits ({payload['code_bits']}-bit codes, "
            f"flat index, k = {K}):\n\n"
            "```bash\n" + "\n".join(payload["commands"]) + "\n```\n\n"
            f"- JSON lines equal to a brute-force NumPy Hamming ranking (ties in id order): "
            f"{'yes' if equal else 'NO'}\n"
            f"- mean of the queries' average precisions: "
            f"{payload['mean_average_precision_of_search']:.4f} (the trainer's mAP@all: "
            f"{payload['map_all_reported_by_training']:.4f})\n"
            f"- the HTML report ({payload['html_bytes']:,} bytes, 20 queries), rendered by "
            "headless Chromium:\n\n![the search report](report.png)\n")
    write_report(EXPERIMENT, payload, body, "The search commands on the quickstart run")
    if not equal:
        raise SystemExit("the search results differ from brute-force ranking")


if __name__ == "__main__":
    main()
