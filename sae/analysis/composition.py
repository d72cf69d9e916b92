"""Composition with residual-stream SAEs: which residual features feed an attention feature through W_V.

An attention-SAE feature `i` of layer L reads z at the destination `dst`; its share from source `src` (DFA by
source, summed over heads) is linear in the residual stream `x = resid_pre[L][src]` once the attention pattern and
ln1's scale are frozen:

    share(src) = x . e,   e = sum_h A_h[dst, src] / scale[src] * centre(w_ln * (W_V[L, h] @ W_enc[h-slice, i]))

(the ln1 bias and b_V are part of the z offset, attnscope's z convention). A residual SAE on `resid_pre` of layer L
splits x into `sum_j f_j W_dec[j] + b_dec + error`, so each residual feature j gets `f_j W_dec[j] . e`, and the
terms plus the b_dec and error terms add up to the DFA by source exactly.

The paper's `get_resid_features` scores the residual features active at the source by
`f_j W_dec[j] @ W_V_cat @ W_enc[:, i]` with TransformerLens's W_V (ln1's weight folded in): no attention weight, no
LayerNorm scale or centring. attnscope reports it beside the exact share as `value_score`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sae.analysis.dfa import dfa_by_source, encoder_by_head, prompt_tokens
from sae.analysis.trace import build_context, ln1_params
from sae.engine.autoencoder import SAE
from sae.engine.errors import AttnscopeError
from sae.engine.models import LoadedModel


class CompositionError(AttnscopeError, ValueError):
    """Bad input to the composition study (one line for the user)."""


@dataclass(frozen=True)
class ResidFeatureShare:
    feature: int  # residual-SAE feature id
    act: float  # its activation at the source
    share: float  # its exact share of the attention feature's pre-activation via this source
    value_score: float  # the paper's get_resid_features score (no attention weight, no LayerNorm scale/centring)


@dataclass(frozen=True)
class ResidComposition:
    model: str
    layer: int
    feature: int
    resid_hook: str
    tokens: list[str]
    dst: int
    src: int
    pre_act: float  # the attention feature's pre-activation at dst
    source_share: float  # its DFA by source at src, summed over heads (what the shares add up to)
    b_dec_share: float  # the residual SAE's decoder bias
    error_share: float  # the residual SAE's reconstruction error
    top: tuple[ResidFeatureShare, ...] = ()
    n_active: int = 0  # residual features active at src
    ranking: str = "by |share|, largest first"
    note: str = field(default=(
        "share: exact, with the attention pattern and ln1's scale frozen (shares + b_dec + error = the source's "
        "DFA); value_score: the paper's get_resid_features (f W_dec W_V W_enc, no attention weight or LayerNorm)"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top"] = [asdict(r) for r in self.top]
        return d


def check_resid_sae(model: LoadedModel, resid_sae: SAE, layer: int) -> None:
    """CompositionError unless `resid_sae` reads `blocks.{layer}.hook_resid_pre` with d_in = d_model."""
    want = f"blocks.{layer}.hook_resid_pre"
    if resid_sae.cfg.hook_name != want:
        raise CompositionError(f"the residual SAE reads {resid_sae.cfg.hook_name!r}; composition with layer {layer} "
                               f"needs one on {want!r}")
    if resid_sae.cfg.d_in != model.d_model:
        raise CompositionError(f"the residual SAE has d_in={resid_sae.cfg.d_in}; {model.name}'s d_model is "
                               f"{model.d_model}")


@torch.no_grad()
def source_direction(model: LoadedModel, sae: SAE, layer: int, feature: int, pattern: torch.Tensor,
                     scale: torch.Tensor, dst: int, src: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(e, u)`: `e [d_model]` with `x . e` = the feature's share from `src` (pattern `[H, pos, pos]`, scale `[pos]`
    frozen); `u [d_model]` = `sum_h (w_ln * W_V[L, h]) @ W_enc[h-slice, i]`, the paper's value direction."""
    w_enc = encoder_by_head(sae, model.n_heads)[:, :, feature].float()  # [H, dh]
    W_V = model.bridge.W_V[layer].float()  # [H or KV, d_model, dh]
    if W_V.shape[0] != model.n_heads:
        W_V = W_V.repeat_interleave(model.n_heads // W_V.shape[0], dim=0)
    per_head = torch.einsum("hmd,hd->hm", W_V, w_enc)  # [H, d_model]
    w_ln, _, centre = ln1_params(model, layer)
    per_head = per_head * w_ln
    u = per_head.sum(0)
    if centre:
        per_head = per_head - per_head.mean(-1, keepdim=True)
    e = (pattern[:, dst, src].float().unsqueeze(1) * per_head).sum(0) / float(scale[src])
    return e, u


@torch.no_grad()
def resid_composition(
    model: LoadedModel, saes: dict[int, SAE], layer: int, feature: int, resid_sae: SAE, prompt: str,
    dst: int | None = None, src: int | None = None, top: int = 10,
) -> ResidComposition:
    """The residual-SAE features at `src` that feed `feature` (layer `layer`) at `dst` through W_V.

    dst: default where the feature fires most; src: default the source with the largest DFA share at dst."""
    if layer not in saes:
        raise CompositionError(f"no attention SAE for layer {layer} (SAEs exist for layers {sorted(saes)})")
    sae = saes[layer]
    if not 0 <= feature < sae.cfg.d_sae:
        raise CompositionError(f"feature {feature} is outside the layer-{layer} SAE (ids 0..{sae.cfg.d_sae - 1})")
    check_resid_sae(model, resid_sae, layer)
    tokens, _ = prompt_tokens(model, prompt)
    n = tokens.shape[1]
    ctx = build_context(model, saes, tokens, layer)
    pre = sae.encode_pre(ctx.z[layer])[:, feature]  # [pos]
    if dst is None:
        dst = int(pre.argmax())
    dst = dst + n if dst < 0 else dst
    if not 0 <= dst < n:
        raise CompositionError(f"position {dst} is outside the prompt (positions 0..{n - 1})")
    per = dfa_by_source(ctx.pattern[layer], ctx.v[layer], sae, torch.tensor([feature]), dest=dst)[0]  # [H, dst+1]
    by_src = per.sum(0)
    if src is None:
        src = int(by_src.argmax())
    src = src + n if src < 0 else src
    if not 0 <= src <= dst:
        raise CompositionError(f"source {src} is not at or before the destination {dst}")
    e, u = source_direction(model, sae, layer, feature, ctx.pattern[layer], ctx.scale[layer], dst, src)
    x = ctx.resid[layer][src]
    f = resid_sae.encode(x.unsqueeze(0).to(resid_sae.W_enc.dtype))[0].float()
    dec = resid_sae.W_dec.float()
    active = (f != 0).nonzero().flatten()
    shares = f[active] * (dec[active] @ e)
    values = f[active] * (dec[active] @ u)
    err = x - resid_sae.decode(f.unsqueeze(0).to(resid_sae.W_dec.dtype))[0].float()
    order = shares.abs().argsort(descending=True)[:top]
    rows = tuple(ResidFeatureShare(int(active[k]), float(f[active[k]]), float(shares[k]), float(values[k]))
                 for k in order.tolist())
    return ResidComposition(
        model=model.name, layer=layer, feature=feature, resid_hook=resid_sae.cfg.hook_name, tokens=ctx.tokens,
        dst=dst, src=src, pre_act=float(pre[dst]), source_share=float(by_src[src]),
        b_dec_share=float(resid_sae.b_dec.float() @ e), error_share=float(err @ e), top=rows, n_active=len(active),
    )
