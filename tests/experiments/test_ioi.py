"""IOI data (positions, corruptions) and the IOI runner, checked against independent computations."""

from __future__ import annotations


import pytest
import torch
from support import random_sae, torch_layer_norm
from support import build_ioi_model_dir

from sae.experiments import ioi

from sae.experiments import ioi_data
from sae.engine.jobs import CancelToken, Cancelled
from sae.experiments.ioi_data import BABA_TEMPLATES, IOIPrompt, fill


@pytest.fixture(scope="module")
def ioi_dir(tmp_path_factory):
    return build_ioi_model_dir(tmp_path_factory.mktemp("ioi_gpt2"))


@pytest.fixture(scope="module")
def ioi_model(ioi_dir):
    from sae.engine.models import load_model

    return load_model(str(ioi_dir), device="cpu")


@pytest.fixture(scope="module", params=["lean", "bridge"])
def ioi_either(request, ioi_model, ioi_dir):
    """The IOI model on each backend (`sae.engine.gpt2.LeanGPT2`, TransformerBridge)."""
    from sae.engine.models import load_model

    return ioi_model if request.param == "lean" else load_model(str(ioi_dir), device="cpu", backend="bridge")


@pytest.fixture(scope="module")
def data(ioi_model):
    return ioi.build_dataset(ioi_model, 8, seed=3)


def every_template(io: str = "Mary", s: str = "John") -> list[IOIPrompt]:
    out = []
    for t, tmpl in enumerate(BABA_TEMPLATES):
        for order in ("ABBA", "BABA"):
            full = fill(tmpl, io, s, order, "store", "drink")
            out.append(IOIPrompt(full[: -(len(io) + 1)], io, s, order, t, "store", "drink"))
    return out


# ---- names and positions ----------------------------------------------------------------------------------


def test_single_token_names_and_split_everything_error(ioi_model):
    assert ioi_data.single_token_names(lambda t: [1] if t == " Mary" else [1, 2], ["Mary", "Bob"]) == ["Mary"]
    assert len(ioi_data.single_token_names(ioi_model.encode)) >= 4
    with pytest.raises(ioi_data.NameTokenError, match="keeps only 0 of"):
        ioi_data.require_single_token_names(lambda t: list(t.encode()), "bytes-model")


def test_positions_by_hand(ioi_model):
    p = IOIPrompt("When Mary and John went to the store, John gave a drink to", "Mary", "John", "ABBA", 0, "store", "drink")
    ids = ioi_data.prompt_ids(ioi_model.encode, p, ioi_model.bos_token_id)
    strs = ioi_model.token_strs(ids)
    pos = ioi_data.prompt_positions(ioi_model.encode, p, ioi_model.bos_token_id)
    assert strs[pos.io] == " Mary" and strs[pos.s1] == " John" and strs[pos.s2] == " John"
    assert pos.s1 < pos.s2 and strs[pos.io + 1] == " and" and pos.end == len(ids) - 1 and strs[pos.end] == " to"


# ---- corruptions change exactly what they claim ---------------------------------------------------------------


def _ids(model, p):
    return ioi_data.prompt_ids(model.encode, p, model.bos_token_id)


