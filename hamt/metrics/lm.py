"""Language-model quality from one total negative log-likelihood (NLL, nats) over the scored tokens.

- token perplexity  ``exp(NLL / tokens)``       depends on the tokenizer;
- bits per byte     ``NLL / (ln 2 * bytes)``    bytes = UTF-8 bytes of the evaluated text: tokenizer-independent;
- word perplexity   ``exp(NLL / words)``        words = whitespace-separated words (the WikiText convention).

The bytes and words are those of the text actually scored (``scored_counts``: the scored ids decoded),
never a split's counts scaled by a token fraction; document separators are scored with 0 bytes and 0
words (``scored_text``).

``sliding_window_nll`` scores every target token of a stream exactly once, in fixed windows of
``context`` tokens moved by ``stride``: each window scores only the targets not scored before, so a
scored token sees at least ``context - stride`` tokens of left context (all of them near the start).
The last window is aligned to the end of the stream so it too has a full context. Every model (HAMT,
GPT-2, Pythia) is evaluated through this same function, with logits computed by the model and the
loss computed here (HAMT's ``out.loss`` may include the auxiliary loss; it is never used here).
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def lm_metrics(nll_sum: float, n_tokens: int, n_bytes: float | None = None, n_words: float | None = None) -> dict:
    """Loss, token perplexity, bits per byte and word perplexity from a total NLL (nats)."""
    if n_tokens <= 0:
        raise ValueError("lm_metrics: n_tokens must be > 0")
    loss = nll_sum / n_tokens
    out = {"loss": loss, "ppl": _safe_exp(loss), "nll_sum": nll_sum, "tokens": int(n_tokens)}
    out["bpb"] = nll_sum / (LN2 * n_bytes) if n_bytes else None
    out["word_ppl"] = _safe_exp(nll_sum / n_words) if n_words else None
    out["bytes"] = n_bytes
    out["words"] = n_words
    return out


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def text_counts(text: str) -> dict:
    """UTF-8 bytes and whitespace-separated words of a text (the denominators of bpb and word ppl)."""
    return {"bytes": len(text.encode("utf-8")), "words": len(text.split())}


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes: the printable stand-in character of each of the 256 bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def token_bytes(tokenizer) -> list[bytes] | None:
    """The UTF-8 bytes each id of a byte-level BPE (``tokenizers.Tokenizer``) stands for; special tokens: b"".

    None when the tokenizer is not byte-level (then the text must be decoded as a whole).
    """
    import json

    if (json.loads(tokenizer.to_str()).get("decoder") or {}).get("type") != "ByteLevel":
        return None
    dec = _byte_decoder()
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    table = []
    for i in range(tokenizer.get_vocab_size(with_added_tokens=True)):
        tok = tokenizer.id_to_token(i)
        table.append(b"" if tok is None or i in special else bytes(dec[c] for c in tok))
    return table


def scored_text(tokenizer, ids: Sequence[int]) -> bytes:
    """The UTF-8 bytes of the text a sliding-window evaluation of ``ids`` scores: ``ids[1:]`` decoded.

    Every token but the first is a target (``windows``); the first is context only. Document
    separators (the end-of-text id before each document, ``hamt.tokenize``) are targets too — their
    NLL counts, the model is charged for predicting where a document starts — but they stand for no
    text, so they add no bytes and no words (as in the raw file, which holds no separators: over a
    whole split these bytes are exactly the file's). A slice may start or end inside a multi-byte
    character; its bytes are counted exactly from the byte-level tokens all the same.
    """
    targets = [int(i) for i in ids[1:]]
    table = token_bytes(tokenizer)
    if table is not None:
        return b"".join(table[i] for i in targets)
    return tokenizer.decode(targets, skip_special_tokens=True).encode("utf-8")


def scored_counts(tokenizer, ids: Sequence[int]) -> dict:
    """Bytes and words of the text scored on ``ids`` (``scored_text``): the denominators of bpb and word ppl."""
    raw = scored_text(tokenizer, ids)
    words = len(raw.decode("utf-8", errors="replace").split())
    return {"bytes": len(raw), "words": words,
            "counts_note": f"exact: bytes and words of the {max(len(ids) - 1, 0):,} scored tokens decoded "
                           f"(document separators scored, 0 bytes)"}


# --------------------------------------------------------------------------------------------------
# Sliding-window evaluation
# --------------------------------------------------------------------------------------------------


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) of each window over a stream of ``n`` tokens.

    Targets are token indices 1..n-1 (token 0 has no left context). A window feeds tokens
    [begin, end) and scores the targets [first_target, end), none of them scored before. The first
    window is [0, context); each next one ends ``stride`` tokens later (the last one exactly at ``n``)
    and starts ``context`` tokens before its end, so every window but a short stream's has length
    ``context`` and every scored target sees at least ``context - stride`` tokens of left context.
    A stride equal to the context is used as ``context - 1``: otherwise the first target of each
    window would have no left context inside it and would go unscored.
    """
    if context < 2 or not 1 <= stride <= context:
        raise ValueError(f"need context >= 2 and 1 <= stride <= context, got context={context} stride={stride}")
    if n < 2:
        return []
    if n <= context:
        return [(0, n, 1)]
    stride = min(stride, context - 1)
    spans, end = [(0, context, 1)], context
    while end < n:
        new_end = min(end + stride, n)
        spans.append((new_end - context, new_end, end))
        end = new_end
    return spans


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=x, use_cache=False)
    return out.logits  # (B, T, V)


