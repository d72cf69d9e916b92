"""Recursive direct feature attribution: from one feature back through source tokens into the residual stream.

With every attention pattern and every LayerNorm scale frozen at their values on the prompt, a feature's
pre-activation is linear in the residual stream at each source position:

    pre_i[t] = sum_{k,s} A_k[t,s] * (LN1(resid[s]) @ W_V[k] + b_V[k] - c[k]) @ W_enc[k-slice, i] + bias_i
             = sum_{k,s} A_k[t,s] * ((resid[s] - mean) / scale_frozen * w) @ W_V[k] @ W_enc[k-slice, i] + bias_i
    LN1(x)   = (x - mean(x)) / scale_frozen * w + b        (no centring for RMSNorm)

since z is taken in the processed convention (`c = b_V + b @ W_V`, see `sae.engine.models`): the LayerNorm bias and
the value bias are constant per head and live in the attention output bias, not in any source token's term.

and `resid[s]` is a sum of upstream components: token and position embeddings, every earlier layer's attention
output (split into its SAE features `f_j * W_dec[j] W_O`, the SAE's error `(z - z_hat) W_O` and the output biases
`W_O c + W_O b_dec + b_O`) and every earlier MLP output. Each component is scored through the same linear map, so
the children of a (head, source) node sum to it. A feature's children are its heads (DFA by head) and the encoder
bias; a head's children are its (head, source) terms. An earlier feature's score is `coeff * f_j`, and an active feature
has `f_j = pre_j` (ReLU, top-k and JumpReLU all pass the pre-activation through), so it splits again by head and
source at its own layer: recursion. Pruned children are merged into one `other` node, so sums stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sae.analysis.dfa import encoder_by_head, decoder_by_head, dfa_by_source, prompt_tokens, pattern_hook_name, v_hook_name
from sae.engine.models import LoadedModel, z_hook_name
from sae.engine.autoencoder import SAE
from sae.engine.errors import AttnscopeError
from sae.engine.jobs import CancelToken, Progress, ProgressFn, check_cancelled
from sae.engine.names import head_name

APPROXIMATION = (
    "Attention patterns and LayerNorm scales are frozen at their values on this prompt; with them fixed, each "
    "feature's pre-activation is linear in the upstream residual components, so every node is the exact sum of its "
    "children ('other' collects pruned children; 'unexplained' would show any residual not covered by the components)."
)


@dataclass
class TraceNode:
    """One term of a feature's pre-activation. `value` is in the units of the root's pre-activation."""

    kind: str  # feature | head | head_source | enc_bias | token_embed | pos_embed | sae_error | attn_bias | attn_out | mlp_out | other | unexplained
    label: str
    value: float
    layer: int | None = None
    pos: int | None = None
    head: int | None = None
    src: int | None = None
    feature: int | None = None
    act: float | None = None  # for feature nodes: the feature's activation at `pos`
    children: list["TraceNode"] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("kind", "label", "value", "layer", "pos", "head", "src", "feature", "act")}
        d = {k: v for k, v in d.items() if v is not None}
        d["children"] = [c.to_dict() for c in self.children]
        return d

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


MIN_SHARE = 0.05  # shown by default: terms of at least this share of the root's |value| (the rest summed in one line)


def prune_tree(node: dict[str, Any], floor: float, share: float = MIN_SHARE) -> dict[str, Any]:
    """A copy of a `TraceNode.to_dict()` tree keeping the children with |value| >= `floor`; each node's other
    children become one 'other' child holding their sum (so children still sum to their parent)."""
    kept = [prune_tree(c, floor, share) for c in node["children"] if abs(c["value"]) >= floor]
    rest = [c for c in node["children"] if abs(c["value"]) < floor]
    out = {**node, "children": kept}
    if rest:
        out["children"].append({"kind": "other", "value": sum(c["value"] for c in rest), "children": [],
                                "label": f"({len(rest)} smaller terms, each under {share:.0%} of the root)"})
    return out


@dataclass
class Trace:
    model: str
    layer: int
    feature: int
    pos: int
    tokens: list[str]
    depth: int
    root: TraceNode
    truncated: bool = False
    approximation: str = APPROXIMATION

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "feature": self.feature,
            "pos": self.pos,
            "tokens": self.tokens,
            "depth": self.depth,
            "truncated": self.truncated,
            "approximation": self.approximation,
            "root": self.root.to_dict(),
        }


# ---- what the model computed on the prompt ------------------------------------------------------------


def _first(cache, names: list[str]) -> torch.Tensor | None:
    for n in names:
        if n in cache:
            return cache[n]
    return None


def ln1_params(model: LoadedModel, layer: int) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """LayerNorm-before-attention weight `[d_model]`, bias `[d_model]` or None, and whether it centres (LN, not RMS)."""
    ln = model.bridge.blocks[layer].ln1
    comp = getattr(ln, "original_component", ln)
    w = getattr(comp, "weight", None)
    b = getattr(comp, "bias", None)
    w = torch.ones(model.d_model, device=model.device) if w is None else w.detach().float()
    if getattr(ln, "uses_weight_offset", False) or getattr(model.cfg, "rmsnorm_uses_offset", False):
        w = w + 1.0  # Gemma-style RMSNorm scales by (1 + w)
    centre = not (getattr(ln, "uses_rms_norm", False) or getattr(model.cfg, "uses_rms_norm", False))
    return w, (None if b is None else b.detach().float()), centre


@dataclass
class TraceContext:
    """Everything the recursion reads, for batch row 0 of one prompt, layers 0..layer.

    embed/pos_embed `[pos, d_model]`; per layer: resid `[pos, d_model]` (input of the block), scale `[pos]`,
    pattern `[H, pos, pos]`, v `[pos, H, d_head]`, z `[pos, d_z]`, attn_out and mlp_out `[pos, d_model]`,
    acts `[pos, d_sae]` where an SAE exists.
    """

    model: LoadedModel
    saes: dict[int, SAE]
    tokens: list[str]
    embed: torch.Tensor
    pos_embed: torch.Tensor | None
    resid: dict[int, torch.Tensor]
    scale: dict[int, torch.Tensor]
    pattern: dict[int, torch.Tensor]
    v: dict[int, torch.Tensor]
    z: dict[int, torch.Tensor]
    attn_out: dict[int, torch.Tensor]
    mlp_out: dict[int, torch.Tensor]
    acts: dict[int, torch.Tensor]
    ln: dict[int, tuple[torch.Tensor, torch.Tensor | None, bool]]
    # the model's stacked weights, read once per trace (the bridge stacks every layer's on each access)
    W_V: torch.Tensor | None = None  # [L, H, d_model, dh]
    W_O: torch.Tensor | None = None  # [L, H, dh, d_model]
    b_O: torch.Tensor | None = None  # [L, d_model]
    err_out: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (layer, src) -> SAE error x W_O


def build_context(model: LoadedModel, saes: dict[int, SAE], tokens: torch.Tensor, layer: int) -> TraceContext:
    """Run `tokens [1, pos]` once up to `layer`, caching what the recursion needs."""
    model.check_layer(layer)
    wanted = {"hook_embed", "embed.hook_out", "hook_pos_embed", "pos_embed.hook_out"}
    for l in range(layer + 1):
        wanted |= {
            f"blocks.{l}.hook_resid_pre",
            f"blocks.{l}.ln1.hook_scale",
            pattern_hook_name(l),
            v_hook_name(l),
            z_hook_name(l),
            f"blocks.{l}.hook_attn_out",
            f"blocks.{l}.hook_mlp_out",
        }
    stop = layer + 1
    with torch.no_grad():
        kw = {} if stop >= model.n_layers else {"stop_at_layer": stop}
        _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n in wanted, **kw)
    embed = _first(cache, ["hook_embed", "embed.hook_out"])
    if embed is None:
        raise ValueError("the model exposes no token-embedding hook (hook_embed)")
    pos_embed = _first(cache, ["hook_pos_embed", "pos_embed.hook_out"])
    ctx = TraceContext(
        model=model, saes=saes, tokens=model.token_strs(tokens[0]), embed=embed[0].float(),
        pos_embed=None if pos_embed is None else pos_embed[0].float(),
        resid={}, scale={}, pattern={}, v={}, z={}, attn_out={}, mlp_out={}, acts={}, ln={},
    )
    for l in range(layer + 1):
        b_v = model.z_offset(l).float()
        ctx.resid[l] = cache[f"blocks.{l}.hook_resid_pre"][0].float()
        ctx.scale[l] = cache[f"blocks.{l}.ln1.hook_scale"][0].float().reshape(-1)  # frozen LN scale per position
        ctx.pattern[l] = cache[pattern_hook_name(l)][0].float()
        ctx.v[l] = cache[v_hook_name(l)][0].float() - b_v
        ctx.z[l] = (cache[z_hook_name(l)][0].float() - b_v).flatten(-2)
        if l < layer:
            ctx.attn_out[l] = cache[f"blocks.{l}.hook_attn_out"][0].float()
            ctx.mlp_out[l] = cache[f"blocks.{l}.hook_mlp_out"][0].float()
        if l in saes:
            with torch.no_grad():
                ctx.acts[l] = saes[l].encode(ctx.z[l])
        ctx.ln[l] = ln1_params(model, l)
    ctx.W_V, ctx.W_O = model.bridge.W_V.detach(), model.bridge.W_O.detach()
    b_O = getattr(model.bridge, "b_O", None)
    ctx.b_O = None if b_O is None else b_O.detach()
    return ctx


# ---- one step of the recursion ------------------------------------------------------------------------


def _tok(ctx: TraceContext, pos: int) -> str:
    return repr(ctx.tokens[pos]) if 0 <= pos < len(ctx.tokens) else "?"


@torch.no_grad()
def feature_children(ctx: TraceContext, layer: int, feature: int, pos: int, coeff: float) -> list[TraceNode]:
    """`coeff * pre_feature[pos]` split into one node per head (DFA by head), each holding its (head, source)
    terms as children, plus the encoder bias."""
    sae = ctx.saes[layer]
    per = dfa_by_source(ctx.pattern[layer], ctx.v[layer], sae, torch.tensor([feature]), dest=pos)[0] * coeff
    nodes = []
    for h in range(per.shape[0]):
        sources = [
            TraceNode(kind="head_source", label=f"{head_name(layer, h)} {pos}<-{s} {_tok(ctx, s)}", value=float(per[h, s]),
                      layer=layer, head=h, pos=pos, src=s, feature=feature)
            for s in range(pos + 1)
        ]
        nodes.append(TraceNode(kind="head", label=f"head {head_name(layer, h)}", value=float(per[h].sum()), layer=layer, head=h,
                               pos=pos, feature=feature, children=sources))
    bias = float(sae.encoder_bias_total[feature]) * coeff
    nodes.append(TraceNode(kind="enc_bias", label=f"L{layer} SAE encoder bias", value=bias, layer=layer, feature=feature))
    return nodes


@torch.no_grad()
def head_source_children(
    ctx: TraceContext, layer: int, head: int, dest: int, src: int, feature: int, coeff: float
) -> list[TraceNode]:
    """A (head, source) term split into the upstream components of `resid[layer][src]`."""
    model, sae = ctx.model, ctx.saes[layer]
    w_enc = encoder_by_head(sae, model.n_heads)[head, :, feature].float()  # [dh]
    W_V = (ctx.W_V if ctx.W_V is not None else model.bridge.W_V)[layer]  # [H, d_model, dh]
    u = W_V[head if W_V.shape[0] == model.n_heads else head // (model.n_heads // W_V.shape[0])].float() @ w_enc
    a = float(ctx.pattern[layer][head, dest, src]) * coeff
    w_ln, b_ln, centre = ctx.ln[layer]
    e = w_ln * u
    if centre:
        e = e - e.mean()
    e = e * (a / float(ctx.scale[layer][src]))  # a component c contributes c . e

    nodes = [TraceNode(kind="token_embed", label=f"tok embed {_tok(ctx, src)}", value=float(ctx.embed[src] @ e), pos=src)]
    if ctx.pos_embed is not None:
        nodes.append(TraceNode(kind="pos_embed", label=f"pos embed {src}", value=float(ctx.pos_embed[src] @ e), pos=src))
    W_O_all = ctx.W_O if ctx.W_O is not None else model.bridge.W_O  # [L, H, dh, d_model]
    b_O_all = ctx.b_O if ctx.W_O is not None else getattr(model.bridge, "b_O", None)
    for l in range(layer):
        W_O = W_O_all[l].float()  # [H, dh, d_model]
        if l in ctx.saes:
            up = ctx.saes[l]
            f = ctx.acts[l][src]
            active = (f != 0).nonzero().flatten()
            if len(active):
                dirs = torch.einsum("jhd,hdm->jm", decoder_by_head(up, model.n_heads)[active].float(), W_O)
                scores = f[active] * (dirs @ e)
                for j, val, act in zip(active.tolist(), scores.tolist(), f[active].tolist()):
                    nodes.append(
                        TraceNode(kind="feature", label=f"L{l} F{j} @{src} {_tok(ctx, src)}", value=val, layer=l,
                                  pos=src, feature=j, act=act)
                    )
            err_out = ctx.err_out.get((l, src))
            if err_out is None:  # the decode reads only the active rows of W_dec (a dense one reads all d_sae)
                with torch.no_grad():
                    err = ctx.z[l][src] - (f[active] @ up.W_dec[active] + up.b_dec)
                err_out = torch.einsum("hd,hdm->m", err.reshape(model.n_heads, -1).float(), W_O)
                ctx.err_out[(l, src)] = err_out
            nodes.append(TraceNode(kind="sae_error", label=f"L{l} SAE error", value=float(err_out @ e), layer=l, pos=src))
            bias = torch.einsum("hd,hdm->m", (model.z_offset(l).float() + up.b_dec.reshape(model.n_heads, -1).float()), W_O)
            if b_O_all is not None:
                bias = bias + b_O_all[l].float()
            nodes.append(TraceNode(kind="attn_bias", label=f"L{l} attn biases (b_O, W_O c, W_O b_dec)",
                                   value=float(bias @ e), layer=l))
        else:
            nodes.append(TraceNode(kind="attn_out", label=f"L{l} attn out (no SAE)", value=float(ctx.attn_out[l][src] @ e),
                                   layer=l, pos=src))
        nodes.append(TraceNode(kind="mlp_out", label=f"L{l} MLP out", value=float(ctx.mlp_out[l][src] @ e), layer=l, pos=src))
    # The ln1 bias's share (b_ln @ W_V) is part of the z offset c, removed from v with it: no node for it here.
    return nodes


def _unexplained(parent_value: float, nodes: list[TraceNode], label: str) -> list[TraceNode]:
    rest = parent_value - sum(n.value for n in nodes)
    if abs(rest) > 1e-5 * (1.0 + abs(parent_value)):
        nodes.append(TraceNode(kind="unexplained", label=label, value=rest))
    return nodes


def prune(nodes: list[TraceNode], keep: int) -> list[TraceNode]:
    """The `keep` largest by |value|, the rest merged into one `other` node (so the sum is unchanged)."""
    fixed = [n for n in nodes if n.kind == "unexplained"]
    free = sorted((n for n in nodes if n.kind != "unexplained"), key=lambda n: -abs(n.value))
    kept, rest = free[:keep], free[keep:]
    if rest:
        kept.append(TraceNode(kind="other", label=f"other ({len(rest)})", value=sum(n.value for n in rest)))
    return kept + fixed


class TraceError(AttnscopeError, ValueError):
    """Bad trace request (feature out of range, no SAE at that layer, ...); one line for the user."""


@dataclass
class _Ticker:
    """Counts the (head, source) terms split so far, reporting each as `Progress(job="trace")` and checking
    `cancel` between them (the job protocol's steps within one trace)."""

    on_progress: ProgressFn | None = None
    cancel: CancelToken | None = None
    done: int = 0
    total: int = 0

    def add(self, n: int) -> None:
        self.total += n
        self.report()

    def step(self) -> None:
        self.done += 1
        self.report()

    def report(self, stage: str = "splitting terms") -> None:
        if self.on_progress is not None:
            self.on_progress(Progress("trace", self.done, self.total, unit="terms", stage=stage))
        check_cancelled(self.cancel)


def expand_feature(ctx: TraceContext, node: TraceNode, depth: int, keep: int, ticker: _Ticker | None = None) -> None:
    """Fill `node.children` (a feature node) and recurse `depth` more feature levels."""
    ticker = ticker or _Ticker()
    coeff = node.value / node.act if node.act else 1.0
    kids = feature_children(ctx, node.layer, node.feature, node.pos, coeff)
    node.children = prune([k for k in kids if k.kind == "head"], keep) + [k for k in kids if k.kind != "head"]
    for head in node.children:
        if head.kind == "head":
            head.children = prune(head.children, keep)
    ticker.add(sum(hs.kind == "head_source" for head in node.children if head.kind == "head" for hs in head.children))
    for head in node.children:
        if head.kind != "head":
            continue
        for hs in head.children:
            if hs.kind != "head_source":
                continue
            comps = head_source_children(ctx, hs.layer, hs.head, hs.pos, hs.src, hs.feature, coeff)
            comps = _unexplained(hs.value, comps, f"unexplained at L{hs.layer} resid {hs.src}")
            hs.children = prune(comps, keep)
            ticker.step()
            if depth > 0:
                for c in hs.children:
                    if c.kind == "feature" and c.layer in ctx.saes and c.act:
                        expand_feature(ctx, c, depth - 1, keep, ticker)


def trace_feature(
    model: LoadedModel, saes: dict[int, SAE], prompt: str, layer: int, feature: int, pos: int | None = None,
    depth: int = 1, keep: int = 5, on_progress: ProgressFn | None = None, cancel: CancelToken | None = None,
) -> Trace:
    """The recursive DFA tree of `feature` at `layer`, position `pos` (default: where it is strongest).

    The root's value is the feature's pre-activation. `keep` children per node (the rest merged into `other`);
    `depth` levels of upstream features are expanded beyond the root. Follows the job protocol: reports
    `Progress(job="trace", unit="terms")` after the model's forward and after each (head, source) term it splits
    (the total grows as deeper features are reached), and checks `cancel` at the same points.
    """
    if layer not in saes:
        raise TraceError(f"no SAE for layer {layer} (SAEs exist for layers {sorted(saes)})")
    sae = saes[layer]
    if not 0 <= feature < sae.cfg.d_sae:
        raise TraceError(f"feature {feature} is outside the layer-{layer} SAE (ids 0..{sae.cfg.d_sae - 1})")
    tokens, truncated = prompt_tokens(model, prompt)
    n = tokens.shape[1]
    ticker = _Ticker(on_progress, cancel)
    ticker.report("running the model")
    ctx = build_context(model, saes, tokens, layer)
    ticker.report("running the model")
    with torch.no_grad():
        pre_all = sae.encode_pre(ctx.z[layer])  # [pos, d_sae]
        pre, act = pre_all[:, feature], sae.activation(pre_all)[:, feature]  # [pos] each
    if pos is None:
        pos = int(act.argmax()) if float(act.max()) > 0 else int(pre.argmax())
    given = pos
    if pos < 0:
        pos += n
    if not 0 <= pos < n:  # said in the user's terms: the position they gave, not the one it counted to
        raise TraceError(f"position {given} is outside the prompt of {n} tokens (positions 0..{n - 1}, or -1..-{n} "
                         "counting from the end)")
    root = TraceNode(kind="feature", label=f"L{layer} F{feature} @{pos} {_tok(ctx, pos)}", value=float(pre[pos]),
                     layer=layer, pos=pos, feature=feature, act=float(pre[pos]))
    expand_feature(ctx, root, depth, keep, ticker)
    root.act = float(act[pos])
    return Trace(model=model.name, layer=layer, feature=feature, pos=pos, tokens=ctx.tokens, depth=depth, root=root,
                 truncated=truncated)
