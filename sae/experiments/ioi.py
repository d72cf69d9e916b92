"""The IOI runner: logit difference IO - S on Wang et al.'s prompts, and the interventions of Kissane et al.

Every experiment takes a model, an `IOIData` set of prompts (and SAEs where it needs them) and returns a plain dict:
`{"model", "n_prompts", "experiment", "clean_logit_diff", ...}` with the experiment's results as lists of records.

- `clean`: logit difference and accuracy.
- `splice`: SAEs spliced into hook_z, one layer at a time and all together, with and without the error term.
- `heads`: zero- and mean-ablation of each head's z (value bias removed, so "zero" removes what the head read).
- `features`: zero-ablation of each live SAE feature of one layer **at the S2 position only**, with the error term
  kept, so the change is exactly `z[S2] -= f_i W_dec[i]`; also the error term's own effect at S2.
- `path`: a feature's residual direction `W_dec[i] W_O` (times its activation at S2) removed from the value input of
  chosen later heads at S2, the LayerNorm recomputed, everything else untouched.
- `noising`: attention output at S2 in chosen layers replaced by that of each corrupted variant at its S2 (the
  paper's combined corruption: new names C/D, a prepended sentence and a filler clause), reported as a fraction of
  the clean logit difference beside three reference logit differences: clean, S2-only (the clean prompt with only
  its S2 name replaced by a third name, so no name is duplicated) and each corrupted prompt's own (its names).

Prompts are right-padded: a causal model's logits at a position never see later tokens, so padding after END is
inert and every prompt is read at its own END.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from sae.experiments import ioi_data
from sae.engine.jobs import CancelToken, ProgressFn, Steps
from sae.experiments.ioi_data import EXPERIMENTS, IOIPrompt, NameTokenError
from sae.engine.models import LoadedModel, z_hook_name
from sae.engine.autoencoder import SAE
from sae.engine.errors import AttnscopeError

NEEDS_SAES = {"splice", "features", "path"}
ZFn = Callable[[torch.Tensor], torch.Tensor]


class IOIError(AttnscopeError, ValueError):
    """Bad input to an IOI experiment; the message is one line for the user."""


# ---- prompts as tensors ----------------------------------------------------------------------------------------


@dataclass
class IOIData:
    """Prompts as a right-padded batch.

    tokens: `[n, max_len]` (BOS first, padded with BOS after END); io_tok, s_tok: `[n]` answer ids;
    io, s1, s2, end: `[n]` positions. `names` are the single-token names the prompts were drawn from.
    """

    prompts: list[IOIPrompt]
    tokens: torch.Tensor
    io_tok: torch.Tensor
    s_tok: torch.Tensor
    io: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    end: torch.Tensor
    names: list[str] = field(default_factory=list)
    split: str = "all"
    seed: int = 0
    rows: torch.Tensor | None = None  # `[n]` each prompt's index in the full set this one was cut from
    bos: bool = True  # whether position 0 is BOS (False for models trained without it)

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = torch.arange(len(self.prompts))

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Sequence[int] | torch.Tensor) -> "IOIData":
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        ids = idx_t.tolist()
        width = int(self.end[idx_t].max()) + 1 if ids else 1
        return IOIData(
            prompts=[self.prompts[i] for i in ids], tokens=self.tokens[idx_t, :width], io_tok=self.io_tok[idx_t],
            s_tok=self.s_tok[idx_t], io=self.io[idx_t], s1=self.s1[idx_t], s2=self.s2[idx_t], end=self.end[idx_t],
            names=self.names, split=self.split, seed=self.seed, rows=self.rows[idx_t], bos=self.bos,
        )

    def orders(self) -> list[str]:
        return [p.order for p in self.prompts]


def encode_prompts(
    model: LoadedModel, prompts: Sequence[IOIPrompt], names: Sequence[str] = (), split: str = "all", seed: int = 0,
    bos: bool = True,
) -> IOIData:
    """Tokenise prompts (BOS first unless `bos` is False) and locate IO, S1, S2 and END; NameTokenError if a
    prompt's names are not single tokens. Padding after END uses the BOS id either way (it is never read)."""
    pad = model.bos_token_id
    rows, io_t, s_t, pos = [], [], [], []
    for p in prompts:
        ids = ioi_data.prompt_ids(model.encode, p, pad if bos else None)
        io_id, s_id = ioi_data.name_token(model.encode, p.io), ioi_data.name_token(model.encode, p.s)
        try:
            pos.append(ioi_data.token_positions(ids, io_id, s_id))
        except ValueError as exc:
            raise NameTokenError(f"{exc}: {p.text!r}") from None
        if len(ids) > model.n_ctx:
            raise IOIError(f"an IOI prompt has {len(ids)} tokens; the model's context is {model.n_ctx}")
        rows.append(ids)
        io_t.append(io_id)
        s_t.append(s_id)
    width = max((len(r) for r in rows), default=1)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)

    def col(attr: str) -> torch.Tensor:
        return torch.tensor([getattr(q, attr) for q in pos], dtype=torch.long)

    return IOIData(
        prompts=list(prompts), tokens=tokens, io_tok=torch.tensor(io_t, dtype=torch.long),
        s_tok=torch.tensor(s_t, dtype=torch.long), io=col("io"), s1=col("s1"), s2=col("s2"), end=col("end"),
        names=list(names), split=split, seed=seed, bos=bos,
    )


