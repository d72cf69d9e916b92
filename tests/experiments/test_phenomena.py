"""Phenomena measurements against hand computations on constructed patterns."""

from __future__ import annotations

import math

import torch

from sae.experiments import phenomena


def test_induction_score_on_constructed_pattern():
    span = 4
    n = 1 + 2 * span
    pat = torch.zeros(2, n, n)
    # head 0: a perfect induction head; head 1: attends to BOS only
    for q in range(n):
        pat[1, q, 0] = 1.0
        pat[0, q, 0] = 1.0
    for q in range(span + 1, 2 * span + 1):
        pat[0, q, 0] = 0.0
        pat[0, q, q - span + 1] = 1.0  # the token after the first copy of the current token
    # half-strength on one query to check averaging: 3 of 4 queries full, one at 0.5
    pat[0, span + 2, 3] = 0.5  # key (span + 2) - span + 1 = 3
    pat[0, span + 2, 0] = 0.5
    got = phenomena.induction_score_from_pattern(pat, span)
    assert math.isclose(float(got[0]), (1 + 0.5 + 1 + 1) / 4)
    assert float(got[1]) == 0.0


def test_previous_token_score_on_constructed_pattern():
    n = 6
    pat = torch.zeros(1, n, n)
    pat[0, 0, 0] = 1
    for t in range(1, n):
        pat[0, t, t - 1] = 0.8
        pat[0, t, t] = 0.2  # the rest on the current token
    assert math.isclose(float(phenomena.prev_token_score_from_pattern(pat)[0]), 0.8, rel_tol=1e-6)


def test_unigram_loss_closed_form():
    train = torch.tensor([[0, 1, 1, 2]])  # counts of 1..: token1 x2, token2 x1 (BOS column ignored)
    evalr = torch.tensor([[0, 1, 2]])
    vocab = 3
    # add-one: counts [1, 3, 2] / 6
    expected = -(math.log(3 / 6) + math.log(2 / 6)) / 2
    assert math.isclose(phenomena.unigram_loss(train, evalr, vocab), expected, rel_tol=1e-9)


def test_induction_runs_on_tiny_model(tiny_either):
    tiny_model = tiny_either  # lean and bridge
    r = phenomena.induction(tiny_model, n=2, span=5)
    assert len(r.scores) == tiny_model.n_layers and len(r.scores[0]) == tiny_model.n_heads
    assert 0.0 <= r.best_score <= 1.0
