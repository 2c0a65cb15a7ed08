"""plmkit.infer.offload: streamed weights give the resident model's outputs, within a budget that holds."""
from __future__ import annotations

import time

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.infer import OffloadConfig, offload, offload_stats, parse_budget, restore, scheduler
from plmkit.testing import tiny_inputs, tiny_model

FAMILIES = ["llama", "bert", "gpt2", "t5", "gemma3"]


def _model(family: str = "llama", layers: int = 6, **kw):
    return tiny_model(family, num_hidden_layers=layers, **kw).eval()


def _logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def test_parse_budget():
    assert parse_budget("25%", 1000) == 250
    assert parse_budget("300MB", 1) == 300 * 10**6
    assert parse_budget("1.5GiB", 1) == int(1.5 * 2**30)
    assert parse_budget(12345, 1) == 12345
    for bad in ("abc", "0%", "150%", "-3MB"):
        with pytest.raises(ConfigError):
            parse_budget(bad, 1000)
    assert OffloadConfig.from_json(OffloadConfig(budget="40%", source="disk").to_json()).source == "disk"
    with pytest.raises(ConfigError):
        OffloadConfig(source="cloud")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("source", ["memory", "disk"])
def test_outputs_equal_resident_and_restore_is_exact(family, source):
    model = _model(family)
    x = tiny_inputs(model)
    ref = _logits(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for budget in ("100%", "60%", "45%"):
        try:
            offload(model, budget, source=source, track=True)
        except ConfigError as e:  # the tiny models' fixed weights may not fit the smallest budget
            assert "give at least" in str(e)
            continue
        out = _logits(model, x)
        stats = offload_stats(model)
        assert torch.equal(out, ref), (family, budget)
        assert stats.peak_resident_bytes <= stats.budget_bytes
        if budget != "100%":
            assert stats.streamed_blocks and stats.loads > 0
        restore(model)
        after = model.state_dict()
        assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
        assert torch.equal(_logits(model, x), ref)


def test_every_block_streamed_with_head_and_embedding_rows():
    model = _model("llama", vocab_size=4096)  # the (tied) table is most of the weights, as in small LMs
    x = tiny_inputs(model)
    ref = _logits(model, x)
    offload(model, "25%", track=True)
    s = offload_stats(model)
    assert s.head == "streamed" and s.embedding == "rows" and s.streamed_blocks
    assert torch.equal(_logits(model, x), ref)
    assert s.peak_resident_bytes <= s.budget_bytes <= s.full_bytes // 4
    restore(model)


def test_greedy_generation_identical_with_kv_cache():
    model = _model("llama")
    ids = torch.tensor([[3, 17, 42, 5, 9]])
    gen = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(ids, **gen)
    offload(model, "30%", source="disk")
    with torch.no_grad():
        out = model.generate(ids, **gen)
    assert torch.equal(out, ref)
    restore(model)


def test_budget_holds_at_every_block_including_prefetch():
    model = _model("llama", layers=8)
    offload(model, "40%", track=True)
    s = scheduler(model)
    seen = []
    handles = [layer.register_forward_hook(lambda *a: seen.append(s.resident_bytes()))
               for layer in model.model.layers]
    _logits(model, tiny_inputs(model))
    for h in handles:
        h.remove()
    assert len(seen) == 8 and max(seen) <= s.stats.budget_bytes
    restore(model)


def test_streamed_weights_are_placeholders_between_uses():
    model = _model("llama")
    offload(model, "30%")
    s = offload_stats(model)
    w = model.model.layers[s.streamed_blocks[0]].mlp.down_proj.weight
    assert w.untyped_storage().nbytes() <= 8 and torch.isnan(w).all()
    restore(model)


def test_prefetch_overlaps_load_and_compute(monkeypatch):
    from plmkit.infer.offload import Scheduler

    delay = 0.06  # sleeps dominate the tiny compute, so a loaded machine does not decide the ratio
    fill = Scheduler._fill

    def slow_fill(self, unit, slot):
        time.sleep(delay)
        fill(self, unit, slot)

    monkeypatch.setattr(Scheduler, "_fill", slow_fill)
    times, serial = {}, {}
    for prefetch in (False, True):
        model = _model("llama", layers=8)
        x = tiny_inputs(model)
        offload(model, "30%", prefetch=prefetch, slots=2 if prefetch else 1)
        hooks = [b.register_forward_hook(lambda *a: time.sleep(delay)) for b in model.model.layers]
        _logits(model, x)  # warm-up
        t = time.perf_counter()
        _logits(model, x)
        times[prefetch] = time.perf_counter() - t
        # every load, then every block's compute, on this run's own plan (two slots leave less room for
        # resident blocks, so the prefetching plan may stream one block more)
        serial[prefetch] = (len(offload_stats(model).streamed_blocks) + 8) * delay
        for h in hooks:
            h.remove()
        restore(model)
    assert times[False] >= serial[False] * 0.95
    assert times[True] < serial[True] * 0.8, (times, serial)


def test_offload_from_folder_never_loads_streamed_weights(tmp_path):
    model = _model("llama")
    x = tiny_inputs(model)
    ref = _logits(model, x)
    model.save_pretrained(tmp_path)
    streamed = offload(str(tmp_path), "30%", task="causal-lm", track=True)
    s = offload_stats(streamed)
    assert s.source == "file" and s.streamed_blocks
    w = streamed.model.layers[s.streamed_blocks[0]].self_attn.q_proj.weight
    assert w.untyped_storage().nbytes() <= 8
    assert torch.equal(_logits(streamed, x), ref)
    restore(streamed)
    assert torch.equal(_logits(streamed, x), ref)


def test_budget_below_one_block_is_a_clear_error():
    model = _model("llama")
    with pytest.raises(ConfigError, match="give at least"):
        offload(model, "2%")
    offload(model, "50%")
    with pytest.raises(ConfigError, match="already offloaded"):
        offload(model, "50%")
    restore(model)
    with pytest.raises(ConfigError, match="not offloaded"):
        restore(model)


@pytest.mark.parametrize("budget", ["50%", "30%"])
def test_lora_steps_through_offloaded_blocks_change_only_adapters(budget):
    """The head streams in several chunks through two slots, so backward must load each chunk again."""
    peft = pytest.importorskip("peft")
    x = tiny_inputs(_model("llama"), pad_last=0)
    labels = x["input_ids"].clone()
    grads = {}
    for streamed in (False, True):
        model = _model("llama", vocab_size=1024)
        model.config.use_cache = False
        model.enable_input_require_grads()
        torch.manual_seed(1)  # the same random adapters in both runs
        lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                         init_lora_weights=False))
        frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
        if streamed:
            offload(model, budget, track=True)
            stats = offload_stats(model)
            assert stats.slots == 2 and stats.streamed_blocks
            assert stats.head == "streamed" and len(scheduler(model).units) - len(stats.streamed_blocks) > 2
        lora.train()
        loss = lora(**x, labels=labels).loss
        loss.backward()
        grads[streamed] = {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad}
        assert all("lora_" in n for n in grads[streamed])
        if streamed:
            opt = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.1)
            losses = []
            for _ in range(3):
                opt.zero_grad()
                out = lora(**x, labels=labels).loss
                out.backward()
                opt.step()
                losses.append(out.item())
            assert losses[-1] < losses[0]
            restore(model)
            after = dict(lora.named_parameters())
            assert all(torch.equal(after[n], v) for n, v in frozen.items() if n in after)
    assert grads[True].keys() == grads[False].keys()
    for n in grads[False]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-5, atol=1e-6)