def build_dataset(
    model: LoadedModel, n: int, seed: int = 0, split: str = "all", names: Sequence[str] | None = None,
    bos: bool = True,
) -> IOIData:
    """`n` prompts (alternating ABBA / BABA) over the names the model's tokenizer keeps as single tokens.

    The default split is "all" (every template, every name pair), as in the paper."""
    if n <= 0:
        raise IOIError(f"the number of prompts must be positive, got {n}")
    pool = ioi_data.require_single_token_names(model.encode, model.name, names)
    try:
        prompts = ioi_data.generate(n, seed=seed, names=pool, split=split)
    except ValueError as exc:
        raise IOIError(str(exc)) from None
    return encode_prompts(model, prompts, pool, split, seed, bos=bos)


# ---- forward passes --------------------------------------------------------------------------------------------


def _rows(t: torch.Tensor) -> torch.Tensor:
    return torch.arange(t.shape[0])


def logit_diffs_from_logits(logits: torch.Tensor, data: IOIData) -> torch.Tensor:
    """`logits [n, pos, vocab]` -> `[n]` logit(IO) - logit(S) at each prompt's END."""
    last = logits[_rows(data.end), data.end.to(logits.device)].float()
    r = torch.arange(len(data))
    return (last[r, data.io_tok.to(last.device)] - last[r, data.s_tok.to(last.device)]).cpu()


def _batches(n: int, batch_size: int) -> list[torch.Tensor]:
    return [torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def run_logits(model: LoadedModel, tokens: torch.Tensor, z_fns: dict[int, ZFn] | None = None, fwd_hooks: list | None = None) -> torch.Tensor:
    """Logits `[batch, pos, vocab]`, with z replaced through `z_fns` (attnscope's z convention) and any raw hooks."""
    tokens = tokens.to(model.device)
    if z_fns and not fwd_hooks:
        return model.logits_with_z_hooks(tokens, z_fns)
    hooks = list(fwd_hooks or [])
    if z_fns:
        hooks += [(z_hook_name(layer), _raw_z_hook(model, layer, fn)) for layer, fn in z_fns.items()]
    if not hooks:
        return model.bridge(tokens)
    return model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)


def _raw_z_hook(model: LoadedModel, layer: int, fn: ZFn):
    def hook(z: torch.Tensor, hook) -> torch.Tensor:
        b_v = model.z_offset(layer)
        return fn((z - b_v).flatten(-2)).to(z.dtype).reshape(z.shape) + b_v

    return hook


