"""Text generation from a trained model folder (``hamt generate``).

``generate_text(model_dir, tokens_dir, prompt, ...)`` loads the model saved by ``hamt train``
(``<train.out_dir>/<name>/final``, a Hugging Face folder) and the tokenizer the ids were made with,
and continues the prompt with ``model.generate`` (HAMT carries its recurrent state; GPT-2 its KV
cache). ``temperature=0`` is greedy decoding; otherwise sampling with ``temperature`` and ``top_k``,
seeded for reproducibility.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hamt.errors import CheckpointError, ConfigError, DataError
from hamt.io import file_sha256
from hamt.tokens import TOKENIZER_FILE, check_same_tokenizer, folder_tokenizer_sha


def add_arguments_generate(parser) -> None:
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--model-dir", default=None,
                        help="a saved model folder (default: <train.out_dir>/<--name>/final)")
    parser.add_argument("--name", default="hamt", help="run name whose final model to load (default: hamt)")
    parser.add_argument("--tokens-dir", default=None,
                        help="folder with tokenizer.json (default: the model folder's copy, else tokenizer.tokens_dir)")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default: 50)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens; 0 = all (default: 50)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: train.seed)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu)")


def cli_generate(params, args) -> int:
    model_dir = args.model_dir or str(Path(params.train.out_dir) / args.name / "final")
    tokens_dir = args.tokens_dir
    if tokens_dir is None and not (Path(model_dir) / "tokenizer.json").is_file():
        tokens_dir = params.tokenizer.tokens_dir
    seed = params.train.seed if args.seed is None else args.seed
    text = generate_text(model_dir, tokens_dir, args.prompt, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, seed=seed, device=args.device)
    sys.stdout.write(text + "\n")
    return 0


def load_model(model_dir: str | Path, device: str = "cpu"):
    """A saved HAMT or GPT-2 folder -> model in eval mode on ``device``."""
    import hamt.model  # noqa: F401  registers model_type "hamt"
    from transformers import AutoModelForCausalLM

    from hamt.runtime import resolve_device

    from safetensors import SafetensorError

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"no saved model in {model_dir} (config.json missing); run `hamt train` first or pass --model-dir")
    if not list(model_dir.glob("model*.safetensors")):
        pickles = sorted(p.name for p in model_dir.glob("*.bin"))
        found = f"found only {', '.join(pickles)} (pickles are never loaded)" if pickles else "no model.safetensors"
        raise CheckpointError(f"cannot load the model in {model_dir}: {found}; save it with save_pretrained (safetensors)")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load the model in {model_dir} ({first})") from e
    return model.to(resolve_device(device)).eval()


def generate_text(
    model_dir: str | Path,
    tokens_dir: str | Path | None = None,
    prompt: str = "",
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 1337,
    device: str = "cpu",
) -> str:
    """The prompt followed by ``max_new_tokens`` generated tokens, decoded to text.

    ``tokens_dir`` holds ``tokenizer.json`` (and ``meta.json``); None uses the copy that ``hamt train``
    puts in the model folder.
    """
    import torch
    from transformers import GenerationConfig

    from hamt.tokenize import load_tokenizer

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0 or top_k < 0:
        raise ConfigError(f"--temperature and --top-k must be finite and >= 0 (0 = greedy / no top-k cut), "
                          f"got {temperature} and {top_k}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise DataError(f"--prompt is not valid UTF-8 text (byte {e.start}); pass it in UTF-8") from e
    tokens_dir = Path(tokens_dir) if tokens_dir is not None else Path(model_dir)
    tok = load_tokenizer(tokens_dir)
    if tokens_dir != Path(model_dir) and (tokens_dir / TOKENIZER_FILE).is_file():
        check_same_tokenizer(folder_tokenizer_sha(model_dir), file_sha256(tokens_dir / TOKENIZER_FILE),
                             f"the tokenizer in {tokens_dir} is not the one the model in {model_dir} was trained with",
                             "drop --tokens-dir (the model folder has its own copy) or point it at the model's tokens")
    model = load_model(model_dir, device)
    ids = tok.encode(prompt, add_special_tokens=False).ids if prompt else []
    eot = _eot_id(tok, tokens_dir)
    if not ids:
        if eot is None:
            raise DataError("empty prompt and the tokenizer has no end-of-text token to start from; pass --prompt")
        ids = [eot]  # an empty prompt starts a new document
    if max(ids) >= model.config.vocab_size:
        raise DataError(f"the tokenizer in {tokens_dir} does not match the model (id {max(ids)} >= vocab {model.config.vocab_size})")
    input_ids = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)  # (1, T)
    sample = temperature > 0
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
        top_k=(top_k or None) if sample else None, top_p=None, pad_token_id=eot if eot is not None else 0,
        eos_token_id=None,  # the end-of-text token separates documents here; keep generating past it
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids, generation_config=cfg)  # (1, T + new)
    return tok.decode(out[0].tolist(), skip_special_tokens=False)


def _eot_id(tok, tokens_dir: Path) -> int | None:
    import json

    meta_path = tokens_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("eot_id") is not None:
            return int(meta["eot_id"])
    return tok.token_to_id("<|endoftext|>")
