"""The report of benchmarks/authors_parity.py: per-comparison summaries, the markdown table
and the bar chart of results/parity/."""
import numpy as np

from experiments import markdown_table

# A gradient below this fraction of the largest one is zero up to rounding on both sides:
# vgg16_bn's convolution biases, whose effect the BatchNorm after them removes, have a zero
# gradient analytically, so their relative difference compares rounding noise with noise.
ZERO_GRADIENT = 1e-12
ZERO_PART = "zero gradients (absolute)"


def max_trained(parts):
    """Max over the parts that training moves through the loss (BatchNorm moving
    statistics are reported apart: they never enter a training step; so are gradients that
    are zero up to rounding on both sides, ZERO_PART)."""
    return max(value for part, value in parts.items()
               if not part.startswith("BN moving") and part != ZERO_PART)


def summarise(architecture, method, variant, settings, flags, records):
    """One comparison: its settings, the differences after the first and the last step."""
    def at(record):
        summary = dict(loss=record["loss"], gradients=max_trained(record["gradients"]),
                       weights_trained=max_trained(record["weights"]),
                       weights=record["weights"], gradients_by_part=record["gradients"])
        if "control" in record:
            control = record["control"]
            summary["control"] = dict(loss=control["loss"],
                                      gradients=max_trained(control["gradients"]),
                                      weights_trained=max_trained(control["weights"]))
        return summary
    return dict(architecture=architecture, method=method, variant=variant,
                settings=settings, flags=flags, steps=len(records),
                first=at(records[0]), last=at(records[-1]), records=records)


def table(rows, steps):
    control = any("control" in row["last"] for row in rows)
    header = ["network", "method", "nac_tf", "options", "loss @1", "gradients @1",
              "weights @1", f"loss @{steps}", f"gradients @{steps}", f"weights @{steps}",
              f"BN moving mean / var @{steps}"]
    header += [f"their code vs itself: gradients / weights @{steps}"] if control else []
    body = []
    for row in rows:
        first, last = row["first"], row["last"]
        cells = [row["architecture"], row["method"], row["variant"], f"`{row['flags']}`",
                 *(f"{first[k]:.1e}" for k in ("loss", "gradients", "weights_trained")),
                 *(f"{last[k]:.1e}" for k in ("loss", "gradients", "weights_trained")),
                 f"{last['weights']['BN moving mean']:.1e} / "
                 f"{last['weights']['BN moving variance']:.1e}"]
        if control:
            cells.append(f"{last['control']['gradients']:.1e} / "
                         f"{last['control']['weights_trained']:.1e}" if "control" in last
                         else "")
        body.append(cells)
    return markdown_table(header, body)


def zero_gradient_note(rows):
    """Which rows had gradients that are zero up to rounding (left out of the table)."""
    zeros = [row["last"]["gradients_by_part"][ZERO_PART] for row in rows
             if ZERO_PART in row["last"]["gradients_by_part"]]
    if not zeros:
        return ""
    networks = sorted({row["architecture"] for row in rows
                       if ZERO_PART in row["last"]["gradients_by_part"]})
    return (f"\n\nLeft out of the gradient columns ({', '.join(networks)}): gradients that "
            f"are zero up to rounding on both sides (below {ZERO_GRADIENT:g} of the largest; "
            f"the convolution biases before BatchNorm, whose gradient is zero analytically); "
            f"the largest of them on either side: {max(zeros):.1e}.")


def parity_markdown(rows, args):
    control = ("" if not any("control" in row["last"] for row in rows) else
               " The last column runs their code twice, the second time with their batch "
               "shuffling reversed: what rounding alone (the order of BatchNorm's sums) does "
               "to their own run over the same steps.")
    return (f"Both sides in float64 from the same weights, views (seeded uint8 images, batch "
            f"{args.batch_size}, {args.image_size} px) and channel masks; their `train` / "
            f"`train_moco_symmetric` and LARS (lr {args.lr:g}, constant; weight decay "
            f"{args.weight_decay:g}), p = {args.flip_prob:g}, temperature "
            f"{args.temperature:g}, queue {args.queue_size}, momentum {args.momentum:g}. "
            "Each cell is the largest relative difference max|nac_tf - theirs| / max|theirs| "
            "over the tensors compared (gradients: every trained variable; weights: encoder, "
            "heads, momentum networks, queue), after step 1 and after the last step; "
            "BatchNorm moving statistics apart (docs/parity.md: Keras' moving variance "
            "takes the biased batch variance, PyTorch's the unbiased one; their NAC-MQ runs "
            "the second view first). The loss adds to theirs the constant D log 2 per "
            "positive term that nac_tf drops." + control + "\n\n" + table(rows, args.steps)
            + zero_gradient_note(rows) + "\n\n![parity](parity.png)\n")


def plot(rows, path):
    """Bars of the largest weight difference after the last step, matching options against
    nac_tf's defaults (and their code against itself where it ran), log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [row for row in rows if row["variant"] in ("matching", "defaults")]
    labels = list(dict.fromkeys((r["architecture"], r["method"]) for r in main))
    series = [("matching", "nac_tf, matching options", "tab:green", False),
              ("defaults", "nac_tf defaults", "tab:red", False)]
    if any("control" in r["last"] for r in main):
        series.append(("matching", "their code vs itself (reshuffled)", "tab:grey", True))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 3, 4))
    for index, (variant, label, colour, control) in enumerate(series):
        heights = []
        for key in labels:
            row = next((r for r in main if (r["architecture"], r["method"]) == key
                        and r["variant"] == variant), None)
            last = None if row is None else (row["last"].get("control") if control
                                             else row["last"])
            heights.append(np.nan if last is None else max(last["weights_trained"], 1e-17))
        ax.bar(np.arange(len(labels)) + (index - (len(series) - 1) / 2) * width, heights,
               width, color=colour, label=label)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(labels)))
    ax.set_xticklabels([f"{a}\n{m}" for a, m in labels], fontsize=8)
    ax.set_ylabel(f"max relative weight difference\nafter {rows[0]['steps']} LARS steps")
    ax.set_title("nac_tf vs the authors' PyTorch code\n(float64; same weights, views, masks)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