def batched_logit_diffs(
    model: LoadedModel,
    data: IOIData,
    batch_size: int,
    steps: Steps | None = None,
    make_z_fns: Callable[[IOIData], dict[int, ZFn]] | None = None,
    make_hooks: Callable[[IOIData], list] | None = None,
) -> torch.Tensor:
    """`[n]` logit differences, running `data` in batches; `make_*` build each batch's interventions."""
    out = []
    for idx in _batches(len(data), batch_size):
        sub = data.subset(idx)
        logits = run_logits(
            model, sub.tokens, make_z_fns(sub) if make_z_fns else None, make_hooks(sub) if make_hooks else None
        )
        out.append(logit_diffs_from_logits(logits, sub))
        if steps is not None:
            steps.step()
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def capture_at(model: LoadedModel, data: IOIData, layers: Sequence[int], pos: torch.Tensor, batch_size: int, steps: Steps | None = None) -> dict[int, torch.Tensor]:
    """`{layer: z [n, d_z]}` at one position per prompt (`pos [n]`), value bias removed."""
    got: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    for idx in _batches(len(data), batch_size):
        sub = data.subset(idx)
        zs = model.capture_z(sub.tokens.to(model.device), layers)
        for l in layers:
            got[l].append(zs[l][_rows(idx), pos[idx].to(zs[l].device)].float().cpu())
        if steps is not None:
            steps.step()
    return {l: torch.cat(v) for l, v in got.items()}


# ---- the pure interventions ------------------------------------------------------------------------------------


def ablate_features_at(z: torch.Tensor, sae: SAE, features: Sequence[int], pos: torch.Tensor) -> torch.Tensor:
    """Zero-ablate `features` of `sae` at one position per row, keeping the SAE error term.

    z: `[batch, pos, d_in]`; pos: `[batch]`. Returns a new tensor equal to `z` except at `(b, pos[b])`, where
    `z -= sum_i f_i W_dec[i]`: the spliced SAE's output with those features at zero, plus the unchanged error.
    """
    out = z.clone()
    r = _rows(z)
    at = z[r, pos.to(z.device)]
    f = sae.encode(at)[:, list(features)]  # [batch, k]
    delta = f @ sae.W_dec[list(features)]  # [batch, d_in]
    out[r, pos.to(z.device)] = at - delta.to(z.dtype)
    return out


def ablate_error_at(z: torch.Tensor, sae: SAE, pos: torch.Tensor) -> torch.Tensor:
    """Replace z at `(b, pos[b])` by the SAE reconstruction (the error term removed); z: `[batch, pos, d_in]`."""
    out = z.clone()
    r = _rows(z)
    out[r, pos.to(z.device)] = sae(z[r, pos.to(z.device)]).to(z.dtype)
    return out


