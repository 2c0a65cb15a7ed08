"""ERNIE: an encoder whose upper blocks fuse knowledge-graph entity vectors into the tokens that mention them.

>>> from plmkit.knowledge.ernie import ERNIE, ERNIEConfig            # doctest: +SKIP
>>> ernie = ERNIE(minilm_mlm, entities.vectors, ERNIEConfig(t_layers=3))
>>> records = encode_with_entities(tok, texts, linker.link(texts), entities)
>>> pretrain(ernie, tok, records, TrainConfig(out_dir="runs/ernie", max_steps=500))
"""
from .align import encode_with_entities, entity_collate, first_piece_entities, table_row
from .config import ERNIEConfig
from .finetune import (ERNIEClassifier, fine_tune, load_classifier, mark_mentions, marked_task, predict, save_classifier, scores,
                       task_records, without_entities)
from .model import ERNIE, Aggregator, EntityAttention, EntityOutput, FusedFFNIn, load_ernie, save_ernie
from .pretrain import corrupt_entities, dea_loss, pretrain, pretrain_loss

__all__ = ["ERNIE", "ERNIEClassifier", "ERNIEConfig", "Aggregator", "EntityAttention", "EntityOutput", "FusedFFNIn",
           "corrupt_entities", "dea_loss", "encode_with_entities", "entity_collate", "fine_tune",
           "first_piece_entities", "load_classifier", "load_ernie", "mark_mentions", "marked_task", "predict",
           "pretrain", "pretrain_loss", "save_classifier", "save_ernie", "scores", "table_row", "task_records",
           "without_entities"]
