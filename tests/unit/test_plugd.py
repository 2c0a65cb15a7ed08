import json
import multiprocessing as mp
import subprocess
import sys

import pytest
import torch

from plmkit import arch
from plmkit.errors import ConfigError, PlmkitError
from plmkit.plugins import plugd
from plmkit.plugins.plugd import PlugDConfig, PluginStore, tasks
from plmkit.testing import TINY_CONFIGS, tiny_inputs, tiny_model, tiny_tokenizer

FAMILIES = sorted(TINY_CONFIGS)
DOCS = ["the capital of testland is alpha.", "beta is a city by the sea, far away."]


def _inputs(model):
    inputs = tiny_inputs(model)
    return {k: v for k, v in inputs.items() if k != "token_type_ids"}


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_plugin_leaves_every_family_unchanged_and_a_real_one_changes_it(name):
    model, tok = tiny_model(name), tiny_tokenizer()
    plugd.attach(model, PlugDConfig(max_doc_tokens=16))
    plugins = plugd.encode(model, tok, DOCS)
    inputs = _inputs(model)
    with torch.no_grad():
        plain = model(**inputs).logits
        with plugd.plugged(model, [p[:0] for p in plugins]):
            empty = model(**inputs).logits
        with plugd.plugged(model, plugins):
            full = model(**inputs).logits
        after = model(**inputs).logits
    torch.testing.assert_close(empty, plain)
    assert (full - plain).abs().max() > 1e-4
    torch.testing.assert_close(after, plain)  # attention restored on exit


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_plugin_is_projected_by_the_layers_own_norm_and_key_value_weights(name):
    model, tok = tiny_model(name), tiny_tokenizer()
    plugd.attach(model, PlugDConfig(layers=[1]))
    plugin = plugd.encode(model, tok, DOCS[:1])[0]
    inputs = {k: v[:1] for k, v in _inputs(model).items()}
    layer = arch.layers(model)[1]
    geo = arch.attention(model)
    with torch.no_grad():
        with plugd.plugged(model, [plugin]):
            got = model(**inputs).logits
        x = plugin
        if name != "bert":  # pre-norm families normalise their attention input; BERT is post-norm
            x = layer.norms["attn"](x)
        if layer.attn_qkv is not None:
            _, k, v = layer.attn_qkv(x).split(x.shape[-1], -1)
        else:
            k, v = layer.attn_k(x), layer.attn_v(x)
        shape = (x.shape[0], geo.n_kv_heads, geo.head_dim)
        key, value = k.view(shape).transpose(0, 1), v.view(shape).transpose(0, 1)
        arch.add_kv_vectors(model, 1, x.shape[0], key=key, value=value)
        want = model(**inputs).logits
        arch.remove_kv_vectors(model)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5", "gemma3"])
