"""Linear evaluation of an exported SavedModel: `nac-linear-eval`, run from a checkout.

    python tools/linear_eval.py --saved_model=runs/x/saved_model --dataset=cifar10

The command lives in the installed package (`nac_tf.cli.linear_eval`; `pip install -e .`
first): this file only runs it, so the checkout and the console script never differ.
"""
from nac_tf.cli.linear_eval import run

if __name__ == "__main__":
    run()
