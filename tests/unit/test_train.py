import json

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.testing import tiny_model
from plmkit.train import TrainConfig, train


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
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "train_config.json").read_text())["max_steps"] == 30


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path):
    kw = dict(max_steps=12, batch_size=4, lr=1e-3, save_every=5, log_every=5, progress=False, seed=3)
    make = lambda: tiny_model("bert", head="lm", seed=1)  # noqa: E731  (dropout on: RNG state is restored too)
    full = make()
    train(full, _data(), TrainConfig(out_dir=str(tmp_path / "a"), **kw), collate_fn=_collate)

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
