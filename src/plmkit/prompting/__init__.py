"""Prompt-based few-shot learning: one LM-BFF harness (:mod:`.fewshot`, :mod:`.harness`), templates and
verbalizers as data (:mod:`.prompts`), label scoring and prompt-based fine-tuning for causal, seq2seq and
masked LMs (:mod:`.scoring`), DPT for discriminators (:mod:`.dpt`) and AutoSeq's label-sequence search
(:mod:`.autoseq`)."""
from .fewshot import FewShotSplit, MethodResult, few_shot_split, few_shot_splits, format_summary
from .prompts import Prompt, load_prompt

__all__ = ["FewShotSplit", "MethodResult", "Prompt", "few_shot_split", "few_shot_splits", "format_summary",
           "load_prompt"]
