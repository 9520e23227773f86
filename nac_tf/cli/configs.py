"""Configs by name (`--config=NAME`) and flagfiles whose includes follow the including file.

A config is one of the flagfiles of the repository's top-level `configs/` folder, named
without `.flags` (`--config=cifar10_nac_mq` is `configs/cifar10_nac_mq.flags`). That folder
is the only copy: the package build carries it into the installed package as
`nac_tf/configs/` (setup.cfg maps the package `nac_tf.configs` to `configs/` and ships its
`*.flags`), so an installed nac_tf finds its configs inside the package, and a source
checkout (an editable install, or the repository on sys.path) finds `configs/` beside the
`nac_tf/` package (`configs_dir`).

`expand_config_args(argv)` is what the commands run on their argv before absl parses it:
every `--config=NAME` and every `--flagfile=PATH` is replaced, at its position, by the flags
of that file, so flags after it override the file's and flags before it are overridden.
Files use absl's flagfile syntax: one flag per line; blank lines and lines starting with
`#` or `//` are skipped. Inside a file, `--flagfile=PATH` (relative) is looked up first
beside the including file, then in the working directory (absl's own rule), so configs
include each other by file name (`--flagfile=cifar10_nac.flags`) wherever they are run
from; `--config=NAME` inside a file names another config. A file that includes itself,
directly or through others, is refused (absl only warns and skips it).

Errors are `nac_tf.config.ConfigError`s naming `--config` or `--flagfile`; nothing here
imports TensorFlow or absl.
"""
import os

from nac_tf.config import ConfigError

CONFIG_SUFFIX = ".flags"
_DIRECTIVES = ("config", "flagfile")


def configs_dir():
    """The folder holding the configs, or None when there is none.

    An installed package: `nac_tf/configs/` (the build's copy of the repository's
    `configs/`). A source checkout: `configs/` beside the `nac_tf/` package, recognised by
    the checkout's `setup.cfg` (so that an unrelated `configs/` next to an installed
    package is never taken for it).
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = os.path.join(package, "configs")
    if os.path.isdir(installed):
        return installed
    root = os.path.dirname(package)
    checkout = os.path.join(root, "configs")
    if os.path.isdir(checkout) and os.path.isfile(os.path.join(root, "setup.cfg")):
        return checkout
    return None


def available_configs(directory=None):
    """The config names (file names without `.flags`), sorted."""
    directory = directory or configs_dir()
    if directory is None or not os.path.isdir(directory):
        return []
    return sorted(name[:-len(CONFIG_SUFFIX)] for name in os.listdir(directory)
                  if name.endswith(CONFIG_SUFFIX)
                  and os.path.isfile(os.path.join(directory, name)))


def config_path(name, directory=None):
    """The flagfile of config `name` (`cifar10_nac` or `cifar10_nac.flags`), or ConfigError
    listing the available names."""
    directory = directory or configs_dir()
    names = available_configs(directory)
    listing = ", ".join(names) if names else "none (no configs folder was found)"
    if not name:
        raise ConfigError("config", f"needs a name; available: {listing}")
    if os.sep in name or (os.altsep and os.altsep in name):
        raise ConfigError("config", f"{name!r} is a path, not a config name; pass a file with "
                          f"--flagfile={name}, or one of: {listing}")
    stem = name[:-len(CONFIG_SUFFIX)] if name.endswith(CONFIG_SUFFIX) else name
    if stem not in names:
        raise ConfigError("config", f"unknown config {name!r}; available: {listing}")
    return os.path.join(directory, stem + CONFIG_SUFFIX)


def _directive(token):
    """(kind, value) for `--config=V` / `--flagfile=V` (also with one dash), (kind, None) for
    the two-token forms `--config V`, None for any other token."""
    for kind in _DIRECTIVES:
        for dashes in ("--", "-"):
            prefix = f"{dashes}{kind}"
            if token == prefix:
                return kind, None
            if token.startswith(prefix + "="):
                return kind, token[len(prefix) + 1:].strip()
    return None


class _Expander:
    def __init__(self, allow_config, directory):
        self.allow_config = allow_config
        self.directory = directory
        self.stack = []  # real paths of the files being expanded, outermost first

    def directive(self, kind, value, including=None):
        """The flags that `--kind=value` stands for; `including` is the file it is in."""
        where = f" (in {including})" if including else ""
        if kind == "config":
            path = config_path(value, self.directory)
        else:
            if not value:
                return []  # absl ignores an empty --flagfile= too
            path = self.locate(os.path.expanduser(value), including)
        return self.file(path, kind, where)

    def locate(self, path, including):
        """A --flagfile path: as given on the command line (absolute, or relative to the
        working directory); inside a file, beside that file first."""
        candidates = [path]
        if including is not None and not os.path.isabs(path):
            candidates = [os.path.join(os.path.dirname(including), path), os.path.abspath(path)]
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate
        if including is None:
            raise ConfigError("flagfile", f"{path!r} is not a file")
        looked = ", ".join(dict.fromkeys(os.path.normpath(c) for c in candidates))
        raise ConfigError("flagfile", f"{path!r}, included from {including}, is not a file "
                          f"(looked for {looked})")

    def file(self, path, kind, where):
        real = os.path.realpath(path)
        if real in self.stack:
            cycle = " -> ".join(self.stack[self.stack.index(real):] + [real])
            raise ConfigError(kind, f"include cycle{where}: {cycle}")
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(kind, f"cannot read {path}{where}: {error}") from None
        self.stack.append(real)
        try:
            flags = []
            for number, raw in enumerate(lines, 1):
                line = raw.strip()
                if not line or line.startswith(("#", "//")):
                    continue
                found = _directive(line)
                if found is None or (found[0] == "config" and not self.allow_config):
                    flags.append(line)
                elif found[1] is None:
                    raise ConfigError(found[0], f"{path}:{number}: write --{found[0]}=VALUE "
                                      "on one line")
                else:
                    flags.extend(self.directive(*found, including=path))
            return flags
        finally:
            self.stack.pop()


def expand_config_args(argv, allow_config=True, directory=None):
    """`argv` (program name first) with every `--config=NAME` and `--flagfile=PATH` replaced
    by the flags of its file, recursively, at its position; everything else is kept in
    order, and nothing after a `--` is touched.

    allow_config: False leaves `--config` to absl (commands without configs).
    directory: the configs folder (default `configs_dir()`).
    Raises ConfigError naming --config (an unknown name: the message lists the available
    ones) or --flagfile (a file that is missing, unreadable, or part of an include cycle).
    """
    argv = list(argv)
    if not argv:
        return argv
    expander = _Expander(allow_config, directory)
    expanded = [argv[0]]
    rest = argv[1:]
    while rest:
        token = rest.pop(0)
        if token == "--":
            expanded.append(token)
            expanded.extend(rest)
            break
        found = _directive(token)
        if found is None or (found[0] == "config" and not allow_config):
            expanded.append(token)
            continue
        kind, value = found
        if value is None:
            if not rest:
                raise ConfigError(kind, "needs a value")
            value = rest.pop(0)
        expanded.extend(expander.directive(kind, value))
    return expanded
