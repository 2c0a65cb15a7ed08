"""Variator on the real MiniLM and SmolLM2: exact at k=1, distillation lowers the loss, CLI train -> eval."""
import json

import torch

from plmkit import load_model
from plmkit.cli import main
from plmkit.data import text, token_batches
from plmkit.plugins import variator
from plmkit.plugins.variator import VariatorConfig


def test_k1_plugins_leave_real_models_unchanged_and_k4_changes_them():
    for name in ("minilm", "smollm2"):
        model, tok = load_model(name)
        batch = next(token_batches(tok, text.english_corpus(max_chars=4000)[:4], 4, 40))
        with torch.no_grad():
            ref = model(**batch)
        real = batch["attention_mask"].bool()
        key = "logits" if hasattr(ref, "logits") and ref.logits is not None else "last_hidden_state"
        variator.attach(model, VariatorConfig(k=1))
        with torch.no_grad():
            assert torch.equal(getattr(model(**batch), key)[real], getattr(ref, key)[real]), name
        variator.detach(model)
        variator.attach(model, VariatorConfig(k=4))
        with torch.no_grad():
            assert not torch.allclose(getattr(model(**batch), key)[real], getattr(ref, key)[real]), name
        variator.detach(model)


def test_cli_train_then_eval_on_a_real_classifier(tmp_path, capsys):
    model, tok = load_model("minilm", task="sequence-classification", num_labels=4)
    folder = tmp_path / "classifier"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    common = ["--model", str(folder), "--task", "topics", "--n-test", "32", "--no-progress"]
    main(["variator", "train", *common, "--k", "4", "--hidden", "24", "--steps", "12", "--batch-size", "8",
          "--out", str(tmp_path / "k4")])
    record = json.loads((tmp_path / "k4" / "train.json").read_text())
    assert record["losses"][-1] < record["losses"][0]
    assert 0 < record["extra_share"] < 0.01  # r=24 on MiniLM: under 1% of its parameters
    main(["variator", "eval", *common, "--plugins", str(tmp_path / "k4"), "--batch-size", "8", "--repeats", "2",
          "--json", str(tmp_path / "eval.json")])
    out = capsys.readouterr().out
    assert "speed-up" in out and "bound" in out
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [r.get("k", 1) for r in rows] == [1, 4]
    assert 0 < rows[1]["flops_saved"] < 1 and rows[1]["speedup"] > 0 and 0 <= rows[1]["accuracy"] <= 1


def test_unlabeled_distillation_text_never_holds_a_split_text():
    from plmkit.plugins.variator.tasks import task_data

    data = task_data("topics", unlabeled=3000, seed=0)
    norm = lambda t: " ".join(t.split())  # noqa: E731
    held = {norm(t) for t in data.train + data.validation + data.test}
    assert len(data.unlabeled) == 3000 and not {norm(t) for t in data.unlabeled} & held
    assert task_data("topics", unlabeled=3000, seed=0).unlabeled == data.unlabeled
    assert task_data("topics", unlabeled=3000, seed=1).unlabeled != data.unlabeled
