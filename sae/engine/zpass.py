"""hook_z of a GPT-2-architecture model from plain tensor operations: the training path's model pass and model.

The TransformerBridge's forward runs about 89 module calls per pass (hook points, bridges, the Hugging Face
wrappers and a causal mask built on every call) and computes everything above the last layer a caller needs. For
training only hook_z matters, so `LeanZPass` runs, for the layers below the last one needed, the whole block (z
depends on it through the residual stream), and for the last one only ln1, q/k/v, the pattern and z: no output
projection, no MLP, no layer above, no unembedding, no hook points.

Two modes. `exact=True` repeats the bridge's own operations in the bridge's order (the bridge's from-scratch
LayerNorm, its q/k/v linears on views of the fused `c_attn` weight, `matmul(q, k^T) * scale`, the pattern over every
key with masked keys at the dtype's minimum, Hugging Face's `Conv1D` as `addmm`, `gelu_new` as Hugging Face writes
it), so z is bit-identical to the bridge's `hook_z` (tests/engine/test_zpass.py checks it against the bridge's full
forward). `exact=False` (the training model's default) computes the same functions with fused kernels: `layer_norm`,
causal `scaled_dot_product_attention` (which skips the masked half of the pattern) and the one-kernel tanh GELU; its z
equals the bridge's to float rounding (about 1e-6 of its scale; tested) and the pass takes about 0.6 of the exact
one's time (measured on one CPU thread: 32 x 128 tokens to layer 1's z; the exact GELU alone is ~30 ms of ~90).

Two ways in:
- `lean_z_pass(loaded_model)`: from a loaded bridge's weights; `ZSource` computes its first chunk both ways and
  keeps the lean pass only when the bits agree.
- `load_gpt2_z_model(dir)`: a `ZModel` read straight from a local GPT-2 directory (`config.json`,
  `model.safetensors`, `tokenizer.json`) with neither transformers nor TransformerLens imported: what `attnscope
  train` needs (sizes, tokenizer, the z offset, the lean pass) in a fraction of the bridge's start-up time. Models
  that are not plain GPT-2 blocks get `None` from both and keep the bridge.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU, written as Hugging Face's `NewGELUActivation` (same operations, same bits)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh GELU as one kernel (`F.gelu(approximate="tanh")`): `gelu_new` to float rounding."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": gelu_new,
    "gelu": F.gelu,
    "relu": F.relu,
}
FAST_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {**ACTIVATIONS, "gelu_new": gelu_tanh,
                                                                      "gelu_pytorch_tanh": gelu_tanh}


@dataclass
class Block:
    """One GPT-2 block's weights as the bridge computes with them (d_model m, heads h x width d, MLP width f).

    `q_w`, `k_w`, `v_w` are `[h*d, m]` nn.Linear weights: transposed views of the fused `c_attn` weight `[m, 3*h*d]`,
    as the bridge splits it; `o_w` `[h*d, m]`, `fc_w` `[m, f]`, `proj_w` `[f, m]` are Conv1D weights (`x @ w + b`).
    """

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    q_w: torch.Tensor
    q_b: torch.Tensor
    k_w: torch.Tensor
    k_b: torch.Tensor
    v_w: torch.Tensor
    v_b: torch.Tensor
    o_w: torch.Tensor
    o_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc_w: torch.Tensor
    fc_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    act: Callable[[torch.Tensor], torch.Tensor]
    eps: float = 1e-5


def split_c_attn(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q/k/v linear weights and biases from a fused Conv1D `c_attn` (w `[m, 3n]`, b `[3n]`), split as the bridge
    splits them (`tensor_split` along the outputs, then `.T`; the bias reshaped `[3, n]`): views, no copies."""
    q_w, k_w, v_w = torch.tensor_split(w, 3, dim=1)
    qkv_b = b.reshape(3, -1)
    return q_w.T, qkv_b[0, :], k_w.T, qkv_b[1, :], v_w.T, qkv_b[2, :]


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
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


def conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hugging Face's `Conv1D.forward`: `addmm(b, x, w)` over the flattened leading dims. x [..., in] -> [..., out]."""
    size_out = x.size()[:-1] + (w.shape[1],)
    return torch.addmm(b, x.view(-1, x.size(-1)), w).view(size_out)


