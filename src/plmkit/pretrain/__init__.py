"""Pretraining from scratch on real English text: models of named sizes, a shared study tokenizer, packed
corpora split by document, Knowledge Inheritance from a smaller teacher, and selective masking for
task-guided pretraining."""
from .corpus import CorpusConfig, PackedCorpus, corpus_texts, packed_corpus
from .knowledge_inheritance import KIConfig, KILoss, compute_to_reach, kd_loss, ki_alpha
from .models import SIZES, scratch_model, study_tokenizer
from .trainer import PretrainConfig, PretrainResult, pretrain, validation_loss

__all__ = ["CorpusConfig", "KIConfig", "KILoss", "PackedCorpus", "PretrainConfig", "PretrainResult", "SIZES",
           "compute_to_reach", "corpus_texts", "kd_loss", "ki_alpha", "packed_corpus", "pretrain", "scratch_model",
           "study_tokenizer", "validation_loss"]
