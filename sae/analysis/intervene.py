"""Intervene on SAE features and read what the model does: next-token predictions, loss, and later features.

An edit changes feature F's activation at chosen positions of layer L's z while keeping the SAE's error term, so
only that feature changes: `z' = z + (v - a) * W_dec[F]` (a the activation, v the new value; several features add
their edits). The edit is a difference of two decodes, so the per-head constant that separates attnscope's z from
the bridge's raw z (`sae.engine.models`) cancels: it is added to the raw z as is. For an SAE with a run-time input
normalisation the decoder works in the normalised space, so the difference is mapped back with that row's scale.

`predictions` reads the model's own next-token top-k at every position and the per-token loss (no edit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import torch

from sae.analysis.dfa import prompt_tokens
from sae.engine.autoencoder import SAE
from sae.engine.errors import AttnscopeError
from sae.engine.models import LoadedModel, z_hook_name

Mode = Literal["set", "scale", "ablate"]


class InterventionError(AttnscopeError, ValueError):
    """An intervention that cannot be made (unknown feature, position outside the prompt, ...)."""


@dataclass(frozen=True)
class Edit:
    """One feature's change: `mode` set (activation := value), scale (activation *= value) or ablate (:= 0), at
    `pos` (an index, negative from the end), "all" (every position) or None (every position where it fires)."""

    feature: int
    mode: Mode
    value: float = 0.0
    pos: int | str | None = None

    def new_value(self, a: float) -> float:
        if self.mode == "ablate":
            return 0.0
        if self.mode == "scale":
            return a * self.value
        return self.value

    def describe(self) -> str:
        what = {"ablate": "ablated", "scale": f"scaled by {self.value:g}", "set": f"set to {self.value:g}"}[self.mode]
        where = "where it fires" if self.pos is None else ("at every position" if self.pos == "all" else f"at {self.pos}")
        return f"feature {self.feature} {what} {where}"


@dataclass(frozen=True)
class TokenLogit:
    token: str
    id: int
    logit: float
    prob: float


@dataclass(frozen=True)
class LogitChange:
    token: str
    id: int
    before: float
    after: float


@dataclass(frozen=True)
class DownstreamChange:
    layer: int
    feature: int
    pos: int
    before: float
    after: float


@dataclass(frozen=True)
class Intervention:
    """What an intervention did. `positions`, `features`, `activation` and `new_activation` are parallel: one entry
    per (feature, position) edited. `top_before` / `top_after` / `logit_change` are at the last position;
    `loss_*` are the mean next-token loss over the prompt; `downstream` are features of later layers whose
    activation changed most (largest |after - before| over positions)."""

    layer: int
    features: list[int]
    tokens: list[str]
    positions: list[int]
    activation: list[float]
    new_activation: list[float]
    top_before: list[TokenLogit]
    top_after: list[TokenLogit]
    logit_change: list[LogitChange]
    loss_before: float
    loss_after: float
    downstream: list[DownstreamChange]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_tokens(model: LoadedModel, logits: torch.Tensor, k: int) -> list[TokenLogit]:
    """The `k` largest of one row of logits `[d_vocab]` with their softmax probabilities."""
    row = logits.float()
    probs = torch.softmax(row, -1)
    vals, ids = row.topk(min(k, row.shape[-1]))
    strs = model.token_strs(ids.tolist())
    return [TokenLogit(token=s, id=int(i), logit=float(v), prob=float(probs[i])) for s, i, v in zip(strs, ids.tolist(), vals.tolist())]


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy `[pos - 1]`: entry t is the loss of predicting `tokens[t + 1]` from logits `[pos,
    d_vocab]` at t."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), tokens[1:], reduction="none")


def _positions(edit: Edit, acts: torch.Tensor, n: int) -> list[int]:
    """Positions an edit acts on; acts `[pos]` is the feature's activation on the prompt."""
    if edit.pos is None:
        return [int(p) for p in torch.nonzero(acts > 0).flatten().tolist()]
    if edit.pos == "all":
        return list(range(n))
    p = int(edit.pos)
    if not -n <= p < n:
        raise InterventionError(f"position {p} is outside the prompt ({n} tokens, 0 = BOS)")
    return [p % n]


