"""Recipes' shared artifacts on the real assets: honest splits, and a cached MiniLM classifier that
reloads exactly (ReLU re-applied) and is rebuilt when its settings change."""
import torch

from plmkit.compress.moefication.relu import ReLUAct
from plmkit.data import token_batches
from plmkit.reproduce.shared import TOPICS, ClassifierSettings, TopicSplit, fortune_topics, topic_classifier


def test_fortune_topic_splits_are_disjoint_and_stratified():
    parts = fortune_topics(TopicSplit(seed=0))
    texts = {k: {r["text"] for r in v} for k, v in parts.items()}
    assert not (texts["train"] & texts["test"]) and not (texts["validation"] & texts["test"])
    assert not (texts["train"] & texts["validation"])
    for part in ("validation", "test"):
        assert {r["label"] for r in parts[part]} == set(range(len(TOPICS)))
    assert fortune_topics(TopicSplit(seed=0))["test"] == parts["test"]  # reproducible
    assert fortune_topics(TopicSplit(seed=1))["test"] != parts["test"]


def test_cached_classifier_reloads_exactly_and_follows_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE_DIR", str(tmp_path))
    s = ClassifierSettings(relu=True, steps=2, batch_size=4, max_length=24)
    built, tok, info = topic_classifier(s)
    again, _, info2 = topic_classifier(s)
    assert (info["hit"], info2["hit"], info["key"]) == (False, True, info2["key"])
    assert any(isinstance(m, ReLUAct) for m in again.modules())  # the activation swap is re-applied on load
    batch = next(token_batches(tok, ["A quote about computers.", "Politics is the art of the possible."], 2, 24))
    with torch.no_grad():
        torch.testing.assert_close(built(**batch).logits, again(**batch).logits)
    _, _, other = topic_classifier(ClassifierSettings(relu=True, steps=3, batch_size=4, max_length=24))
    assert other["key"] != info["key"] and other["hit"] is False
