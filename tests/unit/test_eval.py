import math
import time

import pytest
import torch

from plmkit import eval as ev


def test_classification_metrics_by_hand():
    pred, gold = [1, 0, 1, 1, 2], [1, 0, 0, 1, 2]
    assert ev.accuracy(pred, gold) == 0.8
    # class 0: P=1 R=.5 F=2/3; class 1: P=2/3 R=1 F=.8; class 2: F=1
    assert ev.f1(pred, gold, "macro") == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert ev.f1(pred, gold, "micro") == pytest.approx(0.8)
    with pytest.raises(ValueError):
        ev.accuracy([1], [1, 2])


def test_exact_match_and_containment():
    assert ev.exact_match("The Paris.", "paris")
    assert not ev.exact_match("Paris, France", "Paris")
    assert ev.answer_contained("It is Paris, France", ["Lyon", "paris"])
    assert not ev.answer_contained("Parisian", "Paris")


def test_average_precision_by_hand():
    # ranking: pos(0.9), neg(0.8), pos(0.7): AP = (1/1 + 2/3) / 2
    assert ev.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(ev.average_precision([0, 0], [0.1, 0.2]))


def test_filtered_ranks_and_ties():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.7, 0.1]])
    target = torch.tensor([2])
    assert ev.rank_of_target(scores, target, ties="optimistic").item() == 2
    assert ev.rank_of_target(scores, target, ties="pessimistic").item() == 3
    assert ev.rank_of_target(scores, target).item() == 2.5
    filt = torch.tensor([[True, False, True, False, False]])  # entity 0 is another true answer; target never filtered
    assert ev.rank_of_target(scores, target, filt, ties="optimistic").item() == 1
    m = ev.ranking_metrics([1, 2, 4, 20])
    assert m["MR"] == pytest.approx(6.75) and m["MRR"] == pytest.approx((1 + .5 + .25 + .05) / 4)
    assert m["Hits@1"] == .25 and m["Hits@3"] == .5 and m["Hits@10"] == .75
    tails, heads = ev.known_answers([(0, 1, 2), (0, 1, 3), (4, 1, 3)])
    assert tails[(0, 1)] == {2, 3} and heads[(1, 3)] == {0, 4}


def test_compare_measures_a_real_difference():
    c = ev.compare(lambda: time.sleep(0.004), lambda: time.sleep(0.001), repeats=5, warmup=1)
    assert c.ratio > 1.5 and c.baseline_s > c.candidate_s and len(c.baseline_all) == 5


def test_measure_speedup_flags_a_figure_above_its_bound_after_retrying():
    slow, fast = (lambda: time.sleep(0.006)), (lambda: time.sleep(0.002))
    ok = ev.measure_speedup(slow, fast, repeats=3, bound=6.0, tolerance=0.5)
    assert 2.0 < ok.ratio < 4.0 and not ok.flagged and ok.attempts == 1 and "bound 6.00x" in str(ok)
    bad = ev.measure_speedup(slow, fast, repeats=3, bound=1.2, tolerance=0.5, retries=1)
    assert bad.attempts == 2 and "above the bound" in bad.flagged and "FLAG" in str(bad)
    with pytest.raises(ValueError, match="3 repeats"):
        ev.measure_speedup(slow, fast, repeats=2)