def _check(model: LoadedModel, saes: dict[int, SAE], layer: int, edits: Sequence[Edit]) -> SAE:
    if not 0 <= layer < model.n_layers:
        raise InterventionError(f"layer {layer} is outside the model ({model.name} has layers 0..{model.n_layers - 1})")
    if layer not in saes:
        raise InterventionError(f"no SAE for layer {layer}; the SAEs cover layers {sorted(saes) or 'none'}")
    if not edits:
        raise InterventionError("no feature to intervene on")
    sae = saes[layer]
    for e in edits:
        if not 0 <= e.feature < sae.cfg.d_sae:
            raise InterventionError(f"feature {e.feature} is outside the layer-{layer} SAE (ids 0..{sae.cfg.d_sae - 1})")
        if e.mode not in ("set", "scale", "ablate"):
            raise InterventionError(f"unknown intervention {e.mode!r}: set, scale or ablate")
    return sae


@torch.no_grad()
def intervene(
    model: LoadedModel, saes: dict[int, SAE], prompt: str, layer: int, edits: Sequence[Edit], top: int = 10,
    at: int | None = None,
) -> Intervention:
    """Run `prompt`, then run it again with `edits` applied to layer `layer`'s z, and compare.

    `top_before`, `top_after` and `logit_change` are read at position `at` (default: the last; the workbench reads
    them at the cell it edits).

    One clean pass captures z at `layer` and at every later layer with an SAE, and the logits `[pos, d_vocab]`; the
    edited pass adds `delta [pos, d_z]` (the sum of every edit's `(v - a) * W_dec[F]` rows) to layer `layer`'s raw z
    before the output projection and captures the same.
    """
    sae = _check(model, saes, layer, edits)
    if top < 1:
        raise InterventionError("--top must be at least 1")
    tokens, _ = prompt_tokens(model, prompt)
    n = tokens.shape[1]
    later = [x for x in sorted(saes) if x > layer]
    offsets = {x: model.z_offset(x) for x in [layer, *later]}

    def capture(into: dict[int, torch.Tensor]):
        def hook(z: torch.Tensor, hook) -> torch.Tensor:  # z [1, pos, head, d_head] raw
            x = int(hook.name.split(".")[1])
            into[x] = (z - offsets[x]).flatten(-2)[0].detach()
            return z

        return hook

    clean: dict[int, torch.Tensor] = {}
    hooks = [(z_hook_name(x), capture(clean)) for x in [layer, *later]]
    logits0 = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)[0]  # [pos, d_vocab]

    z = clean[layer]  # [pos, d_z]
    x_in = sae.flatten_input(z).to(sae.W_enc.dtype)
    _, stats = sae.normalize_in(x_in)
    acts = sae.encode(z)  # [pos, d_sae]
    delta = torch.zeros_like(x_in)  # [pos, d_z], in the SAE's (possibly normalised) space
    rows: list[tuple[int, int, float, float]] = []
    for e in edits:
        for p in _positions(e, acts[:, e.feature], n):
            a = float(acts[p, e.feature])
            v = e.new_value(a)
            delta[p] += (v - a) * sae.W_dec[e.feature]
            rows.append((e.feature, p, a, v))
    if stats is not None:  # back to z's scale: normalize_out(y + d) - normalize_out(y) = d / coeff
        delta = delta / stats[0]

    def edit(z: torch.Tensor, hook) -> torch.Tensor:
        return z + delta.to(device=z.device, dtype=z.dtype).reshape(z.shape[1:]).unsqueeze(0)

    edited: dict[int, torch.Tensor] = {}
    hooks = [(z_hook_name(layer), edit)] + [(z_hook_name(x), capture(edited)) for x in later]
    logits1 = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)[0]

    ids = tokens[0]
    if at is not None and not -n <= at < n:
        raise InterventionError(f"position {at} is outside the prompt ({n} tokens, 0 = BOS)")
    read = n - 1 if at is None else at % n
    last0, last1 = logits0[read].float(), logits1[read].float()
    change = (last1 - last0).abs()
    cids = [i for i in change.topk(min(top, change.shape[0])).indices.tolist() if float(change[i]) > 0]
    cstr = model.token_strs(cids)
    downstream: list[DownstreamChange] = []
    for x in later:
        f0, f1 = saes[x].encode(clean[x]), saes[x].encode(edited[x])  # [pos, d_sae]
        diff = (f1 - f0).abs()
        best, where = diff.max(0)  # [d_sae]
        for feat in best.topk(min(top, best.shape[0])).indices.tolist():
            if float(best[feat]) <= 0:
                continue
            p = int(where[feat])
            downstream.append(DownstreamChange(x, int(feat), p, float(f0[p, feat]), float(f1[p, feat])))
    downstream.sort(key=lambda d: -abs(d.after - d.before))
    return Intervention(
        layer=layer,
        features=[r[0] for r in rows],
        tokens=model.token_strs(ids.tolist()),
        positions=[r[1] for r in rows],
        activation=[r[2] for r in rows],
        new_activation=[r[3] for r in rows],
        top_before=top_tokens(model, last0, top),
        top_after=top_tokens(model, last1, top),
        logit_change=[LogitChange(s, int(i), float(last0[i]), float(last1[i])) for s, i in zip(cstr, cids)],
        loss_before=float(token_losses(logits0, ids).mean()),
        loss_after=float(token_losses(logits1, ids).mean()),
        downstream=downstream[:top],
    )


