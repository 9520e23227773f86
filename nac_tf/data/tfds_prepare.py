"""Preparing a TFDS dataset before it is read: from its source files when a directory holds
them (the `tfds_source_files` of its record in `nac_tf.specs.datasets`), else by TFDS's
download, and an error of one line when it can be neither.

Without network, TFDS's downloader retries for minutes (CIFAR-10: about 200 s; the retry
count is a constant of TFDS, not a setting) and then fails with a chain of tracebacks. So a
download is preceded by one request to each URL, without retries, through the library TFDS
downloads with (requests: the same proxy variables and certificate checks); if that fails, so
would the download.
"""
import os

import requests
import tensorflow_datasets as tfds
# Not re-exported by tfds.download.
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from nac_tf.errors import shortened
from nac_tf.specs.datasets import dataset_spec

# Seconds to connect and to wait for the answer; a name that cannot be resolved fails at once.
REACHABILITY_TIMEOUT = 15
_REASON_LENGTH = 120


def ensure_prepared(builder, manual_dir=None, instead=None):
    """Prepares the dataset of the TFDS `builder` (a dataset whose spec lists
    `tfds_source_files`) unless it is.

    From its source files when `manual_dir` or TFDS's own manual directory
    (<data_dir>/downloads/manual) holds them all; else from an earlier download TFDS kept;
    else by downloading them, unless TFDS cannot (ImageNet).
    Raises FileNotFoundError when the files are missing and cannot be downloaded, ValueError
    when a file is not the one TFDS registered (a partial or different copy): one line
    naming data_dir and what to do; `instead` (e.g. "dataset='npz' with ...") is offered as
    the other way out.
    """
    # is_prepared() logs a warning for a dataset folder that does not exist yet.
    if os.path.isdir(os.fspath(builder.data_path)) and builder.is_prepared():
        return
    files = dataset_spec(builder.name).tfds_source_files
    source_dir = _directory_holding(files, (manual_dir, _downloads(builder, "manual")))
    if source_dir is None:
        if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:  # TFDS cannot download it
            folder = manual_dir or _downloads(builder, "manual")
            missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
            raise FileNotFoundError(
                f"{_not_prepared(builder)} and {os.fspath(folder)!r} lacks {', '.join(missing)} "
                f"(TFDS cannot download {builder.name}): {_remedies(builder, instead)}")
        if not _downloaded_before(builder):
            for url in builder.url_infos or ():
                reason = _unreachable(url)
                if reason:
                    raise FileNotFoundError(
                        f"{_not_prepared(builder)} and could not be downloaded from {url} "
                        f"({reason}): {_remedies(builder, instead)}")
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=source_dir))
    except NonMatchingChecksumError as error:
        copy = (f"{' and '.join(files)} in {source_dir}" if source_dir
                else f"the download of {builder.name}")
        raise ValueError(f"{_not_prepared(builder)}, and {copy} is not what TFDS registered "
                         f"(its size or checksum differs: a partial or different copy); "
                         f"{_remedies(builder, instead)}") from error
    except (tfds.download.DownloadError, requests.RequestException) as error:
        raise FileNotFoundError(f"{_not_prepared(builder)} and could not be downloaded "
                                f"({_reason(error)}): {_remedies(builder, instead)}") from error


def _directory_holding(files, directories):
    """The first of `directories` (None entries skipped) that holds every one of `files`."""
    for directory in directories:
        if directory and all(os.path.isfile(os.path.join(directory, f)) for f in files):
            return os.fspath(directory)
    return None


def _downloads(builder, *parts):
    """A path in TFDS's download directory (its default: <data_dir>/downloads)."""
    return os.path.join(os.fspath(builder.data_dir_root), "downloads", *parts)


def _downloaded_before(builder):
    """Whether TFDS's download directory holds a finished download of this dataset, which TFDS
    reuses without the network (it writes a .INFO file beside each finished download)."""
    folder = _downloads(builder, builder.name)
    return os.path.isdir(folder) and any(name.endswith(".INFO") for name in os.listdir(folder))


def _unreachable(url):
    """Why `url` cannot be fetched, in one short line; None when its server answers (with any
    status: TFDS's own download reports HTTP errors quickly)."""
    try:
        requests.head(url, timeout=REACHABILITY_TIMEOUT, allow_redirects=True).close()
    except requests.RequestException as error:
        return _reason(error)
    return None


def _reason(error):
    """"Type: message" of an exception, shortened: the outermost type (requests' names the
    kind of failure) and the first line of the innermost cause (the socket's own words,
    where requests wraps them in several layers of context)."""
    root, seen = error, set()
    while (root.__cause__ or root.__context__) is not None and id(root) not in seen:
        seen.add(id(root))
        root = root.__cause__ or root.__context__
    lines = str(root).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else type(root).__name__}"
    return shortened(text, _REASON_LENGTH)


def _not_prepared(builder):
    return (f"dataset {builder.name!r} is not prepared in data_dir "
            f"{os.fspath(builder.data_dir_root)!r}")


def _remedies(builder, instead):
    """What the user can do, as the end of an error message."""
    files = " and ".join(dataset_spec(builder.name).tfds_source_files)
    prepared = os.path.relpath(os.fspath(builder.data_path), os.fspath(builder.data_dir_root))
    text = (f"put {files} in data_dir, or point data_dir at a TFDS data directory holding "
            f"{prepared}/")
    return f"{text}, or use {instead}" if instead else text
