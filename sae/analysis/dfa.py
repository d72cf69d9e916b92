"""Which features fire on a prompt, and which heads and source tokens made them fire (direct feature attribution).

The pre-activation of an attention-SAE feature `i` is linear in the layer's z (value bias removed, see
`sae.engine.models`): `pre_i = sum_k z_k . W_enc[k-slice, i] + (b_enc_i - b_dec . W_enc[:, i])`. So it splits exactly
into one term per head plus a constant (`dfa_bias`). Each head's z at destination `t` is `sum_s A_k[t, s] v_k[s]`
(every pattern row sums to 1, so the value bias drops out), which splits a head's term exactly over source positions.

Everything here works on tensors; `prompt_features` runs the model once and returns plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sae.engine.activations import StopForward
from sae.engine.models import LoadedModel, z_hook_name
from sae.engine.autoencoder import SAE
from sae.engine.errors import AttnscopeError


class PromptError(AttnscopeError, ValueError):
    """A prompt that cannot be analysed (empty, ...); the message is one line for the user."""


# ---- hook names ---------------------------------------------------------------------------------------


def pattern_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def v_hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_v"


# ---- the maths ----------------------------------------------------------------------------------------


class AttributionError(AttnscopeError, ValueError):
    """This SAE's pre-activations are not a sum of per-head terms, so they cannot be attributed to heads."""