def test_tuning_with_one_streaming_buffer_is_a_clear_error():
    model = _model("llama")
    model.config.use_cache = False
    x = tiny_inputs(model, pad_last=0)
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # something to train, so that backward runs
    offload(model, "40%", prefetch=False, slots=1)
    model.train()
    loss = model(**x, labels=x["input_ids"]).loss
    with pytest.raises(ConfigError, match="2 streaming buffers"):
        loss.backward()
    restore(model)


def test_zero_copy_from_mapped_files_within_budget(tmp_path):
    """Blocks of a few MB stream in place from the mapped safetensors; the mapped pages are measured."""
    model = tiny_model("llama", num_hidden_layers=5, hidden_size=192, intermediate_size=768, vocab_size=2048).eval()
    x = tiny_inputs(model)
    ref = _logits(model, x)
    ids = torch.tensor([[3, 17, 42, 5, 9]])
    with torch.no_grad():
        gen_ref = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    model.save_pretrained(tmp_path)
    streamed = offload(str(tmp_path), "45%", task="causal-lm", track=True)
    s = offload_stats(streamed)
    assert s.zero_copy and s.streamed_blocks and s.slots == 2
    assert torch.equal(_logits(streamed, x), ref)
    with torch.no_grad():
        assert torch.equal(streamed.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0), gen_ref)
    assert 0 < scheduler(streamed).mapped.rss() <= s.budget_bytes
    assert s.peak_resident_bytes <= s.budget_bytes
    restore(streamed)
    assert torch.equal(_logits(streamed, x), ref)
    # The same in-memory model with a disk store also maps it.
    offload(model, "45%", source="disk", track=True)
    assert offload_stats(model).zero_copy and torch.equal(_logits(model, x), ref)
    restore(model)


