"""The eighteen systems plmkit implements, with their honest status."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# docs/ of a source checkout (absent from an installed wheel)
_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class System:
    key: str
    name: str
    area: str
    status: str  # "implemented", "partial: ...", "not yet"
    entry_point: str
    docs: str  # where its page lives (or will): docs/<key>.md

    def docs_page(self) -> str | None:
        """``docs`` if that page has been written (in this checkout), else None."""
        return self.docs if (_ROOT / self.docs).is_file() else None


_ROWS = [
    ("eren", "EREN: editing by reading notes", "editing",
     "implemented: SQLite notebook, reader-judged relevance with closed-book fallback, fact checking, "
     "geonames edit benchmark; recipe 'eren'", "plmkit.editing.EREN"),
    ("modularity", "Modularity analysis: functional experts", "analysis",
     "implemented: word-sense, knowledge and task functions, AP predictivity, k-means / co-activation / random "
     "experts, hypergeometric functional experts, extent, perturbation, emergence over a run; recipe 'modularity'",
     "plmkit.analysis.modularity.functional_experts"),
    ("variator", "Variator: compression plugins", "plugins",
     "implemented: plugins that merge k hidden states before each FFN (bidirectional and causal, padding-safe), "
     "distilled with the backbone frozen, saved per k and swapped by workload; ToMe peer; recipe 'variator'",
     "plmkit.plugins.variator.attach"),
    ("subchar", "SubChar: sub-character tokenization", "chinese",
     "implemented: pinyin/zhuyin/Wubi/Cangjie/stroke code tables from real data with coverage, index (reversible) "
     "and no-index encoders, SentencePiece unigram/BPE, a Hugging Face tokenizer; recipe 'subchar'",
     "plmkit.chinese.subchar.train_tokenizer"),
    ("readin", "READIN: realistic noisy Chinese input", "chinese",
     "implemented: loader for the release layout, Average/Worst, pinyin-IME and speech noise generator, small "
     "BERTs per tokenizer under noise; recipe 'readin'", "plmkit.chinese.readin.load_readin"),
    ("knowledge_plugin", "Knowledge Plugin: map-tuning", "knowledge",
     "implemented: general map-tuning (mention-masked LM, the model frozen), plug and play into MiniLM classifiers "
     "trained by full fine-tuning, LoRA or prompt tuning, with zero / random / description controls, task-specific "
     "map-tuning, entity questions for SmolLM2, one mapper per graph swapped on one frozen model (`plmkit "
     "knowledge-plugin`; recipe 'knowledge-plugin'); full run recorded: the plug does not add knowledge at this "
     "scale",
     "plmkit.knowledge.plugin.map_tune"),
    ("plugd", "PlugD: document plugins", "plugins",
     "implemented: map network on the frozen backbone's document states, plugged into the upper layers' "
     "self-attention through their own norm and K/V (every family, T5 included), plugin pretraining, LoRA task "
     "adapters, an on-disk plugin store (content hash, LRU cap, atomic, multi-process), QA and fact verification "
     "on one set of plugins, costs beside concatenation and KV-prefix reuse; plmkit plugd; recipe 'plugd'; "
     "benchmarks/plugd_speed.py", "plmkit.plugins.plugd.attach"),
    ("skill_neurons", "Skill neurons", "analysis",
     "implemented: peft prompt tuning, streamed threshold-accuracy scores, perturbation vs random per layer, task "
     "overlap, LoRA/BitFit transfer, pruning into a real smaller model; recipe 'skill-neurons'",
     "plmkit.analysis.skill_neurons.skill_scores"),
    ("bmcook", "BMCook: composable compression", "compress",
     "implemented: int8 / group-wise int4 weight-only with kernels chosen by timing, int8 inputs where they do not "
     "lose, 2:4 / unstructured masks, L0 pruning of FFN neurons, KV-head groups and layers into plain smaller "
     "models, distillation, MoEfication as a stage, stages composed by one config; plmkit cook; recipe 'bmcook'; "
     "benchmarks/cook_speed.py", "plmkit.compress.cook.cook"),
    ("moefication", "MoEfication: FFNs into mixtures of experts", "compress",
     "implemented: moefy, sparse expert path, routers, ReLU-fication, end-to-end expert training; recipes "
     "'moefication', 'sparsity'",
     "plmkit.compress.moefication.moefy"),
    ("dpt", "DPT: prompt tuning for discriminative PLMs", "prompting",
     "implemented: DPT classification (class bias inside the sigmoid) and span-tagging QA on any ELECTRA "
     "discriminator, one made from MiniLM by replaced-token detection, LM-BFF few-shot harness with CLS / "
     "MLM-prompt / soft-prompt / LoRA baselines; plmkit fewshot, plmkit dpt; recipe 'dpt'",
     "plmkit.prompting.dpt.DPTClassifier"),
    ("bminf", "BMInf: inference under a memory budget", "infer",
     "implemented: a scheduler that keeps as many blocks resident as a byte budget allows and streams the rest "
     "(zero-copy from mapped safetensors, or copied into buffers), loading ahead; int8 weights; generate and LoRA "
     "through it; recipe 'bminf'", "plmkit.infer.offload"),
    ("autoseq", "AutoSeq: automatic label sequences", "prompting",
     "implemented: averaged-logit beam search (decoder-only and T5), contrastive re-ranking, combination search "
     "on dev, prompt-based fine-tuning and summed log-probability scoring, single-word baseline; plmkit autoseq "
     "search; recipe 'autoseq'", "plmkit.prompting.autoseq.search"),
    ("knowledge_inheritance", "Knowledge Inheritance", "pretrain",
     "implemented: BERT / LLaMA-style models of named sizes pretrained from scratch on the English corpus (packed, "
     "split by document, one study tokenizer), KD from a smaller teacher with linear / KD-then-LM / constant "
     "schedules, tokens and FLOPs (teacher counted) per step, every checkpoint kept, resumable; plmkit pretrain; "
     "recipe 'knowledge-inheritance'", "plmkit.pretrain.pretrain"),
    ("kepler", "KEPLER: knowledge embedding + LM", "knowledge",
     "implemented: description-based TransE + MLM, filtered negatives, transductive/inductive link prediction "
     "checked against PyKEEN, PyKEEN TransE/RotatE peers; recipe 'kepler'", "plmkit.knowledge.KEPLER"),
    ("hiddenkiller", "HiddenKiller: syntactic backdoor", "security",
     "implemented: dirty- and clean-label poisoned sets, syntactic (spaCy-checked template; clause-fronting rule, "
     "SmolLM2-Instruct and seq2seq paraphrasers) and insertion triggers, MiniLM victims with CACC / ASR, ONION and "
     "paraphrase defenses, a spectral-signature detector, trigger visibility (plmkit backdoor poison / train / "
     "eval / detect; recipe 'hiddenkiller', full run recorded)",
     "plmkit.security.poison_train"),
    ("selective_masking", "Selective masking", "pretrain",
     "implemented: batched buffer-rule importance labels (reference and delta rules), a token tagger on an "
     "encoder's states, top-scored masks (<= 15%, 80/10/10) saved as a datasets folder, task-guided pretraining "
     "vs random masks with mask generation compute counted; plmkit selective-mask; recipe 'selective-masking'",
     "plmkit.pretrain.selective_masking.token_importance"),
    ("ernie", "ERNIE: knowledge-enhanced encoder", "knowledge",
     "implemented: alias entity linker (pyahocorasick; WordNet lemmas and forms, geonames names, priors), KG "
     "embeddings (PyKEEN TransE/RotatE; PyKEEN, OpenKE and KEPLER import/export), aggregator blocks fused into any "
     "BERT-family encoder's own FFNs (undoable wraps), dEA + MLM pretraining, typing and relation heads, tasks "
     "built from WordNet and geonames, ablations; plmkit link, kge, ernie; recipe 'ernie'",
     "plmkit.knowledge.ernie.ERNIE"),
]

SYSTEMS: dict[str, System] = {k: System(k, n, a, s, e, f"docs/{k}.md") for k, n, a, s, e in _ROWS}
