"""Recursive DFA: every node is the sum of its children, and leaves match hand-written computations."""

from __future__ import annotations

import pytest
import torch
from support import random_sae, torch_layer_norm, torch_layer_norm

from sae.analysis.trace import TraceError, trace_feature

PROMPT = "When Mary and John went to the store, John gave a drink"


@pytest.fixture(scope="module")
def saes(tiny_model):
    out = {}
    for layer in range(3):
        s = random_sae(tiny_model, layer, d_sae=48, seed=10 + layer)
        with torch.no_grad():
            s.W_dec *= 6.0  # large decoder rows so upstream features dominate and the recursion is exercised
        out[layer] = s
    return out


@pytest.fixture(scope="module")
def trace(tiny_model, saes):
    return trace_feature(tiny_model, saes, PROMPT, layer=2, feature=7, depth=2, keep=8)


def test_children_sum_to_parent_everywhere(trace):
    n_parents = 0
    for node in trace.root.walk():
        if node.children:
            total = sum(c.value for c in node.children)
            assert abs(total - node.value) < 1e-4 * (1 + abs(node.value)), node.label
            n_parents += 1
        assert node.kind != "unexplained", f"{node.label}: {node.value}"
    assert n_parents > 10
    expanded = [n for n in trace.root.walk() if n.kind == "feature" and n.layer < 2 and n.children]
    assert expanded, "no upstream feature was expanded"


def test_the_bridge_gives_the_same_trace(tiny_bridge, saes, trace):
    """The lean model (`tiny_model`, whose trace the other tests check by hand) and the bridge agree node for node."""
    other = trace_feature(tiny_bridge, saes, PROMPT, layer=2, feature=7, depth=2, keep=8)
    a, b = list(trace.root.walk()), list(other.root.walk())
    assert [n.label for n in a] == [n.label for n in b]
    assert [n.value for n in a] == [n.value for n in b]


def test_root_is_the_pre_activation(tiny_model, saes, trace):
    toks = tiny_model.to_tokens(PROMPT)[0]
    z = tiny_model.capture_z(toks, [2])[2][0]
    pre = saes[2].encode_pre(z)[trace.pos, 7].detach()
    assert abs(trace.root.value - float(pre)) < 1e-4


def _ln_direction(tiny_model, layer, head, w_enc, scale, a):
    """By hand: the residual direction one component is read along, through the frozen LN, W_V and W_enc."""
    ln = torch_layer_norm(tiny_model.bridge.blocks[layer].ln1)
    u = tiny_model.bridge.W_V[layer, head] @ w_enc
    e = ln.weight * u
    return (e - e.mean()) * a / scale, ln.bias @ u * a


def test_leaves_match_hand_computation(tiny_model, saes, trace):
    """Leaves under a root (head, source) node, recomputed from raw weights and an independent forward pass."""
    toks = tiny_model.to_tokens(PROMPT)[0]
    _, cache = tiny_model.bridge.run_with_cache(toks)
    hs = next(c for h in trace.root.children for c in h.children if c.kind == "head_source")
    L, h, t, s = hs.layer, hs.head, hs.pos, hs.src
    dh = tiny_model.d_head
    w_enc = saes[L].W_enc[h * dh : (h + 1) * dh, 7].detach()
    A = cache[f"blocks.{L}.attn.hook_pattern"][0, h, t, s]
    # frozen-LN scale, recomputed from the residual stream instead of read from the hook
    resid = cache[f"blocks.{L}.hook_resid_pre"][0, s]
    scale = ((resid - resid.mean()).pow(2).mean() + tiny_model.cfg.eps).sqrt()
    e, _ = _ln_direction(tiny_model, L, h, w_enc, scale, float(A))
    with torch.no_grad():
        # the node itself: A * (LN(resid) - ln.b) @ W_V @ w_enc: the ln bias and b_V are folded out of z
        ln = torch_layer_norm(tiny_model.bridge.blocks[L].ln1)
        expected_hs = float(A * ((ln(resid) - ln.bias) @ tiny_model.bridge.W_V[L, h] @ w_enc))
        assert abs(hs.value - expected_hs) < 1e-4
        checked = set()
        for leaf in hs.children:
            if leaf.kind == "token_embed":
                exp = float(tiny_model.bridge.W_E[toks[0, s]] @ e)
            elif leaf.kind == "pos_embed":
                exp = float(tiny_model.bridge.W_pos[s] @ e)
            elif leaf.kind == "feature":
                up = saes[leaf.layer]
                up_ln = torch_layer_norm(tiny_model.bridge.blocks[leaf.layer].ln1)
                c = tiny_model.bridge.b_V[leaf.layer] + torch.einsum("m,hmd->hd", up_ln.bias, tiny_model.bridge.W_V[leaf.layer])
                z = cache[f"blocks.{leaf.layer}.attn.hook_z"][0, s] - c
                f = up.encode(z.flatten())[leaf.feature]
                out_dir = torch.einsum("hd,hdm->m", up.W_dec[leaf.feature].reshape(tiny_model.n_heads, dh),
                                       tiny_model.bridge.W_O[leaf.layer])
                exp = float(f * out_dir @ e)
                assert abs(leaf.act - float(f)) < 1e-5
            elif leaf.kind == "mlp_out":
                exp = float(cache[f"blocks.{leaf.layer}.hook_mlp_out"][0, s] @ e)
            else:
                continue
            assert abs(leaf.value - exp) < 1e-4 * (1 + abs(exp)), leaf.label
            checked.add(leaf.kind)
    assert len(checked) >= 2, checked


def test_bad_requests(tiny_model, saes):
    with pytest.raises(TraceError, match="outside"):
        trace_feature(tiny_model, saes, PROMPT, layer=2, feature=999)
    with pytest.raises(TraceError, match="no SAE"):
        trace_feature(tiny_model, {0: saes[0]}, PROMPT, layer=2, feature=1)
    with pytest.raises(TraceError, match="position"):
        trace_feature(tiny_model, saes, PROMPT, layer=2, feature=1, pos=500)
