"""Step-level parity with the authors' PyTorch code (yookoon/nac): their own training loops
and LARS against nac_tf, from the same weights, on the same views and channel masks.

    python benchmarks/authors_parity.py --authors_dir=PATH

PATH is the user's checkout of https://github.com/yookoon/nac (model.py, lars.py, train.py,
utils.py); nothing of it is copied into this project. Their modules are imported from PATH
at run time and patched at run time only, while their step runs: `.cuda()` is the identity
(CPU), `Tensor.get_device()` names the CPU (their LARS moves a constant to it; on CPU it
returns -1, which `.to` rejects), `torch.rand_like` returns this harness's uniforms (so the
channel masks m = 2 (u > p) - 1 are known and handed to nac_tf), and their tqdm bar is off.
Their `train` (plain NAC, SimCLR) and `train_moco_symmetric` (NAC-MQ, CIFAR path) each run
one step per call on a one-batch loader, with their LARS (a subclass that records the
gradients before their in-place weight decay). Their batch shuffling (`randperm`) is left
alone: with one pass per view through BatchNorm it only reorders rows, so it changes sums by
rounding only.

Per architecture and method, both sides start from the same weights (their Model's, copied
layer by layer into nac_tf: benchmarks/torch_models.py), run in float64, and the loss, every
gradient and every weight (momentum networks, queue and BatchNorm statistics included) are
compared after each step. nac_tf runs twice: with its defaults and with the options that
reproduce the authors' code (docs/parity.md). Needs the `parity` extra
(pip install -e .[parity]). Writes results/parity/ (results.json, results.md, parity.png).
"""
import argparse
import contextlib
import copy
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from authors_code import (DEFAULTS, DEFAULTS_NAC_MQ, MATCHING, MATCHING_NAC_MQ, fail,  # noqa: E402
                          import_authors, running_on_cpu)
from experiments import RESULTS_DIR, write_report  # noqa: E402
from parity_layout import ARCHITECTURES  # noqa: E402
from parity_report import (ZERO_GRADIENT, ZERO_PART, max_trained, parity_markdown,  # noqa: E402
                           plot, summarise)

ARCH_ORDER = tuple(ARCHITECTURES)

METHODS = ("nac", "nac_mq", "simclr")


