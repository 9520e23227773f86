"""Queries of a hash index: `nac-hash-search`, run from a checkout.

    python tools/hash_search.py --index_dir=runs/x/index --dataset=digits --split=test \
        --html=runs/x/search.html

The command lives in the installed package (`nac_tf.cli.hash_search`; `pip install -e .`
first): this file only runs it, so the checkout and the console script never differ.
"""
from nac_tf.cli.hash_search import run

if __name__ == "__main__":
    run()
