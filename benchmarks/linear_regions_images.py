"""Experiment (Fig. 1 on real images): distinct activation patterns of a trained NAC encoder and
head on digits images, against the same networks at their random initialisation.

    python benchmarks/linear_regions_images.py [--model_dirs=DIR,DIR]

Uses finished pretraining runs (default: the code_capacity runs of NAC on scikit-learn's
digits, small CNN, p = 0.1, D = 16 and D = 128, 600 steps; made by
`python benchmarks/code_capacity.py`, run directories under runs/experiments/code_capacity/).
"Random init": the method built from the run's configuration after seeding Keras with the
run's seed, as the trainer builds it before its first step (the same architecture and seed; not
checked to be bit-identical to the run's starting weights, which no checkpoint keeps).

Which layers (pre-activations in inference mode, pattern 1[a > 0],
`nac_tf.experiments.linear_regions`):
  code: the projection head's output a (D bits), the code c NAC trains (Sec. 3); the main
    number, the one Fig. 1's "last ReLU layer" corresponds to in NAC;
  head: the head as a 2-layer ReLU MLP over h (its hidden layer + the code);
  encoder_last: the encoder's last ReLU layer, conv3_relu before global pooling (2 x 2 x 128
    = 512 units for 8 x 8 inputs);
  all: every ReLU layer of encoder and head plus the code, i.e. the linear region of the whole
    network in input space.
Counted on the run's 1 198 training images and 599 held-out test images (seeded split).
Writes results/linear_regions/images.json and images.md.
"""
import argparse
import os

import numpy as np

from experiments import (REPO, RESULTS_DIR, RUNS_DIR, command_line, exported_model_of_run,
                         markdown_table, write_json)

EXPERIMENT = "linear_regions"
DEFAULT_RUNS = ",".join(os.path.join(RUNS_DIR, "code_capacity", name) for name in
                        ("D16_p0.1_s0_600steps", "D128_p0.1_s0_600steps"))
LAYER_SETS = ("code", "head", "encoder_last", "all")


def methods_of_run(model_dir):
    """(config, statistics, {"init": method, "trained": method}) of a finished run."""
    import keras

    from nac_tf.methods.from_config import method_from_config
    from nac_tf.run_directory import read_run_config, restore_pretrained_method

    config, statistics = read_run_config(model_dir)
    keras.utils.set_random_seed(config.seed)
    initial = method_from_config(config, statistics)
    _, trained = restore_pretrained_method(model_dir)
    return config, statistics, {"init": initial, "trained": trained}


def layer_pre_activations(method, images):
    """{layer name: pre-activations [N, units]} of every ReLU layer and of the code."""
    import keras

    encoder = method.encoder
    relu_inputs = [layer for layer in encoder.layers if isinstance(layer, keras.layers.ReLU)]
    # A ReLU layer's input is its pre-activation (the BatchNorm output before it).
    probe = keras.Model(encoder.inputs, [layer.input for layer in relu_inputs] + [encoder.output])
    outputs = probe(images, training=False)
    h = outputs[-1]
    head = method.projection_head
    layers = {layer.name: keras.ops.convert_to_numpy(a).reshape(len(images), -1)
              for layer, a in zip(relu_inputs, outputs[:-1])}
    layers["head_hidden"] = keras.ops.convert_to_numpy(head.hidden_dense(h))
    layers["code"] = keras.ops.convert_to_numpy(head(h, training=False))
    return layers, [layer.name for layer in relu_inputs]