@pytest.mark.parametrize("prompt_index", range(0, 30, 1))
def test_corruptions_change_exactly_what_they_claim(ioi_model, prompt_index):
    p = every_template()[prompt_index]
    enc, names = ioi_model.encode, ioi_data.single_token_names(ioi_model.encode)
    clean = _ids(ioi_model, p)
    pos = ioi_data.prompt_positions(enc, p, ioi_model.bos_token_id)
    pair_end = max(pos.io, pos.s1)  # the second name of "X and Y"
    and_at = min(pos.io, pos.s1) + 1

    # names: same length; differs exactly at IO, S1, S2, which now hold C, D, D
    c = ioi_data.corrupt(p, "names", names, seed=1)
    cids = _ids(ioi_model, c)
    assert {c.io, c.s}.isdisjoint({p.io, p.s}) and c.io != c.s
    assert len(cids) == len(clean)
    assert [i for i in range(len(clean)) if cids[i] != clean[i]] == sorted([pos.io, pos.s1, pos.s2])
    assert cids[pos.io] == enc(" " + c.io)[0] and cids[pos.s1] == cids[pos.s2] == enc(" " + c.s)[0]

    # abs_pos: a prefix inserted after BOS, the prompt's tokens unchanged after it
    prefix = enc(ioi_data.PREFIX_SENTENCE)
    a = _ids(ioi_model, ioi_data.corrupt(p, "abs_pos"))
    assert a == clean[:1] + prefix + clean[1:]
    apos = ioi_data.prompt_positions(enc, ioi_data.corrupt(p, "abs_pos"), ioi_model.bos_token_id)
    k = len(prefix)
    assert (apos.io, apos.s1, apos.s2, apos.end) == (pos.io + k, pos.s1 + k, pos.s2 + k, pos.end + k)

    # rel_pos: a clause right after the name pair; IO, S1 and ' and' stay, S2 and END move by its length
    clause = enc(ioi_data.INSERTED_CLAUSE)
    r = _ids(ioi_model, ioi_data.corrupt(p, "rel_pos"))
    assert r == clean[: pair_end + 1] + clause + clean[pair_end + 1 :]
    rpos = ioi_data.prompt_positions(enc, ioi_data.corrupt(p, "rel_pos"), ioi_model.bos_token_id)
    assert (rpos.io, rpos.s1, rpos.s2, rpos.end) == (pos.io, pos.s1, pos.s2 + len(clause), pos.end + len(clause))

    # alongside: only the ' and' between the names changes
    assert clean[and_at] == enc(" and")[0]
    g = _ids(ioi_model, ioi_data.corrupt(p, "alongside"))
    assert g == clean[:and_at] + enc(" alongside") + clean[and_at + 1 :]

    # names_abs: both at once
    na = _ids(ioi_model, ioi_data.corrupt(p, "names_abs", names, seed=1))
    assert na == clean[:1] + prefix + cids[1:]


def test_corrupt_rejects_unknown_kind_and_too_few_names():
    p = every_template()[0]
    with pytest.raises(ValueError, match="unknown corruption"):
        ioi_data.corrupt(p, "shuffle")
    with pytest.raises(ioi_data.NameTokenError, match="at least 4"):
        ioi_data.corrupt(p, "names", ["Mary", "John", "Tom"])


# ---- the runner --------------------------------------------------------------------------------------------


def test_clean_logit_diff_matches_unpadded_single_prompts(ioi_model, data):
    r = ioi.run_clean(ioi_model, data, batch_size=3)
    diffs = []
    with torch.no_grad():
        for p in data.prompts:
            toks, _ = ioi_model.to_tokens(p.text)
            last = ioi_model.bridge(toks)[0, -1]
            diffs.append(float(last[ioi_model.encode(" " + p.io)[0]] - last[ioi_model.encode(" " + p.s)[0]]))
    assert r.clean_logit_diff == pytest.approx(sum(diffs) / len(diffs), abs=1e-5)
    assert r.accuracy == pytest.approx(sum(d > 0 for d in diffs) / len(diffs))
    assert set(r.to_dict()) >= {"model", "n_prompts", "experiment", "clean_logit_diff", "setting"} and r.n_prompts == 8
    assert (r.settings.seed, r.settings.split, r.settings.bos, r.settings.setting) == (3, "all", True, "attnscope")


def test_splice_with_error_term_reproduces_clean_logits(ioi_either, data):
    ioi_model = ioi_either  # lean and bridge
    saes = {l: random_sae(ioi_model, l, d_sae=48, seed=l) for l in range(ioi_model.n_layers)}
    with torch.no_grad():
        clean = ioi_model.bridge(data.tokens)
        with_err = ioi.run_logits(ioi_model, data.tokens, {l: ioi.splice_fn(s, True) for l, s in saes.items()})
        without = ioi.run_logits(ioi_model, data.tokens, {l: ioi.splice_fn(s, False) for l, s in saes.items()})
    torch.testing.assert_close(with_err, clean, atol=1e-5, rtol=0)
    assert (without - clean).abs().max() > 1e-3  # the test would be vacuous if the SAEs were the identity
    r = ioi.run_splice(ioi_model, data, saes, batch_size=4)
    rec = {(s.layers, s.error_term): s for s in r.splices}
    assert rec[("all", True)].max_abs_change < 1e-5
    assert rec[("all", False)].max_abs_change > 1e-4


