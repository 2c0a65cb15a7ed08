"""AutoSeq (Yu et al. 2023): search label *sequences* for prompt-based few-shot learning with a generative model.

For each class, the template's blank (at the end for a decoder-only model, a sentinel for T5) is filled by beam
search whose every step averages the next-token log-probabilities over that class's K train examples, so a
sequence's score is the mean over the examples of log P(sequence | example's prompt). Candidates are re-ranked
contrastively, score(s, y) = L(s | y) - mean over y' != y of L(s | y'), where L is that mean log-probability
over the class's examples; combinations of the top candidates of every class are scored on dev (zero-shot from
one table of log-probabilities, then optionally after a brief prompt-based fine-tune) and the best is kept.
Classification then fine-tunes with the LM loss on the gold sequence and predicts the class whose sequence has
the highest summed log-probability (:mod:`plmkit.prompting.scoring`).

>>> from plmkit.prompting import autoseq
>>> found = autoseq.search(model, tok, prompt, split, autoseq.AutoSeqConfig(beam=8, max_tokens=4))  # doctest: +SKIP
>>> found.sequences                                                                                # doctest: +SKIP
('... terrible', '... great')
"""
from __future__ import annotations

import copy
import itertools
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..device import model_device
from ..errors import ConfigError
from .fewshot import FewShotSplit
from .prompts import Prompt
from .scoring import PromptTuneConfig, encode, model_kind, prompt_finetune, sentinel, sequence_logprobs


@dataclass(frozen=True)
class AutoSeqConfig:
    beam: int = 50  # the paper's beam width
    max_tokens: int = 20  # longest sequence searched (the paper's bound)
    rerank_pool: int = 50  # beam candidates per class (best by per-token score) re-ranked contrastively
    per_label: int = 5  # top re-ranked candidates per class that enter the combination search
    finetune_combos: int = 0  # best zero-shot combinations re-scored on dev after a brief prompt-based fine-tune
    finetune: PromptTuneConfig = PromptTuneConfig(steps=10)
    max_length: int = 128
    single_token: bool = False  # the single-word baseline: one token that starts a word

    def __post_init__(self) -> None:
        if min(self.beam, self.max_tokens, self.rerank_pool, self.per_label) < 1:
            raise ConfigError("beam, max_tokens, rerank_pool and per_label must be >= 1")


@dataclass
class Candidate:
    ids: tuple[int, ...]
    text: str
    beam_score: float  # mean over the class's examples of log P(sequence | prompt)
    contrastive: float = float("nan")


@dataclass
class SearchResult:
    sequences: tuple[str, ...]  # the chosen label sequence of each class (continuations of the template)
    dev_accuracy: float
    candidates: list[list[Candidate]] = field(default_factory=list)  # per class, best first (contrastive)
    combinations_scored: int = 0
    seconds: float = 0.0
    forward_passes: int = 0

    def to_dict(self) -> dict:
        return {"sequences": list(self.sequences), "dev_accuracy": self.dev_accuracy,
                "combinations_scored": self.combinations_scored, "seconds": round(self.seconds, 2),
                "forward_passes": self.forward_passes,
                "candidates": [[asdict(c) | {"ids": list(c.ids)} for c in cs] for cs in self.candidates]}


# --- beam search with averaged logits ------------------------------------------------------------------------

def allowed_tokens(tokenizer, vocab_size: int, single_token: bool = False) -> torch.Tensor:
    """``(vocab_size,)`` bool: tokens a label sequence may use (no special tokens, no line breaks, printable);
    ``single_token``: only tokens that start a word (a space, then a letter; alphabetic tokens where the
    vocabulary has no such token)."""
    special = set(tokenizer.all_special_ids)
    texts = tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(tokenizer)))])
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    for i, t in enumerate(texts):
        ok[i] = i not in special and t.strip() != "" and "\n" not in t and t.isprintable() and "\ufffd" not in t
    if single_token:
        word_start = torch.tensor([t[:1] == " " and t[1:2].isalpha() for t in texts]
                                  + [False] * (vocab_size - len(texts)))
        # a vocabulary without word-initial tokens (characters, say) falls back to alphabetic ones
        alpha = torch.tensor([t.isalpha() for t in texts] + [False] * (vocab_size - len(texts)))
        ok &= word_start if (ok & word_start).any() else alpha
    if not ok.any():
        raise ConfigError("no token of the vocabulary may start a label sequence")
    return ok