@torch.no_grad()
def sliding_window_nll(
    model,
    ids: Sequence[int] | torch.Tensor,
    context: int,
    stride: int,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Total NLL (nats) of ``ids`` under ``model``, every target scored once (see ``windows``).

    Returns ``{"nll_sum", "tokens" (targets scored), "windows", "context", "stride"}``.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    spans = windows(len(ids), context, stride)
    was_training = model.training
    model.eval()
    nll_sum, scored = 0.0, 0
    # Group windows of equal length so they run as one batch (all but a short stream have length context).
    batches: list[list[tuple[int, int, int]]] = []
    for span in spans:
        if batches and len(batches[-1]) < batch_size and _len(batches[-1][0]) == _len(span):
            batches[-1].append(span)
        else:
            batches.append([span])
    bar = _progress(len(spans), desc) if progress else None
    for group in batches:
        x = torch.stack([ids[b:e] for b, e, _ in group]).to(device)  # (B, T)
        logp = F.log_softmax(_logits(model, x)[:, :-1].float(), dim=-1)  # (B, T-1, V)
        nll = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)  # (B, T-1): nll[i, j] is target begin+j+1
        for row, (b, _e, first) in enumerate(group):
            part = nll[row, first - b - 1:]
            nll_sum += part.double().sum().item()
            scored += part.numel()
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    model.train(was_training)
    return {"nll_sum": nll_sum, "tokens": scored, "windows": len(spans), "context": context, "stride": stride}


def _len(span: tuple[int, int, int]) -> int:
    return span[1] - span[0]


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="win", file=sys.stderr, leave=False, dynamic_ncols=True)


def evaluate_lm(
    model,
    ids,
    *,
    context: int,
    stride: int,
    n_bytes: float | None = None,
    n_words: float | None = None,
    batch_size: int = 8,
    device="cpu",
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Sliding-window NLL of ``ids`` turned into loss, ppl, bpb and word ppl (``lm_metrics``)."""
    r = sliding_window_nll(model, ids, context, stride, batch_size=batch_size, device=device, progress=progress,
                           desc=desc)
    if r["tokens"] == 0:
        raise ValueError("evaluate_lm: need at least two tokens")
    out = lm_metrics(r["nll_sum"], r["tokens"], n_bytes, n_words)
    out.update(windows=r["windows"], context=context, stride=stride)
    return out