def test_feature_ablation_touches_only_s2(ioi_model, data):
    layer, feature = 1, None
    sae = random_sae(ioi_model, layer, d_sae=48, seed=5)
    z = ioi_model.capture_z(data.tokens, [layer])[layer]
    acts = sae.encode(z[torch.arange(len(data)), data.s2])
    feature = int(acts.gt(0).sum(0).argmax())  # fires at S2 on most prompts
    out = ioi.ablate_features_at(z, sae, [feature], data.s2)
    # hand computation: z - f_i W_dec[i] at (b, S2[b]) only
    expected = z.clone()
    for b in range(len(data)):
        f = torch.relu((z[b, data.s2[b]] - sae.b_dec) @ sae.W_enc[:, feature] + sae.b_enc[feature])
        expected[b, data.s2[b]] -= f * sae.W_dec[feature]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    changed = (out != z).any(-1)  # [batch, pos]
    for b in range(len(data)):
        assert changed[b].nonzero().flatten().tolist() == ([int(data.s2[b])] if acts[b, feature] > 0 else [])

    # inside the model: the layer's attention output differs from the clean run at S2 and nowhere else
    grabbed = {}

    def grab(key):
        def hook(x, hook):
            grabbed[key] = x.detach().clone()

        return hook

    name = f"blocks.{layer}.hook_attn_out"
    with torch.no_grad():
        ioi_model.bridge.run_with_hooks(data.tokens, fwd_hooks=[(name, grab("clean"))])
        ioi.run_logits(
            ioi_model, data.tokens, {layer: lambda zz: ioi.ablate_features_at(zz, sae, [feature], data.s2)},
            fwd_hooks=[(name, grab("ablated"))],
        )
    diff = (grabbed["ablated"] - grabbed["clean"]).abs().amax(-1) > 1e-6
    mask = torch.zeros_like(diff)
    mask[torch.arange(len(data)), data.s2] = acts[:, feature] > 0
    assert torch.equal(diff, mask) and mask.any()


