"""Input checks and packing of the retrieval metrics: codes (bits or packed bytes), labels
(class ids or multi-hot rows) and the relevance they define, option names."""
import numpy as np

TIES = ("stable", "expected")
EMPTY_QUERIES = ("exclude", "zero")


def check_option(name, value, accepted):
    if not isinstance(value, str) or value not in accepted:
        raise ValueError(f"{name} must be one of {list(accepted)}, got {value!r}")


def _binary_matrix(bits, name):
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"{name} must be a matrix [N, D] of {{0,1}} bits, got shape {bits.shape}")
    if bits.dtype == np.bool_:
        return bits.view(np.uint8)
    if not np.issubdtype(bits.dtype, np.integer):
        raise ValueError(f"{name} must have an integer or bool dtype, got {bits.dtype}")
    if bits.size and (bits.min() < 0 or bits.max() > 1):
        raise ValueError(f"{name} must hold only 0 and 1 (use bits = codes > 0 for signed "
                         f"codes), got values in [{bits.min()}, {bits.max()}]")
    return bits.astype(np.uint8, copy=False)


def pack_bits(bits):
    """{0,1} codes [N, D] -> uint8 [N, ceil(D/8)], big-endian bit order (np.packbits)."""
    return np.packbits(_binary_matrix(bits, "bits"), axis=1)


def packed_matrix(packed_bits, name):
    packed_bits = np.asarray(packed_bits)
    if packed_bits.ndim != 2 or packed_bits.dtype != np.uint8:
        raise ValueError(f"{name} must be packed codes: uint8 [N, bytes] as from "
                         f"np.packbits(bits, axis=1); got {packed_bits.dtype} {packed_bits.shape}")
    return packed_bits


def codes(query_bits, db_bits, packed):
    """Packed uint8 query and database codes, width-checked, and their number of bits."""
    if not isinstance(packed, (bool, np.bool_)):
        raise ValueError(f"packed must be True or False, got {packed!r}")
    if packed:
        query = packed_matrix(query_bits, "query_bits")
        database = packed_matrix(db_bits, "db_bits")
        unit = "bytes"
    else:
        query = _binary_matrix(query_bits, "query_bits")
        database = _binary_matrix(db_bits, "db_bits")
        unit = "bits"
    if query.shape[1] != database.shape[1]:
        raise ValueError(f"query_bits has {query.shape[1]} {unit} per code but db_bits has "
                         f"{database.shape[1]}: query and database codes must have the same width")
    if query.shape[0] == 0 or database.shape[0] == 0 or query.shape[1] == 0:
        raise ValueError(f"query_bits {query.shape} and db_bits {database.shape} must be "
                         "non-empty")
    num_bits = query.shape[1] * (8 if packed else 1)
    if not packed:
        query, database = np.packbits(query, axis=1), np.packbits(database, axis=1)
    return query, database, num_bits


LABEL_FORMS = ("1-D integer class ids [N], or a 2-D multi-hot matrix [N, C] of 0/1 values "
               "with a bool, integer or float dtype")


def _labels(labels, name, num_rows, bits_name):
    """Class ids [N] as given, or a multi-hot matrix [N, C] as uint8 {0, 1}.

    Multi-hot matrices may come as bool, any integer or any float dtype (FLICKR-25K copies
    often store float 0/1), but every value must be exactly 0 or 1: anything else (0.5, NaN,
    2) has no meaning as "carries this label" and is refused rather than thresholded.
    """
    try:
        labels = np.asarray(labels)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} must be {LABEL_FORMS}; it is not a regular array "
                         f"({error})") from None
    if labels.ndim not in (1, 2):
        raise ValueError(f"{name} must be {LABEL_FORMS}; got a {labels.ndim}-D array of shape "
                         f"{labels.shape}")
    if labels.shape[0] != num_rows:
        raise ValueError(f"{name} has {labels.shape[0]} rows but {bits_name} has {num_rows} "
                         "(one label row per code row)")
    is_bool = labels.dtype == np.bool_
    is_integer = np.issubdtype(labels.dtype, np.integer)
    if labels.ndim == 1:
        if not (is_bool or is_integer):
            raise ValueError(f"{name} is 1-D, so it must hold integer class ids, got dtype "
                             f"{labels.dtype}; accepted: {LABEL_FORMS}")
        return labels
    if not (is_bool or is_integer or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"{name} is 2-D, so it must be multi-hot with a bool, integer or float "
                         f"dtype, got dtype {labels.dtype}; accepted: {LABEL_FORMS}")
    if not is_bool:
        invalid = (labels != 0) & (labels != 1)  # NaN compares unequal to both
        if invalid.any():
            row, column = np.argwhere(invalid)[0]
            raise ValueError(
                f"{name} is 2-D, so it must be multi-hot: every value exactly 0 or 1; found "
                f"{labels[row, column].item()!r} at [{row}, {column}] ({int(invalid.sum())} "
                f"such entries); accepted: {LABEL_FORMS}")
    return labels.astype(np.uint8)


def _label_masks(multi_hot):
    """Multi-hot [N, C] -> uint64 label bit masks [N, ceil(C/64)]."""
    packed = np.packbits(multi_hot.astype(np.uint8, copy=False), axis=1)
    return as_words(packed)


class Relevance:
    """Relevance rows (bool [c, N]) for chunks of queries: shared label => relevant."""

    def __init__(self, query_labels, db_labels, num_queries, num_items):
        query_labels = _labels(query_labels, "query_labels", num_queries, "query_bits")
        db_labels = _labels(db_labels, "db_labels", num_items, "db_bits")
        if query_labels.ndim != db_labels.ndim:
            raise ValueError("query_labels and db_labels must both be class ids [N] or both "
                             f"multi-hot [N, C]; got shapes {query_labels.shape} and "
                             f"{db_labels.shape}")
        self.multi_hot = query_labels.ndim == 2
        if self.multi_hot:
            if query_labels.shape[1] != db_labels.shape[1]:
                raise ValueError(f"query_labels has {query_labels.shape[1]} classes but "
                                 f"db_labels has {db_labels.shape[1]}")
            self.query = _label_masks(query_labels)
            self.database = np.ascontiguousarray(_label_masks(db_labels).T)
        else:
            self.query = query_labels
            self.database = db_labels

    def rows(self, start, stop, out):
        if not self.multi_hot:
            return np.equal(self.query[start:stop, None], self.database[None, :], out=out)
        shared = np.empty(out.shape, np.uint64)
        out[...] = False
        for word in range(self.database.shape[0]):
            np.bitwise_and(self.query[start:stop, word, None], self.database[word][None, :],
                           out=shared)
            np.logical_or(out, shared, out=out)
        return out


def positive_integer_or_none(name, value):
    """`value` as an int, or None; anything else (a bool, a float, 0) is refused, naming
    the parameter `name` (top_k, chunk_size)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
    return int(value)


def as_words(packed):
    """uint8 [N, B] -> uint64 [N, ceil(B/8)], zero-padded (padding never changes a popcount)."""
    num_rows, num_bytes = packed.shape
    padded = np.zeros((num_rows, -(-num_bytes // 8) * 8), np.uint8)
    padded[:, :num_bytes] = packed
    return padded.view(np.uint64)
