"""Induction scores, repeated-prefix sequences, DLA and the real-text study."""

from __future__ import annotations


import pytest
import torch

from sae.experiments import induction
from sae.engine.jobs import CancelToken, Cancelled


def test_induction_score_by_hand_on_a_constructed_pattern():
    """Two sequences, two heads, query row over 6 keys; the score is the weight on each sequence's own key."""
    rows = torch.tensor(
        [
            [[0.1, 0.0, 0.6, 0.1, 0.1, 0.1], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]],
            [[0.0, 0.0, 0.0, 0.0, 0.9, 0.1], [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]],
        ]
    )
    key = torch.tensor([2, 4])
    got = induction.induction_scores_from_pattern(rows, key)
    torch.testing.assert_close(got, torch.tensor([[0.6, 0.1], [0.9, 0.1]]))

    # a whole pattern for one repeated-prefix sequence: the query's weight on "the token after the earlier copy"
    toks = [0, 11, 12, 13, 14, 15, 12, 13]  # prefix (12, 13) repeats at the end; 14 followed it first
    q = len(toks) - 1
    pattern = torch.zeros(1, 1, q + 1, q + 1)
    pattern[0, 0, q, :] = torch.tensor([0.05, 0.05, 0.05, 0.1, 0.55, 0.1, 0.05, 0.05])
    hand_key = next(k for k in range(1, q) if toks[k - 1] == toks[q] and toks[k - 2] == toks[q - 1])
    assert hand_key == 4
    got = induction.induction_scores_from_pattern(pattern[:, :, q, :], torch.tensor([hand_key]))
    assert float(got) == pytest.approx(0.55)


def test_synthetic_scores_read_the_right_pattern_entry(tiny_either):
    """The pipeline's score equals the attention at (query = last position, key) read from a full cache."""
    tiny_model = tiny_either  # lean and bridge
    pool = induction._vocab_pool(tiny_model)
    batch = induction.repeated_prefix_batch(pool, tiny_model.bos_token_id, 3, 2, 24, torch.Generator().manual_seed(0))
    scores, dla = induction._score_batch(tiny_model, batch)
    with torch.no_grad():
        _, cache = tiny_model.bridge.run_with_cache(batch.tokens)
    for b in range(3):
        q = int(batch.query[b])
        assert batch.tokens[b, q] == batch.tokens[b, int(batch.key[b]) - 1]
        for layer in range(tiny_model.n_layers):
            pat = cache[f"blocks.{layer}.attn.hook_pattern"][b, :, q, int(batch.key[b])]
            assert scores[b, layer].tolist() == pytest.approx(pat.tolist(), abs=1e-6)
    assert dla.shape == (3, tiny_model.n_layers, tiny_model.n_heads)


@pytest.mark.parametrize("p", [1, 3, 9])
def test_repeated_prefix_sequences_match_exactly_p_tokens(p):
    pool = torch.arange(1, 400)
    batch = induction.repeated_prefix_batch(pool, 0, 20, p, 64, torch.Generator().manual_seed(p))
    for row, q, key, target in zip(batch.tokens.tolist(), batch.query.tolist(), batch.key.tolist(), batch.target.tolist()):
        assert len(row) == 64 and row[0] == 0
        b = q - p + 1  # the second copy is row[b .. q]
        a = key - p  # the first copy is row[a .. key - 1]
        assert 1 <= a and key < b and q <= 63
        # token by token: the second copy repeats the first, and every other position holds a token seen once
        assert row[b : q + 1] == row[a:key]
        rest = row[1:b] + row[q + 1 :]
        assert len(rest) == len(set(rest)) == 63 - p
        assert row[key] == target
        # brute force: the longest run ending at q that also ends at key - 1
        m = 0
        while row[q - m] == row[key - 1 - m]:
            m += 1
        assert m == p == induction.matched_prefix_length(row, q, key)
    # the repeat is placed at random, not always at the end
    assert len(set(batch.query.tolist())) >= 5 and len(set(batch.key.tolist())) >= 5
    assert min(batch.query.tolist()) < 63


def test_repeat_positions_cover_their_range():
    """Every allowed (a, b) for p=2 in 9 tokens shows up, and nothing outside it."""
    gen = torch.Generator().manual_seed(0)
    seen = {induction.repeat_positions(2, 9, gen) for _ in range(2000)}
    allowed = {(a, b) for b in range(1, 9) for a in range(1, 9) if a + 2 + 1 <= b and b + 2 <= 9}
    assert seen == allowed


def test_matched_prefix_length_by_hand():
    toks = [0, 5, 6, 7, 9, 5, 6, 7]  # dst 7 (token 7) attending to src 4 (after the earlier 7)
    assert induction.matched_prefix_length(toks, 7, 4) == 3
    assert induction.matched_prefix_length(toks, 7, 5) == 0
    assert induction.matched_prefix_length([0, 3, 3], 2, 2) == 1


def test_classification_rule():
    long = {str(p): s for p, s in zip(range(1, 10), [0.1, 0.2, 0.4, 0.6, 0.7, 0.75, 0.8, 0.8, 0.8])}
    short = {str(p): s for p, s in zip(range(1, 10), [0.7, 0.72, 0.75, 0.75, 0.76, 0.78, 0.8, 0.8, 0.8])}
    none = {str(p): 0.05 for p in range(1, 10)}
    assert induction.classify(long) == "long-prefix"
    assert induction.classify(short) == "short-prefix"
    assert induction.classify(none) == "not induction"