class _Stepper:
    """Next-token log-probabilities of B partial sequences after one fixed prompt (a causal model keeps the
    prompt's KV cache, expanded to the beams and reordered as they are chosen; a seq2seq model reruns its
    decoder over the short sequences on the encoded prompt)."""

    def __init__(self, model: nn.Module, prompt_ids: list[int], kind: str, forced: list[int]):
        self.model, self.kind, self.forced, self.expanded = model, kind, forced, False
        ids = torch.tensor([prompt_ids], device=model_device(model))
        if kind == "seq2seq":
            self.hidden = model.get_encoder()(input_ids=ids).last_hidden_state
            self.first = self._decode(ids.new_zeros(1, 0))[0]
        else:
            out = model(input_ids=ids, use_cache=True)
            self.cache, self.first = out.cache, out.logits[0, -1].float().log_softmax(-1)

    def _decode(self, seqs: torch.Tensor) -> torch.Tensor:
        forced = torch.tensor([self.forced], device=seqs.device).expand(seqs.shape[0], -1)
        dec = torch.cat([forced, seqs], 1)
        out = self.model(encoder_outputs=(self.hidden.expand(dec.shape[0], -1, -1),), decoder_input_ids=dec)
        return out.logits[:, -1].float().log_softmax(-1)

    def advance(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, V) for the beams ``seqs`` (B, t); a causal cache then holds them whole."""
        if self.kind == "seq2seq":
            return self._decode(seqs)
        if not self.expanded:
            self.cache.batch_repeat_interleave(seqs.shape[0])
            self.expanded = True
        return self.model(input_ids=seqs[:, -1:], cache=self.cache).logits[:, -1].float().log_softmax(-1)

    def reorder(self, parents: torch.Tensor) -> None:
        """Keep, in order, the cached beams the next step extends."""
        if self.kind != "seq2seq":
            self.cache.reorder_cache(parents)


@torch.no_grad()
def averaged_beam_search(model: nn.Module, prompts: Sequence[Sequence[int]], beam: int, max_tokens: int,
                         allowed: torch.Tensor | None = None, forced: Sequence[int] = ()) -> list[Candidate]:
    """Beam search for the continuation of ``prompts`` (token ids, one per example) whose every step ranks by
    the mean over the prompts of the next-token log-probability. Every beam of every length is returned, best
    first by that summed score (``forced``: decoder tokens before the searched ones, e.g. [start, sentinel])."""
    kind = model_kind(model)
    if kind == "masked":
        raise ConfigError("AutoSeq needs a generative model (decoder-only or seq2seq), not a masked LM")
    model.eval()
    if kind == "seq2seq" and not forced:
        forced = [model.config.decoder_start_token_id]
    steppers = [_Stepper(model, list(p), kind, list(forced)) for p in prompts]
    logp = torch.stack([s.first for s in steppers]).mean(0)
    vocab = logp.shape[-1]
    ban = torch.zeros(vocab, dtype=torch.bool) if allowed is None else ~allowed[:vocab]
    ban = ban.to(logp.device)
    scores, tokens = logp.masked_fill(ban, float("-inf")).topk(min(beam, int((~ban).sum())))
    seqs, found = tokens[:, None], {}
    _record(found, seqs, scores)
    for _ in range(1, max_tokens):
        step = torch.stack([s.advance(seqs) for s in steppers]).mean(0).masked_fill(ban, float("-inf"))
        total = (scores[:, None] + step).flatten()
        scores, flat = total.topk(min(beam, int(torch.isfinite(total).sum())))
        parents = flat // vocab
        seqs = torch.cat([seqs[parents], (flat % vocab)[:, None]], 1)
        for s in steppers:
            s.reorder(parents)
        _record(found, seqs, scores)
    return sorted((Candidate(ids, "", sc) for ids, sc in found.items()), key=lambda c: -c.beam_score)


def _record(found: dict, seqs: torch.Tensor, scores: torch.Tensor) -> None:
    for ids, sc in zip(seqs.tolist(), scores.tolist()):
        found.setdefault(tuple(ids), sc)


# --- contrastive re-ranking and combination search ------------------------------------------------------------

def contrastive_scores(mean_logp: np.ndarray, own: Sequence[int]) -> np.ndarray:
    """``mean_logp`` (C, S): L(s | y) per class y and candidate s; ``own`` (S,): each candidate's class.
    Returns (S,) L(s | own) - mean over the other classes of L(s | y')."""
    n_classes = mean_logp.shape[0]
    if n_classes < 2:
        raise ConfigError("contrastive scores need at least two classes")
    own = np.asarray(own)
    cols = np.arange(mean_logp.shape[1])
    others = (mean_logp.sum(0) - mean_logp[own, cols]) / (n_classes - 1)
    return mean_logp[own, cols] - others


def _prompt_ids(tokenizer, prompt: Prompt, texts: Sequence[str], kind: str, max_length: int) -> list[list[int]]:
    return [encode(tokenizer, prompt, t, kind, max_length, words=["x"]).source for t in texts]


def _forced(model: nn.Module, tokenizer, kind: str) -> list[int]:
    """Decoder tokens before a seq2seq label: the start token and the blank's sentinel."""
    if kind != "seq2seq":
        return []
    blank = tokenizer.convert_tokens_to_ids(sentinel(tokenizer))
    return [model.config.decoder_start_token_id, blank]


def _targets(tokenizer, kind: str, seqs: Sequence[Sequence[int]]) -> list[list[int]]:
    """The ids :func:`sequence_logprobs` scores for searched sequences (seq2seq: sentinel first)."""
    if kind != "seq2seq":
        return [list(s) for s in seqs]
    blank = tokenizer.convert_tokens_to_ids(sentinel(tokenizer))
    return [[blank, *s] for s in seqs]


def search(model: nn.Module, tokenizer, prompt: Prompt, split: FewShotSplit,
           config: AutoSeqConfig = AutoSeqConfig(), *, seed: int = 0, progress: bool = False) -> SearchResult:
    """Label sequences for ``split``'s classes, searched on its train examples and chosen on its dev examples."""
    from tqdm.auto import tqdm

    kind = model_kind(model)
    started, calls = time.perf_counter(), [0]
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        allowed = allowed_tokens(tokenizer, model.get_output_embeddings().weight.shape[0], config.single_token)
        forced = _forced(model, tokenizer, kind)
        by_class = [[r["text"] for r in split.train if r["label"] == y] for y in range(split.num_labels)]
        prompts = [_prompt_ids(tokenizer, prompt, texts, kind, config.max_length) for texts in by_class]
        pools: list[list[Candidate]] = []
        for y in tqdm(range(split.num_labels), desc="beam search", disable=not progress):
            found = averaged_beam_search(model, prompts[y], config.beam, 1 if config.single_token else
                                         config.max_tokens, allowed, forced)
            found.sort(key=lambda c: -c.beam_score / len(c.ids))
            pools.append(found[:config.rerank_pool])
        flat = [c for pool in pools for c in pool]
        own = [y for y, pool in enumerate(pools) for _ in pool]
        targets = _targets(tokenizer, kind, [c.ids for c in flat])
        mean_logp = np.stack([sequence_logprobs(model, p, targets, kind).mean(0) for p in prompts])
        for c, score in zip(flat, contrastive_scores(mean_logp, own)):
            c.contrastive = float(score)
            c.text = tokenizer.decode(list(c.ids))
        ranked = [sorted(pool, key=lambda c: -c.contrastive) for pool in pools]
        tops = [_distinct(pool, config.per_label) for pool in ranked]
        chosen, dev_acc, n_combos = _best_combination(model, tokenizer, prompt, split, tops, kind, config, seed)
    finally:
        handle.remove()
    return SearchResult(tuple(c.text for c in chosen), dev_acc, ranked, n_combos, time.perf_counter() - started,
                        calls[0])


def _distinct(pool: list[Candidate], n: int) -> list[Candidate]:
    """The first ``n`` candidates whose decoded text (stripped) differs."""
    seen, out = set(), []
    for c in pool:
        key = c.text.strip()
        if key and key not in seen:
            seen.add(key)
            out.append(c)
        if len(out) == n:
            break
    return out


def _best_combination(model, tokenizer, prompt, split, tops, kind, config, seed):
    """Score every combination of one top candidate per class on dev from one log-probability table; optionally
    re-score the best few after a brief prompt-based fine-tune (each from the same starting weights)."""
    flat = [c for cs in tops for c in cs]
    dev_texts = [r["text"] for r in split.dev]
    gold = np.array([r["label"] for r in split.dev])
    table = sequence_logprobs(model, _prompt_ids(tokenizer, prompt, dev_texts, kind, config.max_length),
                              _targets(tokenizer, kind, [c.ids for c in flat]), kind)
    offsets = np.cumsum([0] + [len(cs) for cs in tops])[:-1]
    scored = []
    for combo in itertools.product(*[range(len(cs)) for cs in tops]):
        texts = [tops[y][i].text.strip() for y, i in enumerate(combo)]
        if len(set(texts)) < len(texts):
            continue  # two classes with one sequence cannot be told apart
        cols = [offsets[y] + i for y, i in enumerate(combo)]
        acc = float(np.mean(table[:, cols].argmax(1) == gold))
        scored.append((acc, sum(tops[y][i].contrastive for y, i in enumerate(combo)), combo))
    if not scored:
        raise ConfigError("the search found no combination of distinct label sequences; raise beam or per_label")
    scored.sort(key=lambda s: (-s[0], -s[1]))
    best_acc, _, best = scored[0]
    if config.finetune_combos > 0:
        from .scoring import accuracy

        tuned = []
        for acc0, _, combo in scored[:config.finetune_combos]:
            words = [tops[y][i].text for y, i in enumerate(combo)]
            trial = copy.deepcopy(model)
            with tempfile.TemporaryDirectory() as tmp:
                prompt_finetune(trial, tokenizer, prompt, split.train, tmp, config.finetune, words=words, seed=seed)
            tuned.append((accuracy(trial, tokenizer, prompt.with_words(words), split.dev,
                                   max_length=config.max_length), acc0, combo))
            del trial
        tuned.sort(key=lambda s: (-s[0], -s[1]))
        best_acc, _, best = tuned[0]
    return [tops[y][i] for y, i in enumerate(best)], best_acc, len(scored)
