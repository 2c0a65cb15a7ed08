import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from plmkit import device as plmkit_device
from plmkit.errors import ConfigError
from plmkit.eval.lm import masked_lm_loss, next_token_accuracy, perplexity
from plmkit.testing import tiny_model, tiny_tokenizer
from plmkit.train import TrainConfig, train, unwrap_model
from plmkit.train.heads import train_lm


def _data(n=24, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable pattern: every sequence repeats one token
    return [{"input_ids": torch.full((length,), int(t)), "labels": torch.full((length,), int(t))}
            for t in torch.randint(3, 90, (n,), generator=g)]


def _collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def test_loss_decreases_and_eval_runs(tmp_path):
    model = tiny_model("llama")
    seen = []
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=30, batch_size=4, lr=1e-2, log_every=5, eval_every=15,
                      progress=False)
    res = train(model, _data(), cfg, collate_fn=_collate, eval_fn=lambda m: seen.append(1) or {"x": 1.0})
    assert res.step == 30 and len(res.losses) == 6
    assert res.losses[-1] < res.losses[0] * 0.7
    assert len(res.evals) == 2 and len(seen) == 2
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20, 25, 30]  # every log step; evals at 15 and 30
    assert [x["step"] for x in lines if "x" in x] == [15, 30] and all("loss" in x and "seconds" in x for x in lines)
    assert json.loads((tmp_path / "train_config.json").read_text())["max_steps"] == 30


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path):
    kw = dict(max_steps=12, batch_size=4, lr=1e-3, save_every=5, log_every=5, progress=False, seed=3)
    make = lambda: tiny_model("bert", head="lm", seed=1)  # noqa: E731  (dropout on: RNG state is restored too)
    full = make()
    full_res = train(full, _data(), TrainConfig(out_dir=str(tmp_path / "a"), **kw), collate_fn=_collate)

    calls = []

    def crashing(model, batch):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt("killed")
        return model(**batch).loss

    with pytest.raises(KeyboardInterrupt):
        train(make(), _data(), TrainConfig(out_dir=str(tmp_path / "b"), **kw), crashing, collate_fn=_collate)
    resumed = make()  # a new process rebuilds the model and resumes from the step-5 checkpoint
    res = train(resumed, _data(), TrainConfig(out_dir=str(tmp_path / "b"), **kw), collate_fn=_collate)
    assert res.resumed_from == 5 and res.step == 12
    # the LR actually used at each of the 12 steps, the restored scheduler continuing at step 6
    assert res.lrs == full_res.lrs == pytest.approx([1e-3 * (12 - s) / 12 for s in range(12)], abs=1e-12)
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["step-10", "step-12"]  # keep_checkpoints=2
    assert list((tmp_path / "b" / "checkpoints" / "step-12").glob("*.safetensors"))


def test_bad_config_and_frozen_model(tmp_path):
    with pytest.raises(ConfigError):
        TrainConfig(out_dir=str(tmp_path), max_steps=0)
    model = tiny_model("gpt2")
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="trainable"):
        train(model, _data(), TrainConfig(out_dir=str(tmp_path), progress=False), collate_fn=_collate)


def test_one_process_can_train_in_fp32_then_bf16(tmp_path):
    """accelerate's process-wide state must not block a second run with another precision."""
    for i, precision in enumerate(("no", "bf16", "no")):
        res = train(tiny_model("llama"), _data(), TrainConfig(out_dir=str(tmp_path / str(i)), max_steps=2, batch_size=4,
                                                              mixed_precision=precision, progress=False),
                    collate_fn=_collate)
        assert res.step == 2


def test_lr_log_steps_once_per_optimizer_step_with_accumulation(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=6, warmup_steps=2, lr=1e-3, batch_size=2, grad_accum=3,
                      progress=False)
    res = train(tiny_model("llama"), _data(), cfg, collate_fn=_collate)
    assert res.lrs == pytest.approx([0.0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4], abs=1e-12)


def _linear_dtypes(module: nn.Module) -> list[torch.dtype]:
    """Records the output dtype of every call of ``module``."""
    seen: list[torch.dtype] = []
    module.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_bf16_training_leaves_the_model_as_it_was(tmp_path):
    model = tiny_model("llama")
    seen = _linear_dtypes(model.model.layers[0].mlp.down_proj)
    res = train(model, _data(), TrainConfig(out_dir=str(tmp_path), max_steps=2, batch_size=4, mixed_precision="bf16",
                                            progress=False), collate_fn=_collate)
    assert res.mixed_precision == "bf16" and set(seen) == {torch.bfloat16}  # it did train in bf16
    assert "forward" not in model.__dict__ and model.forward.__func__ is type(model).forward  # no autocast patch
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    seen.clear()
    with torch.no_grad():
        logits = model(**_collate(_data(2))).logits
    assert seen == [torch.float32] and logits.dtype == torch.float32  # a later forward runs in fp32


