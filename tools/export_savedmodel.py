"""Export a pretraining run as a SavedModel: `nac-export`, run from a checkout.

    python tools/export_savedmodel.py --model_dir=runs/x [--export_dir=runs/x/saved_model]

The command lives in the installed package (`nac_tf.cli.export`; `pip install -e .` first):
this file only runs it, so the checkout and the console script never differ.
"""
from nac_tf.cli.export import run

if __name__ == "__main__":
    run()
