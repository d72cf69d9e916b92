"""`sae.engine.selection`: the fast top-k selects exactly `torch.topk`'s set (checked against `torch.topk` itself
on random rows, rows full of ties, NaN and -inf rows, and the widths where grouping does or does not pay)."""

from __future__ import annotations

import pytest
import torch

from sae.engine.selection import group_size, topk_acts, topk_rows


def check_against_topk(pre: torch.Tensor, k: int) -> None:
    v, i = topk_rows(pre, k)
    want_v, want_i = pre.topk(k, dim=-1)
    torch.testing.assert_close(v, want_v, rtol=0, atol=0, equal_nan=True)  # same values, same order
    torch.testing.assert_close(pre.gather(1, i), want_v, rtol=0, atol=0, equal_nan=True)  # indices hold them
    assert (i.sort(-1).values.diff(dim=-1) > 0).all()  # k distinct columns


@pytest.mark.parametrize("n,k", [(1024, 32), (1024, 24), (1024, 1), (1024, 64), (2048, 32), (96, 3), (40, 12)])
def test_random_rows_give_topks_indices(n, k):
    pre = torch.randn(300, n, generator=torch.Generator().manual_seed(n + k)) * 3
    pre[:, ::7] -= 5.0  # uneven groups
    check_against_topk(pre, k)
    if not (pre.topk(k + 1, dim=-1).values.diff(dim=-1) == 0).any():  # no ties near the top: the very indices
        assert torch.equal(topk_rows(pre, k)[1], pre.topk(k, dim=-1).indices)


def test_rows_full_of_ties_and_special_values():
    g = torch.Generator().manual_seed(1)
    ties = torch.randint(0, 6, (200, 1024), generator=g).float()  # every value repeated ~170 times per row
    check_against_topk(ties, 32)
    odd = torch.randn(6, 1024, generator=g)
    odd[0, 5] = float("nan")
    odd[1, :] = float("-inf")
    odd[2, :900] = float("-inf")
    odd[3, :] = 0.0
    check_against_topk(odd, 32)
    check_against_topk(odd[1:], 32)  # no NaN: the grouped path


def test_grouping_is_used_where_it_pays():
    assert group_size(1024, 32) == 8 and group_size(1024, 24) == 8 and group_size(2048, 32) == 16
    assert group_size(1024, 200) == 1 and group_size(40, 12) == 1


def test_topk_acts_is_relu_of_the_top_k_scattered():
    pre = torch.randn(100, 1024, generator=torch.Generator().manual_seed(2))
    v, i = pre.topk(24, dim=-1)
    want = torch.zeros_like(pre).scatter(-1, i, v.relu())
    assert torch.equal(topk_acts(pre, 24), want)