def encoder_by_head(sae: SAE, n_heads: int) -> torch.Tensor:
    """`W_enc` split per head: `[n_heads, d_head, d_sae]` (head-major, like the flattened z).

    Every attribution goes through here, so this is where an SAE whose encoder is not affine in z (a run-time
    `normalize_activations` rescales each token by its own norm) is refused."""
    if not sae.is_linear_in_z:
        raise AttributionError(
            f"direct feature attribution needs an encoder that is affine in z; this SAE normalises each token at run "
            f"time (normalize_activations={sae.cfg.normalize_activations})"
        )
    d_in, d_sae = sae.W_enc.shape
    if d_in % n_heads:
        raise ValueError(f"SAE d_in={d_in} does not split into {n_heads} heads")
    return sae.W_enc.reshape(n_heads, d_in // n_heads, d_sae)


def decoder_by_head(sae: SAE, n_heads: int) -> torch.Tensor:
    """`W_dec` split per head: `[d_sae, n_heads, d_head]`."""
    d_sae, d_in = sae.W_dec.shape
    return sae.W_dec.reshape(d_sae, n_heads, d_in // n_heads)


@torch.no_grad()
def head_shares(sae: SAE, n_heads: int) -> torch.Tensor:
    """`[d_sae, n_heads]`: each head's slice norm of `W_dec[i]` over the sum of all heads' slice norms."""
    norms = decoder_by_head(sae, n_heads).norm(dim=-1)
    return norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def dfa_by_head(z: torch.Tensor, sae: SAE, feature_ids: torch.Tensor, n_heads: int | None = None) -> torch.Tensor:
    """Each head's additive share of the chosen features' pre-activations.

    z: `[pos, n_heads * d_head]` (value bias removed). feature_ids: `[K]` (the same features at every position)
    or `[pos, K]` (per position). Returns `[pos, K, n_heads]`; adding `sae.encoder_bias_total[ids]` to the sum
    over heads gives the pre-activation exactly.
    """
    n_heads = n_heads or sae.cfg.n_heads
    if not n_heads:
        raise ValueError("the SAE config does not say how many heads its input has (n_heads)")
    pos = z.shape[0]
    zh = z.reshape(pos, n_heads, -1).to(sae.W_enc.dtype)  # [pos, H, dh]
    w = encoder_by_head(sae, n_heads)  # [H, dh, d_sae]
    ids = feature_ids if feature_ids.dim() == 2 else feature_ids.unsqueeze(0).expand(pos, -1)
    w_sel = w[:, :, ids]  # [H, dh, pos, K]
    return torch.einsum("phd,hdpk->pkh", zh, w_sel)


@torch.no_grad()
def dfa_by_source(
    pattern: torch.Tensor, v: torch.Tensor, sae: SAE, feature_ids: torch.Tensor, dest: int | None = None
) -> torch.Tensor:
    """Each (head, source position) pair's additive share of the chosen features' pre-activations.

    pattern: `[n_heads, dest_pos, src_pos]` attention probabilities. v: `[src_pos, n_heads, d_head]` values with the
    value bias removed. feature_ids: `[K]` with `dest` given -> `[K, n_heads, dest + 1]` for that destination;
    `[dest_pos, K]` with `dest=None` -> `[dest_pos, K, n_heads, src_pos]` for every destination (zero where
    `src > dest`, because the pattern is causal). Summed over sources this is `dfa_by_head`.
    """
    n_heads = pattern.shape[0]
    if v.shape[1] != n_heads:  # grouped-query attention: share each value head between its query heads
        v = v.repeat_interleave(n_heads // v.shape[1], dim=1)
    w = encoder_by_head(sae, n_heads)  # [H, dh, d_sae]
    v = v.to(w.dtype)
    pattern = pattern.to(w.dtype)
    if dest is not None:
        if feature_ids.dim() != 1:
            raise ValueError("with a destination, feature_ids must be [K]")
        src = dest + 1
        proj = torch.einsum("shd,hdk->khs", v[:src], w[:, :, feature_ids])  # [K, H, src]
        return proj * pattern[:, dest, :src].unsqueeze(0)
    if feature_ids.dim() != 2:
        raise ValueError("without a destination, feature_ids must be [dest_pos, K]")
    w_sel = w[:, :, feature_ids]  # [H, dh, dest_pos, K]
    proj = torch.einsum("shd,hdtk->tkhs", v, w_sel)  # [dest_pos, K, H, src_pos]
    return proj * pattern.permute(1, 0, 2).unsqueeze(1)  # pattern [t, 1, h, s]


# ---- running the model --------------------------------------------------------------------------------


@dataclass
class LayerTensors:
    """One layer's attention tensors for a batch, attnscope's conventions (value bias removed).

    z `[batch, pos, n_heads * d_head]`, pattern `[batch, n_heads, pos, pos]`, v `[batch, pos, n_heads, d_head]`.
    """

    z: torch.Tensor
    pattern: torch.Tensor
    v: torch.Tensor


def capture_until_z(model: LoadedModel, tokens: torch.Tensor, layer: int, names: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Run `tokens [batch, pos]` and grab `blocks.{layer}.attn.hook_z` plus `names` (hooks that fire before it, e.g.
    that layer's pattern and values), then stop: the layer's output projection, its MLP and every later block are
    never computed. Returns raw hook tensors (value bias still inside v and z)."""
    model.check_layer(layer)
    got: dict[str, torch.Tensor] = {}
    stop = z_hook_name(layer)

    def grab(name: str):
        def hook(t: torch.Tensor, hook) -> torch.Tensor:
            got[name] = t.detach()
            if name == stop:
                raise StopForward
            return t

        return hook

    hooks = [(n, grab(n)) for n in (*names, stop)]
    try:
        with torch.no_grad():
            model.bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None)
    except StopForward:
        pass
    missing = [n for n in (*names, stop) if n not in got]
    if missing:
        raise RuntimeError(f"the model did not run hooks {missing} before {stop}")
    return got


def run_layer(model: LoadedModel, tokens: torch.Tensor, layer: int) -> LayerTensors:
    """Run `tokens [batch, pos]` through the model up to `layer`'s attention and read its z, pattern and values."""
    cache = capture_until_z(model, tokens, layer, (pattern_hook_name(layer), v_hook_name(layer)))
    b_v = model.z_offset(layer)  # [H, dh]
    z = cache[z_hook_name(layer)]
    v = cache[v_hook_name(layer)]
    if v.shape[-2] == b_v.shape[0]:
        v = v - b_v
    else:  # grouped-query attention: b_V is per query head; each kv head's bias is that of its first query head
        v = v - b_v[:: b_v.shape[0] // v.shape[-2]]
    return LayerTensors(z=(z - b_v).flatten(-2), pattern=cache[pattern_hook_name(layer)], v=v)


def prompt_tokens(model: LoadedModel, prompt: str) -> tuple[torch.Tensor, bool]:
    """`[1, pos]` with BOS; raises PromptError for an empty prompt. Also returns whether it was cut to the context."""
    if not prompt or not prompt.strip():
        raise PromptError("the prompt is empty")
    tokens, truncated = model.to_tokens(prompt, truncate=True)
    if tokens.shape[1] < 2:
        raise PromptError("the prompt has no tokens")
    return tokens, truncated


# ---- prompt features ----------------------------------------------------------------------------------


@dataclass
class FeatureHit:
    """One feature at one position: activation, pre-activation and its exact splits by head and by source."""

    id: int
    act: float
    pre_act: float
    dfa_heads: list[float]  # [n_heads]
    dfa_bias: float
    dfa_src: list[float]  # [pos + 1], summed over heads

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "act": self.act,
            "pre_act": self.pre_act,
            "dfa_heads": self.dfa_heads,
            "dfa_bias": self.dfa_bias,
            "dfa_src": self.dfa_src,
        }


@dataclass
class PositionFeatures:
    pos: int
    token: str
    features: list[FeatureHit]

    def to_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "token": self.token, "features": [f.to_dict() for f in self.features]}


@dataclass
class PromptFeatures:
    """The top features of every token of a prompt at one layer.

    The tensors (not part of `to_dict`) let a caller drill into any (position, feature) without rerunning the model:
    acts/pre `[pos, d_sae]`, and `layer` tensors with batch 1.
    """

    model: str
    layer: int
    tokens: list[str]
    token_ids: list[int]
    positions: list[PositionFeatures]
    truncated: bool = False
    n_heads: int = 0
    acts: torch.Tensor | None = field(default=None, repr=False)
    pre: torch.Tensor | None = field(default=None, repr=False)
    tensors: LayerTensors | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "tokens": self.tokens,
            "truncated": self.truncated,
            "positions": [p.to_dict() for p in self.positions],
        }

    def top_features(self, n: int = 20, last: torch.Tensor | None = None) -> list[int]:
        """The prompt's features with the largest activation anywhere, strongest first (heatmap columns).

        With `last` `[d_sae]` bool (e.g. `dense_mask(sae)`, or all False), the features that pick nothing out come
        after the others, each group strongest first, so the first column (where the heatmap's cursor starts) is the
        strongest specific feature: those in `last`, and those that fire on more than half of this prompt's
        positions (`BROAD_SHARE`)."""
        if self.acts is None:
            return []
        best = self.acts.max(dim=0).values
        n = min(n, int((best > 0).sum()))
        if not n:
            return []
        if last is None:
            return best.topk(n).indices.tolist()
        order = best.argsort(descending=True, stable=True)
        order = order[best[order] > 0]
        broad = (self.acts > 0).float().mean(dim=0) > BROAD_SHARE
        late = (last.to(order.device) | broad)[order]
        return torch.cat([order[~late], order[late]])[:n].tolist()


BROAD_SHARE = 0.5  # a feature firing on more than this share of a prompt's positions picks nothing out in it


def dense_mask(sae: SAE) -> torch.Tensor | None:
    """`[d_sae]` bool: the latents that fired on more than 10% of training tokens (`DENSE_THRESHOLD`, the eval's
    dense fraction), from the densities saved beside the SAE (`sparsity.safetensors`); None when it has none."""
    from sae.engine.formats import load_sparsity
    from sae.engine.metrics import DENSE_THRESHOLD

    path = sae.cfg.extra.get("path")
    log10 = load_sparsity(path) if path else None
    if log10 is None or log10.numel() != sae.cfg.d_sae:
        return None
    return log10.float() > torch.log10(torch.tensor(DENSE_THRESHOLD))


def features_from_tensors(
    sae: SAE, tensors: LayerTensors, top_k: int, n_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-K features per position of batch row 0 and their attributions.

    Returns acts `[pos, d_sae]`, pre `[pos, d_sae]`, ids `[pos, K]`, dfa_heads `[pos, K, H]`,
    dfa_bias `[pos, K]`, dfa_src `[pos, K, pos]` (summed over heads).
    """
    z = tensors.z[0]
    with torch.no_grad():
        pre = sae.encode_pre(z)
        acts = sae.activation(pre)
        k = max(1, min(top_k, acts.shape[-1]))
        ids = acts.topk(k, dim=-1).indices  # [pos, K]
        heads = dfa_by_head(z, sae, ids, n_heads)
        bias = sae.encoder_bias_total[ids]
        src = dfa_by_source(tensors.pattern[0], tensors.v[0], sae, ids).sum(2)  # [pos, K, src]
    return acts, pre, ids, heads, bias, src


def prompt_features(model: LoadedModel, sae: SAE, prompt: str, top_k: int = 5, layer: int | None = None) -> PromptFeatures:
    """Run `prompt` once and list each token's top-`top_k` active features with DFA by head and by source."""
    layer = sae.cfg.layer if layer is None else layer
    tokens, truncated = prompt_tokens(model, prompt)
    tensors = run_layer(model, tokens, layer)
    acts, pre, ids, heads, bias, src = features_from_tensors(sae, tensors, top_k, model.n_heads)
    token_ids = tokens[0].tolist()
    strs = model.token_strs(token_ids)
    acts_l, pre_l, ids_l = acts.gather(1, ids).tolist(), pre.gather(1, ids).tolist(), ids.tolist()
    heads_l, bias_l, src_l = heads.tolist(), bias.tolist(), src.tolist()
    positions = []
    for t, tok in enumerate(strs):
        hits = [
            FeatureHit(
                id=ids_l[t][j],
                act=acts_l[t][j],
                pre_act=pre_l[t][j],
                dfa_heads=heads_l[t][j],
                dfa_bias=bias_l[t][j],
                dfa_src=src_l[t][j][: t + 1],
            )
            for j in range(len(ids_l[t]))
            if acts_l[t][j] > 0
        ]
        positions.append(PositionFeatures(pos=t, token=tok, features=hits))
    return PromptFeatures(
        model=model.name,
        layer=layer,
        tokens=strs,
        token_ids=token_ids,
        positions=positions,
        truncated=truncated,
        n_heads=model.n_heads,
        acts=acts,
        pre=pre,
        tensors=tensors,
    )


def head_source_matrix(result: PromptFeatures, sae: SAE, pos: int, feature: int) -> torch.Tensor:
    """`[n_heads, pos + 1]`: DFA of one feature at one position by (head, source), from a prompt already run."""
    if result.tensors is None:
        raise ValueError("this result holds no tensors")
    t = result.tensors
    return dfa_by_source(t.pattern[0], t.v[0], sae, torch.tensor([feature]), dest=pos)[0]


def benchmark_prompt_features(
    model: LoadedModel, sae: SAE, n_tokens: int = 64, repeats: int = 20, top_k: int = 5, text: str | None = None
) -> dict[str, Any]:
    """Median and 90th-percentile wall time of `prompt_features` on an `n_tokens`-token prompt (BOS included)."""
    import statistics
    import time

    text = text or (
        "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n"
        "When Mary and John went to the store, John gave a drink to Mary. "
    ) * 20
    ids = model.encode(text)[: max(1, n_tokens - 1)]
    prompt = model.tokenizer.decode(ids)
    n = prompt_tokens(model, prompt)[0].shape[1]
    prompt_features(model, sae, prompt, top_k)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        prompt_features(model, sae, prompt, top_k)
        times.append(time.perf_counter() - t)
    times.sort()
    return {
        "model": model.name,
        "layer": sae.cfg.layer,
        "d_sae": sae.cfg.d_sae,
        "prompt_tokens": n,
        "repeats": repeats,
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * times[min(len(times) - 1, int(0.9 * len(times)))],
        "min_ms": 1000 * times[0],
        "torch_threads": torch.get_num_threads(),
    }