def test_document_states_are_the_input_of_the_first_plugged_block(name):
    model, tok = tiny_model(name), tiny_tokenizer()
    plugd.attach(model, PlugDConfig())
    ids = tok(DOCS[:1], return_tensors="pt")
    enc = model.get_encoder() if name == "t5" else arch.base_model(model)
    with torch.no_grad():
        out = enc(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(plugd.document_states(model, tok, DOCS[:1])[0], out.hidden_states[1][0])


def test_document_states_come_from_the_first_plugged_layer_by_default_or_the_last_one():
    model, tok = tiny_model("llama", num_hidden_layers=4), tiny_tokenizer()
    plugd.attach(model, PlugDConfig())
    assert plugd.chosen_layers(model, plugd.config_of(model)) == [2, 3]
    ids = tok(DOCS[:1], return_tensors="pt")
    with torch.no_grad():
        out = model.model(**ids, output_hidden_states=True)
    torch.testing.assert_close(plugd.document_states(model, tok, DOCS[:1])[0], out.hidden_states[2][0])
    plugd.detach(model)
    plugd.attach(model, PlugDConfig(doc_layer=-1))
    torch.testing.assert_close(plugd.document_states(model, tok, DOCS[:1])[0], out.last_hidden_state[0])


def test_fresh_map_net_is_the_identity_and_compression_pools_chunks():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    plugd.attach(model, PlugDConfig(compress=3))
    states = plugd.document_states(model, tok, DOCS[:1])[0]
    plugin = plugd.encode(model, tok, DOCS[:1])[0]
    assert plugin.shape == (3, states.shape[1])
    torch.testing.assert_close(plugin, torch.stack([c.mean(0) for c in torch.tensor_split(states, 3)]))
    assert plugd.pool(states, None) is states


def test_map_net_save_load_round_trip_and_one_line_errors(tmp_path):
    model = tiny_model("llama")
    net = plugd.attach(model, PlugDConfig(compress=4), seed=3)
    with torch.no_grad():
        net.down.weight.normal_()
    plugd.save(model, tmp_path / "map")
    other = tiny_model("llama")
    loaded = plugd.load(other, tmp_path / "map")
    assert plugd.config_of(other).compress == 4
    torch.testing.assert_close(loaded.down.weight, net.down.weight)
    assert plugd.identity(other) == plugd.identity(model)
    with pytest.raises(PlmkitError, match="does not fit"):
        plugd.load(tiny_model("llama", hidden_size=48, intermediate_size=64), tmp_path / "map")
    with pytest.raises(PlmkitError, match="holds no PlugD map network"):
        plugd.load(other, tmp_path)
    with pytest.raises(ConfigError, match="already has"):
        plugd.attach(other)
    with pytest.raises(ConfigError, match="do not exist"):
        plugd.attach(tiny_model("llama"), PlugDConfig(layers=[7]))


def test_identity_follows_backbone_map_net_and_config_but_not_adapters():
    model = tiny_model("llama")
    plugd.attach(model, PlugDConfig())
    base = plugd.identity(model)
    with_lora = plugd.add_adapters(model, ["qa"])
    assert plugd.identity(with_lora) == base
    with torch.no_grad():
        plugd.map_net(with_lora).down.bias.add_(1.0)
    assert plugd.identity(with_lora) != base
    other = tiny_model("llama", seed=1)
    plugd.attach(other, PlugDConfig())
    assert plugd.identity(other) != base
    again = tiny_model("llama")
    plugd.attach(again, PlugDConfig(compress=2))
    assert plugd.identity(again) != base


def test_store_round_trip_content_key_and_lru_eviction(tmp_path):
    store = PluginStore(tmp_path / "s", "model-a", max_bytes=None)
    a, b = torch.randn(5, 8), torch.randn(7, 8)
    sa = store.put("a", "text a", a)
    assert sa.vectors == 5 and sa.bytes > 5 * 8 * 4
    store.put("b", "text b", b)
    torch.testing.assert_close(store.get("a"), a)
    torch.testing.assert_close(store.get(text="text b"), b)
    assert store.get("missing") is None and store.get(text="other text") is None
    assert PluginStore(tmp_path / "s", "model-b").get(text="text a") is None  # another identity, another key
    assert store.key("text a") != PluginStore(tmp_path / "s", "model-b").key("text a")
    import os
    import time

    for i, key in enumerate([store.key("text a"), store.key("text b")]):  # a older than b
        os.utime(store._path(key), (time.time() - 100 + i, time.time() - 100 + i))
    store.get("a")  # a read makes a the most recently used
    capped = PluginStore(tmp_path / "s", "model-a", max_bytes=sa.bytes + store.entries()[0].bytes)
    capped.put("c", "text c", torch.randn(5, 8))
    assert capped.get("b") is None  # the least recently used went
    assert capped.get("a") is not None and capped.get("c") is not None
    assert capped.total_bytes() <= capped.max_bytes


def test_store_crash_mid_write_keeps_the_previous_plugin(tmp_path, monkeypatch):
    store = PluginStore(tmp_path, "m")
    old = torch.randn(4, 8)
    store.put("a", "text", old)
    import safetensors.torch

    def broken(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        store.put("a", "text", torch.randn(4, 8))
    torch.testing.assert_close(store.get("a"), old)


def _writer(root: str, worker: int) -> None:
    store = PluginStore(root, "m")
    shared = torch.arange(4000, dtype=torch.float32).reshape(500, 8)
    for i in range(20):
        store.put("shared", "the same text", shared)
        store.put(f"own-{worker}-{i}", f"text {worker} {i}", torch.full((50, 8), float(worker)))


def test_two_processes_writing_one_plugin_leave_one_valid_file(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = PluginStore(tmp_path, "m")
    torch.testing.assert_close(store.get("shared"), torch.arange(4000, dtype=torch.float32).reshape(500, 8))
    assert len(store) == 1 + 2 * 20
    index = json.loads((tmp_path / "index.json").read_text())
    assert all(f"own-{w}-{i}" in index for w in (1, 2) for i in range(20))
    assert not list(tmp_path.glob("plugins/.*.tmp"))


def _trainable_rows(model, tok, n=8):
    plugins = plugd.encode(model, tok, DOCS)
    return [{"input": "question: where?\nanswer:", "target": " alpha\n", "plugin": plugins[i % 2]} for i in range(n)]


def test_adapter_training_changes_only_that_adapter(tmp_path):
    from plmkit.train import TrainConfig

    model, tok = tiny_model("llama"), tiny_tokenizer()
    plugd.attach(model, PlugDConfig())
    rows = _trainable_rows(model, tok)
    model = plugd.add_adapters(model, ["qa", "verify"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    plugd.train_adapter(model, tok, "qa", rows, TrainConfig(out_dir=str(tmp_path), max_steps=3, batch_size=4,
                                                             lr=1e-2, resume=False, progress=False))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "the adapter did not train"
    assert all("lora_" in k and ".qa." in k for k in changed), sorted(changed)[:5]
    assert [p.requires_grad for p in model.parameters()] == flags


def test_map_net_pretraining_changes_only_the_map_net(tmp_path):
    from plmkit.train import TrainConfig

    model, tok = tiny_model("llama"), tiny_tokenizer()
    plugd.attach(model, PlugDConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    examples = [{"text": DOCS[i % 2], "prompt": "next sentence:", "target": " it is far.\n"} for i in range(8)]
    res = plugd.pretrain_map_net(model, tok, examples, TrainConfig(out_dir=str(tmp_path), max_steps=3, batch_size=4,
                                                                    lr=1e-2, resume=False, progress=False))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("plmkit_plugd.map_net.") for k in changed), sorted(changed)
    assert len(res.losses) >= 1
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_generation_with_a_plugin_matches_uncached_generation():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    plugd.attach(model, PlugDConfig())
    plugins = plugd.encode(model, tok, DOCS)
    batch = tok(["where is it", "who"], return_tensors="pt", padding=True)
    gen = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        with plugd.plugged(model, plugins):
            cached = model.generate(**batch, **gen)
            uncached = model.generate(**batch, **gen, use_cache=False)
        plain = model.generate(**batch, **gen)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), atol=1e-4, rtol=1e-4)
    assert (cached.scores[0] - plain.scores[0]).abs().max() > 1e-4


def test_tasks_share_documents_and_split_by_document():
    docs = [{"id": f"d{i}", "country": f"C{i}", "text": f"C{i} ... capital K{i}.",
             "facts": {"capital": f"K{i}", "continent": "Europe" if i % 2 else "Asia"}} for i in range(20)]
    split = tasks.split_documents(docs, 2, 5, seed=1)
    ids = [{d["id"] for d in part} for part in (split.train, split.validation, split.test)]
    assert not (ids[0] & ids[2]) and not (ids[0] & ids[1]) and sum(map(len, ids)) == 20
    qa = tasks.qa_examples(split.test)
    assert len(qa) == 2 * 5 and all(r["answer"] in r["target"] for r in qa)
    claims = tasks.verification_examples(docs, seed=0)
    by_id = {d["id"]: d for d in docs}
    for c in claims:
        d = by_id[c["doc"]]
        true_claims = [tasks.CLAIMS[rel].format(d["country"], v) for rel, v in d["facts"].items()]
        assert any(f"Claim: {t}\n" in c["prompt"] for t in true_claims) == c["label"]
    assert 0.2 < sum(c["label"] for c in claims) / len(claims) < 0.8


def test_country_documents_hold_every_fact_asked_about():
    docs = tasks.country_documents()
    assert len(docs) > 200
    for d in docs:
        assert all(v in d["text"] for v in d["facts"].values())


def test_cli_encode_and_ask(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(DOCS)))
    run = lambda *a: subprocess.run([sys.executable, "-m", "plmkit.cli", "plugd", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    r = run("encode", "--model", str(tmp_path / "m"), "--docs", str(tmp_path / "docs.jsonl"), "--store",
            str(tmp_path / "store"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "2 plugins stored" in r.stdout
    r = run("encode", "--model", str(tmp_path / "m"), "--docs", str(tmp_path / "docs.jsonl"), "--store",
            str(tmp_path / "store"), "--no-progress")
    assert "0 plugins stored (2 already there)" in r.stdout
    r = run("ask", "--store", str(tmp_path / "store"), "--doc", "d0", "where?", "--max-new-tokens", "3")
    assert r.returncode == 0, r.stderr
    r = run("ask", "--store", str(tmp_path / "store"), "--doc", "nope", "where?")
    assert r.returncode != 0 and "is not in" in r.stderr and "Traceback" not in r.stderr
