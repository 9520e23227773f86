"""Search by hash codes: a binary index of a collection's codes (`HashIndex`), its engines
(`engines`: flat / hnsw / ivf on FAISS, nac_tf's own exact kernel without it), its files
(`index_files`), the collections it reads (`collections`) and the HTML report of a search
(`html_report`, `png`). Commands: nac-hash-index, nac-hash-search (docs/search.md).

Importing this package imports neither TensorFlow nor FAISS.
"""
from nac_tf.search.index import HashIndex, SearchResult

__all__ = ["HashIndex", "SearchResult"]
