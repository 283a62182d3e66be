"""The end of a run: the trained model as a ``save_pretrained`` folder, and the summary (metrics.json).

``finish`` ends a completed run, ``interrupted`` one stopped by SIGINT/SIGTERM (checkpoint, summary,
the resume hint); both return the summary that ``train()`` returns.

    <train.out_dir>/<name>/final/              the model (Auto classes load it; a HAMT also carries its code,
                                               hamt.hub), the tokenizer as transformers saves it (AutoTokenizer,
                                               pipeline, lm-eval), the tokens' meta.json and tokenizer.json (so
                                               generate/compare need nothing else), hamt_params.yaml (the
                                               resolved parameters) and README.md, the model card
    <train.results_dir>/<name>/metrics.json    the summary below; also written on interruption/failure

The export is atomic (``hamt.io.atomic_dir``): a crash leaves the previous ``final/`` or a hidden
temp folder that ``hamt.checkpoint.remove_stale_temps`` deletes on the next start.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from hamt.io import atomic_dir, write_json_atomic, write_text_atomic
from hamt.metrics.systems import matmul_params, mfu
from hamt.train import state
from hamt.train.signals import RESUME_HINT

if TYPE_CHECKING:
    from hamt.train.loop import Trainer


def finish(t: Trainer, t_start: float) -> dict:
    """A completed run: export the model, write metrics.json, log the summary (rank 0); all ranks meet."""
    result = summary(t, t_start)
    if t.master:
        final = export_final(t.raw_model, t.ckpt_dir, t.tokens_dir, card=model_card(t, result),
                             params_yaml=_params_yaml(t.params))
        result["final_dir"] = str(final)
        write_metrics(t, result)
        t.logger.summary({k: v for k, v in result.items() if not isinstance(v, (dict, list))})
        t.event_log(f"done: step {t.step}, val_loss {result['val_loss']:.4f}, "
                    f"{result['tokens_per_s']:.0f} tok/s; model in {final}")
    if t.dist.ddp:
        dist.barrier()
    return result


def interrupted(t: Trainer, t_start: float) -> dict:
    """A run stopped by a signal: checkpoint this step (unless just saved), say how to resume, summary."""
    path = state.save(t) if t.last_saved_step != t.step else None
    sig = signal.Signals(t.signals.signum).name
    where = path or (t.ckpt_dir / f"step_{t.step:08d}.pt")
    t.event_log(f"interrupted by {sig} at step {t.step}/{t.tp.max_steps}; checkpoint {where}; "
                f"continue with `{RESUME_HINT}" + (f" --name {t.name}`" if t.name != "hamt" else "`"))
    result = {**summary(t, t_start, interrupted=True), "signal": int(t.signals.signum)}
    if t.master:
        write_metrics(t, result)
    return result


def export_final(model, ckpt_dir: Path, tokens_dir: Path, card: str | None = None,
                 params_yaml: str | None = None) -> Path:
    """``save_pretrained`` into ``<ckpt_dir>/final`` atomically, with the tokenizer, the tokens' meta, the
    resolved parameters and the model card."""
    final = ckpt_dir / "final"
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        if (tokens_dir / "tokenizer.json").is_file():
            from hamt.tokenize import load_hf_tokenizer

            tok = load_hf_tokenizer(tokens_dir)
            # batches (pipeline(batch_size>1), lm-eval generation) pad with end-of-text on the left: the model
            # honours attention_mask, and a causal LM continues from the right end of each row
            tok.pad_token, tok.padding_side = tok.eos_token, "left"
            tok.save_pretrained(tmp)  # tokenizer_config.json: eos/bos/pad for AutoTokenizer
        for fname in ("meta.json", "tokenizer.json"):  # the tokens' own files last: meta's sha256 names this one
            src = tokens_dir / fname
            if src.is_file():
                shutil.copy2(src, tmp / fname)
        if params_yaml is not None:
            write_text_atomic(tmp / PARAMS_FILE, params_yaml)
        if card is not None:
            write_text_atomic(tmp / "README.md", card)
    return final


# --------------------------------------------------------------------------------------------------
# The model card (README.md in the Hugging Face convention: YAML front matter, then markdown)
# --------------------------------------------------------------------------------------------------

PARAMS_FILE = "hamt_params.yaml"
_TOKENIZER_KINDS = {"bpe": "byte-level BPE trained on the train split", "gpt2": "GPT-2 BPE"}


def _params_yaml(params) -> str:
    import yaml

    return ("# The resolved parameters of this run: `hamt <stage> --params hamt_params.yaml` reruns it\n"
            + yaml.safe_dump(params.to_dict(), sort_keys=False))


def _model_key(t: Trainer) -> str | None:
    """The ``--model`` this run trained: its name if that model's config is this run's (the pipeline's
    runs are named after their model), else the model of the training plan whose config it is."""
    from hamt.checkpoint import model_identity
    from hamt.zoo import kind_of, model_config_for

    vocab = int(t.meta["vocab_size"])
    # compare.trained as written, not training_plan: a -seed<N> run's params carry train.seed = N, which
    # training_plan would refuse as "the model itself"
    for name in dict.fromkeys([t.name, *t.params.compare.trained]):
        try:
            kind_of(name)
        except Exception:
            continue
        if model_identity(model_config_for(t.params, name, vocab)) == t.identity:
            return name
    return None


def model_card(t: Trainer, result: dict) -> str:
    """The card of this run's ``final/``: architecture, size, data, this run's numbers, how to rerun and load it."""
    from hamt.data import corpus_description
    from hamt.metrics.lm import LN2

    cfg, meta = t.raw_model.config, t.meta
    kind = (meta.get("tokenizer") or {}).get("kind", "unknown")
    src = meta.get("raw_source") or {}
    is_hamt = getattr(cfg, "model_type", "") == "hamt"
    valid = (meta.get("splits") or {}).get("valid") or {}
    bpt = valid.get("bytes_per_token")
    val = result.get("val_loss")
    bpb = val / (LN2 * bpt) if val is not None and bpt else None
    datasets = "\n".join(["datasets:", f"- {src['repo']}"]) if src.get("kind") == "hub" and src.get("repo") else ""
    tags = ["hamt", "holographic-memory", "recurrent", "text-generation"] + (["custom_code"] if is_hamt else [])
    front = "\n".join(["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:",
                       *[f"- {x}" for x in tags], *([datasets] if datasets else []),
                       "metrics:", "- perplexity", "- bits_per_byte", "---"])
    shape = (f"hidden {cfg.hidden_dim}, memory {cfg.hcm_dim}, {cfg.num_layers} layers, {cfg.num_slots} slots, "
             f"{cfg.num_attention_heads} heads, conv {cfg.conv_kernel}, gating {cfg.use_gating}, "
             f"training context {cfg.max_position_embeddings}" if is_hamt else
             ", ".join(f"{k} {getattr(cfg, k)}" for k in ("n_embd", "n_layer", "n_head", "hidden_size",
                                                           "num_hidden_layers") if hasattr(cfg, k)))
    model = _model_key(t)
    cmd = (f"hamt download --params {PARAMS_FILE} && hamt tokenize --params {PARAMS_FILE} && "
           f"hamt train --params {PARAMS_FILE} --model {model or '<model>'}" + (f" --name {t.name}" if t.name != model else ""))
    trust = ", trust_remote_code=True" if is_hamt else ""

    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    lines = [
        front, "", f"# {t.name}: {type(t.raw_model).__name__}", "",
        "A model trained by the HAMT pipeline (Holographic Associative Memory Transformer: a language model whose "
        "token mixer is a constant-size holographic memory instead of attention)." if is_hamt else
        "A baseline trained by the HAMT pipeline (same tokens, same trainer, same budget as the HAMT it is compared with).",
        "", "## Architecture", "",
        f"- class: `{type(t.raw_model).__name__}` (model_type `{cfg.model_type}`), vocabulary {cfg.vocab_size}",
        f"- shape: {shape}",
        f"- parameters: {result['n_params']:,}",
        "", "## Training data", "",
        f"- corpus: {corpus_description(src)}",
        f"- tokenizer: {_TOKENIZER_KINDS.get(kind, kind)}, {meta.get('vocab_size')} ids "
        f"(`tokenizer.json`, sha256 {str(meta.get('tokenizer_sha256', ''))[:16]}...)",
        f"- train split: {((meta.get('splits') or {}).get('train') or {}).get('tokens', 'n/a'):,} tokens; "
        f"seen in training: {result['tokens']:,} tokens ({result['steps']} steps of {result['batch_size']} x "
        f"{result['seq_len']}), precision {result['precision']}, device {result['device']}",
        "", "## Evaluation (this run)", "",
        "| metric | value |", "|---|---|",
        f"| validation loss (nats/token) | {num(val, '.4f')} |",
        f"| validation perplexity | {num(result.get('val_perplexity'), '.2f')} |",
        f"| validation bits per byte (loss / (ln 2 x {num(bpt, '.3f')} bytes/token of the split)) | {num(bpb, '.4f')} |",
        f"| best validation loss | {num(result.get('best_val_loss'), '.4f')} |",
        f"| training throughput (tokens/s) | {num(result.get('tokens_per_s'), ',.0f')} |",
        "", f"Validation is on {t.tp.eval_batches} fixed batches of the valid split; the held-out test numbers "
        "of every model (same tokens, bpb, word perplexity) come from `hamt compare` (results/compare/).",
        "", "## Reproduce", "",
        f"From the HAMT repository, with this folder's `{PARAMS_FILE}` (the resolved parameters of this run; the "
        "data comes from its `data` section):", "", "```bash", cmd, "```", "",
        f"(In the pipeline: `dvc repro train@{model or t.name}`.) Weights sha256: `{result['weights_sha256']}`.",
        "", "## Load it", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        f"model = AutoModelForCausalLM.from_pretrained(PATH{trust})  # only torch + transformers needed"
        if is_hamt else "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tok = AutoTokenizer.from_pretrained(PATH)",
    ]
    if is_hamt:
        lines += [
            "# with hamt installed: `import hamt` registers the Auto classes, no trust_remote_code needed",
            "import hamt; model = AutoModelForCausalLM.from_pretrained(PATH)",
            "from hamt.model import HAMTForCausalLM; model = HAMTForCausalLM.from_pretrained(PATH)",
        ]
    lines += [
        f"gen = pipeline(\"text-generation\", model=PATH{trust})",
        "```", "",
        "Command line: `hamt generate --model-dir PATH --prompt \"...\"`; lm-evaluation-harness: "
        f"`lm_eval --model hf --model_args pretrained=PATH{',trust_remote_code=True' if is_hamt else ''} --tasks ...` "
        "(docs/LM_EVAL.md).",
    ]
    if is_hamt:
        lines += ["", "Without hamt installed, the code in this folder runs the memory in pure PyTorch on CPU (the fused C "
                  "kernel's source is hamt's, not in the folder) and with the Triton kernel on CUDA when Triton is "
                  "installed."]
    return "\n".join(lines) + "\n"


def write_metrics(t: Trainer, summary: dict) -> None:
    write_json_atomic(t.results_dir / "metrics.json", summary)


def summary(t: Trainer, t_start: float, interrupted: bool = False) -> dict:
    """The run's summary: losses, throughput over timed steps only, MFU, memory, fallbacks, identity."""
    rows = t.csv.rows() if t.csv is not None else []
    last_train = next((float(r["train_loss"]) for r in reversed(rows) if r.get("train_loss")), None)
    tps = t.timed_tokens / t.train_time if t.train_time else None
    return {
        "name": t.name,
        "model_class": type(t.raw_model).__name__,
        "n_params": t.n_params,
        "n_matmul_params": matmul_params(t.raw_model),
        "steps": t.step,
        "max_steps": t.tp.max_steps,
        "tokens": t.tokens_seen,
        "train_loss": last_train,
        "val_loss": t.last_val,
        "best_val_loss": t.best_val,
        "val_perplexity": math.exp(t.last_val) if t.last_val is not None and t.last_val < 50 else None,
        "tokens_per_s": tps,
        "flops_per_token": t.flops_tok,
        "peak_flops": t.peak,
        "peak_flops_source": t.peak_source,
        "mfu": mfu(tps, t.flops_tok, t.peak),
        "peak_mem_mb": t.memory.read() / 2**20,
        "train_time_s": t.train_time,
        "wall_time_s": time.time() - t_start,
        "device": str(t.device),
        "precision": t.tp.precision,
        "world_size": t.dist.world_size,
        "batch_size": t.tp.batch_size,
        "micro_batch_size": t.ladder.micro_batch_size,
        "seq_len": t.ladder.seq_len,
        "gradient_checkpointing": t.ladder.gradient_checkpointing,
        "lr_scale": t.sched.scale,
        "fallbacks": list(t.ladder.events),
        "resumed_from": t.resumed_from,
        "weights_sha256": weights_sha256(t.raw_model),
        "interrupted": interrupted,
        "failed": None,
        "wandb_run_dir": getattr(t.logger, "run_dir", None),
        "model_config": t.identity,
        "run_id": t.run_info["run_id"],
        "config_hash": t.run_info["config_hash"],
    }


def weights_sha256(model) -> str:
    """A fingerprint of the weights (name, dtype, shape and bytes of every tensor in the state dict)."""
    h = hashlib.sha256()
    for k, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{k}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