def test_features_experiment_effects_match_a_direct_ablation(ioi_model, data):
    layer = 1
    sae = random_sae(ioi_model, layer, d_sae=48, seed=5)
    r = ioi.run_features(ioi_model, data, sae, layer, top=0, batch_size=3)
    assert r.n_live == len(r.features) > 0
    top = r.features[0]
    clean = ioi.run_clean(ioi_model, data).clean_logit_diff
    # independent: subtract f_i W_dec[i] from the raw hook_z at S2 for every prompt (silent prompts: f = 0)
    z = ioi_model.capture_z(data.tokens, [layer])[layer]
    f = sae.encode(z[torch.arange(len(data)), data.s2])[:, top.feature]
    delta = (f[:, None] * sae.W_dec[top.feature]).view(len(data), ioi_model.n_heads, ioi_model.d_head)

    def hook(zz, hook):
        zz = zz.clone()
        zz[torch.arange(len(data)), data.s2] -= delta
        return zz

    with torch.no_grad():
        logits = ioi_model.bridge.run_with_hooks(data.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
    ld = ioi.logit_diffs_from_logits(logits, data).mean()
    assert top.delta == pytest.approx(float(ld) - clean, abs=1e-5)


def test_head_zero_ablation_matches_raw_hook(ioi_either, data):
    ioi_model = ioi_either  # lean and bridge
    r = ioi.run_heads(ioi_model, data, batch_size=8)
    rec = {(h.layer, h.head): h for h in r.heads}
    clean = r.clean_logit_diff
    layer, head = 2, 1
    blk = ioi_model.bridge.blocks[layer]
    b_v = ioi_model.bridge.b_V[layer, head] + torch_layer_norm(blk.ln1).bias @ ioi_model.bridge.W_V[layer, head]

    def hook(z, hook):  # attnscope's zero = the processed model's zero: the raw z left with only b_V + ln1.b @ W_V
        z = z.clone()
        z[:, :, head] = b_v
        return z

    with torch.no_grad():
        logits = ioi_model.bridge.run_with_hooks(data.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
    assert rec[(layer, head)].zero_delta == pytest.approx(float(ioi.logit_diffs_from_logits(logits, data).mean()) - clean, abs=1e-5)
    assert len(r.heads) == ioi_model.n_layers * ioi_model.n_heads
    assert abs(r.heads[0].zero_delta) >= abs(r.heads[-1].zero_delta)


def test_feature_direction_is_its_attention_output(ioi_model):
    layer, feature = 1, 7
    sae = random_sae(ioi_model, layer, d_sae=48, seed=2)
    toks = torch.randint(1, ioi_model.d_vocab, (1, 6))
    outs = []
    for add in (0.0, 1.0):
        got = {}
        with torch.no_grad():
            ioi.run_logits(
                ioi_model, toks, {layer: lambda z, add=add: z + add * sae.W_dec[feature]},
                fwd_hooks=[(f"blocks.{layer}.hook_attn_out", lambda x, hook: got.setdefault("a", x.detach().clone()))],
            )
        outs.append(got["a"])
    direction = ioi.feature_resid_direction(ioi_model, sae, layer, feature)
    torch.testing.assert_close(outs[1][0, 3] - outs[0][0, 3], direction, atol=1e-5, rtol=1e-4)


def test_path_hooks_match_editing_the_whole_value_input(ioi_either, data):
    """Removing a direction from every head of a layer equals editing that layer's v.hook_in (LN recomputed),
    and removing it for one head leaves the other heads' values alone."""
    ioi_model = ioi_either  # lean and bridge
    layer = 2
    delta = torch.randn(len(data), ioi_model.d_model) * 3.0
    got: dict[str, torch.Tensor] = {}

    def grab_v(key):
        def hook(v, hook):
            got[key] = v.detach().clone()

        return hook

    v_name = f"blocks.{layer}.attn.hook_v"
    all_heads = [(layer, h) for h in range(ioi_model.n_heads)]
    with torch.no_grad():
        ioi_model.bridge.run_with_hooks(data.tokens, fwd_hooks=[(v_name, grab_v("clean"))])
        ioi_model.bridge.run_with_hooks(
            data.tokens, fwd_hooks=ioi.value_path_hooks(ioi_model, all_heads, data.s2, delta) + [(v_name, grab_v("path_all"))]
        )
        ioi_model.bridge.run_with_hooks(
            data.tokens, fwd_hooks=ioi.value_path_hooks(ioi_model, [(layer, 2)], data.s2, delta) + [(v_name, grab_v("path_one"))]
        )
        resid = {}

        def grab_resid(x, hook):
            resid["r"] = x.detach().clone()

        def edit_in(x, hook):
            x = x.clone()
            r = torch.arange(len(data))
            ln1 = ioi_model.bridge.blocks[layer].ln1
            x[r, data.s2] = ln1((resid["r"][r, data.s2] - delta).unsqueeze(1)).squeeze(1)
            return x

        ioi_model.bridge.run_with_hooks(
            data.tokens,
            fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", grab_resid), (f"blocks.{layer}.attn.v.hook_in", edit_in), (v_name, grab_v("v_in"))],
        )
    torch.testing.assert_close(got["path_all"], got["v_in"], atol=1e-5, rtol=1e-4)
    changed = (got["path_one"] - got["clean"]).abs().amax(-1) > 1e-6  # [batch, pos, head]
    expect = torch.zeros_like(changed)
    expect[torch.arange(len(data)), data.s2, 2] = True
    assert torch.equal(changed, expect)


def test_noising_patches_s2_from_the_corrupted_prompt(ioi_either, data):
    ioi_model = ioi_either  # lean and bridge
    layer = 1
    r = ioi.run_noising(ioi_model, data, [layer], ["abs_pos"], batch_size=8)
    corrupted = ioi.encode_prompts(ioi_model, [ioi_data.corrupt(p, "abs_pos") for p in data.prompts])
    # independent: cache the corrupted hook_z at its S2 and write it into the clean run's raw hook_z at S2
    with torch.no_grad():
        _, cache = ioi_model.bridge.run_with_cache(corrupted.tokens, names_filter=lambda n: n == f"blocks.{layer}.attn.hook_z")
        zc = cache[f"blocks.{layer}.attn.hook_z"][torch.arange(len(data)), corrupted.s2]

        def hook(z, hook):
            z = z.clone()
            z[torch.arange(len(data)), data.s2] = zc
            return z

        logits = ioi_model.bridge.run_with_hooks(data.tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
    expected = float(ioi.logit_diffs_from_logits(logits, data).mean())
    assert r.results[0].logit_diff == pytest.approx(expected, abs=1e-5)
    assert r.results[0].recovered == pytest.approx(expected / r.clean_logit_diff, rel=1e-4)


def test_path_experiment_runs_and_validates(ioi_model, data):
    sae = random_sae(ioi_model, 1, d_sae=48, seed=5)
    r = ioi.run_path(ioi_model, data, sae, 1, features=[3, 4], heads=[(2, 0), (2, 3)], batch_size=4)
    assert {p.heads for p in r.paths} == {"L2H0", "L2H3", "L2H0,L2H3"} and len(r.paths) == 6
    with pytest.raises(ioi.IOIError, match="not after layer"):
        ioi.run_path(ioi_model, data, sae, 1, features=[3], heads=[(1, 0)])
    with pytest.raises(ioi.IOIError, match="outside the SAE"):
        ioi.run_path(ioi_model, data, sae, 1, features=[999], heads=[(2, 0)])


# ---- progress, cancellation, determinism, bad input ---------------------------------------------------------


def test_progress_reaches_total_and_cancel_stops_between_batches(ioi_model, data):
    seen = []
    ioi.run_heads(ioi_model, data, batch_size=4, on_progress=lambda p: seen.append((p.done, p.total)))
    assert seen[-1][0] == seen[-1][1] == len(seen) and all(b[0] == a[0] + 1 for a, b in zip(seen, seen[1:]))

    ev = CancelToken()
    ev.cancel()
    with pytest.raises(Cancelled):
        ioi.run_clean(ioi_model, data, cancel=ev)
    calls = []
    token = CancelToken()

    def stop_after_two(p):
        calls.append(p.done)
        if len(calls) >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        ioi.run_heads(ioi_model, data, batch_size=4, on_progress=stop_after_two, cancel=token)
    assert len(calls) == 2


def test_deterministic_for_a_seed(ioi_model):
    a = ioi.run_clean(ioi_model, ioi.build_dataset(ioi_model, 6, seed=11))
    b = ioi.run_clean(ioi_model, ioi.build_dataset(ioi_model, 6, seed=11))
    c = ioi.build_dataset(ioi_model, 6, seed=12)
    assert a == b
    assert [p.text for p in ioi.build_dataset(ioi_model, 6, seed=11).prompts] != [p.text for p in c.prompts]


def test_bad_input(ioi_model, data, tiny_model):
    with pytest.raises(ioi.IOIError, match="positive"):
        ioi.build_dataset(ioi_model, 0)
    with pytest.raises(ioi.IOIError, match="unknown experiment"):
        ioi.run_experiment("bogus", ioi_model, data)
    with pytest.raises(ioi.IOIError, match="outside the model"):
        ioi.run_noising(ioi_model, data, [7])
    with pytest.raises(ioi.IOIError, match="no SAE for layer 1"):
        ioi.run_experiment("features", ioi_model, data, {0: random_sae(ioi_model, 0, d_sae=16)})
    # the shared tiny model's tokenizer keeps only two names: clean runs, the names corruption is skipped
    small = ioi.build_dataset(tiny_model, 4, seed=0, split="all")
    r = ioi.run_noising(tiny_model, small, [1], ["names", "alongside"])
    assert [s.corruption for s in r.skipped] == ["names"]


# ---- the paper's noising: the combined corruption, reference values, fractions, BOS optional ----------------------


def test_combined_corruption_token_by_token_on_a_hand_checked_prompt(ioi_model):
    p = IOIPrompt("After Mary and John went to the store, John gave a drink to", "Mary", "John", "ABBA", 5, "store", "drink")
    enc, bos = ioi_model.encode, ioi_model.bos_token_id
    names = ioi_data.single_token_names(enc)
    assert p.text == ioi_data.fill(BABA_TEMPLATES[5], "Mary", "John", "ABBA", "store", "drink")[: -len(" Mary")]
    c = ioi_data.corrupt(p, "combined", names, seed=4)
    assert {c.io, c.s}.isdisjoint({"Mary", "John"}) and c.io != c.s
    # written out by hand: prefix sentence, new names, and the clause right after the pair
    assert c.text == (
        "It was a quiet morning in the town.\n"
        f"After {c.io} and {c.s}, who had been friends for years, went to the store, {c.s} gave a drink to"
    )
    clean = ioi_data.prompt_ids(enc, p, bos)
    got = ioi_data.prompt_ids(enc, c, bos)
    prefix, clause = enc(ioi_data.PREFIX_SENTENCE), enc(ioi_data.INSERTED_CLAUSE)
    k, m = len(prefix), len(clause)
    C, D = enc(" " + c.io)[0], enc(" " + c.s)[0]
    pos = ioi_data.prompt_positions(enc, p, bos)
    # the clean prompt's tokens with IO -> C, S -> D, then the prefix after BOS and the clause after the pair
    renamed = [C if t == enc(" Mary")[0] else D if t == enc(" John")[0] else t for t in clean]
    expected = renamed[:1] + prefix + renamed[1 : pos.s1 + 1] + clause + renamed[pos.s1 + 1 :]
    assert got == expected
    strs = ioi_model.token_strs(got)
    new = ioi_data.prompt_positions(enc, c, bos)
    # absolute positions all move by the prefix; S2 and END move further by the clause (relative positions change)
    assert (new.io, new.s1, new.s2, new.end) == (pos.io + k, pos.s1 + k, pos.s2 + k + m, pos.end + k + m)
    assert strs[new.io] == " " + c.io and strs[new.s1] == strs[new.s2] == " " + c.s
    assert strs[new.io + 1] == " and" and strs[new.end] == " to" and new.end == len(got) - 1
    assert new.s2 - new.s1 == pos.s2 - pos.s1 + m  # the S1 -> S2 distance grew by the clause


@pytest.mark.parametrize("prompt_index", range(0, 30, 3))
def test_combined_is_names_then_prefix_then_clause(ioi_model, prompt_index):
    p = every_template()[prompt_index]
    enc, bos = ioi_model.encode, ioi_model.bos_token_id
    names = ioi_data.single_token_names(enc)
    c = ioi_data.corrupt(p, "combined", names, seed=1)
    n = ioi_data.corrupt(p, "names", names, seed=1)  # same new names (same seeded draw)
    assert (c.io, c.s) == (n.io, n.s)
    pos = ioi_data.prompt_positions(enc, n, bos)
    pair_end = max(pos.io, pos.s1)
    nids = ioi_data.prompt_ids(enc, n, bos)
    expected = nids[:1] + enc(ioi_data.PREFIX_SENTENCE) + nids[1 : pair_end + 1] + enc(ioi_data.INSERTED_CLAUSE) + nids[pair_end + 1 :]
    assert ioi_data.prompt_ids(enc, c, bos) == expected


def _ld_one(model, ids, io_id, s_id):
    with torch.no_grad():
        logits = model.bridge(torch.tensor([ids]))
    return float(logits[0, -1, io_id] - logits[0, -1, s_id])


def test_noising_references_and_fractions_by_hand(ioi_model):
    data = ioi.build_dataset(ioi_model, 4, seed=5)
    r = ioi.run_noising(ioi_model, data, [1], ["combined"], batch_size=3)
    enc, bos = ioi_model.encode, ioi_model.bos_token_id
    clean, s2only, own = [], [], []
    for p in data.prompts:
        ids = ioi_data.prompt_ids(enc, p, bos)
        io_id, s_id = enc(" " + p.io)[0], enc(" " + p.s)[0]
        clean.append(_ld_one(ioi_model, ids, io_id, s_id))
        s2 = [i for i, t in enumerate(ids) if t == s_id][1]
        e = ioi_data.third_name(p, data.names, data.seed)
        assert e not in (p.io, p.s)
        s2only.append(_ld_one(ioi_model, ids[:s2] + enc(" " + e) + ids[s2 + 1 :], io_id, s_id))
        c = ioi_data.corrupt(p, "combined", data.names, data.seed)
        own.append(_ld_one(ioi_model, ioi_data.prompt_ids(enc, c, bos), enc(" " + c.io)[0], enc(" " + c.s)[0]))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    refs = {x.reference: x for x in r.references}
    assert refs["clean"].logit_diff == pytest.approx(mean(clean), abs=1e-4)
    assert refs["clean"].fraction == pytest.approx(1.0)
    assert refs["S2-only"].logit_diff == pytest.approx(mean(s2only), abs=1e-4)
    assert refs["S2-only"].fraction == pytest.approx(mean(s2only) / mean(clean), rel=1e-3)
    assert refs["corrupted (combined)"].logit_diff == pytest.approx(mean(own), abs=1e-4)
    assert refs["corrupted (combined)"].fraction == pytest.approx(mean(own) / mean(clean), rel=1e-3)
    res = r.results[0]
    assert res.corruption == "combined" and res.recovered == pytest.approx(res.logit_diff / mean(clean), rel=1e-3)


def test_no_bos_drops_position_zero(ioi_model):
    with_bos = ioi.build_dataset(ioi_model, 4, seed=2)
    without = ioi.build_dataset(ioi_model, 4, seed=2, bos=False)
    assert with_bos.bos and not without.bos
    for i in range(4):
        n = int(without.end[i]) + 1
        assert without.tokens[i, :n].tolist() == with_bos.tokens[i, 1 : n + 1].tolist()
    for f in ("io", "s1", "s2", "end"):
        assert torch.equal(getattr(without, f), getattr(with_bos, f) - 1)
    r = ioi.run_noising(ioi_model, without, [1], ["rel_pos"], batch_size=4)
    assert r.settings.bos is False and r.results[0].logit_diff is not None


def test_default_split_is_every_template(ioi_model):
    data = ioi.build_dataset(ioi_model, 200, seed=0)
    assert data.split == "all" and {p.template for p in data.prompts} == set(range(len(BABA_TEMPLATES)))


def test_noising_zero_ablation_reference_zeroes_attn_out_at_s2_only(ioi_model):
    """The zero-ablation reference, by hand: the attention output (W_O z + b_O) of layer 1 set to 0 at S2 alone,
    written as a plain hook on the block's residual update (not the paper's helper, which zeroes every position)."""
    data = ioi.build_dataset(ioi_model, 4, seed=6)
    r = ioi.run_noising(ioi_model, data, [1], ["abs_pos"], batch_size=4)
    zero = next(x for x in r.references if x.reference.startswith("zero-ablated"))
    seen = {}

    def hook(out, hook):
        seen["positions"] = out.shape[1]
        out = out.clone()
        for b in range(out.shape[0]):
            out[b, int(data.s2[b])] = 0.0
        return out

    with torch.no_grad():
        logits = ioi_model.bridge.run_with_hooks(data.tokens, fwd_hooks=[("blocks.1.hook_attn_out", hook)])
    expected = float(ioi.logit_diffs_from_logits(logits, data).mean())
    assert zero.logit_diff == pytest.approx(expected, abs=1e-5)
    assert zero.fraction == pytest.approx(expected / r.clean_logit_diff, rel=1e-4)
    # zeroing everywhere (the paper's inverted condition) gives another number
    with torch.no_grad():
        everywhere = ioi_model.bridge.run_with_hooks(data.tokens, fwd_hooks=[("blocks.1.hook_attn_out", lambda o, hook: o * 0)])
    assert abs(float(ioi.logit_diffs_from_logits(everywhere, data).mean()) - expected) > 1e-3
