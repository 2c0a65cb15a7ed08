"""Skill neurons on tiny random models: streamed scores, seeded tuning, perturbation, overlap, pruning, CLI."""
import numpy as np
import pytest
import torch

from plmkit.analysis import neurons as N
import plmkit.analysis.skill_neurons as sn
from plmkit.cli import main
from plmkit.data.tasks import BinaryTask
from plmkit.errors import ConfigError
from plmkit.testing import tiny_model, tiny_tokenizer

WORDS = ["good fun film", "bad dull plot", "great cast", "awful mess", "fine story", "poor acting"]


def _task(n: int = 24) -> BinaryTask:
    rows = [{"text": f"{WORDS[i % 6]} {i}", "label": int(i % 2 == 0)} for i in range(n)]
    return BinaryTask("toy", rows[: n // 2], rows[n // 2: 3 * n // 4], rows[3 * n // 4:], ("neg", "pos"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny bert and llama sequence classifiers saved with the character tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from plmkit.testing import tiny_config

    out = {}
    for name in ("bert", "llama"):
        path = tmp_path_factory.mktemp(name)
        cfg = tiny_config(name, num_labels=2, pad_token_id=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            AutoModelForSequenceClassification.from_config(cfg).save_pretrained(path)
        tiny_tokenizer(chat=False).save_pretrained(path)
        out[name] = str(path)
    return out


CFG = sn.SkillConfig(virtual_tokens=4, steps=3, batch_size=4, max_length=16, mixed_precision="no")


def test_streamed_threshold_accuracy_equals_in_memory():
    model, tok = tiny_model("bert", head="base"), tiny_tokenizer(chat=False)
    task = _task(40)
    stream, acc = N.streamed_threshold_accuracy(model, sn.labelled_batches(tok, task.train, 5, 16),
                                                sn.labelled_batches(tok, task.validation, 3, 16), positions=[0, 2])
    train = N.neuron_activations(model, sn.labelled_batches(tok, task.train, 7, 16), positions=[0, 2])
    dev = N.neuron_activations(model, sn.labelled_batches(tok, task.validation, 10, 16), positions=[0, 2])
    for site in train:
        score, a = N.threshold_accuracy(train[site], task.labels("train"), dev[site], task.labels("validation"))
        assert stream[site].shape == (2, 48)
        np.testing.assert_allclose(stream[site], score)
        np.testing.assert_allclose(acc[site], a)
    assert len({float(v) for v in np.unique(acc["blocks.0.ffn.neurons"])}) > 1  # not a constant


def test_prompt_tuning_is_seeded_from_the_config_and_freezes_the_backbone(folders):
    task = _task()
    a, _ = sn.prompt_tune(folders["bert"], task, CFG, seed=0)
    torch.manual_seed(1234)  # the global RNG must not matter
    torch.rand(7)
    b, _ = sn.prompt_tune(folders["bert"], task, CFG, seed=0)
    c, _ = sn.prompt_tune(folders["bert"], task, CFG, seed=1)
    pa, pb, pc = (m.prompt_encoder["default"].embedding.weight for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    trainable = {n for n, p in a.named_parameters() if p.requires_grad}
    assert trainable and all("prompt_encoder" in n or "classifier" in n for n in trainable)
    fresh, _ = sn.prompt_tune(folders["bert"], task, sn.SkillConfig(virtual_tokens=4, steps=1, lr=0.0,
                                                                    mixed_precision="no"), seed=0)
    w = "base_model.bert.encoder.layer.0.intermediate.dense.weight"
    assert torch.equal(dict(a.named_parameters())[w], dict(fresh.named_parameters())[w])


def test_scores_are_read_at_the_prompt_for_encoders_and_the_last_token_for_causal_lms(folders):
    task = _task()
    enc, tok = sn.prompt_tune(folders["bert"], task, CFG, seed=0)
    assert sn.read_at(enc) == {"positions": [0, 1, 2, 3]}
    dec, tok2 = sn.prompt_tune(folders["llama"], task, CFG, seed=0)
    assert sn.read_at(dec) == {"pool": "last"}
    for model, t in ((enc, tok), (dec, tok2)):
        scores = sn.skill_scores(model, t, task, max_length=16)
        assert list(scores) == [f"blocks.{i}.ffn.neurons" for i in range(2)]
        for v in scores.values():
            assert v.shape == (48,) and (v >= 0).all() and (v <= 0.5).all()


def test_perturbation_curve_matches_counts_and_restores_the_model(folders):
    task = _task()
    model, tok = sn.prompt_tune(folders["bert"], task, CFG, seed=0)
    batch = next(sn.labelled_batches(tok, task.test, 8, 16))
    batch.pop("labels")
    with torch.no_grad():
        before = model(**batch).logits
    scores = {f"blocks.{i}.ffn.neurons": np.linspace(0, 1, 48)[::(-1) ** i] for i in range(2)}
    rows = sn.perturbation_curve(model, tok, task.test, scores, [0.25], perturbation=sn.Perturbation("noise", 5.0),
                                 seeds=(0, 1))
    assert [r["selection"] for r in rows] == ["none", "skill", "random", "skill", "random"]
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)
    summary = sn.summarise_curve(rows)
    assert {(s["selection"], s["n"]) for s in summary} == {("none", 1), ("skill", 2), ("random", 2)}
    top = N.top_k_per_layer(scores, 0.25)
    assert top["blocks.0.ffn.neurons"].tolist() == list(range(36, 48))  # the highest scores of layer 0
    assert top["blocks.1.ffn.neurons"].tolist() == list(range(12))


def test_overlap_of_identical_and_disjoint_scores():
    a = {"s0": np.arange(10.0), "s1": np.arange(10.0)}
    assert sn.overlap(a, a, 0.2) == {"spearman": 1.0, "jaccard": 1.0}
    b = {k: -v for k, v in a.items()}
    o = sn.overlap(a, b, 0.2)
    assert o["spearman"] == pytest.approx(-1.0) and o["jaccard"] == 0.0


def test_pruned_prompt_model_saves_reloads_and_keeps_the_lower_layers(folders, tmp_path):
    task = _task()
    model, tok = sn.prompt_tune(folders["bert"], task, CFG, seed=0)
    scores = sn.skill_scores(model, tok, task, max_length=16)
    pruned, report = sn.prune_to_skill(model, tok, task, scores, keep=0.25, max_length=16)
    assert [layer.d_ff_after for layer in report.layers] == [12]  # upper half of 2 layers: block 1 only
    assert report.params_after == report.params_before - (48 - 12) * (32 + 1 + 32)
    folder = sn.save_task_model(pruned, tok, tmp_path / "pruned")
    again, _ = sn.load_task_model(folder)
    batch = next(sn.labelled_batches(tok, task.test, 6, 16))
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, pruned(**batch).logits)
    assert sn.accuracy(again, tok, task.test, 16) == sn.accuracy(pruned, tok, task.test, 16)
    with pytest.raises(ConfigError):
        sn.tune(folders["bert"], task, CFG, tuning="adapters")


def test_cli_skill_perturb_prune(folders, tmp_path, capsys, monkeypatch):
    import plmkit.data.tasks as tasks

    monkeypatch.setitem(tasks.TASKS, "topics", lambda rng: _task())
    out = tmp_path / "sk"
    main(["neurons", "skill", "--model", folders["bert"], "--task", "topics", "--out", str(out), "--seeds", "0",
          "--steps", "2", "--virtual-tokens", "4", "--max-length", "16", "--no-progress"])
    assert (out / "scores.safetensors").exists() and (out / "model" / "prompt" / "adapter_config.json").exists()
    from plmkit.analysis.cli import read_scores

    assert list(read_scores(out)) == ["blocks.0.ffn.neurons", "blocks.1.ffn.neurons"]
    main(["neurons", "perturb", "--skill", str(out), "--fractions", "0.1", "--seeds", "0"])
    main(["neurons", "prune", "--skill", str(out), "--keep", "0.5", "--out", str(tmp_path / "pr"),
          "--repeats", "1", "--batch-size", "2"])
    text = capsys.readouterr().out
    assert "skill" in text and "random" in text and "parameters" in text
    with pytest.raises(SystemExit):
        main(["neurons", "perturb", "--skill", str(tmp_path / "missing")])


def test_cli_modularity_writes_partition_and_extent(folders, tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    out = tmp_path / "mod"
    main(["neurons", "modularity", "--model", folders["bert"], "--experts", "4", "--out", str(out),
          "--max-words", "3", "--max-per-relation", "20", "--max-per-task", "20", "--max-length", "16",
          "--top", "0.1"])
    part = load_file(str(out / "partition.safetensors"))
    assert sorted(part) == ["blocks.0.ffn.neurons", "blocks.1.ffn.neurons"]
    assert all(torch.bincount(v).tolist() == [12] * 4 for v in part.values())  # balanced experts
    rows = json.loads((out / "modularity.json").read_text())["extent"]
    assert [r["kind"] for r in rows][-1] == "all" and all(r["extent"] > 0 for r in rows)
    assert "extent" in capsys.readouterr().out


def test_causal_classifier_reads_the_last_real_token_whatever_the_padding(folders):
    task = _task()
    model, tok = sn.prompt_tune(folders["llama"], task, CFG, seed=0)
    assert tok.padding_side == "left"
    texts = ["good fun film 1", "bad 2"]
    from plmkit.train.classify import predict_labels

    def gap() -> float:  # the short text alone vs in a padded batch
        with torch.no_grad():
            alone = model(**tok(texts[1:], return_tensors="pt")).logits
            padded = model(**tok(texts, return_tensors="pt", padding=True)).logits
        return float((alone[0] - padded[1]).abs().max())

    left = gap()  # only the positions shift (rotary positions count the pads)
    tok.padding_side = "right"
    right = gap()  # the head would read a pad token
    tok.padding_side = "left"
    assert left < 1e-2 and right > 10 * left
    with torch.no_grad():
        padded = model(**tok(texts, return_tensors="pt", padding=True)).logits
    assert predict_labels(model, tok, texts) == padded.argmax(-1).tolist()


def test_bitfit_trains_biases_and_the_head_and_lora_models_save_merged(folders, tmp_path):
    task = _task()
    fresh, _ = sn.tune(folders["bert"], task, sn.SkillConfig(steps=1, delta_lr=0.0, mixed_precision="no"),
                       tuning="bitfit")
    model, tok = sn.tune(folders["bert"], task, CFG, tuning="bitfit")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.weight" in trainable and all(n.endswith(".bias") or n.startswith("classifier") for n in trainable)
    assert not torch.equal(model.classifier.weight, fresh.classifier.weight)
    lora, tok = sn.tune(folders["bert"], task, CFG, tuning="lora")
    again, _ = sn.load_task_model(sn.save_task_model(lora, tok, tmp_path / "lora"))
    batch = tok(["good fun film 3", "awful"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, lora(**batch).logits, atol=1e-5, rtol=1e-4)


def test_function_predictivity_reads_the_encoder_of_t5():
    import plmkit.analysis.modularity as mod
    from plmkit.data.functions import BinaryFunction

    model, tok = tiny_model("t5", head="base"), tiny_tokenizer(chat=False)
    fn = BinaryFunction("toy", "task", [f"{WORDS[i % 6]} {i}" for i in range(12)], np.arange(12) % 2)
    scores = mod.function_predictivity(model, tok, fn, max_length=16)
    assert list(scores) == ["encoder.blocks.0.ffn.neurons", "encoder.blocks.1.ffn.neurons"]
    assert list(mod.functions_predictivity(model, tok, [fn], max_length=16)["toy"]) == list(scores)
