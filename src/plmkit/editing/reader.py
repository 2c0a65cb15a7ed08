"""The reader: a causal (chat or base) or seq2seq LM that generates answers and scores continuations."""
from __future__ import annotations

from typing import Sequence

import torch


class Reader:
    """Greedy generation and continuation log-likelihoods, batched, for any HF LM.

    A causal model with a chat template gets each prompt as one user turn; a base causal model
    gets the prompt followed by a newline; a seq2seq model gets it as the encoder input.
    Results are memoised per prompt (decoding is greedy); call :meth:`clear_cache` after
    changing the model's weights.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, max_new_tokens: int = 24, batch_size: int = 16):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.chat = not self.seq2seq and getattr(tokenizer, "chat_template", None) is not None
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._generated: dict[tuple[str, int], str] = {}
        self._scored: dict[tuple[str, str], float] = {}

    def clear_cache(self) -> None:
        self._generated.clear()
        self._scored.clear()

    @classmethod
    def load(cls, name: str = "smollm2", dtype: torch.dtype | str | None = None, **kwargs) -> "Reader":
        """A reader from an asset name, folder or hub id; ``dtype`` defaults to
        :func:`plmkit.device.fast_dtype` (bf16 where this CPU or GPU runs it natively and fast, else fp32)."""
        from ..assets import load_config, load_model
        from ..device import fast_dtype

        dtype = fast_dtype() if dtype is None else dtype
        task = "seq2seq-lm" if getattr(load_config(name), "is_encoder_decoder", False) else "causal-lm"
        model, tok = load_model(name, task=task, dtype=dtype)
        return cls(model, tok, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def format(self, prompt: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt if self.seq2seq else prompt + "\n"

    def _encode(self, texts: list[str], side: str) -> dict[str, torch.Tensor]:
        self.tokenizer.padding_side = side
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def generate(self, prompts: Sequence[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers, one line each (the first non-empty line of the output)."""
        n = max_new_tokens or self.max_new_tokens
        todo = list(dict.fromkeys(p for p in prompts if (p, n) not in self._generated))
        self._generated.update(zip(((p, n) for p in todo), self._generate(todo, n)))
        return [self._generated[(p, n)] for p in prompts]

    def logprob(self, prompts: Sequence[str], continuations: Sequence[str]) -> torch.Tensor:
        """``log p(continuation | prompt)`` summed over the continuation's tokens, one per pair."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations")
        pairs = list(zip(prompts, continuations))
        todo = list(dict.fromkeys(p for p in pairs if p not in self._scored))
        if todo:
            self._scored.update(zip(todo, self._logprob([p for p, _ in todo], [c for _, c in todo]).tolist()))
        return torch.tensor([self._scored[p] for p in pairs], dtype=torch.float32)

    def _decoder_start(self) -> int:
        start = getattr(self.model.generation_config, "decoder_start_token_id", None)
        return self.tokenizer.pad_token_id if start is None else int(start)

    @torch.no_grad()
    def _generate(self, prompts: list[str], n: int) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            enc = self._encode([self.format(p) for p in prompts[i:i + self.batch_size]], "left")
            extra = {"decoder_start_token_id": self._decoder_start()} if self.seq2seq else {}
            gen = self.model.generate(**enc, max_new_tokens=n, do_sample=False, num_beams=1,
                                      pad_token_id=self.tokenizer.pad_token_id, **extra)
            if not self.seq2seq:
                gen = gen[:, enc["input_ids"].shape[1]:]
            for text in self.tokenizer.batch_decode(gen, skip_special_tokens=True):
                lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
                out.append(lines[0] if lines else "")
        return out

    @torch.no_grad()
    def _logprob(self, prompts: list[str], continuations: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        scores = []
        for i in range(0, len(prompts), self.batch_size):
            ps = [self.format(p) for p in prompts[i:i + self.batch_size]]
            cs = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations[i:i + self.batch_size]]
            if self.seq2seq:
                enc = self._encode(ps, "right")
                width = max(len(c) for c in cs)
                targets = torch.tensor([c + [-100] * (width - len(c)) for c in cs], device=self.device)
                start = torch.full_like(targets[:, :1], self._decoder_start())
                decoder_ids = torch.cat([start, targets[:, :-1].clamp_min(0)], dim=1)
                logits = self.model(**enc, decoder_input_ids=decoder_ids).logits
            else:
                prefix = [tok(p, add_special_tokens=not self.chat)["input_ids"] for p in ps]
                seqs = [p + c for p, c in zip(prefix, cs)]
                width = max(len(s) for s in seqs)
                pad = tok.pad_token_id
                ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
                targets = torch.full_like(ids, -100)
                for row, (p, c) in enumerate(zip(prefix, cs)):
                    targets[row, len(p):len(p) + len(c)] = torch.tensor(c)
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                targets = targets[:, 1:]
            logp = logits.float().log_softmax(-1)
            picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            scores.append((picked * (targets != -100)).sum(-1).cpu())
        return torch.cat(scores) if scores else torch.zeros(0)
