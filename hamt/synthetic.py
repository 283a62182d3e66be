"""The project's own corpus: a seeded synthetic language whose entropy rate is known exactly.

Nothing here is third-party text: the words are pronounceable strings the generator makes from
letters. The text is a sequence of lines, each of one of three kinds, chosen at every line start:

- a **sentence** (probability ``1 - bind_prob - query_prob``): ``w1 w2 ... wn .`` drawn from a sparse
  variable-order Markov chain over ``vocab_words`` words. Every context has ``successors`` possible
  next words with Zipfian weights (rank^-zipf), picked from a Zipfian unigram so frequent words are
  frequent successors; a word of the ``order2_fraction`` "order-2" words orders its successors'
  weights by the word before it (a cyclic shift keyed by that word), so two words of context matter.
  After every word the sentence ends (``.``) with probability ``1 / sentence_words``;
- a **binding** (``bind_prob``): ``key = value ;`` with key and value uniform over ``keys`` / ``values``;
- a **query** (``query_prob``, once a binding exists): ``key -> value ;`` with the key uniform over
  the ``recall_slots`` most recently bound distinct keys and the value the one bound last to it:
  zero entropy given the context, everything for a model that remembers, ``ln values`` for one that
  does not.

The text is a function of the symbol sequence and back (words are letters only, separated by single
spaces, lines end in ``" .\\n"`` or ``" ;\\n"``), so -log p of the text under the source is the sum of
the symbols' -log p, and no model can beat it in expectation. Two floors come out:

- the **entropy rate** (``Source.entropy_rate``): sentences are i.i.d. (each starts afresh), so a
  sentence's entropy is the expected number of visits to each chain state times that state's
  conditional entropy (visits from a fixed-point iteration run to machine precision), and by the
  renewal-reward theorem the rate per byte is E[nats per line] / E[bytes per line], the line kinds
  mixed by their probabilities and every recall slot filled (the stationary regime);
- the **realised floor** of a generated split: the exact -log p of that very text under the source
  (``nll_nats``, accumulated while generating and recomputable by ``Source.score``) over its bytes,
  warm-up of the recall slots included (only the choice to stop after the last line is left out).
  That is the number a model's bits per byte on that split is compared with.

The knobs are ``hamt.params.SyntheticParams`` (``data.synthetic`` in params.yaml). ``generate_corpus``
returns the three splits' text and the floor (``floor.json`` and the manifest of the download stage).
Everything is a pure function of the parameters and the seed.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import asdict

import numpy as np

GENERATOR = "hamt.synthetic"
# Bump when the generated text for given parameters changes: the manifest records it.
VERSION = 1
LN2 = math.log(2.0)
SPLITS = ("train", "valid", "test")

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kl", "pl", "st", "tr", "sh", "ch", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "s", "l", "m")


def make_lexicon(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct pronounceable lowercase strings, shorter ones first (ranks 0-27: one syllable, to 897: two, then three)."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        r = len(out)
        n_syl = 1 + min(2, int(math.log(r + 2) / math.log(30)))
        for _attempt in range(50):
            word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                           + _CODAS[rng.integers(len(_CODAS))] for _ in range(n_syl))
            if word not in seen:
                break
        else:  # this length is crowded: lengthen rather than loop forever
            word = word + _VOWELS[len(out) % len(_VOWELS)] + str(len(out)).translate(str.maketrans("0123456789", "bdfgklmnpr"))
        seen.add(word)
        out.append(word)
    return out


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class Source:
    """The language: lexicon, chain and line process, with exact probabilities and the entropy rate."""

    def __init__(self, settings):
        settings.validate()
        s = self.settings = settings
        rng = np.random.default_rng([s.seed, 0])
        lexicon = make_lexicon(rng, s.vocab_words + s.keys + s.values)
        self.words = lexicon[:s.vocab_words]
        self.keys = lexicon[s.vocab_words:s.vocab_words + s.keys]
        self.values = lexicon[s.vocab_words + s.keys:]
        self.word_id = {w: i for i, w in enumerate(self.words)}
        self.key_id = {w: i for i, w in enumerate(self.keys)}
        self.value_id = {w: i for i, w in enumerate(self.values)}
        V, k = s.vocab_words, s.successors
        self.end = V  # the symbol id of "." (end of sentence)
        self.p_end = 1.0 / s.sentence_words
        unigram = np.arange(1, V + 1, dtype=np.float64) ** -s.zipf
        unigram /= unigram.sum()
        z = np.arange(1, k + 1, dtype=np.float64) ** -s.zipf
        self.z = z / z.sum()  # successor weights by rank: (k,)
        # successors of each word: (V, k) distinct ids, most frequent first within the row
        self.succ = np.stack([rng.choice(V, size=k, replace=False, p=unigram) for _ in range(V)])
        k0 = min(V, 4 * k)
        self.start_succ = rng.choice(V, size=k0, replace=False, p=unigram)  # first words of a sentence: (k0,)
        z0 = np.arange(1, k0 + 1, dtype=np.float64) ** -s.zipf
        self.start_p = z0 / z0.sum()
        n2 = int(round(s.order2_fraction * V))
        self.order2 = np.zeros(V, dtype=bool)
        self.order2[rng.choice(V, size=n2, replace=False)] = True
        self._mix = int(rng.integers(1, 2**31 - 1))  # keys the order-2 shifts
        # sampling tables: per shift, the cumulative successor weights (floats in Python lists for bisect)
        self._cum = [np.cumsum(np.roll(self.z, -sh)).tolist() for sh in range(k)]
        self._start_cum = np.cumsum(self.start_p).tolist()
        self._succ_lists = self.succ.tolist()
        self._start_list = self.start_succ.tolist()

    # ---- the chain -------------------------------------------------------------------------------

    def shift(self, prev: int, cur: int) -> int:
        """Rotation of ``cur``'s successor weights after ``prev`` (0 for order-1 words or a sentence start)."""
        if prev < 0 or not self.order2[cur]:
            return 0
        return ((prev * 2654435761 + cur * 40503 + self._mix) % 4294967291) % self.settings.successors

    def next_probs(self, prev: int, cur: int) -> tuple[np.ndarray, np.ndarray]:
        """(symbol ids, probabilities) of the symbol after ``cur`` (preceded by ``prev``); ``cur = -1`` is a sentence start.

        Symbol id ``self.end`` is the end of the sentence; ``prev = -1`` means ``cur`` began the sentence.
        """
        if cur < 0:
            return self.start_succ, self.start_p
        p = (1 - self.p_end) * np.roll(self.z, -self.shift(prev, cur))
        return np.append(self.succ[cur], self.end), np.append(p, self.p_end)

    def _states(self) -> tuple[list[tuple[int, int]], dict[tuple[int, int], int]]:
        """Chain states (prev, cur) reachable from a sentence start; prev is -1 where it does not matter."""
        index: dict[tuple[int, int], int] = {(-1, -1): 0}
        order: list[tuple[int, int]] = [(-1, -1)]
        todo = [(-1, -1)]
        while todo:
            prev, cur = todo.pop()
            ids, _p = self.next_probs(prev, cur)
            for x in ids.tolist():
                if x == self.end:
                    continue
                st = (cur if self.order2[x] else -1, x)
                if st not in index:
                    index[st] = len(order)
                    order.append(st)
                    todo.append(st)
        return order, index

    def sentence_stats(self) -> dict:
        """Exact expectations per sentence: nats, bytes, words (incl. the "."), from the expected state visits.

        Visits N solve N = e_start + N P over the transient chain (the end of sentence absorbs); every
        non-start state leaves with probability p_end, so the fixed-point iteration converges like
        (1 - p_end)^t and is run to machine precision.
        """
        states, index = self._states()
        n = len(states)
        src, dst, prob = [], [], []
        h = np.zeros(n)
        nbytes = np.zeros(n)  # expected bytes of the symbol emitted from each state
        wlen = np.array([len(w) + 1 for w in self.words] + [2], dtype=np.float64)  # "w " per word, ".\n" for the end
        for i, (prev, cur) in enumerate(states):
            ids, p = self.next_probs(prev, cur)
            h[i] = _entropy(p)
            nbytes[i] = float((p * wlen[ids]).sum())
            for x, px in zip(ids.tolist(), p.tolist()):
                if x != self.end:
                    src.append(i)
                    dst.append(index[(cur if self.order2[x] else -1, x)])
                    prob.append(px)
        src_a, dst_a, prob_a = np.array(src), np.array(dst), np.array(prob)
        e0 = np.zeros(n)
        e0[0] = 1.0
        visits = e0.copy()
        for _ in range(100_000):
            nxt = e0 + np.bincount(dst_a, weights=visits[src_a] * prob_a, minlength=n)
            done = np.abs(nxt - visits).sum() <= 1e-13 * nxt.sum()
            visits = nxt
            if done:
                break
        return {
            "states": n,
            "nats": float(visits @ h),
            "bytes": float(visits @ nbytes),
            "words": float(visits.sum()),  # one symbol per visit: the words and the final "."
        }

    def entropy_rate(self) -> dict:
        """The exact entropy rate of the stationary line process (all recall slots filled)."""
        s = self.settings
        sent = self.sentence_stats()
        p_s, p_b, p_q = 1 - s.bind_prob - s.query_prob, s.bind_prob, s.query_prob
        mean_k = float(np.mean([len(w) for w in self.keys]))
        mean_v = float(np.mean([len(w) for w in self.values]))
        kind = _entropy(np.array([p_s, p_b, p_q]))
        bind_nats = math.log(s.keys) + math.log(s.values)
        query_nats = math.log(s.recall_slots)  # the key; the value is determined by the binding
        nats = kind + p_s * sent["nats"] + p_b * bind_nats + p_q * query_nats
        nbytes = p_s * sent["bytes"] + p_b * (mean_k + mean_v + 6) + p_q * (mean_k + mean_v + 7)  # "k = v ;\n", "k -> v ;\n"
        words = p_s * sent["words"] + (p_b + p_q) * 4  # whitespace-separated, as the pipeline counts them
        blind = nats + p_q * math.log(s.values)  # a model perfect but for recall guesses the value uniformly
        return {
            "nats_per_line": nats,
            "bytes_per_line": nbytes,
            "words_per_line": words,
            "bytes_per_word": nbytes / words,
            "nats_per_word": nats / words,
            "bits_per_byte": nats / LN2 / nbytes,
            "recall_blind_bits_per_byte": blind / LN2 / nbytes,
            "sentence": sent,
        }

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, n_words: int, stream: int = 0) -> tuple[str, float]:
        """(text, its exact -log p in nats): lines until at least ``n_words`` words; ``stream`` picks the random stream."""
        s = self.settings
        rng = np.random.default_rng([s.seed, 1, stream])
        uniforms = _Uniforms(rng)
        u = uniforms.next
        log = math.log
        words, keys, values = self.words, self.keys, self.values
        succ, cum, start, start_cum = self._succ_lists, self._cum, self._start_list, self._start_cum
        log_z = [[log(x) for x in np.roll(self.z, -sh)] for sh in range(s.successors)]
        log_start = [log(x) for x in self.start_p]
        log_go, log_end = log(1 - self.p_end), log(self.p_end)
        order2, end_p = self.order2.tolist(), self.p_end
        memory: OrderedDict[int, int] = OrderedDict()  # key -> value, oldest first (at most recall_slots)
        lines: list[str] = []
        nll = 0.0
        count = 0
        while count < n_words:
            p_q = s.query_prob if memory else 0.0
            p_b = s.bind_prob + (s.query_prob - p_q)  # no binding yet: a query's share goes to bindings
            r = u()
            if r < p_b:
                key, val = int(u() * s.keys), int(u() * s.values)
                nll -= log(p_b) - log(s.keys) - log(s.values)
                memory[key] = val
                memory.move_to_end(key)
                if len(memory) > s.recall_slots:
                    memory.popitem(last=False)
                lines.append(f"{keys[key]} = {values[val]} ;\n")
                count += 4
            elif r < p_b + p_q:
                live = list(memory)
                key = live[int(u() * len(live))]
                nll -= log(p_q) - log(len(live))
                lines.append(f"{keys[key]} -> {values[memory[key]]} ;\n")
                count += 4
            else:
                nll -= log(1 - p_b - p_q)
                j = bisect.bisect_right(start_cum, u() * start_cum[-1])
                j = min(j, len(start) - 1)
                prev, cur = -1, start[j]
                nll -= log_start[j]
                sent = [words[cur]]
                while True:
                    r = u()
                    if r < end_p:
                        nll -= log_end
                        break
                    sh = self.shift(prev, cur) if order2[cur] else 0
                    c = cum[sh]
                    j = min(bisect.bisect_right(c, (r - end_p) / (1 - end_p) * c[-1]), len(c) - 1)
                    nll -= log_go + log_z[sh][j]
                    prev, cur = cur, succ[cur][j]
                    sent.append(words[cur])
                lines.append(" ".join(sent) + " .\n")
                count += len(sent) + 1
        return "".join(lines), nll

    def score(self, text: str) -> float:
        """The exact -log p (nats) of a text under this source, by parsing it (independent of ``generate``)."""
        s = self.settings
        memory: OrderedDict[int, int] = OrderedDict()
        nll = 0.0
        for n, line in enumerate(text.splitlines(), 1):
            toks = line.split(" ")
            p_q = s.query_prob if memory else 0.0
            p_b = s.bind_prob + (s.query_prob - p_q)
            if len(toks) == 4 and toks[1] == "=" and toks[3] == ";":
                key, val = self.key_id[toks[0]], self.value_id[toks[2]]
                nll -= math.log(p_b / (s.keys * s.values))
                memory[key] = val
                memory.move_to_end(key)
                if len(memory) > s.recall_slots:
                    memory.popitem(last=False)
            elif len(toks) == 4 and toks[1] == "->" and toks[3] == ";":
                key = self.key_id[toks[0]]
                if key not in memory or memory[key] != self.value_id[toks[2]]:
                    return math.inf  # a query the source cannot emit
                nll -= math.log(p_q / len(memory))
            else:
                if toks[-1] != ".":
                    raise ValueError(f"line {n}: not a sentence, binding or query: {line!r}")
                nll -= math.log(1 - p_b - p_q)
                prev, cur = -1, -1
                for w in toks[:-1] + ["."]:
                    x = self.end if w == "." else self.word_id[w]
                    ids, p = self.next_probs(prev, cur)
                    hit = np.flatnonzero(ids == x)
                    if len(hit) == 0:
                        return math.inf
                    nll -= math.log(p[hit[0]])
                    prev, cur = cur, x
        return nll