class LeanZPass:
    """Raw hook_z (value bias not removed) of chosen layers, `__call__(tokens, layers, sink)`: calls
    `sink(layer, z [batch, pos, n_heads * d_head])` for each of `layers` in ascending order. `exact`: the bridge's
    bits, or fused kernels (see the module docstring; the blocks' `act` is then `FAST_ACTIVATIONS`')."""

    def __init__(self, wte: torch.Tensor, wpe: torch.Tensor, blocks: list[Block], n_heads: int, d_head: int,
                 exact: bool = True) -> None:
        self.wte, self.wpe, self.blocks = wte, wpe, blocks  # wte [vocab, m], wpe [n_ctx, m]
        self.n_heads, self.d_head = n_heads, d_head
        self.exact = exact
        self._masks: dict[tuple[int, str], torch.Tensor] = {}

    def _norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        if self.exact or x.dtype not in (torch.float32, torch.float64):
            return layer_norm(x, w, b, eps)
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def _keep(self, seq: int, device: torch.device) -> torch.Tensor:
        """`[seq, seq]` bool: query i sees keys 0..i (made once per length and device)."""
        key = (seq, str(device))
        if key not in self._masks:
            self._masks[key] = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
        return self._masks[key]

    def _z(self, blk: Block, x: torch.Tensor) -> torch.Tensor:
        """`[batch, pos, h*d]` z of one block from its input residual x `[batch, pos, m]`."""
        bsz, seq, _ = x.shape
        h, d = self.n_heads, self.d_head
        ln = self._norm(x, blk.ln1_w, blk.ln1_b, blk.eps)
        q = F.linear(ln, blk.q_w, blk.q_b).view(bsz, seq, h, d).transpose(1, 2)
        k = F.linear(ln, blk.k_w, blk.k_b).view(bsz, seq, h, d).transpose(1, 2)
        v = F.linear(ln, blk.v_w, blk.v_b).view(bsz, seq, h, d).transpose(1, 2)
        if not self.exact:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(d), as below
            return z.transpose(1, 2).contiguous().view(bsz, seq, h * d)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (d ** (-0.5))
        scores = scores.masked_fill(~self._keep(seq, scores.device), torch.finfo(scores.dtype).min)
        z = torch.matmul(F.softmax(scores, dim=-1), v)
        return z.transpose(1, 2).contiguous().view(bsz, seq, h * d)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, layers: list[int], sink: Callable[[int, torch.Tensor], None]) -> None:
        """Run `tokens [batch, pos]` up to the last of `layers`, handing each of their z to `sink(layer, z)`;
        nothing above the last layer's z is computed."""
        want = set(layers)
        last = max(layers)
        pos = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        x = F.embedding(tokens, self.wte) + F.embedding(pos, self.wpe)
        for layer in range(last + 1):
            blk = self.blocks[layer]
            z = self._z(blk, x)
            if layer in want:
                sink(layer, z)
            if layer == last:
                return
            x = conv1d(z, blk.o_w, blk.o_b) + x
            mlp = conv1d(blk.act(conv1d(self._norm(x, blk.ln2_w, blk.ln2_b, blk.eps), blk.fc_w, blk.fc_b)),
                         blk.proj_w, blk.proj_b)
            x = x + mlp


def plain_gpt2(cfg: dict) -> bool:
    """Whether a GPT-2 config describes blocks the lean pass computes exactly as the bridge does."""
    return (cfg.get("model_type") == "gpt2" and not cfg.get("scale_attn_by_inverse_layer_idx", False)
            and not cfg.get("reorder_and_upcast_attn", False) and not cfg.get("add_cross_attention", False)
            and cfg.get("activation_function", "gelu_new") in ACTIVATIONS)


def _raw(module):
    inner = getattr(module, "original_component", None)
    return inner if inner is not None else module