@contextlib.contextmanager
def authors_step_patches(authors, uniforms, reverse_shuffle=False):
    """Their step on CPU (`running_on_cpu`) with this step's uniforms `uniforms` (a torch
    tensor) as their one `torch.rand_like` draw (and, with `reverse_shuffle`, the reversed
    order as their batch shuffling); everything restored afterwards."""
    import torch

    def rand_like(tensor, **kwargs):
        if tuple(tensor.shape) != tuple(uniforms.shape):
            raise RuntimeError(f"rand_like{tuple(tensor.shape)}: expected the channel mask "
                               f"draw {tuple(uniforms.shape)}")
        return uniforms.to(tensor.dtype)

    saved = [(owner, name, getattr(owner, name))
             for owner, name in ((torch, "rand_like"), (torch, "randperm"))]
    torch.rand_like = rand_like
    if reverse_shuffle:
        torch.randperm = lambda n, **kwargs: torch.arange(n - 1, -1, -1)
    try:
        with running_on_cpu(authors):
            yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def relative_difference(ours, theirs):
    """max |ours - theirs| / max |theirs| (absolute when theirs is all zero)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    scale = np.max(np.abs(theirs)) if theirs.size else 0.0
    diff = np.max(np.abs(ours - theirs)) if theirs.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def part_of(keras_path):
    if keras_path == "queue":
        return "queue"
    network, leaf = keras_path.split("/")[0], keras_path.split("/")[-1]
    if leaf == "moving_mean":
        return "BN moving mean"
    if leaf == "moving_variance":
        return "BN moving variance"
    if network.startswith("momentum_"):
        return "momentum networks"
    return "encoder" if network == "encoder" else "heads"


def by_part(ours, theirs, zero_floor=None):
    """{part: max relative difference over its tensors} of two {keras path: array}. With
    `zero_floor`, tensors below ZERO_GRADIENT x it on both sides go to ZERO_PART, as the
    largest absolute value of either side."""
    parts = {}
    for path, value in theirs.items():
        if zero_floor is not None and max(np.max(np.abs(value)), np.max(np.abs(ours[path]))) \
                < ZERO_GRADIENT * zero_floor:
            part = ZERO_PART
            difference = float(max(np.max(np.abs(value)), np.max(np.abs(ours[path]))))
        else:
            part = part_of(path)
            difference = relative_difference(ours[path], value)
        parts[part] = max(parts.get(part, 0.0), difference)
    return parts


def loss_constant(method, code_dim):
    """What their loss lacks of nac_tf's: their positive term keeps -D/2 log(1/4) = D log 2
    that nac_tf drops (a constant; NAC-MQ has it in the code term and in both views' halves of
    the likelihood term)."""
    return {"nac": 1, "nac_mq": 3, "simclr": 0}[method] * code_dim * math.log(2.0)


class SideBySide:
    """Their Model (and momentum copy, queue) and nac_tf's method from the same weights."""

    def __init__(self, authors, architecture, method, settings, args, control=False):
        import keras
        import torch
        import torch_models
        from nac_tf.methods import MethodConfig, build_method, hyperparameters_of
        from nac_tf.models import build_encoder
        from nac_tf.optim import LARS, lars_rule_arguments

        self.method_name, self.args = method, args
        torch.manual_seed(args.seed)
        encoder_name, width = ARCHITECTURES[architecture]
        net = torch_models.authors_model(authors.model, architecture, args.code_dim,
                                         vi=method != "simclr").double()
        self.theirs = AuthorsSide(authors, net, method, args)
        # Their code against itself, with their batch shuffling reversed: how far rounding
        # alone (the order of BatchNorm's sums) carries their own run.
        self.control = (AuthorsSide(authors, copy.deepcopy(net), method, args, self.theirs)
                        if control else None)
        self.net, self.net_k = self.theirs.net, self.theirs.net_k
        self.pairs = torch_models.transfer_map(self.net, architecture)
        networks = {"encoder", "projection_head"} | (
            {"inference_network"} if method != "simclr" else set())
        self.momentum_pairs = [] if self.net_k is None else torch_models.transfer_map(
            self.net_k, architecture, "momentum_")

        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        size = (args.image_size, args.image_size, 3)
        # The normalised images go in (mean, std: None): Keras' Normalization layer, which
        # nac_tf's encoders use for their input statistics, rounds its constants to float32
        # (6e-8 relative in float64), which would hide the float64 agreement behind it.
        encoder = build_encoder(encoder_name, size, stem="cifar")
        config = MethodConfig(code_dim=args.code_dim, head_hidden_dim=width,
                              per_view_batch_norm=settings["batch_norm"] == "per_view",
                              seed=args.seed)
        # hyperparameters_of keeps the ones `method` declares.
        hyperparameters = dict(vars(args), **settings)
        self.method = build_method(method, encoder, config,
                                   **hyperparameters_of(method, hyperparameters))
        self.method.build_networks(size)
        torch_models.check_covered(self.net, self.method, self.pairs, networks)
        if self.net_k is not None:
            torch_models.check_covered(self.net_k, self.method, self.momentum_pairs,
                                       {"momentum_" + name for name in networks})
        torch_models.copy_torch_to_keras(self.net, self.method, self.pairs)
        if self.net_k is not None:
            torch_models.copy_torch_to_keras(self.net_k, self.method, self.momentum_pairs)
            self.method.queue.assign(self.theirs.queue.numpy().T)
        # The flip signs are handed in (`step`), not drawn by nac_tf (`flip_signs` is the
        # methods' one source of channel noise).
        self.signs = None
        object.__setattr__(self.method, "flip_signs", lambda shape, p: self.signs)

        optimizer = LARS(args.lr, momentum=0.9, weight_decay=args.weight_decay,
                         trust_coefficient=1e-3, **lars_rule_arguments(settings["lars_rule"]))
        self.method.compile(optimizer=optimizer)
        self.our_gradients = {}
        apply_gradients = optimizer.apply_gradients

        def recording_apply(grads_and_vars):
            grads_and_vars = list(grads_and_vars)
            self.our_gradients = {v.path: np.array(g) for g, v in grads_and_vars}
            return apply_gradients(grads_and_vars)

        object.__setattr__(optimizer, "apply_gradients", recording_apply)

    def step(self, view1, view2, torch_view1, torch_view2, uniforms):
        """One step on every side; (their loss + the constant, our loss, the control's)."""
        import tensorflow as tf

        theirs = self.theirs.step(torch_view1, torch_view2, uniforms)
        control = None if self.control is None else self.control.step(
            torch_view1, torch_view2, uniforms, reverse_shuffle=True)
        self.signs = tf.constant(np.where(uniforms > self.args.flip_prob, 1.0, -1.0))
        logs = self.method.train_step((tf.constant(view1), tf.constant(view2)))
        constant = loss_constant(self.method_name, self.args.code_dim)
        return theirs + constant, float(logs["loss"]), (
            None if control is None else control + constant)

    def differences(self):
        """{"gradients": {part: rel}, "weights": {part: rel}} of the last step, and the same
        for the control against their run (None without it)."""
        theirs_grad, theirs = self.theirs.arrays(self.pairs, self.momentum_pairs)
        ours = {v.path: v.numpy() for v in self.method.weights}
        if self.net_k is not None:
            ours["queue"] = self.method.queue.numpy()
        largest = max(float(np.max(np.abs(value))) for value in theirs_grad.values())
        result = {"gradients": by_part(self.our_gradients, theirs_grad, largest),
                  "weights": by_part(ours, theirs)}
        if self.control is None:
            return result, None
        control_grad, control = self.control.arrays(self.pairs, self.momentum_pairs)
        return result, {"gradients": by_part(control_grad, theirs_grad, largest),
                        "weights": by_part(control, theirs)}


