"""Which features fire on a prompt, and which heads and source tokens made them fire (direct feature attribution).

The pre-activation of an attention-SAE feature `i` is linear in the layer's z (value bias removed, see
`sae.engine.models`): `pre_i = sum_k z_k . W_enc[k-slice, i] + (b_enc_i - b_dec . W_enc[:, i])`. So it splits exactly
into one term per head plus a constant (`dfa_bias`). Each head's z at destination `t` is `sum_s A_k[t, s] v_k[s]`
(every pattern row sums to 1, so the value bias drops out), which splits a head's term exactly over source positions.

Everything here works on tensors; `prompt_features` runs the model once and returns plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
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
    return capture_layers(model, tokens, [layer], names)


def capture_layers(model: LoadedModel, tokens: torch.Tensor, layers: list[int] | tuple[int, ...],
                   names: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """One forward of `tokens [batch, pos]` that grabs `blocks.{L}.attn.hook_z` of every layer in `layers` plus
    `names` (hooks that fire before the last of those z), and stops at the last layer's hook_z: its output
    projection, its MLP, every later block and the unembedding are never computed. Raw hook tensors (value bias
    still inside v and z), each exactly what a forward stopping at its own layer gives (the same operations)."""
    if not layers:
        raise ValueError("no layers to capture")
    for layer in layers:
        model.check_layer(layer)
    got: dict[str, torch.Tensor] = {}
    stop = z_hook_name(max(layers))
    wanted = tuple(dict.fromkeys((*names, *(z_hook_name(x) for x in sorted(set(layers))))))

    def grab(name: str):
        def hook(t: torch.Tensor, hook) -> torch.Tensor:
            got[name] = t.detach()
            if name == stop:
                raise StopForward
            return t

        return hook

    hooks = [(n, grab(n)) for n in wanted]
    try:
        with torch.no_grad():
            model.bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None)
    except StopForward:
        pass
    missing = [n for n in wanted if n not in got]
    if missing:
        raise RuntimeError(f"the model did not run hooks {missing} before {stop}")
    return got


def layer_tensors(model: LoadedModel, cache: dict[str, torch.Tensor], layer: int) -> LayerTensors:
    """`layer`'s z, pattern and values from raw hook tensors (`capture_layers`), value bias removed."""
    b_v = model.z_offset(layer)  # [H, dh]
    z = cache[z_hook_name(layer)]
    v = cache[v_hook_name(layer)]
    if v.shape[-2] == b_v.shape[0]:
        v = v - b_v
    else:  # grouped-query attention: b_V is per query head; each kv head's bias is that of its first query head
        v = v - b_v[:: b_v.shape[0] // v.shape[-2]]
    return LayerTensors(z=(z - b_v).flatten(-2), pattern=cache[pattern_hook_name(layer)], v=v)


def attention_names(layer: int) -> tuple[str, str]:
    """The hooks `layer_tensors` reads besides hook_z: the pattern and the values."""
    return pattern_hook_name(layer), v_hook_name(layer)


def run_layers(model: LoadedModel, tokens: torch.Tensor, layers: list[int] | tuple[int, ...]) -> dict[int, LayerTensors]:
    """Run `tokens [batch, pos]` once, up to the last of `layers`' attention, and read each one's z, pattern and
    values."""
    names = tuple(n for x in sorted(set(layers)) for n in attention_names(x))
    cache = capture_layers(model, tokens, layers, names)
    return {x: layer_tensors(model, cache, x) for x in sorted(set(layers))}


def run_layer(model: LoadedModel, tokens: torch.Tensor, layer: int) -> LayerTensors:
    """Run `tokens [batch, pos]` through the model up to `layer`'s attention and read its z, pattern and values."""
    return run_layers(model, tokens, [layer])[layer]


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
    acts/pre `[pos, d_sae]`, ids `[pos, K]` (each position's top-K by activation), and `layer` tensors with batch 1.
    `positions` (each firing top-K feature with its DFA by head and by source) is worked out from them on first
    use: the heatmap never needs it.
    """

    model: str
    layer: int
    tokens: list[str]
    token_ids: list[int]
    truncated: bool = False
    n_heads: int = 0
    acts: torch.Tensor | None = field(default=None, repr=False)
    pre: torch.Tensor | None = field(default=None, repr=False)
    tensors: LayerTensors | None = field(default=None, repr=False)
    top_k: int = 5
    sae: SAE | None = field(default=None, repr=False, compare=False)

    @cached_property
    def ids(self) -> torch.Tensor | None:
        """`[pos, K]`: each position's top-K features by activation (K = `top_k`)."""
        return None if self.acts is None else top_ids(self.acts, self.top_k)

    @cached_property
    def positions(self) -> list[PositionFeatures]:
        """Each token's firing top-K features with their DFA by head and by source (one attribution per layer)."""
        ids = self.ids
        if ids is None or self.acts is None or self.pre is None or self.tensors is None or self.sae is None:
            return []
        return position_hits(self.tokens, self.acts, self.pre, ids, *attribute(self.sae, self.tensors, ids, self.n_heads))

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
        best = self.acts.amax(dim=0)  # (`max(dim=0)` would also find the positions: 10x slower)
        n = min(n, int((best > 0).sum()))
        if not n:
            return []
        if last is None:
            return best.topk(n).indices.tolist()
        order = best.argsort(descending=True, stable=True)
        order = order[best[order] > 0]
        # positions where each fires: sign of the clamped activations summed (exact counts, no int64 copy of the
        # [pos, d_sae] mask), read only for the features that fire somewhere
        fired = torch.sign(self.acts.clamp_min(0)).sum(dim=0)
        broad = fired[order] > BROAD_SHARE * self.acts.shape[0]
        late = last.to(order.device)[order] | broad
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


@torch.no_grad()
def encode(sae: SAE, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z `[pos, d_in]` -> acts `[pos, d_sae]` and pre `[pos, d_sae]`."""
    pre = sae.encode_pre(z)
    return sae.activation(pre), pre


def top_ids(acts: torch.Tensor, top_k: int) -> torch.Tensor:
    """`[pos, K]`: each position's top-K features of `acts [pos, d_sae]` by activation."""
    return acts.topk(max(1, min(top_k, acts.shape[-1])), dim=-1).indices


def encode_top(sae: SAE, z: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z `[pos, d_in]` -> acts `[pos, d_sae]`, pre `[pos, d_sae]` and each position's top-K ids by activation
    `[pos, K]`."""
    acts, pre = encode(sae, z)
    return acts, pre, top_ids(acts, top_k)


@torch.no_grad()
def attribute(sae: SAE, tensors: LayerTensors, ids: torch.Tensor, n_heads: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DFA of the features `ids [pos, K]` at each position of batch row 0: by head `[pos, K, H]`, the bias
    `[pos, K]` and by source `[pos, K, pos]` (summed over heads)."""
    z = tensors.z[0]
    heads = dfa_by_head(z, sae, ids, n_heads)
    bias = sae.encoder_bias_total[ids]
    src = dfa_by_source(tensors.pattern[0], tensors.v[0], sae, ids).sum(2)  # [pos, K, src]
    return heads, bias, src


def features_from_tensors(
    sae: SAE, tensors: LayerTensors, top_k: int, n_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-K features per position of batch row 0 and their attributions.

    Returns acts `[pos, d_sae]`, pre `[pos, d_sae]`, ids `[pos, K]`, dfa_heads `[pos, K, H]`,
    dfa_bias `[pos, K]`, dfa_src `[pos, K, pos]` (summed over heads).
    """
    acts, pre, ids = encode_top(sae, tensors.z[0], top_k)
    return (acts, pre, ids, *attribute(sae, tensors, ids, n_heads))


def position_hits(tokens: list[str], acts: torch.Tensor, pre: torch.Tensor, ids: torch.Tensor, heads: torch.Tensor,
                  bias: torch.Tensor, src: torch.Tensor) -> list[PositionFeatures]:
    """Plain data of the firing top-K features at each position (shapes as `features_from_tensors` returns)."""
    acts_l, pre_l, ids_l = acts.gather(1, ids).tolist(), pre.gather(1, ids).tolist(), ids.tolist()
    heads_l, bias_l = heads.tolist(), bias.tolist()
    positions = []
    for t, tok in enumerate(tokens):
        fire = [j for j in range(len(ids_l[t])) if acts_l[t][j] > 0]
        src_t = src[t, :, : t + 1].tolist() if fire else []  # only this position's sources, only when one fires
        hits = [
            FeatureHit(id=ids_l[t][j], act=acts_l[t][j], pre_act=pre_l[t][j], dfa_heads=heads_l[t][j],
                       dfa_bias=bias_l[t][j], dfa_src=src_t[j])
            for j in fire
        ]
        positions.append(PositionFeatures(pos=t, token=tok, features=hits))
    return positions


@dataclass
class PromptRun:
    """A prompt run once through the model, up to the last of its layers' attention: the tokens and each of those
    layers' tensors (batch 1), so the features of every one of them cost an SAE encode and no model forward."""

    model: str
    tokens: list[str]
    token_ids: list[int]
    truncated: bool
    n_heads: int
    layers: dict[int, LayerTensors] = field(repr=False)

    def features(self, sae: SAE, layer: int, top_k: int = 5) -> PromptFeatures:
        """The top-`top_k` features of each token at `layer` (one of this run's layers)."""
        if layer not in self.layers:
            raise ValueError(f"this run of the prompt stopped before layer {layer} (it holds {sorted(self.layers)})")
        tensors = self.layers[layer]
        acts, pre = encode(sae, tensors.z[0])  # the top-K ids and their attributions wait until asked for
        return PromptFeatures(model=self.model, layer=layer, tokens=self.tokens, token_ids=self.token_ids,
                              truncated=self.truncated, n_heads=self.n_heads, acts=acts, pre=pre, tensors=tensors,
                              top_k=top_k, sae=sae)


def run_prompt(model: LoadedModel, prompt: str, layers: list[int] | tuple[int, ...]) -> PromptRun:
    """Run `prompt` once, up to the last of `layers`' attention (nothing above it, no unembedding), keeping each
    layer's z, pattern and values."""
    tokens, truncated = prompt_tokens(model, prompt)
    token_ids = tokens[0].tolist()
    return PromptRun(model=model.name, tokens=model.token_strs(token_ids), token_ids=token_ids, truncated=truncated,
                     n_heads=model.n_heads, layers=run_layers(model, tokens, layers))


def run_bytes(model: LoadedModel, n_tokens: int, layers: list[int] | tuple[int, ...]) -> int:
    """About how many bytes a `PromptRun` of `n_tokens` over `layers` holds (patterns, z and values)."""
    size = torch.tensor([], dtype=model.dtype).element_size()
    per_layer = model.n_heads * n_tokens * n_tokens + 2 * n_tokens * model.d_z
    return size * per_layer * len(set(layers))


def prompt_features(model: LoadedModel, sae: SAE, prompt: str, top_k: int = 5, layer: int | None = None) -> PromptFeatures:
    """Run `prompt` once and list each token's top-`top_k` active features with DFA by head and by source."""
    layer = sae.cfg.layer if layer is None else layer
    return run_prompt(model, prompt, [layer]).features(sae, layer, top_k)


def prompt_features_layers(model: LoadedModel, saes: dict[int, SAE], prompt: str, top_k: int = 5,
                           layers: list[int] | None = None) -> dict[int, PromptFeatures]:
    """`prompt_features` at every layer of `layers` (default: every SAE's) from one model forward."""
    layers = sorted(saes) if layers is None else sorted(set(layers))
    run = run_prompt(model, prompt, layers)
    return {x: run.features(saes[x], x, top_k) for x in layers}


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
