"""Worker for tests/unit/test_distributed.py: run under ``torchrun --nproc_per_node 2`` (CPU, gloo) or plain
``python`` (one process). ``python _dist_worker.py OUT SCENARIO...``; each scenario writes
``OUT/SCENARIO/rank{R}.pt`` with what this rank saw (learning rates, sample ids, final weights).

The toy model, data and loss live here so that the test builds the one-process reference from the same code.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

LR_STEPS, LR_WARMUP, LR = 8, 4, 1e-3


def toy_model() -> nn.Module:
    """A small MLP without dropout, initialised from its own generator (independent of the global RNG)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def toy_data(n: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = torch.sin(x.sum(-1))
    return [{"x": x[i], "y": y[i], "idx": i} for i in range(n)]


def toy_loss(seen: list[list[int]] | None = None, crash_at: int | None = None):
    """Per-sample mean squared error (so a shard's mean averaged over equal shards is the batch mean);
    records the sample ids of every micro-batch in ``seen``; raises after ``crash_at`` calls."""
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        if crash_at is not None and len(calls) == crash_at:
            raise KeyboardInterrupt("simulated crash")
        if seen is not None:
            seen.append(batch["idx"].tolist())
        return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()

    return loss_fn


def lm_texts(n: int = 8, length: int = 12) -> list[str]:
    """Texts of equal token length (character tokenizer), so no batch is padded and every shard has as many
    target tokens as every other: the mean over shards equals the mean over the whole batch."""
    g = torch.Generator().manual_seed(2)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(letters[i] for i in torch.randint(0, 26, (length,), generator=g).tolist()) for _ in range(n)]


def equiv_config(out_dir: str, batch_size: int, **kw):
    from plmkit.train import TrainConfig

    return TrainConfig(out_dir=out_dir, max_steps=6, batch_size=batch_size, lr=1e-2, warmup_steps=2, log_every=1,
                       progress=False, seed=5, **kw)


def lm_config(out_dir: str, batch_size: int):
    from plmkit.train import TrainConfig

    return TrainConfig(out_dir=out_dir, max_steps=4, batch_size=batch_size, lr=1e-2, warmup_steps=1, log_every=1,
                       progress=False, seed=7)


def lr_config(out_dir: str, **kw):
    from plmkit.train import TrainConfig

    return TrainConfig(out_dir=out_dir, max_steps=LR_STEPS, warmup_steps=LR_WARMUP, lr=LR, batch_size=2, log_every=1,
                       progress=False, **kw)


def main(out: Path, scenarios: list[str]) -> None:
    from plmkit.testing import tiny_model, tiny_tokenizer
    from plmkit.train import train
    from plmkit.train.heads import fit_lm_head, train_lm

    rank = int(os.environ.get("RANK", 0))  # not PartialState(): train() must be the first to set accelerate up
    for name in scenarios:
        d = out / name
        rec: dict = {}
        if name == "lr":  # fresh run, eval + checkpoints on the way
            res = train(toy_model(), toy_data(), lr_config(str(d / "run"), save_every=3, eval_every=4),
                        toy_loss(), eval_fn=lambda m: {"w": float(m[0].weight.sum())})
            rec["lrs"] = res.lrs
        elif name == "lr_accum":
            rec["lrs"] = train(toy_model(), toy_data(), lr_config(str(d / "run"), grad_accum=2), toy_loss()).lrs
        elif name == "lr_crash":  # killed during step 6 (6th micro-batch); step-3 is the newest checkpoint
            try:
                train(toy_model(), toy_data(), lr_config(str(out / "lr_resume" / "run"), save_every=3),
                      toy_loss(crash_at=6))
            except KeyboardInterrupt:
                rec["crashed"] = True
        elif name == "lr_resume":  # a new train() call (new model, optimizer, scheduler), same out_dir
            res = train(toy_model(), toy_data(), lr_config(str(d / "run"), save_every=3), toy_loss())
            rec.update(lrs=res.lrs, resumed_from=res.resumed_from)
        elif name == "equiv":
            seen: list[list[int]] = []
            model = toy_model()
            res = train(model, toy_data(), equiv_config(str(d / "run"), batch_size=2), toy_loss(seen))
            rec.update(seen=seen, lrs=res.lrs, losses=res.losses, state=model.state_dict())
        elif name == "lm_llama":
            model = tiny_model("llama", seed=3)
            res = train_lm(model, tiny_tokenizer(), lm_texts(), lm_config(str(d / "run"), batch_size=2))
            rec.update(losses=res.losses, state=model.state_dict())
        elif name == "lm_bert":
            model = tiny_model("bert", seed=3)
            res = train_lm(model, tiny_tokenizer(), lm_texts(), lm_config(str(d / "run"), batch_size=2))
            rec.update(losses=res.losses, state=model.state_dict())
        elif name == "head_bert":
            model = tiny_model("bert", seed=3)
            res = fit_lm_head(model, tiny_tokenizer(), lm_texts(), str(d / "run"), steps=3, batch_size=2,
                              progress=False)
            rec.update(losses=res.losses, state=model.state_dict())
        elif name == "ki":  # a Knowledge Inheritance run: KD for the first 2 of 4 steps
            from plmkit.eval.flops import matmul_params
            from plmkit.pretrain import KIConfig, PretrainConfig, pretrain
            from plmkit.pretrain.models import scratch_model

            tok = tiny_tokenizer()
            blocks = [{"input_ids": tok(t)["input_ids"]} for t in lm_texts(16)]
            teacher = scratch_model("bert", "xxs", tok, seed=5)
            model, res = pretrain(d / "run", blocks, blocks[:4], tok,
                                  PretrainConfig(size="xxs", steps=4, batch_size=2, eval_every=2, warmup_steps=1,
                                                 mixed_precision="no"),
                                  teacher=teacher, ki=KIConfig(ki_steps=2), progress=False)
            rec.update(curve=res.curve, state=model.state_dict(), n=matmul_params(model),
                       n_teacher=matmul_params(teacher))
        elif name == "ernie":  # ERNIE's dEA + MLM pretraining: the DDP-wrapped ERNIE, entities on both processes
            from plmkit.knowledge.ernie import ERNIE, ERNIEConfig, pretrain

            tok = tiny_tokenizer()
            g = torch.Generator().manual_seed(3)
            records = [{"input_ids": tok(t)["input_ids"]} for t in lm_texts(8)]
            for r in records:  # every third piece holds one of 5 entities
                r["entity_ids"] = [int(i % 3 == 0) * int(torch.randint(1, 6, (1,), generator=g)) for i in
                                   range(len(r["input_ids"]))]
            ernie = ERNIE(tiny_model("bert"), torch.randn(5, 8, generator=g), ERNIEConfig(t_layers=1, entity_heads=2))
            res = pretrain(ernie, tok, records, lm_config(str(d / "run"), 2))
            rec.update(losses=res.losses, totals=res.totals, state=ernie.state_dict())
        else:
            raise SystemExit(f"unknown scenario {name!r}")
        d.mkdir(parents=True, exist_ok=True)
        torch.save(rec, d / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
