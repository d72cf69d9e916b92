"""Measure, on the embedded default, what each difference from the paper's code changes (README "Differences from
the paper's code"). attnscope computes both sides: the intended quantity and the paper code's behaviour, written out
here as the paper's code does it (its indexing, its hook, its LayerNorm).

    PYTHONPATH=. .venv/bin/python scripts/paper_differences.py [--n 100] [--json OUT.json]

Prompts: the paper setting (its IOIDataset("mixed") prompts, no BOS, seed 1); SAE: the embedded default's layer-1
SAE (the middle layer, as the paper's layer 5); noising layers: attnscope's default (0 and 1 here, 5 and 6 on GPT-2).
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import torch

from sae import zoo
from sae.experiments import induction, ioi, ioi_data


def feature_ablation(model, data, sae, layer: int) -> dict:
    """`ablate_sae_feature`: `sae_acts[:, pos, f] = 0` with `pos` the batch's S2 positions (one per prompt), so every
    prompt loses the feature at every S2 position of the batch; attnscope ablates each prompt at its own S2."""
    clean = ioi.batched_logit_diffs(model, data, len(data))
    z_s2 = ioi.capture_at(model, data, [layer], data.s2, len(data))[layer]
    with torch.no_grad():
        acts = sae.encode(z_s2)
    live = (acts > 0).any(0).nonzero().flatten().tolist()
    all_s2 = sorted(set(data.s2.tolist()))

    def at_all(z: torch.Tensor, fn) -> torch.Tensor:  # the paper's `[:, pos]`: every row, every listed position
        out = z.clone()
        for p in all_s2:
            if p < z.shape[1]:
                out[:, p] = fn(z[:, p])
        return out

    def drop(i: int):
        return lambda x: x - sae.encode(x)[:, [i]] @ sae.W_dec[[i]]

    changed, right, wrong = 0, {}, {}
    for i in live:
        good = ioi.batched_logit_diffs(model, data, len(data), make_z_fns=lambda s, i=i: {
            layer: lambda z: ioi.ablate_features_at(z, sae, [i], s.s2)})
        bad = ioi.batched_logit_diffs(model, data, len(data), make_z_fns=lambda s, i=i: {
            layer: lambda z: at_all(z, drop(i))})
        right[i], wrong[i] = float((good - clean).mean()), float((bad - clean).mean())
        changed += abs(right[i] - wrong[i]) > 1e-4
    err_good = ioi.batched_logit_diffs(model, data, len(data), make_z_fns=lambda s: {
        layer: lambda z: ioi.ablate_error_at(z, sae, s.s2)})
    err_bad = ioi.batched_logit_diffs(model, data, len(data), make_z_fns=lambda s: {
        layer: lambda z: at_all(z, lambda x: sae(x))})
    return {"layer": layer, "live_features": len(live), "features_whose_effect_changes": changed,
            "error_term_effect_at_own_s2": float((err_good - clean).mean()),
            "error_term_effect_at_all_batch_s2": float((err_bad - clean).mean()),
            "distinct_s2_positions": len(all_s2)}


def zero_ablation(model, data, layers: list[int]) -> dict:
    """`zero_abl_attn_out`'s inverted condition zeroes the attention output at every position."""
    clean = float(ioi.batched_logit_diffs(model, data, len(data)).mean())
    s2 = float(ioi.batched_logit_diffs(model, data, len(data),
                                       make_hooks=lambda s: ioi.zero_attn_out_hooks(layers, s.s2)).mean())
    every = float(ioi.batched_logit_diffs(model, data, len(data), make_hooks=lambda s: [
        (f"blocks.{l}.hook_attn_out", lambda o, hook: o * 0.0) for l in layers]).mean())
    return {"layers": layers, "clean": clean, "zero_at_s2": s2, "zero_everywhere": every}


