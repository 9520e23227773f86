"""Hash-code retrieval (mAP) of an exported SavedModel: `nac-hash-retrieval`, run from a
checkout.

    python tools/hash_retrieval.py --saved_model=runs/x/saved_model --dataset=cifar10_hashing

The command lives in the installed package (`nac_tf.cli.hash_retrieval`; `pip install -e .`
first): this file only runs it, so the checkout and the console script never differ.
"""
from nac_tf.cli.hash_retrieval import run

if __name__ == "__main__":
    run()