class AuthorsSide:
    """Their Model `net` (with momentum copy and queue for NAC-MQ, made as their run.py
    does), trained by their loop and their LARS; `like` (another AuthorsSide) gives the
    momentum copy and queue to start from."""

    def __init__(self, authors, net, method, args, like=None):
        import torch

        self.authors, self.net, self.method, self.args = authors, net, method, args
        self.net_k = self.queue = self.queue_ptr = None
        if method == "nac_mq":
            self.net_k = copy.deepcopy(net if like is None else like.net_k)
            for parameter in self.net_k.parameters():
                parameter.requires_grad = False
            self.queue = (1e-3 * torch.randn(args.code_dim, args.queue_size) if like is None
                          else like.queue.clone())
            self.queue_ptr = torch.zeros(1, dtype=torch.long)
        names = {id(p): name for name, p in net.named_parameters()}

        class RecordingLARS(authors.lars.LARS):
            """Their LARS; it records the gradients before its in-place weight decay."""

            def step(inner, *step_args, **step_kwargs):
                inner.recorded = {names[id(p)]: p.grad.detach().clone()
                                  for group in inner.param_groups for p in group["params"]
                                  if p.grad is not None}
                return super().step(*step_args, **step_kwargs)

        self.optimizer = RecordingLARS(net.parameters(), lr=args.lr,
                                       weight_decay=args.weight_decay)

    def step(self, torch_view1, torch_view2, uniforms, reverse_shuffle=False):
        """One step of their loop on a one-batch loader; their loss."""
        import torch

        args, train = self.args, self.authors.train
        loader = [(torch_view1, torch_view2, torch.zeros(len(torch_view1), dtype=torch.long))]
        with authors_step_patches(self.authors, torch.from_numpy(uniforms), reverse_shuffle):
            if self.method == "nac_mq":
                return train.train_moco_symmetric(
                    self.net, self.net_k, self.queue, self.queue_ptr, loader, self.optimizer,
                    args.temperature, "nac", args.flip_prob, None, args.momentum,
                    args.queue_size, args.l2_weight, 1, 1)
            objective = "simclr" if self.method == "simclr" else "nac"
            return train.train(self.net, loader, self.optimizer, args.temperature, objective,
                               args.flip_prob, None, 1, 1)

    def arrays(self, pairs, momentum_pairs):
        """({keras path: gradient}, {keras path: weight}) in nac_tf's layouts."""
        import torch_models

        gradients = torch_models.torch_arrays(self.net, pairs, self.optimizer.recorded)
        weights = torch_models.torch_arrays(self.net, pairs)
        if self.net_k is not None:
            weights.update(torch_models.torch_arrays(self.net_k, momentum_pairs))
            weights["queue"] = self.queue.numpy().T
        return gradients, weights


def views(rng, args, mean, std):
    """Two views of a batch: seeded uint8 images, normalised as their utils.py does, in float64,
    NHWC for nac_tf and NCHW for theirs."""
    import torch
    from parity_layout import images_to_torch

    out = []
    for _ in range(2):
        images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3))
        pixels = images.astype(np.float64) / 255.0
        normalised = (pixels - np.asarray(mean)) / np.asarray(std)
        out.append((normalised, torch.from_numpy(images_to_torch(normalised))))
    return out