def corrupted_end(model, data) -> dict:
    """`corrupted_logit_diff_per_prompt` reads the longer corrupted prompts at the clean END index."""
    corrupted = ioi.corrupted_data(model, data, "combined")
    with torch.no_grad():
        logits = model.bridge(corrupted.tokens.to(model.device))
    own = ioi.logit_diffs_from_logits(logits, corrupted)
    r = torch.arange(len(data))
    at_clean_end = logits[r, data.end].float()
    paper = at_clean_end[r, data.io_tok] - at_clean_end[r, data.s_tok]
    return {"corrupted_own_at_own_end": float(own.mean()), "paper_at_clean_end_with_clean_answers": float(paper.mean())}


def ln_scale(model, n: int = 200) -> dict:
    """`stack_head_results(layer=L+1, apply_ln=True)` divides a layer-L head's output by block L+1's ln1 scale,
    not the final LayerNorm's (the same only for the last layer): ratio of the two at the query."""
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    b = induction.paper_batch(model.d_vocab, model.bos_token_id, n, 4, min(128, model.n_ctx), gen, rng)
    got = {}

    def grab(name):
        def hook(t, hook):
            got[name] = t[torch.arange(n), b.query].flatten().float()
        return hook

    hooks = [(f"blocks.{l}.ln1.hook_scale", grab(l)) for l in range(1, model.n_layers)]
    hooks.append(("ln_final.hook_scale", grab("final")))
    with torch.no_grad():
        model.bridge.run_with_hooks(b.tokens.to(model.device), fwd_hooks=hooks, return_type=None)
    out = {}
    for layer in range(model.n_layers - 1):  # the head's layer; the paper's code uses ln1 of layer + 1
        ratio = got["final"] / got[layer + 1]  # its DLA is the intended one times this
        out[str(layer)] = {"median": float(ratio.median()), "min": float(ratio.min()), "max": float(ratio.max())}
    return {"dla_scale_factor_by_head_layer": out, "last_layer": "exact (ln_final)"}


def synthetic(model, n: int) -> dict:
    out = {}
    for sampling in ("attnscope", "paper"):
        res = induction.synthetic_induction(model, n=n, seq_len=min(128, model.n_ctx), sampling=sampling)
        last = model.n_layers - 1
        out[sampling] = {"mean_query_pos": res.mean_query_pos,
                         "scores": {f"{h.layer}.{h.head}": h.scores for h in res.heads if h.layer == last}}
    diffs = [out["attnscope"]["scores"][h][p] - out["paper"]["scores"][h][p]
             for h in out["paper"]["scores"] for p in out["paper"]["scores"][h]]
    out["attnscope_minus_paper"] = {"min": min(diffs), "max": max(diffs)}
    return out


def noising(model, n: int) -> dict:
    out = {}
    for setting, bos in (("attnscope", True), ("paper", False)):
        data = ioi.build_dataset(model, n, seed=ioi_data.PAPER_SEED if setting == "paper" else 0, bos=bos,
                                 setting=setting)
        r = ioi.run_noising(model, data, None, ["combined"], batch_size=n)
        out[setting] = {"recovered": {x.layers: x.recovered for x in r.results},
                        "references": {x.reference: x.fraction for x in r.references}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = zoo.load_model("default", device="cpu")
    saes = zoo.load_sae_set("default", model=model, device="cpu")
    layer = ioi.default_feature_layer(model)
    data = ioi.build_dataset(model, args.n, seed=ioi_data.PAPER_SEED, bos=False, setting="paper")
    new = ioi_data.paper_new_names(data.prompts, data.names, data.seed)
    res = {
        "prompts": f"paper setting, N={args.n}, seed {data.seed}, no BOS, {len(data.names)} names",
        "c_equals_d": sum(c == d for c, d in new),
        "feature_ablation": feature_ablation(model, data, saes[layer].eval(), layer),
        "zero_ablation": zero_ablation(model, data, ioi.default_noising_layers(model)),
        "corrupted_end": corrupted_end(model, data),
        "ln_scale": ln_scale(model),
        "synthetic_induction": synthetic(model, args.n),
        "noising_combined": noising(model, args.n),
    }
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        open(args.json, "w").write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
