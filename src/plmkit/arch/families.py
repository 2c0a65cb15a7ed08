"""The registered architecture families: one ModelSpec each, nowhere else."""
from __future__ import annotations

import dataclasses

from .spec import BlockSpec, ModelSpec, StackSpec

_BERT_BLOCK = BlockSpec(
    attn_q="attention.self.query",
    attn_k="attention.self.key",
    attn_v="attention.self.value",
    attn_o="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    norms={"attn": "attention.output.LayerNorm", "ffn": "output.LayerNorm"},
    attn="attention.self",
)


def _bert_like(family: str, model_types: tuple[str, ...], heads: tuple[str, ...]) -> ModelSpec:
    """BERT, RoBERTa and ELECTRA share the post-norm encoder layout."""
    return ModelSpec(
        family=family,
        model_types=model_types,
        embeddings="embeddings",
        stacks=(StackSpec(name="blocks", blocks="encoder.layer", block=_BERT_BLOCK),),
        heads=heads,
    )


BERT = _bert_like("bert", ("bert",), ("cls",))  # MiniLM is a BertModel
ROBERTA = _bert_like("roberta", ("roberta", "xlm-roberta"), ("lm_head",))
ELECTRA = _bert_like("electra", ("electra",), ("discriminator_predictions", "generator_lm_head"))

_LLAMA_BLOCK = BlockSpec(
    attn_q="self_attn.q_proj",
    attn_k="self_attn.k_proj",
    attn_v="self_attn.v_proj",
    attn_o="self_attn.o_proj",
    ffn_gate="mlp.gate_proj",
    ffn_in="mlp.up_proj",
    ffn_out="mlp.down_proj",
    norms={"attn": "input_layernorm", "ffn": "post_attention_layernorm"},
    attn="self_attn",
)

LLAMA = ModelSpec(
    family="llama",
    model_types=("llama", "mistral", "qwen2"),  # SmolLM2 is a LlamaForCausalLM
    embeddings="embed_tokens",
    stacks=(StackSpec(name="blocks", blocks="layers", block=_LLAMA_BLOCK, final_norm="norm"),),
    heads=("lm_head",),
    gated=True,
    position="rotary",
)

GEMMA3 = ModelSpec(
    family="gemma3",
    model_types=("gemma3_text",),
    embeddings="embed_tokens",
    stacks=(
        StackSpec(
            name="blocks",
            blocks="layers",
            final_norm="norm",
            block=dataclasses.replace(  # LLaMA's projections, with Gemma 3's four norms
                _LLAMA_BLOCK,
                norms={
                    "attn": "input_layernorm",
                    "attn_post": "post_attention_layernorm",
                    "ffn": "pre_feedforward_layernorm",
                    "ffn_post": "post_feedforward_layernorm",
                },
            ),
        ),
    ),
    heads=("lm_head",),
    act_keys=("hidden_activation", "hidden_act"),
    gated=True,
    position="rotary",
)

GPT2 = ModelSpec(
    family="gpt2",
    model_types=("gpt2",),
    embeddings="wte",
    stacks=(
        StackSpec(
            name="blocks",
            blocks="h",
            final_norm="ln_f",
            block=BlockSpec(
                attn_qkv="attn.c_attn",
                attn_o="attn.c_proj",
                ffn_in="mlp.c_fc",
                ffn_out="mlp.c_proj",
                norms={"attn": "ln_1", "ffn": "ln_2"},
                attn="attn",
            ),
        ),
    ),
    heads=("lm_head",),
    conv1d=True,
    act_keys=("activation_function",),
)


def _t5_block(ffn_index: int, gated: bool) -> BlockSpec:
    ff = f"layer.{ffn_index}.DenseReluDense"
    cross = (
        {k: f"layer.1.EncDecAttention.{k}" for k in ("q", "k", "v", "o")} if ffn_index == 2 else {}
    )
    norms = {"attn": "layer.0.layer_norm", "ffn": f"layer.{ffn_index}.layer_norm"}
    if ffn_index == 2:
        norms["cross_attn"] = "layer.1.layer_norm"
    return BlockSpec(
        attn_q="layer.0.SelfAttention.q",
        attn_k="layer.0.SelfAttention.k",
        attn_v="layer.0.SelfAttention.v",
        attn_o="layer.0.SelfAttention.o",
        ffn_gate=f"{ff}.wi_0" if gated else None,
        ffn_in=f"{ff}.wi_1" if gated else f"{ff}.wi",
        ffn_out=f"{ff}.wo",
        norms=norms,
        cross_attn=cross,
        attn="layer.0.SelfAttention",
        attn_probs_index=2,
    )


def _t5(gated: bool) -> ModelSpec:
    return ModelSpec(
        family="t5-gated" if gated else "t5",
        model_types=(),  # chosen by resolve() from config.is_gated_act
        embeddings="encoder.embed_tokens",  # tied to "shared", which is not the module that runs
        stacks=(
            StackSpec("encoder", "encoder.block", _t5_block(1, gated), "encoder.final_layer_norm"),
            StackSpec("decoder", "decoder.block", _t5_block(2, gated), "decoder.final_layer_norm"),
        ),
        heads=("lm_head",),
        act_keys=("dense_act_fn",),
        gated=gated,
        position="relative",
    )


T5 = _t5(gated=False)
T5_GATED = _t5(gated=True)

FAMILIES: tuple[ModelSpec, ...] = (BERT, ROBERTA, ELECTRA, LLAMA, GEMMA3, GPT2, T5, T5_GATED)
