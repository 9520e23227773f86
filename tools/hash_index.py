"""A hash index of a collection's codes: `nac-hash-index`, run from a checkout.

    python tools/hash_index.py --index_dir=runs/x/index --saved_model=runs/x/saved_model \
        --dataset=digits --split=train

The command lives in the installed package (`nac_tf.cli.hash_index`; `pip install -e .`
first): this file only runs it, so the checkout and the console script never differ.
"""
from nac_tf.cli.hash_index import run

if __name__ == "__main__":
    run()
