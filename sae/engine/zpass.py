"""hook_z of a GPT-2-architecture model from plain tensor operations: the training path's model pass.

The TransformerBridge's forward runs about 89 module calls per pass (hook points, bridges, the Hugging Face
wrappers and a causal mask built on every call) and computes everything above the last layer a caller needs. For
training only hook_z matters, so `LeanZPass` runs, for the layers below the last one needed, the whole block (z
depends on it through the residual stream), and for the last one only ln1, q/k/v, the pattern and z: no output
projection, no MLP, no layer above, no unembedding, no hook points.

It repeats the bridge's own operations in the bridge's order (the bridge's from-scratch LayerNorm, its split q/k/v
linears, `matmul(q, k^T) * scale`, the pattern over every key with masked keys at the dtype's minimum, the Hugging
Face `Conv1D`s and activation), so z comes out bit-identical to the bridge's `hook_z`; `ZSource` still checks that
on its first batch and falls back to the bridge if not (another torch, another device). Models that are not GPT-2
blocks (`GPT2LMHeadModel` with `JointQKVAttentionBridge`, no layer-index scaling, no fp32 upcast) get `None` from
`lean_z_pass` and keep the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class _Block:
    """One GPT-2 block's weights as the bridge uses them (shapes for d_model m, heads h, head width d, MLP width f)."""

    ln1_w: torch.Tensor  # [m]
    ln1_b: torch.Tensor  # [m]
    ln1_eps: float
    q: torch.nn.Linear  # m -> h*d, the bridge's split of c_attn
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Module  # Conv1D h*d -> m
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    ln2_eps: float
    c_fc: torch.nn.Module  # Conv1D m -> f
    act: torch.nn.Module
    c_proj: torch.nn.Module  # Conv1D f -> m


def _raw(module):
    """The Hugging Face module a bridge component wraps (the module itself when it wraps nothing)."""
    inner = getattr(module, "original_component", None)
    return inner if inner is not None else module


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """The bridge's from-scratch LayerNorm (`NormalizationBridge._python_norm_forward`), op for op. x [..., m]."""
    dtype = x.dtype
    if dtype not in (torch.float32, torch.float64):
        x = x.float()
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    x = x / scale
    x = x * w
    x = x + b
    return x.to(dtype)


class LeanZPass:
    """Raw hook_z (value bias not removed) of chosen layers of a GPT-2-architecture bridge, `__call__(tokens,
    layers, sink)`: calls `sink(layer, z [batch, pos, n_heads * d_head])` for each layer in ascending order."""

    def __init__(self, wte: torch.nn.Module, wpe: torch.nn.Module, blocks: list[_Block], n_heads: int,
                 d_head: int) -> None:
        self.wte, self.wpe, self.blocks = wte, wpe, blocks
        self.n_heads, self.d_head = n_heads, d_head
        self._masks: dict[tuple, torch.Tensor] = {}

    def _keep(self, seq: int, device: torch.device) -> torch.Tensor:
        """`[seq, seq]` bool: query i sees keys 0..i (cached per length and device)."""
        key = (seq, str(device))
        if key not in self._masks:
            self._masks[key] = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
        return self._masks[key]

    def _z(self, blk: _Block, x: torch.Tensor) -> torch.Tensor:
        """`[batch, pos, h*d]` z of one block from its input residual x `[batch, pos, m]`."""
        bsz, seq, _ = x.shape
        h, d = self.n_heads, self.d_head
        ln = _layer_norm(x, blk.ln1_w, blk.ln1_b, blk.ln1_eps)
        q = F.linear(ln, blk.q.weight, blk.q.bias).view(bsz, seq, h, d).transpose(1, 2)
        k = F.linear(ln, blk.k.weight, blk.k.bias).view(bsz, seq, h, d).transpose(1, 2)
        v = F.linear(ln, blk.v.weight, blk.v.bias).view(bsz, seq, h, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (d ** (-0.5))
        scores = scores.masked_fill(~self._keep(seq, scores.device), torch.finfo(scores.dtype).min)
        pattern = F.softmax(scores, dim=-1)
        z = torch.matmul(pattern, v)
        return z.transpose(1, 2).contiguous().view(bsz, seq, h * d)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, layers: list[int], sink) -> None:
        """Run `tokens [batch, pos]` up to the last of `layers` (sorted ascending), handing each layer's z to
        `sink(layer, z)`; nothing above the last layer's z is computed."""
        want = set(layers)
        last = max(layers)
        pos = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        x = self.wte(tokens) + self.wpe(pos)
        for layer in range(last + 1):
            blk = self.blocks[layer]
            z = self._z(blk, x)
            if layer in want:
                sink(layer, z)
            if layer == last:
                return
            x = blk.o(z) + x
            x = x + blk.c_proj(blk.act(blk.c_fc(_layer_norm(x, blk.ln2_w, blk.ln2_b, blk.ln2_eps))))


def lean_z_pass(model) -> LeanZPass | None:
    """A `LeanZPass` for `model` (a `LoadedModel`) when its bridge wraps a Hugging Face GPT-2 (`GPT2LMHeadModel`)
    whose blocks the bridge runs as plain GPT-2 blocks; None otherwise (the caller keeps the bridge)."""
    bridge = model.bridge
    hf = getattr(bridge, "original_model", None)
    if type(hf).__name__ != "GPT2LMHeadModel":
        return None
    hf_cfg = hf.config
    if getattr(hf_cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(hf_cfg, "reorder_and_upcast_attn", False):
        return None
    if getattr(hf_cfg, "add_cross_attention", False):
        return None
    try:
        blocks = []
        for layer in range(model.n_layers):
            b = bridge.blocks[layer]
            attn = b.attn
            if type(attn).__name__ != "JointQKVAttentionBridge" or getattr(attn, "compatibility_mode", False):
                return None
            acfg = attn.config
            if any(getattr(acfg, f, False) for f in ("use_split_qkv_input", "use_attn_in", "use_attn_result")):
                return None
            for ln in (b.ln1, b.ln2):
                if ln.uses_rms_norm or ln.use_native_layernorm_autograd or getattr(ln.config, "layer_norm_folding", False):
                    return None
            mlp = _raw(b.mlp)
            blocks.append(_Block(
                ln1_w=b.ln1.weight, ln1_b=_raw(b.ln1).bias, ln1_eps=float(getattr(b.ln1.config, "eps", 1e-5)),
                q=_raw(attn.q), k=_raw(attn.k), v=_raw(attn.v), o=_raw(attn.o),
                ln2_w=b.ln2.weight, ln2_b=_raw(b.ln2).bias, ln2_eps=float(getattr(b.ln2.config, "eps", 1e-5)),
                c_fc=_raw(mlp.c_fc), act=mlp.act, c_proj=_raw(mlp.c_proj),
            ))
            if type(blocks[-1].o).__name__ != "Conv1D" or type(mlp).__name__ != "GPT2MLP":
                return None
    except (AttributeError, IndexError, TypeError):
        return None
    return LeanZPass(_raw(hf.transformer.wte), _raw(hf.transformer.wpe), blocks, model.n_heads, model.d_head)