def splice_fn(sae: SAE, with_error: bool) -> ZFn:
    """z -> SAE(z), or SAE(z) + (z - SAE(z)) with the error term (which leaves the model unchanged)."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        x_hat = sae(z).to(z.dtype)
        return x_hat + (z - x_hat) if with_error else x_hat

    return fn


def set_head(z: torch.Tensor, n_heads: int, head: int, value: torch.Tensor | float) -> torch.Tensor:
    """z `[batch, pos, n_heads*d_head]` with head `head` set to `value` (`[d_head]` or a scalar) everywhere."""
    out = z.clone().unflatten(-1, (n_heads, -1))
    out[:, :, head] = value
    return out.flatten(-2)


def patch_at(z: torch.Tensor, pos: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """z `[batch, pos, d]` with `z[b, pos[b]] = values[b]` (`values [batch, d]`)."""
    out = z.clone()
    out[_rows(z), pos.to(z.device)] = values.to(out.device, out.dtype)
    return out


def feature_resid_direction(model: LoadedModel, sae: SAE, layer: int, feature: int) -> torch.Tensor:
    """`[d_model]`: what one unit of the feature adds to the residual stream, `sum_h W_dec[i, h] @ W_O[layer, h]`."""
    w_o = model.bridge.W_O[layer].detach().float().cpu()  # [head, d_head, d_model]
    row = sae.W_dec[feature].detach().float().cpu().view(model.n_heads, model.d_head)
    return torch.einsum("he,hem->m", row, w_o)


def value_path_hooks(model: LoadedModel, heads: Sequence[tuple[int, int]], pos: torch.Tensor, delta: torch.Tensor) -> list:
    """Hooks that remove `delta [batch, d_model]` from the residual stream at `(b, pos[b])` as seen by the value
    input of each `(layer, head)` in `heads` only; the LayerNorm is recomputed on the edited residual."""
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    stash: dict[int, torch.Tensor] = {}
    hooks = []
    for layer, hs in by_layer.items():

        def grab(resid: torch.Tensor, hook, layer: int = layer) -> None:
            stash[layer] = resid

        def edit_v(v: torch.Tensor, hook, layer: int = layer, hs: list[int] = hs) -> torch.Tensor:
            r = _rows(v)
            p = pos.to(v.device)
            x = stash[layer][r, p].unsqueeze(1)  # [batch, 1, d_model]
            ln1 = model.bridge.blocks[layer].ln1
            d_ln = (ln1(x - delta.to(x.device, x.dtype).unsqueeze(1)) - ln1(x)).squeeze(1)  # [batch, d_model]
            w_v = model.bridge.W_V[layer][hs].to(v.dtype)  # [k, d_model, d_head]
            out = v.clone()
            out[r.unsqueeze(1), p.unsqueeze(1), torch.tensor(hs)] += torch.einsum("bm,kme->bke", d_ln, w_v)
            return out

        hooks.append((f"blocks.{layer}.hook_resid_pre", grab))
        hooks.append((f"blocks.{layer}.attn.hook_v", edit_v))
    return hooks


# ---- experiments ---------------------------------------------------------------------------------------------


def _mean(x: torch.Tensor) -> float | None:
    """The mean, or None for no values (JSON has no NaN)."""
    return float(x.mean()) if len(x) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _by_order(values: torch.Tensor, data: IOIData) -> dict[str, float | None]:
    o = torch.tensor([x == "ABBA" for x in data.orders()], dtype=torch.bool)
    return {"all": _mean(values), "ABBA": _mean(values[o]), "BABA": _mean(values[~o])}


def _header(model: LoadedModel, data: IOIData, experiment: str, clean: torch.Tensor) -> dict:
    return {
        "model": model.name, "n_prompts": len(data), "experiment": experiment, "split": data.split,
        "seed": data.seed, "bos": data.bos, "clean_logit_diff": _mean(clean),
    }


def _check_layers(model: LoadedModel, layers: Sequence[int]) -> list[int]:
    for l in layers:
        if not 0 <= l < model.n_layers:
            raise IOIError(f"layer {l} is outside the model ({model.name} has layers 0..{model.n_layers - 1})")
    return sorted(set(layers))


def _rebased(data: IOIData) -> IOIData:
    """The same prompts with `rows` counting from 0, so per-prompt tensors of this set can be indexed by them."""
    return IOIData(**{**data.__dict__, "rows": torch.arange(len(data))})


def _n_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def default_feature_layer(model: LoadedModel) -> int:
    """The middle layer: 5 of GPT-2 Small's 12 (the paper's choice), 1 of the embedded default's 3."""
    return (model.n_layers - 1) // 2


def default_noising_layers(model: LoadedModel) -> list[int]:
    """Two middle layers (GPT-2 Small: 5 and 6, the paper's), never the last one: at S2 it cannot reach END."""
    last_useful = max(model.n_layers - 2, 0)
    m = min(default_feature_layer(model), last_useful)
    return sorted({max(min(m + 1, last_useful) - 1, 0), min(m + 1, last_useful)})


