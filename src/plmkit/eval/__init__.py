"""Metrics: accuracy/F1, exact match, average precision, filtered ranking, side-by-side timing."""
from .lm import masked_lm_loss, next_token_accuracy, perplexity
from .metrics import accuracy, answer_contained, average_precision, exact_match, f1, normalize_answer
from .ranking import TIES, known_answers, link_prediction, rank_of_target, ranking_metrics
from .timing import Comparison, Speedup, compare, measure_speedup, time_call

__all__ = ["TIES", "Comparison", "Speedup", "measure_speedup", "accuracy", "answer_contained", "average_precision", "compare", "exact_match", "f1", "masked_lm_loss", "next_token_accuracy", "perplexity",
           "known_answers", "link_prediction", "normalize_answer", "rank_of_target", "ranking_metrics", "time_call"]
