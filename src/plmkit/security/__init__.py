"""Backdoor robustness of fine-tuning pipelines (HiddenKiller), in progress: poisoned training and test sets with
insertion or syntactic triggers, a template-conformance check by a dependency parser, paraphrasers to the
trigger template, the ONION and paraphrase defenses, victims scored by clean accuracy and attack success, and a
spectral-signature detector of poisoned training examples. For measuring how robust a training pipeline is to
poisoned data: every attack here ships with its measurement and defenses (docs/hiddenkiller.md).
"""
from .onion import onion_filter, suspicion_scores
from .poison import PoisonConfig, insert_words, poison_test, poison_train
from .syntax import TEMPLATE, conforms, parse_report

__all__ = ["PoisonConfig", "TEMPLATE", "conforms", "insert_words", "onion_filter", "parse_report", "poison_test",
           "poison_train", "suspicion_scores"]