@pytest.mark.parametrize("size", [dict(), dict(hidden_size=192, intermediate_size=768, vocab_size=2048)],
                         ids=["copied", "zero-copy"])
def test_int8_streams_int8_bytes_and_matches_the_quantized_model(tmp_path, size):
    from plmkit import load_model
    from plmkit.compress.quant import quantize_int8, save_quantized
    from plmkit.testing import tiny_tokenizer

    model = tiny_model("llama", num_hidden_layers=5, **size).eval()
    x = tiny_inputs(model)
    fp32_pass = sum(p.numel() * 4 for layer in model.model.layers for p in layer.parameters())
    quantize_int8(model)
    save_quantized(model, tmp_path, tokenizer=tiny_tokenizer())
    quantized, _ = load_model(str(tmp_path))
    ref = _logits(quantized, x)
    streamed = offload(str(tmp_path), "30%", task="causal-lm", track=True)
    s = offload_stats(streamed)
    sched = scheduler(streamed)
    dtypes = {r.dtype for u in sched.units for r in u.refs if r.owner is not None}
    assert torch.int8 in dtypes and torch.float32 in dtypes  # int8 weights, float32 scales and norms
    assert all(r.host is None for u in sched.units for r in u.refs)  # nothing in host memory: read from the file
    assert torch.equal(_logits(streamed, x), ref)
    assert s.peak_resident_bytes <= s.budget_bytes
    blocks = [u for u in sched.units if u.name.startswith("block")]
    assert sum(r.nbytes for u in blocks for r in u.refs) < 0.3 * fp32_pass * len(blocks) / 5
    restore(streamed)


def test_generate_cli_prints_text_speed_and_budget(tmp_path, capsys):
    from plmkit.cli import main
    from plmkit.testing import tiny_tokenizer

    model = _model("llama")
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    main(["generate", "the capital of", "--model", str(tmp_path), "--budget", "40%", "--max-new-tokens", "5"])
    lines = capsys.readouterr().out.strip().splitlines()
    stats = lines[-1]
    assert stats.startswith("# 5 tokens") and "tokens/s" in stats and "peak RSS" in stats
    resident, budget = (float(stats.split(s)[1].split()[0]) for s in ("resident weights ", "budget "))
    assert 0 < resident <= budget
    with pytest.raises(SystemExit):  # a budget below one block: one line, no traceback
        main(["generate", "x", "--model", str(tmp_path), "--budget", "1kB"])
    assert "give at least" in capsys.readouterr().err