@pytest.mark.parametrize("precision, want", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_masked_lm_loss_path_is_autocast_too(tmp_path, precision, want):
    """eval.lm.lm_loss calls the base model and the head directly, past accelerate's forward patch."""
    model = tiny_model("bert")
    seen = _linear_dtypes(model.cls.predictions.transform.dense)
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=2, batch_size=4, mixed_precision=precision,
                      progress=False)
    train_lm(model, tiny_tokenizer(), ["some text to mask here", "and another line"] * 4, cfg)
    assert seen and set(seen) == {want}


@pytest.mark.parametrize("forced, want", [("0", "no"), ("1", "bf16")])
def test_mixed_precision_auto_follows_plmkit_device(tmp_path, monkeypatch, forced, want):
    monkeypatch.setenv("PLMKIT_BF16", forced)
    plmkit_device.bf16_is_fast.cache_clear()
    try:
        model = tiny_model("llama")
        seen = _linear_dtypes(model.model.layers[0].mlp.down_proj)
        res = train(model, _data(), TrainConfig(out_dir=str(tmp_path), max_steps=1, batch_size=4,
                                                mixed_precision="auto", progress=False), collate_fn=_collate)
    finally:
        plmkit_device.bf16_is_fast.cache_clear()
    assert res.mixed_precision == want and set(seen) == {torch.bfloat16 if want == "bf16" else torch.float32}


def test_unwrap_model_sees_through_ddp_style_wrappers():
    model = tiny_model("llama")
    assert unwrap_model(model) is model
    assert unwrap_model(torch.nn.DataParallel(model)) is model


class _Stop(Exception):
    pass


class _MetaSpy(nn.Module):
    """A 'model' living on the meta device: records which devices its inputs arrive on, then stops the caller."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.empty(1, device="meta"))
        self.config = SimpleNamespace(model_type="spy")
        self.devices: set[str] = set()

    def forward(self, **inputs):
        self.devices |= {v.device.type for v in inputs.values() if torch.is_tensor(v)}
        raise _Stop


@pytest.mark.parametrize("metric", ["perplexity", "next_token_accuracy", "masked_lm_loss"])
def test_lm_metrics_move_batches_to_the_models_device(metric):
    tok, spy = tiny_tokenizer(), _MetaSpy()
    calls = {
        "perplexity": lambda: perplexity(spy, [dict(tok(["some text"], return_tensors="pt"))]),
        "next_token_accuracy": lambda: next_token_accuracy(spy, tok, ["the capital of france is"], ["paris"]),
        "masked_lm_loss": lambda: masked_lm_loss(spy, tok, ["some text to mask", "more text"], mlm_probability=0.5),
    }
    with pytest.raises(_Stop):
        calls[metric]()
    assert spy.devices == {"meta"}


@pytest.mark.parametrize("dev", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_lm_metrics_on_a_device_match_the_cpu(dev):
    tok, model = tiny_tokenizer(), tiny_model("llama")
    texts = ["some text here", "a longer line of text"]
    batches = [dict(tok(texts, return_tensors="pt", padding=True))]  # built on the CPU
    ref = perplexity(model, batches), next_token_accuracy(model, tok, texts, ["x", "y"])
    model.to(dev)
    got = perplexity(model, batches), next_token_accuracy(model, tok, texts, ["x", "y"])
    assert math.isfinite(ref[0]) and got[0] == pytest.approx(ref[0], rel=1e-4) and got[1] == ref[1]
    bert = tiny_model("bert")
    ref_mlm = masked_lm_loss(bert, tok, texts, seed=1)
    assert masked_lm_loss(bert.to(dev), tok, texts, seed=1) == pytest.approx(ref_mlm, rel=1e-4)


@pytest.mark.parametrize("bf16_over_fp32, want", [(1.9, True), (3.5, True), (26.0, False)])
def test_bf16_decision_tolerates_a_busy_machine_but_not_emulated_kernels(monkeypatch, bf16_over_fp32, want):
    # a native bf16 matmul measured 1.3-2.0x the fp32 time here while another process used the cores
    monkeypatch.delenv("PLMKIT_BF16", raising=False)
    monkeypatch.setattr(plmkit_device, "_cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setattr(plmkit_device, "_matmul_times", lambda: (bf16_over_fp32 * 1e-3, 1e-3))
    plmkit_device.bf16_is_fast.cache_clear()
    try:
        assert plmkit_device.bf16_is_fast("cpu") is want
    finally:
        plmkit_device.bf16_is_fast.cache_clear()


def test_bf16_and_fp32_matmuls_are_timed_in_turn(monkeypatch):
    order = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: order.append(a.dtype) or real_mm(a, b))
    bf16, fp32 = plmkit_device._matmul_times(n=3)
    assert bf16 > 0 and fp32 > 0
    timed = order[2:]  # after one warm-up each
    assert timed == [torch.bfloat16, torch.float32] * 3