@dataclass(frozen=True)
class Predictions:
    """The model's own next-token predictions on a prompt: `top[t]` after token t, `loss[t]` the loss of the
    actual next token `tokens[t + 1]` (`len(loss) == len(tokens) - 1`)."""

    tokens: list[str]
    top: list[list[TokenLogit]]
    loss: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def predictions(model: LoadedModel, prompt: str, top: int = 10) -> Predictions:
    """One forward pass: top-`top` next tokens at every position and the per-token loss."""
    tokens, _ = prompt_tokens(model, prompt)
    logits = model.bridge(tokens)[0]  # [pos, d_vocab]
    return Predictions(
        tokens=model.token_strs(tokens[0].tolist()),
        top=[top_tokens(model, logits[t], top) for t in range(logits.shape[0])],
        loss=token_losses(logits, tokens[0]).tolist(),
    )


@torch.no_grad()
def attention_pattern(model: LoadedModel, prompt: str, layer: int, head: int) -> tuple[list[str], torch.Tensor]:
    """One head's attention pattern on `prompt`: tokens and `[query, key]` probabilities (float32, CPU)."""
    model.check_layer(layer)
    if not 0 <= head < model.n_heads:
        raise InterventionError(f"head {head} is outside layer {layer} (heads 0..{model.n_heads - 1})")
    tokens, _ = prompt_tokens(model, prompt)
    name = f"blocks.{layer}.attn.hook_pattern"
    got: dict[str, torch.Tensor] = {}

    def grab(p: torch.Tensor, hook) -> torch.Tensor:
        got["p"] = p[0, head].detach().float().cpu()
        return p

    stop = layer + 1
    if stop >= model.n_layers:
        model.bridge.run_with_hooks(tokens, fwd_hooks=[(name, grab)], return_type=None)
    else:
        model.bridge.run_with_hooks(tokens, fwd_hooks=[(name, grab)], stop_at_layer=stop, return_type=None)
    return model.token_strs(tokens[0].tolist()), got["p"]


@dataclass(frozen=True)
class Comparison:
    """The same features on two prompts: `a[i]` / `b[i]` the peak activation of `features[i]` over each prompt's
    positions, sorted by |b - a| (largest first)."""

    layer: int
    features: list[int]
    a: list[float]
    b: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def compare_prompts(model: LoadedModel, sae: SAE, prompt_a: str, prompt_b: str, top: int = 16) -> Comparison:
    """Peak activation `[d_sae]` of every feature on each prompt; keeps the `top` features with the largest
    peak on either, sorted by the size of their difference."""
    layer = sae.cfg.layer
    peaks = []
    for prompt in (prompt_a, prompt_b):
        tokens, _ = prompt_tokens(model, prompt)
        z = model.capture_z(tokens, [layer])[layer][0]  # [pos, d_z]
        peaks.append(sae.encode(z).max(0).values.float())  # [d_sae]
    a, b = peaks
    k = min(top, a.shape[0])
    either = torch.maximum(a, b)
    keep = [i for i in either.topk(k).indices.tolist() if float(either[i]) > 0]
    keep.sort(key=lambda i: -abs(float(b[i] - a[i])))
    return Comparison(layer=layer, features=keep, a=[float(a[i]) for i in keep], b=[float(b[i]) for i in keep])
