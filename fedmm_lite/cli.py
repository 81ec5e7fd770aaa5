"""The command line (a FIXED interface: README.md, "Quick mode, data and the command line"): ``python -m fedmm_lite {info,run,bench,encode}``.

Bad input (a malformed dataset folder, an unknown option value) exits with status 2 and one line on
stderr naming the file, row or option; never a Python traceback; Ctrl-C exits 130 with one line.
Results go to stdout as JSON; with ``run --json PATH`` the JSON goes to the file and stdout gets a
one-line summary (``--json -``: the JSON on stdout). Progress bars go to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from .config import flush_denormals
from .errors import FedmmError

BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap", "popularity")
METHODS = ("id", "fedmr", "gfmfr")
STRATEGIES = ("mix", "sum", "mlp", "gate")


MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    """An argparse type: a seed is an integer from 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is out of range (0 to {MAX_SEED})")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints a usage block and exits 2; we print the single line that matters."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _add_data_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="world",
                   help="world | world-quick | world-full | world-large | movielens-posters | ml-100k | "
                        "a dataset folder")
    p.add_argument("--seed", type=_seed, default=0, help="one seed makes a run repeatable (0 to 2**32 - 1)")
    p.add_argument("--quick", action="store_true", help="quick mode (same as FEDMM_QUICK=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m fedmm_lite",
                            description="Federated multimodal recommendation, the book's command line.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    p = sub.add_parser("info", help="load a dataset and print its statistics as JSON")
    _add_data_option(p)

    p = sub.add_parser("run", help="train and evaluate one configuration; JSON result")
    _add_data_option(p)
    p.add_argument("--backbone", default="fedavg", choices=BACKBONES)
    p.add_argument("--method", default="id", choices=METHODS)
    p.add_argument("--strategy", default="mix", choices=STRATEGIES)
    p.add_argument("--modalities", default="id,text,image", help="comma list of id, text, image")
    p.add_argument("--rounds", type=int, default=None, help="communication rounds (0 = evaluate untrained)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate valid and test every K rounds (and at the last; default 1)")
    p.add_argument("--local-epochs", type=int, default=None)
    p.add_argument("--sample-ratio", type=float, default=None, help="fraction of clients per round (beta)")
    p.add_argument("--groups", type=int, default=None, help="GFMFR: number of client groups g (default 3)")
    p.add_argument("--grouping", default=None, choices=("kmeans", "spectral", "agglomerative"),
                   help="GFMFR: how clients are grouped by their prediction functions (default kmeans)")
    p.add_argument("--lambda-schedule", default=None,
                   choices=("ours", "scale-align", "smooth", "progressive", "cosine"),
                   help="GFMFR: the distillation weight's schedule (default ours)")
    p.add_argument("--gfmfr-ablation", default=None,
                   choices=("none", "random-group", "single-group", "multiple-agg"),
                   help="GFMFR: an ablation of the paper (default none)")
    p.add_argument("--router-input", default=None, choices=("exact", "epoch", "batch"),
                   help="FedMR: Eq. (5)'s router input in training: exact (default), or an estimate: "
                        "once per local epoch, or the mini-batch's positives")
    p.add_argument("--feature-dim", type=int, default=None,
                   help="FedMR: reduce each modality's features to this many principal components "
                        "(a labelled option; default: the encoder's features)")
    p.add_argument("--fusion-lr", type=float, default=None,
                   help="FedMR: client step of the global fusion modules (default: tuned)")
    p.add_argument("--feature-map-lr", type=float, default=None,
                   help="FedMR: client step of the feature mappings A_text, A_image alone "
                        "(default: the fusion step)")
    p.add_argument("--fusion-server", default=None, choices=("sgd", "momentum", "adam"),
                   help="FedMR: server optimiser of the fusion modules (default: tuned)")
    p.add_argument("--fusion-server-lr", type=float, default=None,
                   help="FedMR: step of that server optimiser (default: tuned)")
    p.add_argument("--cold-items", type=float, default=None,
                   help="hold this fraction of the items out of training and report them apart "
                        "(cold_* keys of test)")
    p.add_argument("--ratio-cap", type=float, default=None,
                   help="GFMFR: cap on the loss ratio L_rec / L_dis, so lambda_t <= cap (default 0.03)")
    p.add_argument("--noise", default="none",
                   help="the papers' unclipped upload noise: none | gaussian:STD | laplace:SCALE (no guarantee)")
    # clipped Gaussian DP with an accountant (fed/privacy.py, fed/accounting.py)
    p.add_argument("--dp", default=None,
                   help="differential privacy: local (each client noises) or central (DP-FedAvg)")
    p.add_argument("--clip", type=float, default=None, help="--dp: L2 bound S of a client's whole upload")
    p.add_argument("--noise-multiplier", type=float, default=None, help="--dp: z, noise std z * S")
    p.add_argument("--delta", type=float, default=None, help="--dp: delta of (epsilon, delta) (default 1e-5)")
    p.add_argument("--target-epsilon", type=float, default=None,
                   help="--dp: stop before a round would take epsilon past this")
    p.add_argument("--encoder", default=None, help="item encoder tag for multimodal methods")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--lr", type=float, default=None, help="override the backbone's tuned learning rate")
    p.add_argument("--item-lr", type=float, default=None,
                   help="override the backbone's tuned item-table step (of the order of the number of items)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--neg-ratio", type=int, default=None, help="negatives per positive (default 4)")
    p.add_argument("--chunk-size", type=int, default=None, help="clients trained at once (memory bound)")
    p.add_argument("--dim", type=int, default=None, help="latent size d (default 64)")
    p.add_argument("--protocol", default=None, choices=("full", "sampled"),
                   help="full: rank all items, select on valid HR@50 (default); sampled: also rank the "
                        "target among 99 sampled negatives and select on valid HR@10_sampled (the "
                        "PFedRec/FedRAP papers' protocol)")
    p.add_argument("--sampled-pool", default=None, choices=("prior", "official"),
                   help="where the sampled protocol's negatives come from: prior (default: items not "
                        "interacted with up to the held-out one) | official (the PFedRec/FedRAP codes': "
                        "validation and test items excluded too, a mild leak)")
    p.add_argument("--negatives", default=None, choices=("fresh", "official", "fixed"),
                   help="training negatives: fresh (default: outside the training set, redrawn every "
                        "round) | official (the PFedRec/FedRAP codes': held-out items never drawn, a "
                        "leak) | fixed (a published defect, for the book's demo)")
    p.add_argument("--ties", default=None, choices=("item", "file"),
                   help="leave-one-out ties at one timestamp: item (default: the larger item id is newer) "
                        "| file (the earlier row is newer: the PFedRec/FedRAP codes' split)")
    p.add_argument("--json", dest="json_path", default=None,
                   help="write the result object to this file (stdout then gets a one-line summary); - for stdout")

    p = sub.add_parser("bench", help="time the batched engine against the per-client loop")
    _add_data_option(p)
    p.add_argument("--backbone", default="pfedrec", choices=BACKBONES[:-1])
    p.add_argument("--method", default="id", choices=METHODS)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--local-epochs", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", dest="json_path", default=None)

    p = sub.add_parser("flower-sim", help="the same run as a Flower app in Flower's simulation engine "
                                          "(needs the flower extra)")
    _add_data_option(p)
    p.add_argument("--backbone", default="fedavg", choices=BACKBONES[:-1])
    p.add_argument("--method", default="id", choices=METHODS)
    p.add_argument("--rounds", type=int, default=None, help="communication rounds")
    p.add_argument("--clients", type=int, default=4, help="virtual SuperNodes; each hosts a block of the users")
    p.add_argument("--plan", default="server", choices=("server", "node"),
                   help="who draws negatives and shuffles: the server (equals the batched engine) or each node")
    p.add_argument("--local-epochs", type=int, default=None)
    p.add_argument("--sample-ratio", type=float, default=None, help="fraction of clients per round (beta)")
    p.add_argument("--noise", default="none", help="none | gaussian:STD | laplace:SCALE (drawn on each node)")
    p.add_argument("--encoder", default=None, help="item encoder tag for multimodal methods")
    p.add_argument("--device", default="cpu", help="cpu | cuda (every node's ClientApp)")
    p.add_argument("--json", dest="json_path", default=None, help="write the result object to this file")

    p = sub.add_parser("encode", help="encode item images and titles into the feature cache")
    _add_data_option(p)
    p.add_argument("--encoder", default=None, help="clip | clip-random | minilm | ... (default: best offline)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    return parser


def _handler(command: str):
    """The function that carries out ``command`` (commands.py; ``encode`` lives with the encoders)."""
    if command == "encode":
        from .encoders import cmd_encode
        return cmd_encode
    if command == "flower-sim":
        from .flower.simulation import cmd_flower_sim
        return cmd_flower_sim
    from . import commands
    return {"info": commands.cmd_info, "run": commands.cmd_run, "bench": commands.cmd_bench}[command]


@contextlib.contextmanager
def _ctrl_c_held():
    """Hold Ctrl-C (SIGINT) while torch loads, then let it through. Interrupting the native
    initialisation of torch's C++ modules does not always raise KeyboardInterrupt: measured, 5 of
    72 interrupts 0.3 to 0.7 s after start-up ended the process by SIGINT or by an abort
    ("terminate called after throwing ... KeyboardInterrupt") instead of one line and status 130.
    A Ctrl-C that arrives meanwhile is delivered as soon as the block ends, as a KeyboardInterrupt
    in Python code. Where signals cannot be masked (Windows) nothing is held."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _load(command: str):
    """``command``'s handler and the heavy libraries every command uses, loaded whole (main calls
    this while Ctrl-C is held)."""
    handler = _handler(command)
    import torch  # noqa: F401
    # torch.use_deterministic_algorithms (every round calls it) imports this lazily the first time,
    # and mpmath, loaded under it, ends a bare `except: pass` around an import: a Ctrl-C in that
    # second was swallowed and the run went on (about one interrupt in ten 1.8 to 2.7 s after
    # start-up on a busy machine; none of 56 from 0.3 to 3.1 s since). Loaded here, held.
    import torch._inductor.config  # noqa: F401
    return handler


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quick", False):
        os.environ["FEDMM_QUICK"] = "1"
    try:
        with _ctrl_c_held():
            handler = _load(args.command)
        # denormal floats flushed (fed/rounds.round_arithmetic) from before torch starts its worker
        # threads, which inherit it: set later, it reaches the calling thread only (2 threads, one
        # product of denormal gradients: 68 ms unflushed, 45 ms flushed on the calling thread,
        # 5.5 ms flushed before the threads started)
        with flush_denormals():
            return handler(args)
    except FedmmError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