def lean_z_pass(model) -> LeanZPass | None:
    """A `LeanZPass` over the weights of `model` (a `LoadedModel` whose bridge wraps a plain Hugging Face GPT-2, or
    is the bridge-free `sae.engine.gpt2.LeanGPT2`);
    None for any other model (the caller keeps the bridge). A `ZModel` hands back its own pass."""
    if isinstance(model, ZModel):
        return model.lean
    bridge = model.bridge
    own = getattr(bridge, "z_pass", None)  # `sae.engine.gpt2.LeanGPT2`: its own weights, the same exact pass
    if callable(own):
        return own()
    hf = getattr(bridge, "original_model", None)
    if type(hf).__name__ != "GPT2LMHeadModel" or not plain_gpt2(hf.config.to_dict()):
        return None
    act = ACTIVATIONS[hf.config.activation_function]
    try:
        blocks = []
        for layer in range(model.n_layers):
            b = bridge.blocks[layer]
            attn = b.attn
            if type(attn).__name__ != "JointQKVAttentionBridge" or getattr(attn, "compatibility_mode", False):
                return None
            if any(getattr(attn.config, f, False) for f in ("use_split_qkv_input", "use_attn_in", "use_attn_result")):
                return None
            for ln in (b.ln1, b.ln2):
                if ln.uses_rms_norm or ln.use_native_layernorm_autograd or getattr(ln.config, "layer_norm_folding", False):
                    return None
            mlp = _raw(b.mlp)
            o, fc, proj = _raw(attn.o), _raw(mlp.c_fc), _raw(mlp.c_proj)
            if {type(o).__name__, type(fc).__name__, type(proj).__name__} != {"Conv1D"}:
                return None
            q, k, v = _raw(attn.q), _raw(attn.k), _raw(attn.v)
            blocks.append(Block(
                ln1_w=b.ln1.weight, ln1_b=_raw(b.ln1).bias, q_w=q.weight, q_b=q.bias, k_w=k.weight, k_b=k.bias,
                v_w=v.weight, v_b=v.bias, o_w=o.weight, o_b=o.bias, ln2_w=b.ln2.weight, ln2_b=_raw(b.ln2).bias,
                fc_w=fc.weight, fc_b=fc.bias, proj_w=proj.weight, proj_b=proj.bias, act=act,
                eps=float(getattr(b.ln1.config, "eps", 1e-5)),
            ))
    except (AttributeError, IndexError, TypeError):
        return None
    tr = hf.transformer
    return LeanZPass(_raw(tr.wte).weight, _raw(tr.wpe).weight, blocks, model.n_heads, model.d_head)


# ---- a GPT-2 read straight from its directory (the training path) -------------------------------------------


class _Tokenizer:
    """The few tokenizer facts training reads, over a `tokenizers.Tokenizer` (the library Hugging Face's fast
    tokenizers wrap, so ids are the same)."""

    def __init__(self, tok, bos_token_id: int | None, eos_token_id: int | None) -> None:
        self._tok = tok
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)


@dataclass
class ZModel:
    """What training needs of a model, without the bridge: sizes, the tokenizer, the z offset and the lean pass.

    Mirrors `LoadedModel`'s attributes of the same names (`name`, `device`, `dtype`, `n_layers`, `n_heads`,
    `d_head`, `d_model`, `d_z`, `n_ctx`, `d_vocab`, `tokenizer`, `bos_token_id`, `encode`, `check_layer`,
    `z_offset`); `bridge` is None. `path` is the directory it was read from, for loading the full model later.
    """

    name: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    d_vocab: int
    tokenizer: _Tokenizer
    lean: LeanZPass
    bridge: None = None
    _offsets: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def d_z(self) -> int:
        return self.n_heads * self.d_head

    @property
    def bos_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        if bos is None:
            bos = self.tokenizer.eos_token_id
        return int(bos if bos is not None else 0)

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is outside the model ({self.name} has layers 0..{self.n_layers - 1})")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def z_offset(self, layer: int) -> torch.Tensor:
        """`b_V + ln1_b @ W_V`, `[head, d_head]` (see `sae.engine.models`), from the same weights and in the same
        operations as `LoadedModel.z_offset`."""
        self.check_layer(layer)
        if layer not in self._offsets:
            blk = self.lean.blocks[layer]
            h, d = self.n_heads, self.d_head
            b_v = blk.v_b.detach().reshape(h, d).float()
            w_v = blk.v_w.T.reshape(self.d_model, h, d).permute(1, 0, 2).float()  # [head, d_model, d_head]
            self._offsets[layer] = b_v + torch.einsum("m,hmd->hd", blk.ln1_b.detach().float(), w_v)
        return self._offsets[layer].to(device=self.device, dtype=self.dtype)


def special_id(tok, tok_cfg: dict, key: str, fallback: int | None) -> int | None:
    """The id of tokenizer_config's `key` token (`bos_token`, ...) in `tok` (a `tokenizers.Tokenizer`), else
    `fallback` (config.json's id)."""
    spec = tok_cfg.get(key)
    if isinstance(spec, dict):
        spec = spec.get("content")
    if isinstance(spec, str):
        i = tok.token_to_id(spec)
        if i is not None:
            return int(i)
    return fallback


@dataclass
class GPT2Files:
    """What a local GPT-2 directory holds, read without transformers: `config` (config.json), `tok_config`
    (tokenizer_config.json or {}), `state` (model.safetensors, keys without the `transformer.` prefix) and the
    `tokenizers.Tokenizer` of tokenizer.json."""

    config: dict
    tok_config: dict
    state: dict[str, torch.Tensor]
    tokenizer: object


