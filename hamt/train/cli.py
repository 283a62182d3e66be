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
    parser.add_argument("--skip-unplanned", action="store_true",
                        help="when the profile's compare.plan leaves --model out, write its 'not trained' record "
                             "instead of training (dvc.yaml's train stage: DVC runs every name of compare.trained)")


def cli_train(params, args) -> int:
    """Exit status: 0, or 128 + the signal number when SIGINT/SIGTERM stopped the run (the shell's convention)."""
    if args.skip_unplanned:
        from hamt.zoo import not_planned_reason

        reason = not_planned_reason(params, args.model)
        if reason is not None:
            from hamt.train.unplanned import write_not_trained

            rec = write_not_trained(params, args.name or args.model, reason)
            print(f"hamt train: {args.model} {rec['status']}: {reason}"
                  + ("" if rec["written"] else " (its folders hold a run: left as they are)"))
            return 0
    summary = train(params, resume=args.resume, model=args.model, name=args.name, force_new=args.force_new)
    if summary.get("interrupted"):
        return 128 + int(summary.get("signal", signal.SIGINT))
    return 0
