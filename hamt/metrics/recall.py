"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology").

A sequence binds keys to values, then asks for some of them again:

    k1 v1 k2 v2 ... kn vn  _ _ _ ... _  q1 a1 q2 a2 ... qm am
    |---- n key-value pairs ----|  filler  |------ m queries ------|

Keys within a sequence are distinct, drawn from the key part of the vocabulary; values are drawn
from the value part; each query q is one of the sequence's keys and the target after it is the value
bound to that key (the answer is then fed as the next input, teacher forcing). Accuracy is counted
only at query positions, with an argmax over the whole vocabulary. Guessing a value token at random
gives ``1 / n_values`` (``chance``); the filler stretches the distance between binding and query so
accuracy can be measured against sequence length as well as against the number of pairs.

Token layout of a vocabulary of size V: 0 is the filler, keys are 1..V/2, values the rest.

``recall_accuracy`` measures a model (trained on MQAR or zero-shot, for a language model in its own
vocabulary); ``train_recall`` trains a small model on MQAR for a few steps on CPU — the
architecture-level probe used by ``hamt validate`` and ``hamt compare``.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from hamt.errors import ConfigError

IGNORE = -100


def vocab_split(vocab_size: int) -> tuple[int, range, range]:
    """(filler token, key tokens, value tokens) of a vocabulary of ``vocab_size`` tokens."""
    if vocab_size < 5:
        raise ConfigError(f"recall: vocab_size must be >= 5 (filler + 2 keys + 2 values), got {vocab_size}")
    half = 1 + (vocab_size - 1) // 2
    return 0, range(1, half), range(half, vocab_size)


def min_seq_len(n_pairs: int, n_queries: int | None = None) -> int:
    return 2 * n_pairs + 2 * (n_pairs if n_queries is None else n_queries)


def chance(vocab_size: int) -> float:
    """Accuracy of a random guess among the value tokens."""
    return 1.0 / len(vocab_split(vocab_size)[2])


def make_mqar(
    n_samples: int,
    n_pairs: int,
    vocab_size: int,
    *,
    seq_len: int | None = None,
    n_queries: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR inputs and targets, both (n_samples, seq_len) int64.

    ``targets[i, t]`` is what the model should predict after reading ``inputs[i, :t+1]``: the value
    bound to the key at a query position, ``-100`` everywhere else. ``n_queries`` defaults to
    ``n_pairs`` (every key asked once, in random order); more queries than pairs repeat keys.
    """
    filler, keys, values = vocab_split(vocab_size)
    n_queries = n_pairs if n_queries is None else n_queries
    need = min_seq_len(n_pairs, n_queries)
    seq_len = need if seq_len is None else seq_len
    if n_pairs < 1 or n_queries < 1:
        raise ConfigError(f"recall: need n_pairs >= 1 and n_queries >= 1, got {n_pairs} and {n_queries}")
    if n_pairs > len(keys):
        raise ConfigError(f"recall: {n_pairs} pairs need {n_pairs} distinct keys; vocab_size {vocab_size} has {len(keys)}")
    if seq_len < need:
        raise ConfigError(f"recall: seq_len {seq_len} is too short for {n_pairs} pairs and {n_queries} queries ({need})")
    g = torch.Generator().manual_seed(seed)
    B = n_samples
    k = keys.start + torch.argsort(torch.rand(B, len(keys), generator=g), dim=1)[:, :n_pairs]  # (B, n) distinct
    v = torch.randint(values.start, values.stop, (B, n_pairs), generator=g)  # (B, n)
    if n_queries <= n_pairs:
        pick = torch.argsort(torch.rand(B, n_pairs, generator=g), dim=1)[:, :n_queries]  # (B, m) no repeats
    else:
        pick = torch.randint(0, n_pairs, (B, n_queries), generator=g)  # (B, m)
    qk, qv = k.gather(1, pick), v.gather(1, pick)  # (B, m)

    inputs = torch.full((B, seq_len), filler, dtype=torch.long)
    targets = torch.full((B, seq_len), IGNORE, dtype=torch.long)
    inputs[:, 0:2 * n_pairs:2], inputs[:, 1:2 * n_pairs:2] = k, v
    q0 = seq_len - 2 * n_queries  # queries sit at the end; the filler fills the gap
    inputs[:, q0::2], inputs[:, q0 + 1::2] = qk, qv
    targets[:, q0::2] = qv
    return inputs, targets


def query_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(correct, total) of argmax predictions at the positions where ``targets != -100``."""
    mask = targets != IGNORE  # (B, T)
    pred = logits.argmax(-1)  # (B, T)
    return int((pred[mask] == targets[mask]).sum().item()), int(mask.sum().item())


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, use_cache=False).logits  # (B, T, V)


