"""Interventions against an independent computation: the same edit made with a plain PyTorch forward pre-hook on
the Hugging Face model's attention output projection (`attn.c_proj`, whose input is the raw z), with the feature's
activation computed by hand from the raw z minus the hand-written value-bias offset."""

from __future__ import annotations

import pytest
import torch
from support import hf_z_offset, random_sae, run_cli

from sae.analysis.intervene import Edit, InterventionError, attention_pattern, intervene, predictions

PROMPT = "When Mary and John went to the store, John gave a drink to"
LAYER = 1


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def saes(tiny_model):
    out = {x: random_sae(tiny_model, x, d_sae=48, seed=20 + x) for x in range(3)}
    with torch.no_grad():
        out[LAYER].W_dec *= 4.0  # edits big enough to move the logits
    return out


def _hand_run(hf, tokens, layer, edit_fn=None):
    """Logits `[pos, vocab]` and the raw c_proj input of `layer` `[pos, d_model]`, with `edit_fn(raw)` replacing it."""
    got = {}

    def pre_hook(module, args):
        (x,) = args
        got["raw"] = x[0].detach().clone()
        if edit_fn is not None:
            return (edit_fn(x),)
        return None

    h = hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            logits = hf(tokens).logits[0]
    finally:
        h.remove()
    return logits, got["raw"]