class _Uniforms:
    """Uniform floats in [0, 1) drawn from ``rng`` in blocks (one numpy call per 64K draws)."""

    def __init__(self, rng: np.random.Generator, block: int = 1 << 16):
        self.rng, self.block = rng, block
        self.buf: list[float] = []
        self.i = 0

    def next(self) -> float:
        if self.i == len(self.buf):
            self.buf, self.i = self.rng.random(self.block).tolist(), 0
        self.i += 1
        return self.buf[self.i - 1]


def split_floor(nll_nats: float, text: str) -> dict:
    """The realised floor of one text: its exact NLL per byte (bits) and per word (nats)."""
    n_bytes, n_words = len(text.encode("utf-8")), len(text.split())
    return {"nll_nats": nll_nats, "bytes": n_bytes, "words": n_words, "lines": text.count("\n"),
            "bits_per_byte": nll_nats / LN2 / n_bytes, "nats_per_word": nll_nats / n_words}


def generate_corpus(settings) -> tuple[dict[str, str], dict]:
    """({split: text}, floor) with ``settings.<split>_words`` words per split, each split its own random stream.

    The floor holds the generator's identity and settings, the entropy rate and each split's realised
    floor; it is a pure function of the settings (no timings), so a manifest holding it is too.
    """
    source = Source(settings)
    texts, splits = {}, {}
    for i, split in enumerate(SPLITS):
        texts[split], nll = source.generate(getattr(settings, f"{split}_words"), stream=i)
        splits[split] = split_floor(nll, texts[split])
    floor = {
        "generator": GENERATOR,
        "version": VERSION,
        "settings": asdict(settings),
        "entropy_rate": source.entropy_rate(),
        "splits": splits,
    }
    return texts, floor
