"""``hamt bench model|memory|decode|tokenize|all``: the benchmarks behind BENCHMARKS.md.

Each prints a markdown table headed by the device, date, git commit and the resolved command, and
writes ``<report.bench_dir>/<name>.json`` (a list of rows, each carrying the same metadata) and
``<name>.md``; ``--out FILE`` also writes all tables to FILE.

* ``model`` (``hamt.bench.model``): training tokens/s, memory and MFU of HAMT vs a GPT-2 of matched
  size, at several sequence lengths; ``--optimizer`` adds the AdamW step (the trainer's step).
* ``memory`` (``hamt.bench.memory``): the memory scan alone, each mode against its bandwidth floor.
* ``decode`` (``hamt.bench.decode``): per-token latency and state bytes against the context.
* ``tokenize`` (``hamt.bench.tokenize``): tokenizer training and encoding speed.
* ``recall`` (``hamt.bench.recall``): MQAR on the Zoology grid, HAMT vs Llama vs Mamba2 at the same
  width, trained from scratch (settings ``bench.recall``). Not part of ``all``: it trains many models.

Every setting comes from the ``bench`` section of params.yaml (device-specific lengths under
``bench.cpu`` / ``bench.cuda``); the flags below override it, as does ``--set bench.KEY=VALUE``. This
module imports no torch at the top: the CLI imports it to add the flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hamt.errors import ConfigError

BENCHES = ("model", "memory", "decode", "tokenize")  # what ``all`` runs
TRAINED = ("recall",)  # benchmarks that train models: run by name only


def add_arguments_bench(parser: argparse.ArgumentParser) -> None:
    """The flags of ``hamt bench``; each one left out keeps the ``bench`` section's value."""
    add = parser.add_argument
    add("what", choices=[*BENCHES, *TRAINED, "all"], help="which benchmark to run")
    add("--preset", default=None, help="model preset (bench.preset; default: the profile's model section)")
    add("--vocab-size", type=int, default=None, help="override the model's vocabulary size (bench.vocab_size)")
    add("--seq-lens", type=int, nargs="+", default=None, help="model bench sequence lengths (bench.<device>.seq_lens)")
    add("--tokens-per-step", type=int, default=None,
        help="tokens per training step; batch = max(1, tokens // T) (bench.<device>.tokens_per_step)")
    add("--contexts", type=int, nargs="+", default=None, help="decode bench context lengths (bench.<device>.contexts)")
    add("--memory-seq-len", type=int, default=None, help="memory bench sequence length (bench.memory_seq_len)")
    add("--memory-batch", type=int, default=None, help="memory bench batch (bench.<device>.memory_batch)")
    add("--repeats", type=int, default=None, help="timed repeats per measurement, median reported (bench.repeats)")
    add("--decode-steps", type=int, default=None, help="timed single-token steps per context (bench.decode_steps)")
    add("--device", default=None, help="cpu | cuda | auto (bench.device, else train.device)")
    add("--precision", choices=["fp32", "bf16"], default=None,
        help="model bench precision (bench.precision, else train.precision; fp16 is benchmarked as bf16)")
    add("--threads", type=int, default=None, help="CPU threads for torch (bench.threads; 0 = torch's choice)")
    add("--results-dir", default=None, help="where <name>.json/.md go (report.bench_dir, where the report reads them)")
    add("--out", default=None, help="also write all tables to this markdown file")
    add("--compile", action="store_true", default=None, help="model bench: torch.compile both models (bench.compile)")
    add("--optimizer", action="store_true", default=None,
        help="model bench: time the trainer's step, with gradient clipping and AdamW (bench.optimizer)")
    add("--memory-mode", default=None, choices=["auto", "cpu", "chunk", "reference", "triton"],
        help="HAMT's memory implementation in the model and decode benches (bench.memory_mode)")


