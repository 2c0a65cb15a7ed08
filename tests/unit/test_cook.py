"""plmkit.compress.cook: stages composed by one config, each a loadable artifact; `plmkit cook`."""
from __future__ import annotations

import json

import pytest
import torch

from plmkit import arch, hooks, load_model
from plmkit.compress.cook import CookConfig, StageConfig, cook, shortcut_config
from plmkit.compress.quant import Int4Linear, Int8Linear
from plmkit.errors import ConfigError
from plmkit.testing import tiny_inputs, tiny_model, tiny_tokenizer

TEXTS = [f"the quick brown fox number {i} jumps over the lazy dog again and again" for i in range(24)]


def test_config_round_trip_and_order_errors(tmp_path):
    cfg = CookConfig.from_dict({"stages": [{"kind": "prune", "steps": 3, "l0": {"target": 0.25}},
                                           {"kind": "quantize", "quant": {"bits": 4, "kernel": "dequant"}}]})
    assert cfg.stages[0].l0.target == 0.25 and cfg.stages[1].quant.bits == 4
    path = tmp_path / "cook.json"
    cfg.to_json(path)
    again = CookConfig.from_json(path)
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="after 'quantize'"):
        CookConfig(stages=[StageConfig(kind="quantize"), StageConfig(kind="prune")])
    with pytest.raises(ConfigError, match="quantized again"):
        CookConfig.from_dict({"stages": [{"kind": "quantize"}, {"kind": "quantize"}]})
    with pytest.raises(ConfigError, match="choose one of"):
        CookConfig.from_dict({"stages": [{"kind": "moefy-int4"}]})
    with pytest.raises(ConfigError, match="unknown L0Config keys"):
        CookConfig.from_dict({"stages": [{"kind": "prune", "l0": {"sparsity": 0.5}}]})
    with pytest.raises(ConfigError, match="no stages"):
        CookConfig(stages=[])
    assert [s.kind for s in shortcut_config(quantize_bits=8, prune_ffn=0.5).stages] == ["prune", "quantize"]
    with pytest.raises(ConfigError, match="after 'moefy'"):
        CookConfig.from_dict({"stages": [{"kind": "moefy"}, {"kind": "distill"}]})
    with pytest.raises(ConfigError, match='"ffn": false'):
        CookConfig.from_dict({"stages": [{"kind": "quantize"}, {"kind": "moefy"}]})
    both = shortcut_config(quantize_bits=8, prune_layers=0.5, prune_heads=0.5, moefy=True)
    assert [(s.kind, s.l0.unit) for s in both.stages[:2]] == [("prune", "layers"), ("prune", "heads")]
    assert [s.kind for s in both.stages[2:]] == ["quantize", "moefy"] and not both.stages[2].quant.ffn


@pytest.mark.parametrize("bits", [8, 4])
def test_cook_writes_a_loadable_artifact_per_stage(tmp_path, bits):
    model = tiny_model("llama").eval()
    tok = tiny_tokenizer()
    x = tiny_inputs(model)
    d_ff = model.config.intermediate_size
    cfg = CookConfig(stages=[
        StageConfig(kind="prune", steps=3, batch_size=4, lr=1e-3, l0={"target": 0.5}),
        StageConfig(kind="sparsify", steps=2, batch_size=4, mask={"pattern": "2:4"}),
        StageConfig(kind="quantize", quant={"bits": bits, "group_size": 32, "kernel": "dequant"})])
    report = cook(model, tok, cfg, texts=TEXTS, eval_texts=TEXTS[:4], out_dir=tmp_path, progress=None)
    assert json.loads((tmp_path / "report.json").read_text())["stages"][-1]["stage"] == "quantize"
    rows = report["stages"]
    assert rows[0]["params"] < report["input"]["params"] and rows[0]["prune"]["plain_config"]
    assert rows[1]["masks"]["two_four_holds"] and rows[1]["masks"]["masks_hold"]
    assert rows[2]["bytes_on_disk"] < rows[1]["bytes_on_disk"] and all("ppl" in r for r in rows)
    with torch.no_grad():
        final = model(**x).logits
    for row in rows:
        loaded, _ = load_model(row["folder"])
        layer = arch.layers(loaded)[0]
        site = f"{layer.name}.ffn.neurons"
        with hooks.capture(loaded, [site]) as cap, torch.no_grad():
            out = loaded(**x).logits
        assert cap[site].shape[-1] == d_ff // 2 == loaded.config.intermediate_size
    assert torch.equal(out, final)  # the last stage reloads to the in-memory model exactly
    quant = (Int8Linear, Int4Linear)[bits == 4]
    assert any(isinstance(m, quant) for m in loaded.modules())


def test_cook_cli_shortcuts_and_errors(tmp_path, capsys):
    from plmkit.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer().save_pretrained(tmp_path / "tiny")
    rc = main(["cook", "--model", str(tmp_path / "tiny"), "--quantize", "int8", "--texts", str(texts),
               "--out", str(tmp_path / "out")])
    assert rc in (None, 0)
    printed = capsys.readouterr().out
    assert "quantize:" in printed and "ppl=" in printed
    assert (tmp_path / "out" / "01-quantize" / "model.safetensors").exists()
    with pytest.raises(SystemExit) as e:
        main(["cook", "--model", str(tmp_path / "tiny"), "--out", str(tmp_path / "o2")])
    assert e.value.code == 2
    assert "nothing to do" in capsys.readouterr().err


def test_cook_prunes_layers_and_heads_then_quantizes_attention_and_moefies(tmp_path):
    model = tiny_model("llama", num_hidden_layers=4).eval()
    tok = tiny_tokenizer()
    x = tiny_inputs(model)
    moe = {"experts": 4, "active": 0.5, "router_steps": 20, "calibration_tokens": 256}
    cfg = CookConfig(stages=[
        StageConfig(kind="prune", steps=3, batch_size=4, lr=1e-3, l0={"unit": "layers", "target": 0.5}),
        StageConfig(kind="prune", steps=3, batch_size=4, lr=1e-3, l0={"unit": "heads", "target": 0.5}),
        StageConfig(kind="quantize", quant={"bits": 8, "kernel": "dequant", "ffn": False}),
        StageConfig(kind="moefy", batch_size=4, moe=moe)])
    report = cook(model, tok, cfg, texts=TEXTS, eval_texts=TEXTS[:4], out_dir=tmp_path, progress=None)
    rows = report["stages"]
    assert rows[0]["prune"]["layers_after"] == 2 and rows[1]["prune"]["n_kv_heads"] == 1
    assert 0 <= rows[3]["moe"]["router_recall"] <= 1 and all("ppl" in r for r in rows)
    with torch.no_grad():
        final = model(**x).logits
    for row in rows:
        loaded, _ = load_model(row["folder"])
        assert loaded.config.num_hidden_layers == 2
        site = f"{arch.layers(loaded)[1].name}.attn.o"
        with hooks.capture(loaded, [site]) as cap, torch.no_grad():
            out = loaded(**x).logits
        assert cap[site].shape[-1] == model.config.hidden_size
    from plmkit.compress.moefication import moe_layers

    assert len(list(moe_layers(loaded))) == 2 and any(isinstance(m, Int8Linear) for m in loaded.modules())
    assert not any(isinstance(m, Int8Linear) for layer in arch.layers(loaded) for m in (layer.ffn_in, layer.ffn_out))
    torch.testing.assert_close(out, final)  # the MoEfied, quantized artifact reloads to the in-memory model
