"""Running the NAC authors' code (yookoon/nac) from a user's own checkout, for the
comparisons with it (benchmarks/authors_parity.py, benchmarks/authors_side_by_side.py).

Nothing of their code is copied into this project: their modules are imported from the
directory the user names, and patched at run time only, while their code runs
(`running_on_cpu`). Also here: the nac_tf options that reproduce their code where nac_tf's
defaults differ (docs/parity.md).
"""
import argparse
import contextlib
import functools
import importlib
import os
import sys

from nac_tf.config import PretrainConfig

AUTHORS_MODULES = ("model", "lars", "train", "utils")
# nac_tf settings that reproduce the authors' code, where nac_tf's default differs. The
# parity harness transfers the initial weights, so head_init (keras / pytorch) does not
# enter there; a run from scratch adds it (`MATCHING_INITIALISATION`).
MATCHING = {"batch_norm": "per_view", "lars_rule": "authors"}
MATCHING_NAC_MQ = {"mq_beta": "divide", "mq_inference_weight": 2.0}
# The same settings at nac_tf's defaults (declared with the settings, read here).
_NAC_TF_DEFAULTS = PretrainConfig()
DEFAULTS = {name: getattr(_NAC_TF_DEFAULTS, name) for name in MATCHING}
DEFAULTS_NAC_MQ = {name: getattr(_NAC_TF_DEFAULTS, name) for name in MATCHING_NAC_MQ}
MATCHING_INITIALISATION = {"head_init": "pytorch"}


def matching_options(method, from_scratch=False):
    """The nac_tf settings that reproduce the authors' code for `method` (their own
    initialisation of the heads too, `from_scratch`)."""
    return dict(MATCHING, **(MATCHING_NAC_MQ if method == "nac_mq" else {}),
                **(MATCHING_INITIALISATION if from_scratch else {}))


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def import_authors(authors_dir):
    """Their modules (a namespace) imported from `authors_dir`; exits 2 with one line when
    torch / torchvision are missing or the directory is not a checkout of yookoon/nac."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as error:
        fail(f"comparing with the authors' code needs torch and torchvision ({error}): "
             "pip install -e .[parity]")
    directory = os.path.abspath(authors_dir)
    missing = [f"{name}.py" for name in AUTHORS_MODULES
               if not os.path.isfile(os.path.join(directory, f"{name}.py"))]
    if missing:
        fail(f"--authors_dir={authors_dir}: not a checkout of yookoon/nac (no "
             f"{', '.join(missing)})")
    for name in AUTHORS_MODULES:
        sys.modules.pop(name, None)  # their module names are generic ("utils")
    sys.path.insert(0, directory)
    try:
        modules = {name: importlib.import_module(name) for name in AUTHORS_MODULES}
    except Exception as error:  # their code, their import errors
        fail(f"--authors_dir={authors_dir}: importing their modules failed: {error!r}")
    finally:
        sys.path.remove(directory)
    return argparse.Namespace(**modules)


@contextlib.contextmanager
def running_on_cpu(authors):
    """Their code on CPU: `.cuda()` is the identity, `Tensor.get_device()` names the CPU
    (their LARS moves a constant to it; on CPU it returns -1, which `.to` rejects), and their
    training loops' tqdm bar is off; everything restored afterwards."""
    import torch
    from tqdm import tqdm

    saved = [(owner, name, getattr(owner, name)) for owner, name in (
        (torch.Tensor, "cuda"), (torch.nn.Module, "cuda"), (torch.Tensor, "get_device"),
        (authors.train, "tqdm"))]
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.get_device = lambda self: "cpu"
    authors.train.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