def pattern_statistics(method, images):
    from nac_tf.experiments.linear_regions import count_distinct_patterns, mean_hamming_distance

    layers, encoder_relus = layer_pre_activations(method, images)
    sets = {"code": ["code"], "head": ["head_hidden", "code"],
            "encoder_last": [encoder_relus[-1]], "all": encoder_relus + ["head_hidden", "code"]}
    out = {}
    for name in LAYER_SETS:
        patterns = np.concatenate([layers[layer] for layer in sets[name]], axis=1) > 0.0
        distance = mean_hamming_distance(patterns)
        out[name] = {"units": int(patterns.shape[1]),
                     "distinct_patterns": count_distinct_patterns(patterns),
                     "distinct_fraction": count_distinct_patterns(patterns) / len(patterns),
                     "mean_hamming_distance": distance,
                     "mean_hamming_fraction": distance / patterns.shape[1],
                     "always_off_units": int(np.sum(~patterns.any(axis=0))),
                     "always_on_units": int(np.sum(patterns.all(axis=0)))}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dirs", default=DEFAULT_RUNS)
    args = parser.parse_args()

    from nac_tf.data.catalog import load_source
    from nac_tf.data.pipeline import evaluation_images

    runs = []
    for model_dir in args.model_dirs.split(","):
        config, statistics, methods = methods_of_run(model_dir)
        size = int(statistics["image_size"])
        source = load_source(config.dataset, image_size=size, seed=config.seed)
        splits = {"train": source.train_images, "test": source.test_images}
        record = {"model_dir": os.path.relpath(model_dir, REPO), "dataset": config.dataset,
                  "encoder": config.encoder, "code_dim": config.code_dim,
                  "flip_prob": config.flip_prob, "train_steps": config.train_steps,
                  "num_images": {k: int(len(v)) for k, v in splits.items()}, "statistics": {}}
        # The probe must see what a client of the trained model sees: its code bits equal
        # the exported model's hash codes on the same images.
        exported_bits = exported_model_of_run(model_dir).hash_codes(splits["test"])
        probe_bits = np.packbits(layer_pre_activations(
            methods["trained"], evaluation_images(splits["test"], size))[0]["code"] > 0, axis=1)
        if not np.array_equal(probe_bits, exported_bits):
            raise RuntimeError(f"{model_dir}: the probe's codes differ from the exported model's")
        for stage, method in methods.items():
            for split, images in splits.items():
                floats = evaluation_images(images, size)
                record["statistics"][f"{stage}/{split}"] = pattern_statistics(method, floats)
        runs.append(record)
        code = record["statistics"]
        print(f"[{EXPERIMENT}] {record['model_dir']}: distinct codes on train "
              f"{code['init/train']['code']['distinct_patterns']} -> "
              f"{code['trained/train']['code']['distinct_patterns']}", flush=True)

    command = command_line()
    out = os.path.join(RESULTS_DIR, EXPERIMENT)
    write_json(os.path.join(out, "images.json"), {"runs": runs, "command": command})
    header = ["run", "images", "layer (units)", "stage", "distinct patterns",
              "distinct / images", "mean Hamming (bits)", "mean Hamming / units",
              "units never on", "units always on"]
    rows = []
    for record in runs:
        name = f"D = {record['code_dim']}, p = {record['flip_prob']}"
        for split in ("train", "test"):
            for layer in LAYER_SETS:
                for stage in ("init", "trained"):
                    s = record["statistics"][f"{stage}/{split}"][layer]
                    rows.append([name, f"{split} ({record['num_images'][split]})",
                                 f"{layer} ({s['units']})", stage, s["distinct_patterns"],
                                 f"{s['distinct_fraction']:.3f}",
                                 f"{s['mean_hamming_distance']:.2f}",
                                 f"{s['mean_hamming_fraction']:.3f}", s["always_off_units"],
                                 s["always_on_units"]])
    text = ("# Activation patterns of a NAC encoder on real images (digits), trained vs random "
            f"init\n\nRegenerate (from the repository root):\n\n```bash\n{command}\n```\n\n"
            "Runs: " + ", ".join(f"`{r['model_dir']}`" for r in runs) + " (NAC, "
            f"{runs[0]['dataset']}, {runs[0]['encoder']}, {runs[0]['train_steps']} steps). "
            "Layers: code = projection-head output a (the code NAC trains); head = head hidden "
            "ReLU layer + code; encoder_last = conv3 ReLU layer before pooling; all = every "
            "ReLU layer + code. Inference mode (BatchNorm moving statistics). Random init = "
            "the run's configuration and seed, untrained. Images at the run's training size "
            "(8 x 8, native); the code bits of the trained networks are checked equal to the "
            "exported model's hash codes. (results/code_capacity counts codewords on the "
            "digits resized 8 -> 16 -> 8, hence its 354 distinct codes for D = 16 against "
            "438 here.)\n\n" + markdown_table(header, rows))
    with open(os.path.join(out, "images.md"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.relpath(out, REPO)}/images.json and images.md")


if __name__ == "__main__":
    main()