@torch.no_grad()
def accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int = 64, device="cpu") -> float:
    """Query-position accuracy of ``model`` on an MQAR set."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    correct = total = 0
    for i in range(0, len(inputs), batch_size):
        x = inputs[i:i + batch_size].to(device)
        c, t = query_accuracy(_logits(model, x).cpu(), targets[i:i + batch_size])
        correct, total = correct + c, total + t
    if hasattr(model, "train"):
        model.train(was_training)
    return correct / max(total, 1)


def recall_accuracy(
    model,
    vocab_size: int,
    *,
    pairs: Iterable[int] = (1, 2, 4, 8),
    seq_lens: Iterable[int | None] = (None,),
    n_samples: int = 64,
    seed: int = 12345,
    batch_size: int = 64,
    device="cpu",
) -> list[dict]:
    """Accuracy against the number of pairs and sequence length (``None`` = the shortest that fits).

    Combinations where the sequence is too short for the pairs are left out.
    """
    rows = []
    for n in pairs:
        for T in seq_lens:
            if T is not None and T < min_seq_len(n):
                continue
            inputs, targets = make_mqar(n_samples, n, vocab_size, seq_len=T, seed=seed + 1000 * n + (T or 0))
            acc = accuracy(model, inputs, targets, batch_size=batch_size, device=device)
            rows.append({"n_pairs": n, "seq_len": inputs.shape[1], "accuracy": acc, "chance": chance(vocab_size),
                         "queries": int((targets != IGNORE).sum())})
    return rows


def train_recall(
    model_factory: Callable[[], torch.nn.Module],
    *,
    vocab_size: int = 32,
    n_pairs: int | Sequence[int] = 4,
    seq_len: int | None = None,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    eval_pairs: Sequence[int] | None = None,
    eval_samples: int = 128,
    device="cpu",
) -> dict:
    """Train ``model_factory()`` on MQAR for ``steps`` AdamW steps and measure its recall.

    ``n_pairs`` may be a list: training steps cycle through it (one padded length for all, so the
    model cannot read the number of pairs off the length). Batches are fresh every step (seeded);
    evaluation uses other seeds. The loss is the cross-entropy at query positions only. Returns the
    trained ``model``, ``accuracy`` (mean over the training pair counts), ``chance``, the loss
    history and ``rows``: accuracy against the number of pairs (``eval_pairs``, default the training ones).
    """
    pairs = [n_pairs] if isinstance(n_pairs, int) else list(n_pairs)
    eval_pairs = list(eval_pairs or pairs)
    T = seq_len or min_seq_len(max(pairs + eval_pairs))
    torch.manual_seed(seed)
    model = model_factory().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        n = pairs[step % len(pairs)]
        x, y = make_mqar(batch_size, n, vocab_size, seq_len=T, seed=seed * 1_000_003 + step)
        x, y = x.to(device), y.to(device)
        logits = _logits(model, x)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    rows = recall_accuracy(model, vocab_size, pairs=eval_pairs, seq_lens=[T], n_samples=eval_samples,
                           seed=10_000_019 + seed, device=device)
    trained = [r["accuracy"] for r in rows if r["n_pairs"] in pairs]
    return {"model": model, "accuracy": sum(trained) / len(trained), "chance": chance(vocab_size),
            "n_pairs": pairs, "seq_len": T, "vocab_size": vocab_size, "steps": steps,
            "queries": sum(r["queries"] for r in rows if r["n_pairs"] in pairs),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "losses": losses, "seconds": seconds, "rows": rows}


def above_chance(accuracy_: float, chance_: float, n_queries: int, sigmas: float = 3.0) -> bool:
    """True when ``accuracy_`` beats ``chance_`` by more than ``sigmas`` binomial standard errors."""
    se = (chance_ * (1 - chance_) / max(n_queries, 1)) ** 0.5
    return accuracy_ > chance_ + sigmas * se