def read_gpt2_dir(path: str | Path) -> GPT2Files | None:
    """The files of a local plain GPT-2 directory (see `plain_gpt2`), or None when it is anything else (another
    architecture, no `model.safetensors` or `tokenizer.json`, an unknown tokenizer class or activation, a file that
    does not read): the caller then loads the bridge, whose loader reports what is wrong."""
    p = Path(path)
    try:
        cfg = json.loads((p / "config.json").read_text())
        tok_cfg = json.loads((p / "tokenizer_config.json").read_text()) if (p / "tokenizer_config.json").is_file() else {}
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or not isinstance(tok_cfg, dict) or not plain_gpt2(cfg):
        return None
    if not (p / "model.safetensors").is_file() or not (p / "tokenizer.json").is_file():
        return None
    if tok_cfg.get("tokenizer_class") not in (None, "TokenizersBackend", "GPT2Tokenizer", "GPT2TokenizerFast"):
        return None
    try:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        sd = load_file(str(p / "model.safetensors"))
        tok = Tokenizer.from_file(str(p / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - anything unreadable here is left to the bridge's loader and its errors
        return None
    if any(k not in cfg for k in ("n_embd", "n_layer", "n_head", "vocab_size")) or int(cfg["n_embd"]) % int(cfg["n_head"]):
        return None
    return GPT2Files(cfg, tok_cfg, {k.removeprefix("transformer."): v for k, v in sd.items()}, tok)


def load_gpt2_z_model(path: str | Path, device: torch.device, dtype: torch.dtype, name: str,
                      exact: bool = False) -> ZModel | None:
    """A `ZModel` read from a local GPT-2 directory, or None when the directory is anything else (see
    `read_gpt2_dir`): the caller then loads the bridge. Imports neither transformers nor TransformerLens. `exact`:
    its pass gives the bridge's bits (else fused kernels, the same z to float rounding; see the module docstring)."""
    p = Path(path)
    files = read_gpt2_dir(p)
    if files is None:
        return None
    cfg, tok_cfg, sd, tok = files.config, files.tok_config, files.state, files.tokenizer
    m, n_layer, n_head = int(cfg["n_embd"]), int(cfg["n_layer"]), int(cfg["n_head"])
    act = (ACTIVATIONS if exact else FAST_ACTIVATIONS)[cfg.get("activation_function", "gelu_new")]
    eps = float(cfg.get("layer_norm_epsilon", 1e-5))

    def t(key: str) -> torch.Tensor:
        return sd[key].to(device=device, dtype=dtype)

    try:
        blocks = []
        for i in range(n_layer):
            pre = f"h.{i}."
            q_w, q_b, k_w, k_b, v_w, v_b = split_c_attn(t(pre + "attn.c_attn.weight"), t(pre + "attn.c_attn.bias"))
            blocks.append(Block(
                ln1_w=t(pre + "ln_1.weight"), ln1_b=t(pre + "ln_1.bias"), q_w=q_w, q_b=q_b, k_w=k_w, k_b=k_b,
                v_w=v_w, v_b=v_b, o_w=t(pre + "attn.c_proj.weight"), o_b=t(pre + "attn.c_proj.bias"),
                ln2_w=t(pre + "ln_2.weight"), ln2_b=t(pre + "ln_2.bias"), fc_w=t(pre + "mlp.c_fc.weight"),
                fc_b=t(pre + "mlp.c_fc.bias"), proj_w=t(pre + "mlp.c_proj.weight"),
                proj_b=t(pre + "mlp.c_proj.bias"), act=act, eps=eps,
            ))
        wte, wpe = t("wte.weight"), t("wpe.weight")
    except KeyError:
        return None
    bos = special_id(tok, tok_cfg, "bos_token", cfg.get("bos_token_id"))
    eos = special_id(tok, tok_cfg, "eos_token", cfg.get("eos_token_id"))
    return ZModel(
        name=name, path=p, device=device, dtype=dtype, n_layers=n_layer, n_heads=n_head, d_head=m // n_head,
        d_model=m, n_ctx=int(cfg.get("n_positions", cfg.get("n_ctx", 1024))), d_vocab=int(cfg["vocab_size"]),
        tokenizer=_Tokenizer(tok, bos, eos), lean=LeanZPass(wte, wpe, blocks, n_head, m // n_head, exact),
    )