def test_head_dla_matches_plain_transformers(tiny_either, tiny_model_dir):
    """Independent path: GPT-2 in transformers, c_proj input per head, ln_f frozen at the final residual's scale."""
    tiny_model = tiny_either  # lean and bridge
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()
    toks = torch.randint(1, tiny_model.d_vocab, (2, 9))
    layer, H, dh = 1, tiny_model.n_heads, tiny_model.d_head
    grabbed = {}
    hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(lambda m, a: grabbed.setdefault("z", a[0]))
    with torch.no_grad():
        hf(toks)
    d = hf.config.n_embd
    z = (grabbed["z"] - hf.transformer.h[layer].attn.c_attn.bias[2 * d :])[:, -1].view(2, H, dh)
    grabbed_ln = {}
    hf.transformer.ln_f.register_forward_pre_hook(lambda m, a: grabbed_ln.setdefault("x", a[0]))
    with torch.no_grad():
        hf(toks)
    x = grabbed_ln["x"][:, -1]
    scale = ((x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + hf.config.layer_norm_epsilon).sqrt()
    target = torch.tensor([5, 17])
    w_o = hf.transformer.h[layer].attn.c_proj.weight.view(H, dh, d)
    expected = torch.zeros(2, H)
    for b in range(2):
        for h in range(H):
            o = z[b, h] @ w_o[h]
            o = (o - o.mean()) / scale[b] * hf.transformer.ln_f.weight
            # vocabulary-centred: the target's logit minus the mean logit over the vocabulary
            expected[b, h] = o @ hf.lm_head.weight[target[b]] - (hf.lm_head.weight @ o).mean()
    got = induction.head_dla(tiny_model, z, layer, scale, target)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


def test_centred_dla_is_a_hand_einsum(tiny_model):
    """head_dla equals W_O, the frozen final LN and the centred W_U written out as one einsum over plain tensors."""
    torch.manual_seed(3)
    H, dh = tiny_model.n_heads, tiny_model.d_head
    z, scale, target = torch.randn(4, H, dh), torch.rand(4, 1) + 0.5, torch.tensor([1, 7, 30, 2])
    w_o, w_u = tiny_model.bridge.W_O[1].detach(), tiny_model.bridge.W_U.detach()
    ln = tiny_model.bridge.ln_final
    w_ln = getattr(getattr(ln, "original_component", ln), "weight").detach()
    out = torch.einsum("bhe,hem->bhm", z, w_o)
    out = (out - out.mean(-1, keepdim=True)) / scale[:, None] * w_ln
    logits = torch.einsum("bhm,mv->bhv", out, w_u)
    expected = logits[torch.arange(4), :, target] - logits.mean(-1)
    torch.testing.assert_close(induction.head_dla(tiny_model, z, 1, scale, target), expected, atol=1e-4, rtol=1e-4)
    # a constant shift of W_U over the vocabulary changes nothing once centred
    c = torch.randn(w_u.shape[0], 1)
    torch.testing.assert_close(induction.centred_unembed(w_u + c), induction.centred_unembed(w_u), atol=1e-5, rtol=0)


def test_synthetic_induction_result_progress_cancel_determinism(tiny_model):
    seen = []
    r = induction.synthetic_induction(tiny_model, n=3, prefix_lengths=(1, 2, 3), seq_len=24, batch_size=2, on_progress=lambda p: seen.append((p.done, p.total)))
    assert seen[-1] == (6, 6) and len(r.heads) == tiny_model.n_layers * tiny_model.n_heads
    d = r.to_dict()
    assert set(d["heads"][0]) == {"layer", "head", "scores", "dla", "kind"} and set(d["heads"][0]["scores"]) == {"1", "2", "3"}
    again = induction.synthetic_induction(tiny_model, n=3, prefix_lengths=(1, 2, 3), seq_len=24, batch_size=2)
    assert again.to_dict() == d
    ev = CancelToken()
    ev.cancel()
    with pytest.raises(Cancelled):
        induction.synthetic_induction(tiny_model, n=3, prefix_lengths=(1,), seq_len=24, cancel=ev)
    with pytest.raises(ValueError, match="positive"):
        induction.synthetic_induction(tiny_model, n=0)


def test_real_text_events_and_replacement(tiny_model):
    text = "x = 1\n" * 40  # a short period, so early destinations (where random attention is strong) match
    r = induction.real_text_induction(tiny_model, [text], n_rows=2, seq_len=48, threshold=0.05, max_events_per_head=4, seed=1)
    # independent count of events for one head from a plain cache
    from sae.engine.activations import pack_tokens

    rows = pack_tokens([text], tiny_model.encode, 48, tiny_model.bos_token_id, max_rows=2)
    with torch.no_grad():
        _, cache = tiny_model.bridge.run_with_cache(rows)
    pat = cache["blocks.2.attn.hook_pattern"][:, 1]
    n_events = int((pat[..., 1:] > 0.05).sum())
    h = next(x for x in r.heads if (x.layer, x.head) == (2, 1))
    assert h.n_events == n_events and sum(h.prefix_hist.values()) == n_events
    assert any(x.n_intervened > 0 for x in r.heads)  # repeated text gives matches of length >= 2
    assert all(x.n_intervened <= 4 for x in r.heads)
