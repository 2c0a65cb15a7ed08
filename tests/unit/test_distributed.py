"""plmkit.train under two real processes: ``torchrun --nproc_per_node 2 --standalone`` on CPU (gloo).

One launch of tests/unit/_dist_worker.py (~15 s on 2 idle cores) runs every scenario; in one a run is killed
part-way and a new ``train()`` call (new model, optimizer, scheduler and Accelerator) resumes it from its
checkpoint. The one-process references are trained here, in this process, with batches twice as large.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from plmkit.testing import tiny_model, tiny_tokenizer
from plmkit.train import train
from plmkit.train.heads import train_lm

WORKER = Path(__file__).with_name("_dist_worker.py")
_spec = importlib.util.spec_from_file_location("_dist_worker", WORKER)
w = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(w)

SCENARIOS = ["lr", "lr_accum", "lr_crash", "lr_resume", "equiv", "lm_llama", "lm_bert", "head_bert", "ki", "ernie"]


def _env() -> dict[str, str]:
    drop = ("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_", "PLMKIT_BF16")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="")
    return env


def _launch(out: Path, *scenarios: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(WORKER),
           str(out), *scenarios]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"torchrun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _launch(out, *SCENARIOS)

    def ranks(name: str) -> list[dict]:
        return [torch.load(out / name / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    ranks.out = out
    return ranks


def _schedule(steps: int, warmup: int, lr: float) -> list[float]:
    """transformers' linear warm-up/decay, written out: the LR of optimizer step s (0-based)."""
    return [lr * s / warmup if s < warmup else lr * (steps - s) / (steps - warmup) for s in range(steps)]


def _assert_same_weights(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


def test_lr_schedule_is_the_single_process_one_fresh_accumulated_and_resumed(dist):
    want = _schedule(w.LR_STEPS, w.LR_WARMUP, w.LR)  # [0, .00025, .0005, .00075, .001, .00075, .0005, .00025]
    for name in ("lr", "lr_accum", "lr_resume"):
        for r in dist(name):
            assert r["lrs"] == pytest.approx(want, abs=1e-12), name
    assert all(r["crashed"] for r in dist("lr_crash"))
    assert [r["resumed_from"] for r in dist("lr_resume")] == [3, 3]  # the scheduler came from the step-3 checkpoint
    one = train(w.toy_model(), w.toy_data(), w.lr_config(str(dist.out / "one")), w.toy_loss())
    assert one.lrs == pytest.approx(want, abs=1e-12)


def test_only_the_main_process_writes(dist):
    run = dist.out / "lr" / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 9))  # log_every=1, one line per step, not one per process
    assert [x["step"] for x in lines if "w" in x] == [4, 8]  # eval_every=4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-6", "step-8"]
    ck = run / "checkpoints" / "step-8"
    assert (ck / "DONE").exists() and (ck / "custom_checkpoint_0.pkl").exists()  # the scheduler is checkpointed
    assert {p.name for p in ck.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}


def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(dist):
    r0, r1 = dist("equiv")
    # accelerate deals torch's own batches of B round-robin: rank i gets batches i, i+2, ... of each epoch
    cfg = w.equiv_config("unused", batch_size=2)
    steps_per_epoch = len(w.toy_data()) // (2 * cfg.batch_size)
    for step in range(cfg.max_steps):
        epoch, k = divmod(step, steps_per_epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        batches = [b.tolist() for b in DataLoader(range(len(w.toy_data())), batch_size=2, shuffle=True, generator=g)]
        assert r0["seen"][step] == batches[2 * k] and r1["seen"][step] == batches[2 * k + 1], step
    _assert_same_weights(r0["state"], r1["state"], rtol=0, atol=0)  # DDP keeps the replicas identical

    seen: list[list[int]] = []
    model = w.toy_model()
    one = train(model, w.toy_data(), w.equiv_config(str(dist.out / "equiv_one"), batch_size=4), w.toy_loss(seen))
    assert seen == [a + b for a, b in zip(r0["seen"], r1["seen"])]  # the same samples at every step
    assert r0["lrs"] == pytest.approx(one.lrs, abs=1e-12)
    assert r0["losses"] == pytest.approx(one.losses, rel=1e-5)  # the gathered mean is the batch mean
    assert not torch.equal(model[0].weight, w.toy_model()[0].weight)
    _assert_same_weights(r0["state"], model.state_dict(), rtol=1e-5, atol=1e-6)


def test_train_lm_and_fit_lm_head_under_ddp(dist):
    """A causal LM matches the one-process run; for a masked LM (random masks drawn per process) the replicas
    stay identical, which needs the forward to go through DDP (else the gradients are not all-reduced)."""
    r0, r1 = dist("lm_llama")
    model = tiny_model("llama", seed=3)
    one = train_lm(model, tiny_tokenizer(), w.lm_texts(), w.lm_config(str(dist.out / "llama_one"), batch_size=4))
    assert r0["losses"] == pytest.approx(one.losses, rel=1e-4)
    _assert_same_weights(r0["state"], r1["state"], rtol=0, atol=0)
    _assert_same_weights(r0["state"], model.state_dict(), rtol=1e-4, atol=1e-5)

    init = tiny_model("bert", seed=3).state_dict()
    for name, changed in (("lm_bert", "bert.encoder.layer.0.attention.self.query.weight"),
                          ("head_bert", "cls.predictions.transform.dense.weight")):
        r0, r1 = dist(name)
        _assert_same_weights(r0["state"], r1["state"], rtol=0, atol=0)
        assert not torch.equal(r0["state"][changed], init[changed]), name
        assert all(torch.isfinite(torch.tensor(r0["losses"])))
    # fit_lm_head trains only the head: the encoder is untouched on every process
    assert torch.equal(dist("head_bert")[0]["state"]["bert.encoder.layer.0.attention.self.query.weight"],
                       init["bert.encoder.layer.0.attention.self.query.weight"])


def test_a_knowledge_inheritance_step_runs_on_two_processes(dist):
    r0, r1 = dist("ki")
    _assert_same_weights(r0["state"], r1["state"], rtol=0, atol=0)
    drop = lambda c: [{k: v for k, v in e.items() if k != "seconds"} for e in c]  # noqa: E731  (each its own clock)
    assert drop(r0["curve"]) == drop(r1["curve"])  # counters are summed over processes, the same on each
    tokens = 12  # per block
    last = r0["curve"][-1]
    assert last["tokens"] == 4 * 2 * 2 * tokens  # 4 steps x 2 processes x batch 2
    assert last["teacher_flops"] == 2 * r0["n_teacher"] * 2 * 2 * 2 * tokens  # the teacher ran for 2 steps
    assert last["flops"] == 6 * r0["n"] * last["tokens"] + last["teacher_flops"]


def test_ernie_dea_pretraining_runs_on_two_processes(dist):
    r0, r1 = dist("ernie")
    _assert_same_weights(r0["state"], r1["state"], rtol=0, atol=0)  # replicas stay identical
    assert any(k.endswith("aggregator.fuse.weight") for k in r0["state"])  # the aggregators are the model's
    assert r0["totals"]["entities"] == r1["totals"]["entities"] > 0  # counted over both processes
    assert all(torch.isfinite(torch.tensor(r0["losses"])))