def _hand_acts(sae, z):
    """ReLU SAE by hand: relu((z - b_dec) @ W_enc + b_enc), `[pos, d_sae]`."""
    return torch.relu((z - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()


@pytest.mark.parametrize("mode,value", [("ablate", 0.0), ("scale", 3.0), ("set", 2.5)])
def test_matches_a_plain_forward_hook(tiny_either, hf, saes, mode, value):
    tiny_model = tiny_either  # lean and bridge
    tokens = tiny_model.to_tokens(PROMPT)[0].cpu()
    sae = saes[LAYER]
    logits0, raw = _hand_run(hf, tokens, LAYER)
    z = raw - hf_z_offset(hf, LAYER)  # attnscope's convention, by hand
    acts = _hand_acts(sae, z)
    feature = int(acts.max(0).values.argmax())  # the feature that fires most somewhere on the prompt
    fire = torch.nonzero(acts[:, feature] > 0).flatten()
    assert len(fire) > 0
    a = acts[:, feature]
    v = {"ablate": torch.zeros_like(a), "scale": a * value, "set": torch.full_like(a, value)}[mode]
    delta = torch.zeros_like(raw)
    delta[fire] = ((v - a)[fire, None] * sae.W_dec[feature].detach())
    logits1, _ = _hand_run(hf, tokens, LAYER, lambda x: x + delta)

    res = intervene(tiny_model, saes, PROMPT, LAYER, [Edit(feature, mode, value)], top=5)
    assert res.positions == fire.tolist()
    assert res.features == [feature] * len(fire)
    assert res.activation == pytest.approx(a[fire].tolist(), abs=1e-4)
    assert res.new_activation == pytest.approx(v[fire].tolist(), abs=1e-4)
    want_after = logits1[-1].topk(5)
    assert [t.id for t in res.top_after] == want_after.indices.tolist()
    assert [t.logit for t in res.top_after] == pytest.approx(want_after.values.tolist(), abs=1e-4)
    assert [t.prob for t in res.top_after] == pytest.approx(torch.softmax(logits1[-1], -1)[want_after.indices].tolist(), abs=1e-5)
    assert [t.id for t in res.top_before] == logits0[-1].topk(5).indices.tolist()
    ce = torch.nn.functional.cross_entropy
    assert res.loss_before == pytest.approx(float(ce(logits0[:-1], tokens[0, 1:])), abs=1e-4)
    assert res.loss_after == pytest.approx(float(ce(logits1[:-1], tokens[0, 1:])), abs=1e-4)
    assert res.loss_after != pytest.approx(res.loss_before, abs=1e-6)  # the edit did something
    change = (logits1[-1] - logits0[-1]).abs()
    assert res.logit_change[0].id == int(change.argmax())
    assert res.logit_change[0].after - res.logit_change[0].before == pytest.approx(
        float(logits1[-1, change.argmax()] - logits0[-1, change.argmax()]), abs=1e-4)

    # downstream: the layer-2 features, by hand from the edited run's raw z
    _, raw2_clean = _hand_run(hf, tokens, 2)
    _, raw2_edit = _hand_run_two(hf, tokens, LAYER, lambda x: x + delta, 2)
    off2 = hf_z_offset(hf, 2)
    d2 = (_hand_acts(saes[2], raw2_edit - off2) - _hand_acts(saes[2], raw2_clean - off2)).abs().max(0).values
    assert res.downstream, "no later feature changed"
    top = res.downstream[0]
    assert top.layer == 2 and top.feature == int(d2.argmax())
    assert abs(top.after - top.before) == pytest.approx(float(d2.max()), abs=1e-4)


def _hand_run_two(hf, tokens, layer, edit_fn, read_layer):
    """Edit `layer`'s c_proj input and read `read_layer`'s raw c_proj input."""
    got = {}

    def edit_hook(module, args):
        return (edit_fn(args[0]),)

    def read_hook(module, args):
        got["raw"] = args[0][0].detach().clone()

    h1 = hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(edit_hook)
    h2 = hf.transformer.h[read_layer].attn.c_proj.register_forward_pre_hook(read_hook)
    try:
        with torch.no_grad():
            logits = hf(tokens).logits[0]
    finally:
        h1.remove()
        h2.remove()
    return logits, got["raw"]


def test_set_at_one_position_and_several_features(tiny_model, hf, saes):
    tokens = tiny_model.to_tokens(PROMPT)[0].cpu()
    sae = saes[LAYER]
    _, raw = _hand_run(hf, tokens, LAYER)
    acts = _hand_acts(sae, raw - hf_z_offset(hf, LAYER))
    f1, f2 = 3, 11
    delta = torch.zeros_like(raw)
    delta[4] += (5.0 - acts[4, f1]) * sae.W_dec[f1].detach()
    delta[-1] += (-1.0 - acts[-1, f2]) * sae.W_dec[f2].detach()
    logits1, _ = _hand_run(hf, tokens, LAYER, lambda x: x + delta)
    res = intervene(tiny_model, saes, PROMPT, LAYER, [Edit(f1, "set", 5.0, pos=4), Edit(f2, "set", -1.0, pos=-1)], top=3)
    n = tokens.shape[1]
    assert res.positions == [4, n - 1] and res.features == [f1, f2]
    assert [t.logit for t in res.top_after] == pytest.approx(logits1[-1].topk(3).values.tolist(), abs=1e-4)


def test_bad_input_is_a_user_error(tiny_model, saes):
    with pytest.raises(InterventionError, match="outside the layer-1 SAE"):
        intervene(tiny_model, saes, PROMPT, LAYER, [Edit(999, "ablate")])
    with pytest.raises(InterventionError, match="outside the prompt"):
        intervene(tiny_model, saes, PROMPT, LAYER, [Edit(1, "ablate", pos=500)])
    with pytest.raises(InterventionError, match="no SAE for layer"):
        intervene(tiny_model, {0: saes[0]}, PROMPT, 1, [Edit(1, "ablate")])


def test_predictions_and_pattern_by_hand(tiny_either, hf):
    tiny_model = tiny_either  # lean and bridge
    tokens = tiny_model.to_tokens(PROMPT)[0].cpu()
    with torch.no_grad():
        out = hf(tokens, output_attentions=True)
    logits = out.logits[0]
    p = predictions(tiny_model, PROMPT, top=4)
    assert [t.id for t in p.top[3]] == logits[3].topk(4).indices.tolist()
    ce = torch.nn.functional.cross_entropy(logits[:-1], tokens[0, 1:], reduction="none")
    assert p.loss == pytest.approx(ce.tolist(), abs=1e-4)
    toks, pat = attention_pattern(tiny_model, PROMPT, 1, 2)
    assert len(toks) == tokens.shape[1]
    assert torch.allclose(pat, out.attentions[1][0, 2], atol=1e-5)


def test_cli_json_and_errors(capsys, tiny_model_dir, tiny_model, tmp_path):
    from support import sae_set_dir

    d = sae_set_dir(tiny_model, tmp_path)
    code, out, err = run_cli(capsys, ["intervene", PROMPT, "--model", str(tiny_model_dir), "--saes", str(d),
                                      "--layer", "1", "--feature", "2", "--feature", "5", "--pos", "all", "--ablate",
                                      "--top", "3", "--json", "--device", "cpu"])
    assert code == 0, err
    import json

    data = json.loads(out)
    assert set(data) == {"layer", "features", "tokens", "positions", "activation", "new_activation", "top_before",
                         "top_after", "logit_change", "loss_before", "loss_after", "downstream"}
    assert len(data["top_after"]) == 3 and set(data["top_after"][0]) == {"token", "id", "logit", "prob"}
    n = len(data["tokens"])
    assert data["positions"] == list(range(n)) * 2 and data["new_activation"] == [0.0] * (2 * n)
    code, out, err = run_cli(capsys, ["intervene", PROMPT, "--model", str(tiny_model_dir), "--saes", str(d),
                                      "--layer", "1", "--feature", "2", "--set", "1", "--pos", "-1", "--md", "--device", "cpu"])
    assert code == 0 and "top_before" not in out and "| feature | pos | token |" in out and "_none_" not in out.split("later")[0]
    code, out, err = run_cli(capsys, ["intervene", PROMPT, "--model", str(tiny_model_dir), "--saes", str(d),
                                      "--layer", "1", "--feature", "2000", "--ablate", "--device", "cpu"])
    assert code == 2 and err == [err[0]] and err[0].startswith("attnscope: error:")
    with pytest.raises(SystemExit) as exc:
        run_cli(capsys, ["intervene", PROMPT, "--layer", "1", "--feature", "2"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("attnscope: error: intervene: one of the arguments --set --scale")


def test_compare_prompts_by_hand(tiny_either, hf, saes):
    tiny_model = tiny_either  # lean and bridge
    from sae.analysis.intervene import compare_prompts

    a, b = PROMPT, "When Mary and John went to the store, Mary gave a drink to"
    peaks = []
    for p in (a, b):
        _, raw = _hand_run(hf, tiny_model.to_tokens(p)[0].cpu(), LAYER)
        peaks.append(_hand_acts(saes[LAYER], raw - hf_z_offset(hf, LAYER)).max(0).values)
    c = compare_prompts(tiny_model, saes[LAYER], a, b, top=10)
    either = torch.maximum(*peaks)
    assert set(c.features) == set(either.topk(10).indices.tolist())
    for f, x, y in zip(c.features, c.a, c.b):
        assert x == pytest.approx(float(peaks[0][f]), abs=1e-4) and y == pytest.approx(float(peaks[1][f]), abs=1e-4)
    diffs = [abs(y - x) for x, y in zip(c.a, c.b)]
    assert diffs == sorted(diffs, reverse=True)


def test_cli_compare(capsys, tiny_model_dir, tiny_model, tmp_path):
    import json

    from support import sae_set_dir

    from sae.analysis.intervene import compare_prompts
    from sae.engine.formats import load_sae_set

    d = sae_set_dir(tiny_model, tmp_path)
    b = "When Mary and John went to the store, Mary gave a drink to"
    code, out, err = run_cli(capsys, ["compare", PROMPT, b, "--layer", "1", "--model", str(tiny_model_dir),
                                      "--saes", str(d), "--device", "cpu", "--json", "--top", "5"])
    assert code == 0, err
    data = json.loads(out)
    ref = compare_prompts(tiny_model, load_sae_set(str(d), tiny_model)[1], PROMPT, b, top=5)
    assert data["features"] == ref.features and data["b"] == pytest.approx(ref.b, abs=1e-5)
