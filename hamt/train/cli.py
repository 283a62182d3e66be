"""``hamt train``: the trainer's command-line flags and entry point (``hamt.cli`` maps the subcommand here)."""

from __future__ import annotations

import signal

from hamt.train.loop import train


def add_arguments_train(parser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in <train.out_dir>/<model> (fresh start if none)")
    parser.add_argument("--model", default="hamt", metavar="NAME",
                        help="which model of the comparison to train (hamt.zoo: hamt, gpt2-scratch, gpt2-scratch-2x, "
                             "llama-scratch, mamba-scratch, ablation-<switch>; any of them + -seed<N> trains it with "
                             "train.seed=N); checkpoints in <train.out_dir>/<name>, results in <train.results_dir>/<name>")
    parser.add_argument("--name", default=None,
                        help="run name: the folders' name, one plain name (default: the model's name)")
    parser.add_argument("--force-new", action="store_true",
                        help="start a new run even though the folder holds another run's checkpoints (they are "
                             "deleted once the new run has written its first)")


def cli_train(params, args) -> int:
    """Exit status: 0, or 128 + the signal number when SIGINT/SIGTERM stopped the run (the shell's convention)."""
    summary = train(params, resume=args.resume, model=args.model, name=args.name, force_new=args.force_new)
    if summary.get("interrupted"):
        return 128 + int(summary.get("signal", signal.SIGINT))
    return 0