def run_clean(model: LoadedModel, data: IOIData, batch_size: int = 32, on_progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> dict:
    steps = Steps("ioi", _n_batches(len(data), batch_size), on_progress, cancel, unit="batches")
    ld = batched_logit_diffs(model, data, batch_size, steps)
    out = _header(model, data, "clean", ld)
    o = _by_order(ld, data)
    acc = _by_order((ld > 0).float(), data)
    out["accuracy"] = acc["all"]
    out["by_order"] = [{"order": k, "logit_diff": o[k], "accuracy": acc[k]} for k in ("ABBA", "BABA")]
    return out


def run_splice(model: LoadedModel, data: IOIData, saes: dict[int, SAE], batch_size: int = 32, on_progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> dict:
    """Logit difference with SAEs spliced in: each layer alone and all layers, with and without the error term."""
    if not saes:
        raise IOIError("the splice experiment needs at least one SAE")
    layers = _check_layers(model, list(saes))
    settings: list[tuple[str, list[int], bool]] = [("all", layers, False), ("all", layers, True)]
    if len(layers) > 1:
        settings += [(str(l), [l], False) for l in layers]
    nb = _n_batches(len(data), batch_size)
    steps = Steps("ioi", nb * (len(settings) + 1), on_progress, cancel, unit="batches")
    clean = batched_logit_diffs(model, data, batch_size, steps)
    out = _header(model, data, "splice", clean)
    records = []
    for name, ls, err in settings:
        ld = batched_logit_diffs(
            model, data, batch_size, steps, make_z_fns=lambda sub, ls=ls, err=err: {l: splice_fn(saes[l], err) for l in ls}
        )
        records.append({
            "layers": name, "error_term": err, "logit_diff": _mean(ld),
            "recovered": _ratio(_mean(ld), _mean(clean)),
            "max_abs_change": float((ld - clean).abs().max()),
        })
    out["splices"] = records
    return out


def run_heads(model: LoadedModel, data: IOIData, batch_size: int = 32, on_progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> dict:
    """Change in logit difference when each head's z is zeroed, or set to its mean over every prompt token."""
    L, H = model.n_layers, model.n_heads
    nb = _n_batches(len(data), batch_size)
    steps = Steps("ioi", nb * (2 + 2 * L * H), on_progress, cancel, unit="batches")
    clean = batched_logit_diffs(model, data, batch_size, steps)
    means = _mean_z(model, data, batch_size, steps)  # [layer, d_z]
    records = []
    for l in range(L):
        for h in range(H):
            mean_h = means[l].view(H, -1)[h]
            zero = batched_logit_diffs(model, data, batch_size, steps, make_z_fns=lambda sub, l=l, h=h: {l: lambda z: set_head(z, H, h, 0.0)})
            mean = batched_logit_diffs(
                model, data, batch_size, steps, make_z_fns=lambda sub, l=l, h=h, m=mean_h: {l: lambda z: set_head(z, H, h, m.to(z.device, z.dtype))}
            )
            records.append({"layer": l, "head": h, "zero_delta": _mean(zero - clean), "mean_delta": _mean(mean - clean)})
    records.sort(key=lambda r: -abs(r["zero_delta"]))
    out = _header(model, data, "heads", clean)
    out["ranking"] = "by |change in logit diff| under zero-ablation, largest first"
    out["mean_ablation"] = "each head's z replaced by its mean over every token of the prompts"
    out["heads"] = records
    return out


@torch.no_grad()
def _mean_z(model: LoadedModel, data: IOIData, batch_size: int, steps: Steps) -> torch.Tensor:
    """`[layer, d_z]`: each layer's z averaged over every non-padding token of the prompts."""
    total = torch.zeros(model.n_layers, model.d_z, dtype=torch.float64)
    count = 0
    for idx in _batches(len(data), batch_size):
        sub = data.subset(idx)
        zs = model.capture_z(sub.tokens.to(model.device), range(model.n_layers))
        mask = (torch.arange(sub.tokens.shape[1]) <= sub.end.unsqueeze(1)).to(zs[0].device)  # [b, pos]
        for l in range(model.n_layers):
            total[l] += (zs[l].float() * mask.unsqueeze(-1)).sum((0, 1)).double().cpu()
        count += int(mask.sum())
        steps.step()
    return (total / max(count, 1)).float()


def run_features(
    model: LoadedModel, data: IOIData, sae: SAE, layer: int, top: int = 10, batch_size: int = 32,
    on_progress: ProgressFn | None = None, cancel: CancelToken | None = None,
) -> dict:
    """Zero-ablate each live feature of `sae` (at `layer`) at S2 only; rank features by |change in logit diff|.

    A feature is live when it fires at S2 on at least one prompt. Only those prompts can change, so each feature
    runs on them alone; prompts where it is silent contribute a change of exactly zero to the averages.
    """
    _check_layers(model, [layer])
    nb = _n_batches(len(data), batch_size)
    steps = Steps("ioi", 3 * nb, on_progress, cancel, unit="batches")
    clean = batched_logit_diffs(model, data, batch_size, steps)
    z_s2 = capture_at(model, data, [layer], data.s2, batch_size, steps)[layer]
    with torch.no_grad():
        acts = sae.encode(z_s2.to(sae.W_enc.device)).float().cpu()  # [n, d_sae]
    live = (acts > 0).any(0).nonzero().flatten().tolist()
    steps.total += sum(_n_batches(int((acts[:, i] > 0).sum()), batch_size) for i in live)
    err = batched_logit_diffs(model, data, batch_size, steps, make_z_fns=lambda sub: {layer: lambda z: ablate_error_at(z, sae, sub.s2)})
    records = []
    for i in live:
        idx = (acts[:, i] > 0).nonzero().flatten()
        sub = data.subset(idx)
        ld = batched_logit_diffs(model, sub, batch_size, steps, make_z_fns=lambda s, i=i: {layer: lambda z: ablate_features_at(z, sae, [i], s.s2)})
        delta = torch.zeros(len(data))
        delta[idx] = ld - clean[idx]
        d = _by_order(delta, data)
        records.append({
            "feature": i, "n_active": len(idx), "mean_act": float(acts[idx, i].mean()),
            "delta": d["all"], "delta_abba": d["ABBA"], "delta_baba": d["BABA"],
        })
    records.sort(key=lambda r: -abs(r["delta"]))
    e = _by_order(err - clean, data)
    out = _header(model, data, "features", clean)
    out.update({
        "layer": layer, "position": "S2", "n_live": len(live), "d_sae": int(sae.cfg.d_sae),
        "ranking": "by |mean change in logit diff| over all prompts, largest first",
        "error_term": {"delta": e["all"], "delta_abba": e["ABBA"], "delta_baba": e["BABA"]},
        "features": records[:top] if top else records,
        "top_by_order": {
            o: [r["feature"] for r in sorted(records, key=lambda r: -abs(r[f"delta_{o.lower()}"] or 0.0))[: top or 5]]
            for o in ("ABBA", "BABA")
        },
    })
    return out


def run_path(
    model: LoadedModel, data: IOIData, sae: SAE, layer: int, features: Sequence[int] | None = None,
    heads: Sequence[tuple[int, int]] | None = None, top: int = 3, batch_size: int = 32,
    on_progress: ProgressFn | None = None, cancel: CancelToken | None = None,
) -> dict:
    """Remove each feature's `act * W_dec[i] W_O` at S2 from the value input of each chosen later head.

    features: default the `top` features of the `features` experiment; heads: default every head after `layer`.
    Records are per (feature, head) and per feature for all chosen heads together.
    """
    _check_layers(model, [layer])
    data = _rebased(data)
    if heads is None:
        heads = [(l, h) for l in range(layer + 1, model.n_layers) for h in range(model.n_heads)]
    heads = list(heads)
    if not heads:
        raise IOIError(f"no heads after layer {layer}: the path experiment needs a later layer")
    for l, h in heads:
        _check_layers(model, [l])
        if l <= layer:
            raise IOIError(f"head {l}.{h} is not after layer {layer}; path patching reads later heads' value input")
        if not 0 <= h < model.n_heads:
            raise IOIError(f"head {l}.{h} is outside the model ({model.n_heads} heads per layer)")
    picked_by = "given"
    if features is None:
        picked_by = f"top {top} of the features experiment"
        ranked = run_features(model, data, sae, layer, top=top, batch_size=batch_size, on_progress=on_progress, cancel=cancel)
        features = [r["feature"] for r in ranked["features"]]
    for i in features:
        if not 0 <= i < sae.cfg.d_sae:
            raise IOIError(f"feature {i} is outside the SAE (d_sae = {sae.cfg.d_sae})")
    nb = _n_batches(len(data), batch_size)
    steps = Steps("ioi", 2 * nb, on_progress, cancel, unit="batches")
    clean = batched_logit_diffs(model, data, batch_size, steps)
    z_s2 = capture_at(model, data, [layer], data.s2, batch_size, steps)[layer]
    with torch.no_grad():
        acts = sae.encode(z_s2.to(sae.W_enc.device)).float().cpu()
    groups = [[hd] for hd in heads] + ([heads] if len(heads) > 1 else [])
    active = {i: (acts[:, i] > 0).nonzero().flatten() for i in features}
    steps.total += sum(len(groups) * _n_batches(len(active[i]), batch_size) for i in features)
    records = []
    for i in features:
        idx = active[i]
        sub = data.subset(idx)
        direction = feature_resid_direction(model, sae, layer, i)
        for g in groups:
            delta = torch.zeros(len(data))
            if len(idx):
                ld = batched_logit_diffs(
                    model, sub, batch_size, steps,
                    make_hooks=lambda s, g=g: value_path_hooks(model, g, s.s2, acts[s.rows, i].unsqueeze(1) * direction),
                )
                delta[idx] = ld - clean[idx]
            d = _by_order(delta, data)
            records.append({
                "feature": i, "heads": ",".join(f"{l}.{h}" for l, h in g) if len(g) > 1 else f"{g[0][0]}.{g[0][1]}",
                "n_active": len(idx), "delta": d["all"], "delta_abba": d["ABBA"], "delta_baba": d["BABA"],
            })
    records.sort(key=lambda r: -abs(r["delta"]))
    out = _header(model, data, "path", clean)
    out.update({"layer": layer, "position": "S2", "features_picked": picked_by, "features": list(features), "paths": records})
    return out


def s2_only(data: IOIData, model: LoadedModel) -> IOIData:
    """The clean prompts with only the S2 name replaced by a third name (`ioi_data.third_name`), so no name repeats.

    Names are single tokens, so every position stays; IO and S (the answer tokens) are the clean ones."""
    tokens = data.tokens.clone()
    for i, p in enumerate(data.prompts):
        e = ioi_data.third_name(p, data.names or ioi_data.NAMES, data.seed)
        tokens[i, int(data.s2[i])] = ioi_data.name_token(model.encode, e)
    return IOIData(**{**data.__dict__, "tokens": tokens})


def run_noising(
    model: LoadedModel, data: IOIData, layers: Sequence[int] | None = None,
    corruptions: Sequence[str] = tuple(ioi_data.CORRUPTIONS), batch_size: int = 32,
    on_progress: ProgressFn | None = None, cancel: CancelToken | None = None,
) -> dict:
    """Patch z (hence the attention output) at S2 in `layers` from each corrupted variant at its own S2.

    Each layer alone and, when several are chosen, all together. `recovered` = noised logit diff / clean (the
    fraction of the clean logit difference). References: the clean logit diff, the S2-only prompts' (`s2_only`) and
    each corrupted prompt's own logit diff (its IO minus its S), each also as a fraction of clean.
    """
    layers = _check_layers(model, layers if layers is not None else default_noising_layers(model))
    data = _rebased(data)
    for c in corruptions:
        if c not in ioi_data.CORRUPTIONS:
            raise IOIError(f"unknown corruption {c!r}; expected one of {', '.join(ioi_data.CORRUPTIONS)}")
    sets = [[l] for l in layers] + ([layers] if len(layers) > 1 else [])
    nb = _n_batches(len(data), batch_size)
    steps = Steps("ioi", nb * (2 + len(corruptions) * (2 + len(sets))), on_progress, cancel, unit="batches")
    clean = batched_logit_diffs(model, data, batch_size, steps)
    c_mean = _mean(clean)
    references: list[dict] = [{"reference": "clean", "logit_diff": c_mean, "fraction": _ratio(c_mean, c_mean)}]
    try:
        s2 = _mean(batched_logit_diffs(model, s2_only(data, model), batch_size, steps))
        references.append({"reference": "S2-only", "logit_diff": s2, "fraction": _ratio(s2, c_mean)})
    except NameTokenError as exc:
        steps.step(nb)
        references.append({"reference": "S2-only", "logit_diff": None, "fraction": None, "skipped": str(exc)})
    records = []
    skipped = []
    for kind in corruptions:
        try:
            corrupted = encode_prompts(
                model, [ioi_data.corrupt(p, kind, data.names, data.seed) for p in data.prompts], bos=data.bos
            )
        except NameTokenError as exc:
            skipped.append({"corruption": kind, "reason": str(exc)})
            steps.step(nb * (2 + len(sets)))
            continue
        own = _mean(batched_logit_diffs(model, corrupted, batch_size, steps))
        references.append({"reference": f"corrupted ({kind})", "logit_diff": own, "fraction": _ratio(own, c_mean)})
        patch = capture_at(model, corrupted, layers, corrupted.s2, batch_size, steps)
        for ls in sets:

            def fns(sub: IOIData, ls=ls) -> dict[int, ZFn]:
                return {l: (lambda z, l=l: patch_at(z, sub.s2, patch[l][sub.rows])) for l in ls}

            ld = batched_logit_diffs(model, data, batch_size, steps, make_z_fns=fns)
            records.append({
                "corruption": kind, "layers": ",".join(map(str, ls)), "logit_diff": _mean(ld),
                "recovered": _ratio(_mean(ld), c_mean),
            })
    out = _header(model, data, "noising", clean)
    out.update({
        "position": "S2", "layers": layers,
        "corruptions": {k: ioi_data.CORRUPTIONS[k] for k in corruptions},
        "recovered_is": "noised logit diff / clean logit diff (fraction of clean)",
        "references": references,
        "references_are": (
            "logit diff IO - S of: the clean prompts; the clean prompts with only S2 replaced by a third name; each "
            "corrupted prompt with its own names"
        ),
        "results": records, "skipped": skipped,
    })
    return out


def run_experiment(
    name: str, model: LoadedModel, data: IOIData, saes: dict[int, SAE] | None = None, *, layer: int | None = None,
    layers: Sequence[int] | None = None, features: Sequence[int] | None = None,
    heads: Sequence[tuple[int, int]] | None = None, top: int = 10, batch_size: int = 32,
    on_progress: ProgressFn | None = None, cancel: CancelToken | None = None,
) -> dict:
    """Dispatch to one experiment by name (a key of `EXPERIMENTS`)."""
    if name not in EXPERIMENTS:
        raise IOIError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    kw = {"batch_size": batch_size, "on_progress": on_progress, "cancel": cancel}
    if name == "clean":
        return run_clean(model, data, **kw)
    if name == "heads":
        return run_heads(model, data, **kw)
    if name == "noising":
        return run_noising(model, data, layers, **kw)
    saes = saes or {}
    if name == "splice":
        return run_splice(model, data, saes, **kw)
    layer = default_feature_layer(model) if layer is None else layer
    _check_layers(model, [layer])
    if layer not in saes:
        have = ", ".join(map(str, sorted(saes))) or "none"
        raise IOIError(f"no SAE for layer {layer} (SAEs loaded for layers: {have})")
    if name == "features":
        return run_features(model, data, saes[layer], layer, top=top, **kw)
    return run_path(model, data, saes[layer], layer, features, heads, top=min(top, 3) if features is None else top, **kw)


# ---- SAEs --------------------------------------------------------------------------------------------------


def saes_by_layer(loaded: object) -> dict[int, SAE]:
    """Normalise what an SAE loader returns (a mapping by layer or hook name, an object holding one, a list)."""
    for attr in ("by_layer", "saes"):
        if hasattr(loaded, attr) and not isinstance(loaded, dict):
            inner = getattr(loaded, attr)
            loaded = inner() if callable(inner) else inner
    items = loaded.items() if isinstance(loaded, dict) else [(None, s) for s in loaded]  # type: ignore[union-attr]
    out: dict[int, SAE] = {}
    for key, sae in items:
        sae = getattr(sae, "sae", sae)
        layer = key if isinstance(key, int) else sae.cfg.layer
        out[int(layer)] = sae
    return out


def load_saes(spec: str, model: LoadedModel) -> dict[int, SAE]:
    """`{layer: SAE}` from `sae.engine.formats.load_sae_set`, checked against `model` and moved to its device."""
    from sae.engine.formats import load_sae_set

    saes = saes_by_layer(load_sae_set(spec, model, device=model.device, dtype=model.dtype))  # SAEFormatError reaches the caller as is
    for sae in saes.values():
        sae.to(model.device).eval()
        if sae.cfg.d_in != model.d_z:
            raise IOIError(f"SAE for {sae.cfg.hook_name} has d_in={sae.cfg.d_in}; {model.name}'s z has {model.d_z}")
    return saes