def options(params, args, device) -> dict:
    """The resolved settings: a flag when given, else params.yaml's ``bench`` section (lengths per device)."""
    b = params.bench
    lengths = b.cuda if device.type == "cuda" else b.cpu

    def pick(flag, setting):
        value = getattr(args, flag, None)
        return setting if value is None else value

    train_precision = "bf16" if params.train.precision in ("bf16", "fp16") else "fp32"
    opts = dict(
        seq_lens=pick("seq_lens", lengths.seq_lens), contexts=pick("contexts", lengths.contexts),
        tokens_per_step=pick("tokens_per_step", lengths.tokens_per_step),
        memory_seq_len=pick("memory_seq_len", b.memory_seq_len), memory_batch=pick("memory_batch", lengths.memory_batch),
        repeats=pick("repeats", b.repeats), decode_steps=pick("decode_steps", b.decode_steps),
        prefill_chunk=b.prefill_chunk, precision=pick("precision", b.precision or train_precision),
        preset=pick("preset", b.preset), vocab_size=pick("vocab_size", b.vocab_size),
        compile=pick("compile", b.compile), optimizer=pick("optimizer", b.optimizer),
        memory_mode=pick("memory_mode", b.memory_mode), threads=pick("threads", b.threads),
        results_dir=pick("results_dir", params.report.bench_dir),
        # the trainer's settings where the trainer's step is measured, and its MFU denominator
        lr=params.train.lr, grad_clip=params.train.grad_clip, peak_flops=params.train.peak_flops,
        tokenize=b.tokenize, recall=b.recall,
    )
    for key in ("seq_lens", "contexts"):
        if any(n < 2 for n in opts[key]):
            raise ConfigError(f"--{key.replace('_', '-')}: every length must be >= 2, got {opts[key]}")
    for key in ("tokens_per_step", "memory_seq_len", "memory_batch", "repeats", "decode_steps"):
        if opts[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')}: must be >= 1, got {opts[key]}")
    if opts["threads"] < 0:
        raise ConfigError(f"--threads: must be >= 0 (0 = torch's choice), got {opts['threads']}")
    return opts


def model_config(params, opts: dict):
    """The HAMT config benchmarked: the preset or the profile's model, with the vocabulary/memory overrides."""
    from hamt.config import HAMTConfig

    overrides = {"vocab_size": opts["vocab_size"]} if opts["vocab_size"] else {}
    if opts["memory_mode"]:
        overrides["memory_mode"] = opts["memory_mode"]
    if opts["preset"]:
        return HAMTConfig.from_preset(opts["preset"], **overrides)
    return params.model_config(**overrides)


def run(what: str, params, opts: dict, device, command: str) -> tuple[list[dict], str]:
    """One benchmark: (rows with the metadata, markdown table)."""
    from hamt.bench import decode, memory, meta, model, recall, tokenize

    info = meta.metadata(device, command, opts)
    if what == "tokenize":
        rows = [{**info, **r} for r in tokenize.bench_tokenize(opts["tokenize"])]
        return rows, tokenize.render(rows, info)
    if what == "recall":
        rows = [{**info, **r} for r in recall.bench_recall(opts["recall"], device)]
        return rows, recall.render(rows, info)
    module = {"model": model, "memory": memory, "decode": decode}[what]
    rows = getattr(module, f"bench_{what}")(model_config(params, opts), opts, device)
    rows = [{**info, **r} for r in rows]
    return rows, module.render(rows, info)


def cli_bench(params, args) -> int:
    import torch

    from hamt.bench import meta
    from hamt.io import write_text_atomic
    from hamt.runtime import resolve_device

    device = resolve_device(args.device or params.bench.device or params.train.device, setting="--device")
    opts = options(params, args, device)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    torch.manual_seed(0)
    what = list(BENCHES) if args.what == "all" else [args.what]
    command = meta.command(args, opts)
    tables = []
    for name in what:
        rows, table = run(name, params, opts, device, command)
        print(table, flush=True)
        meta.write_results(Path(opts["results_dir"]), name, rows, table)
        tables.append(table)
    if args.out:
        write_text_atomic(Path(args.out), "\n".join(tables) + "\n")
    return 0
