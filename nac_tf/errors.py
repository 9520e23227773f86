"""The words of nac_tf's errors about files and failed operations: one short line saying what
could not be done to which path and the system's reason, whether the error came from the
OS or from TensorFlow. Library code raises ConfigError / ValueError with these words; the
command line prints them after the name of the flag. Nothing here imports TensorFlow.
"""
import errno
import os
import re
import stat


def _message_line(error):
    """The first line of `error`'s message without TensorFlow's op decorations."""
    text = (getattr(error, "message", None) or str(error)).strip()
    text = text.splitlines()[0] if text else type(error).__name__
    return re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]$", "", text)


def shortened(text, limit=200):
    """`text`, cut to at most `limit` characters (ending in "..." when cut)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def error_reason(error):
    """What went wrong in `error`, in one short line: an OSError's strerror, else the first
    line of its message without TensorFlow's op decorations ("{{function_node ...}} path;
    No space left on device [Op:SaveV2]" -> "path; No space left on device")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return shortened(_message_line(error))


def failure_cause(error):
    """The system's reason alone, without the file TensorFlow names before it ("<file>; No
    space left on device" -> "No space left on device"): for a file that was temporary."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return shortened(_message_line(error).rpartition("; ")[2])


def _os_reason(error, path):
    """The OS's reason of `error` (an OSError without Python's "[Errno N]", naming the file
    when it is not `path`), or the first line of any other error or text."""
    strerror = getattr(error, "strerror", None)
    if not strerror:
        return error if isinstance(error, str) else error_reason(error)
    filename = getattr(error, "filename", None)
    return strerror if filename in (None, path) else f"{strerror}: {filename!r}"


def cannot_read(path, error):
    """The words for `error` met reading `path`: "cannot read 'path' (<the OS's reason>)"."""
    return f"cannot read {path!r} ({_os_reason(error, path)})"


def cannot_write(path, error):
    """The words for `error` (or a reason, as text) met writing `path`: "cannot write 'path'
    (<the OS's reason>)"."""
    return f"cannot write {path!r} ({_os_reason(error, path)})"


def read_problem(path):
    """Why `path` cannot be read, or None: "'path' does not exist", or `cannot_read`'s words
    (a file is opened, a directory listed and checked for search permission; nothing read).

    os.path.exists alone says False also for a path it may not look up (a parent without
    search permission), which would blame a path that is there."""
    try:
        if os.path.isdir(path):
            os.listdir(path)
            if not os.access(path, os.X_OK):  # listed, but its entries cannot be opened
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        else:
            # O_NONBLOCK: a FIFO would otherwise block until a writer appears.
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except FileNotFoundError:
        return f"{path!r} does not exist"
    except OSError as error:
        return cannot_read(path, error)
    return None


def write_problem(path):
    """Why `path` (a file or directory to create, or to replace) cannot be written, in
    `cannot_write`'s words, or None: its nearest existing ancestor directory must let this
    process create entries (missing directories in between are created by the writer).
    Nothing is written."""
    path = os.path.abspath(path)
    existing = os.path.dirname(path)
    while True:
        try:
            mode = os.stat(existing).st_mode
            break
        except OSError:  # missing, below a file, or not searchable: ask its parent
            existing = os.path.dirname(existing)
    if not stat.S_ISDIR(mode):
        code = errno.ENOTDIR
    elif os.access(existing, os.W_OK | os.X_OK):
        return None
    else:
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
    return cannot_write(path, OSError(code, os.strerror(code), existing))