def compare(authors, architecture, method, settings, args, mean, std, control=False):
    """Per-step records of one comparison."""
    pair = SideBySide(authors, architecture, method, settings, args, control)
    rng = np.random.default_rng(args.seed + 1)
    records = []
    for step in range(1, args.steps + 1):
        (view1, torch_view1), (view2, torch_view2) = views(rng, args, mean, std)
        uniforms = rng.random((2 * args.batch_size, args.code_dim))
        theirs, ours, again = pair.step(view1, view2, torch_view1, torch_view2, uniforms)
        differences, control_differences = pair.differences()
        record = dict(step=step, loss_theirs=theirs, loss_ours=ours,
                      loss=relative_difference(ours, theirs), **differences)
        if control_differences is not None:
            record["control"] = dict(loss=relative_difference(again, theirs),
                                     **control_differences)
        records.append(record)
        print(f"  step {step}: loss {theirs:.12g} vs {ours:.12g}, rel "
              f"{record['loss']:.2e}, gradients {max_trained(record['gradients']):.2e}, "
              f"weights {max_trained(record['weights']):.2e}" + (
                  "" if "control" not in record else
                  f"; their code vs itself: weights "
                  f"{max_trained(record['control']['weights']):.2e}"), flush=True)
    return records


def settings_of(method, variant, ablate=None):
    base = dict(MATCHING if variant != "defaults" else DEFAULTS)
    if method == "nac_mq":
        base.update(MATCHING_NAC_MQ if variant != "defaults" else DEFAULTS_NAC_MQ)
    if ablate is not None:
        base[ablate] = (DEFAULTS_NAC_MQ if ablate.startswith("mq_") else DEFAULTS)[ablate]
    return base


def describe(method, settings):
    """The nac_tf flags of `settings` that differ from nac_tf's defaults ("defaults")."""
    defaults = dict(DEFAULTS, **(DEFAULTS_NAC_MQ if method == "nac_mq" else {}))
    flags = [f"--{key}={value:g}" if isinstance(value, float) else f"--{key}={value}"
             for key, value in settings.items() if value != defaults[key]]
    return " ".join(flags) or "defaults"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors_dir", required=True,
                        help="your checkout of https://github.com/yookoon/nac")
    parser.add_argument("--architectures", default=",".join(ARCH_ORDER))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ablations", default="resnet_tiny",
                        help="architectures on which each matching option is also set back "
                             "to nac_tf's default alone ('' for none)")
    parser.add_argument("--variants", default="matching,defaults",
                        help="nac_tf with the options matching the authors' code and/or with "
                             "its defaults")
    parser.add_argument("--rounding_control", default="",
                        help="architectures on which the matching rows also run their code a "
                             "second time, with their batch shuffling reversed")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3.0)
    parser.add_argument("--weight_decay", type=float, default=1e-6)
    parser.add_argument("--flip_prob", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--code_dim", type=int, default=128)
    parser.add_argument("--queue_size", type=int, default=32)
    parser.add_argument("--momentum", type=float, default=0.99)
    parser.add_argument("--l2_weight", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "parity"))
    args = parser.parse_args(argv)
    architectures = [a for a in args.architectures.split(",") if a]
    methods = [m for m in args.methods.split(",") if m]
    for name, values, accepted in (("architectures", architectures, ARCH_ORDER),
                                   ("methods", methods, METHODS)):
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            fail(f"--{name}: {', '.join(unknown)} not in {', '.join(accepted)}")
    if args.queue_size % (2 * args.batch_size):
        fail("--queue_size must be a multiple of 2 x --batch_size (both codes' rule)")
    authors = import_authors(args.authors_dir)
    import torch
    torch.set_default_dtype(torch.float64)
    # Their normalisation (utils.py's transforms), applied to the images of both sides.
    normalize = authors.utils.test_transform.transforms[-1]
    mean, std = [float(v) for v in normalize.mean], [float(v) for v in normalize.std]

    rows = []
    for architecture in architectures:
        for method in methods:
            variants = [(variant, None) for variant in args.variants.split(",") if variant]
            if architecture in args.ablations.split(","):
                keys = list(MATCHING) + (list(MATCHING_NAC_MQ) if method == "nac_mq" else [])
                variants += [(f"matching but {key}", key) for key in keys]
            for variant, ablate in variants:
                settings = settings_of(method, variant, ablate)
                print(f"{architecture} {method} {variant}: {describe(method, settings)}",
                      flush=True)
                control = (variant == "matching"
                           and architecture in args.rounding_control.split(","))
                records = compare(authors, architecture, method, settings, args, mean, std,
                                  control)
                rows.append(summarise(architecture, method, variant, settings,
                                      describe(method, settings), records))
    os.makedirs(args.out, exist_ok=True)
    plot(rows, os.path.join(args.out, "parity.png"))
    body = parity_markdown(rows, args)
    payload = dict(rows=rows, arguments=vars(args), torch=torch.__version__,
                   definition="max over tensors of max|nac_tf - theirs| / max|theirs|")
    write_report(os.path.relpath(args.out, RESULTS_DIR), payload, body,
                 "Step-level parity with the authors' PyTorch code")


if __name__ == "__main__":
    main()
