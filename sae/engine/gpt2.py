"""A bridge-free GPT-2 for the analyses: the part of TransformerBridge's API attnscope uses, in plain torch.

`load_gpt2(dir)` reads a local plain GPT-2 directory (`config.json`, `model.safetensors`, `tokenizer.json`) with
neither transformers nor TransformerLens imported (importing those two is most of a command's start-up), and
`LeanGPT2` runs it with the bridge's own operations in the bridge's order (`sae.engine.zpass`'s exact mode, extended
past z to the logits), so every hook point and the logits equal the bridge's bit for bit
(tests/engine/test_gpt2.py checks each against the bridge). `sae.engine.models.load_model` uses it for a local plain
GPT-2 directory (the embedded default included) and wraps it in `LoadedModel(bridge=...)` as it would a bridge.

What it offers, with TransformerLens' names and shapes:
- `run_with_hooks(tokens, fwd_hooks=[(name, fn)], return_type="logits"|None, stop_at_layer=None)`: `fn(tensor,
  hook)` sees each hook point's tensor (`hook.name` the name it was registered under) and may return a replacement,
  which the rest of the pass uses; with `stop_at_layer=n` the pass ends before block n and returns its input residual;
- `run_with_cache(tokens, names_filter=None, stop_at_layer=None)` -> `(logits or residual, {name: tensor})`;
  `__call__(tokens)` -> logits `[batch, pos, d_vocab]`;
- hook points (`LeanGPT2.hook_names()`): `hook_embed` (alias `embed.hook_out`), `hook_pos_embed` (`pos_embed.hook_out`),
  `[batch, pos, d_model]`, per block `hook_resid_pre`, `ln1.hook_scale` `[batch, pos, 1]`,
  `attn.q/k/v.hook_in` (ln1's output as each of the three projections reads it), `attn.hook_q/k/v/z`
  `[batch, pos, head, d_head]` (raw: the value bias is inside v and z), `attn.hook_attn_scores` (the dtype's minimum
  added at masked keys) and `attn.hook_pattern` `[batch, head, query, key]`, `hook_attn_out`, `hook_resid_mid`,
  `ln2.hook_scale`, `hook_mlp_out`, `hook_resid_post`; `ln_final.hook_scale`;
- weights `W_E` `[d_vocab, d_model]`, `W_pos` `[n_ctx, d_model]`, `W_Q/W_K/W_V` `[layer, head, d_model, d_head]`,
  `b_Q/b_K/b_V` `[layer, head, d_head]`, `W_O` `[layer, head, d_head, d_model]`, `b_O` `[layer, d_model]`, `W_U`
  `[d_model, d_vocab]`; `blocks[L].ln1/ln2` and `ln_final` (callable LayerNorms with `weight`, `bias`, `eps`);
  `embed`, `pos_embed` (modules: a forward pre-hook on `embed` sees every pass); `cfg`; `tokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sae.engine.zpass import ACTIVATIONS, Block, LeanZPass, layer_norm, read_gpt2_dir, special_id, split_c_attn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]

# per-block hook points, in the order a pass reaches them
BLOCK_HOOKS = ("hook_resid_pre", "ln1.hook_scale", "attn.q.hook_in", "attn.k.hook_in", "attn.v.hook_in",
               "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
               "ln2.hook_scale", "hook_mlp_out", "hook_resid_post")
ALIASES = {"embed.hook_out": "hook_embed", "pos_embed.hook_out": "hook_pos_embed"}


class UnknownHookError(ValueError):
    """A hook name the model does not have (a bug in the caller, not a user's input)."""


@dataclass(frozen=True)
class HookPoint:
    """What a hook function receives besides the tensor: the name it was registered under."""

    name: str


@dataclass(frozen=True)
class GPT2Config:
    """The model's sizes, under TransformerLens' names (what `LoadedModel` and the analyses read)."""

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    d_vocab: int
    d_mlp: int
    eps: float
    act_fn: str
    model_name: str = "gpt2"
    normalization_type: str = "LN"
    uses_rms_norm: bool = False
    rmsnorm_uses_offset: bool = False
    positional_embedding_type: str = "standard"


class GPT2Tokenizer:
    """The tokenizer calls attnscope makes, over a `tokenizers.Tokenizer` (the library Hugging Face's fast
    tokenizers wrap: the same ids, pieces and decoded text)."""

    def __init__(self, tok, bos_token_id: int | None, eos_token_id: int | None, pad_token_id: int | None,
                 unk_token_id: int | None) -> None:
        self._tok = tok
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        # no pad token: the eos token pads, as TransformerBridge sets it
        self.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
        self.unk_token_id = unk_token_id
        self.all_special_ids = sorted(int(i) for i, t in tok.get_added_tokens_decoder().items() if t.special)

    def __len__(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: int | Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, int):
            ids = [ids]
        ids = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self._tok.id_to_token(ids)
        return [self._tok.id_to_token(int(i)) for i in ids]


class GPT2LayerNorm(nn.Module):
    """LayerNorm as the bridge computes it (`sae.engine.zpass.layer_norm`); `scale_hook(scale [..., 1])` may
    replace the divisor, as the bridge's `hook_scale` does."""

    uses_rms_norm = False
    uses_weight_offset = False

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, scale_hook: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """x `[..., d_model]` -> `[..., d_model]`."""
        if scale_hook is None:
            return layer_norm(x, self.weight, self.bias, self.eps)
        dtype = x.dtype
        if dtype not in (torch.float32, torch.float64):
            x = x.float()
        x = x - x.mean(-1, keepdim=True)
        scale = scale_hook((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return (x / scale * self.weight + self.bias).to(dtype)


class GPT2Embedding(nn.Module):
    """A lookup table `[n, d_model]`: ids `[...]` -> `[..., d_model]`."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


def conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hugging Face's `Conv1D` (`addmm(b, x, w)` over the flattened leading dims), also for a non-contiguous x
    (a hook's replacement). x `[..., in]` -> `[..., out]`."""
    return torch.addmm(b, x.reshape(-1, x.size(-1)), w).view(*x.shape[:-1], w.shape[1])


class GPT2Block(nn.Module):
    """One block's weights as GPT-2 stores them: the fused `c_attn` Conv1D `[d_model, 3 * h * d]` (q/k/v are views
    of it, split as the bridge splits it), the output projection, the MLP's two Conv1Ds, two LayerNorms."""

    def __init__(self, sd: dict[str, torch.Tensor], pre: str, eps: float, act: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()

        def p(key: str) -> nn.Parameter:
            return nn.Parameter(sd[pre + key], requires_grad=False)

        self.ln1 = GPT2LayerNorm(sd[pre + "ln_1.weight"], sd[pre + "ln_1.bias"], eps)
        self.ln2 = GPT2LayerNorm(sd[pre + "ln_2.weight"], sd[pre + "ln_2.bias"], eps)
        self.c_attn_w, self.c_attn_b = p("attn.c_attn.weight"), p("attn.c_attn.bias")
        self.o_w, self.o_b = p("attn.c_proj.weight"), p("attn.c_proj.bias")
        self.fc_w, self.fc_b = p("mlp.c_fc.weight"), p("mlp.c_fc.bias")
        self.proj_w, self.proj_b = p("mlp.c_proj.weight"), p("mlp.c_proj.bias")
        self.act = act

    def qkv(self) -> tuple[torch.Tensor, ...]:
        """`(q_w, q_b, k_w, k_b, v_w, v_b)`: nn.Linear weights `[h*d, d_model]` and biases `[h*d]` (views)."""
        return split_c_attn(self.c_attn_w, self.c_attn_b)

    def as_block(self) -> Block:
        q_w, q_b, k_w, k_b, v_w, v_b = self.qkv()
        return Block(ln1_w=self.ln1.weight, ln1_b=self.ln1.bias, q_w=q_w, q_b=q_b, k_w=k_w, k_b=k_b, v_w=v_w,
                     v_b=v_b, o_w=self.o_w, o_b=self.o_b, ln2_w=self.ln2.weight, ln2_b=self.ln2.bias, fc_w=self.fc_w,
                     fc_b=self.fc_b, proj_w=self.proj_w, proj_b=self.proj_b, act=self.act, eps=self.ln1.eps)


class LeanGPT2(nn.Module):
    """GPT-2 with TransformerLens-named hook points and weights (see the module docstring)."""

    def __init__(self, cfg: GPT2Config, sd: dict[str, torch.Tensor], tokenizer: GPT2Tokenizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        act = ACTIVATIONS[cfg.act_fn]
        self.embed = GPT2Embedding(sd["wte.weight"])
        self.pos_embed = GPT2Embedding(sd["wpe.weight"])
        self.blocks = nn.ModuleList(GPT2Block(sd, f"h.{i}.", cfg.eps, act) for i in range(cfg.n_layers))
        self.ln_final = GPT2LayerNorm(sd["ln_f.weight"], sd["ln_f.bias"], cfg.eps)
        head = sd.get("lm_head.weight")
        self.lm_head = None if head is None or head is sd["wte.weight"] else nn.Parameter(head, requires_grad=False)
        self._masks: dict[tuple[int, str], torch.Tensor] = {}

    # ---- weights, TransformerLens' shapes ---------------------------------------------------------------------

    def _stack(self, fn: Callable[[GPT2Block], torch.Tensor]) -> torch.Tensor:
        return torch.stack([fn(b) for b in self.blocks])

    def _heads_in(self, i: int) -> torch.Tensor:
        """`[layer, head, d_model, d_head]` of q (0), k (1) or v (2)."""
        h, d, m = self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model
        return self._stack(lambda b: b.qkv()[2 * i].T.reshape(m, h, d).permute(1, 0, 2))

    def _bias_in(self, i: int) -> torch.Tensor:
        return self._stack(lambda b: b.qkv()[2 * i + 1].reshape(self.cfg.n_heads, self.cfg.d_head))

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.weight

    @property
    def W_pos(self) -> torch.Tensor:
        return self.pos_embed.weight

    @property
    def W_Q(self) -> torch.Tensor:
        return self._heads_in(0)

    @property
    def W_K(self) -> torch.Tensor:
        return self._heads_in(1)

    @property
    def W_V(self) -> torch.Tensor:
        return self._heads_in(2)

    @property
    def b_Q(self) -> torch.Tensor:
        return self._bias_in(0)

    @property
    def b_K(self) -> torch.Tensor:
        return self._bias_in(1)

    @property
    def b_V(self) -> torch.Tensor:
        return self._bias_in(2)

    @property
    def W_O(self) -> torch.Tensor:
        return self._stack(lambda b: b.o_w.reshape(self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model))

    @property
    def b_O(self) -> torch.Tensor:
        return self._stack(lambda b: b.o_b)

    @property
    def W_U(self) -> torch.Tensor:
        return (self.embed.weight if self.lm_head is None else self.lm_head).T

    def z_pass(self) -> LeanZPass:
        """The training path's exact z pass (`sae.engine.zpass.LeanZPass`) over these weights."""
        return LeanZPass(self.embed.weight, self.pos_embed.weight, [b.as_block() for b in self.blocks],
                         self.cfg.n_heads, self.cfg.d_head, exact=True)

    # ---- hooks --------------------------------------------------------------------------------------------------

    def hook_names(self) -> list[str]:
        """Every hook point, in the order a pass reaches them, then the aliases."""
        names = ["hook_embed", "hook_pos_embed"]
        for layer in range(self.cfg.n_layers):
            names += [f"blocks.{layer}.{h}" for h in BLOCK_HOOKS]
        return names + ["ln_final.hook_scale", *ALIASES]

    def _canonical(self, name: str) -> str:
        name = ALIASES.get(name, name)
        parts = name.split(".", 2)
        ok = name in ("hook_embed", "hook_pos_embed", "ln_final.hook_scale") or (
            len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and int(parts[1]) < self.cfg.n_layers
            and parts[2] in BLOCK_HOOKS)
        if not ok:
            raise UnknownHookError(f"no hook point {name!r} in this model")
        return name

    def _mask(self, seq: int, like: torch.Tensor) -> torch.Tensor:
        """`[seq, seq]` additive causal mask in `like`'s dtype: 0 where query i sees key j <= i, the dtype's minimum
        elsewhere. Added, as the bridge adds Hugging Face's mask (in half precision a masked score is then not
        always exactly the minimum, and the bits of hook_attn_scores follow the bridge's)."""
        key = (seq, str(like.device), str(like.dtype))
        if key not in self._masks:
            keep = torch.ones(seq, seq, dtype=torch.bool, device=like.device).tril()
            zero = torch.zeros((), dtype=like.dtype, device=like.device)
            self._masks[key] = torch.where(keep, zero, torch.finfo(like.dtype).min)
        return self._masks[key]

    def _run(self, tokens: torch.Tensor, hooks: dict[str, list[tuple[str, HookFn]]], stop_at_layer: int | None,
             logits: bool) -> torch.Tensor | None:
        """The pass: `tokens [batch, pos]` -> logits `[batch, pos, d_vocab]`, the residual entering block
        `stop_at_layer`, or None (`logits` False)."""

        def hp(name: str, x: torch.Tensor) -> torch.Tensor:
            for as_name, fn in hooks.get(name, ()):
                out = fn(x, HookPoint(as_name))
                if out is not None:
                    x = out
            return x

        def scale_hook(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
            return (lambda s: hp(name, s)) if name in hooks else None

        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        cfg = self.cfg
        bsz, seq = tokens.shape
        h, d = cfg.n_heads, cfg.d_head
        pos = torch.arange(seq, device=tokens.device).unsqueeze(0).expand(bsz, seq)
        x = hp("hook_embed", self.embed(tokens)) + hp("hook_pos_embed", self.pos_embed(pos))
        n = cfg.n_layers
        if stop_at_layer is not None:  # a negative one counts from the top, as in TransformerLens
            n = max(0, min(cfg.n_layers, stop_at_layer + (cfg.n_layers if stop_at_layer < 0 else 0)))
        for layer in range(n):
            blk = self.blocks[layer]
            pre = f"blocks.{layer}."
            x = hp(pre + "hook_resid_pre", x)
            ln = blk.ln1(x, scale_hook(pre + "ln1.hook_scale"))
            q_w, q_b, k_w, k_b, v_w, v_b = blk.qkv()
            q_in, k_in, v_in = (hp(pre + f"attn.{c}.hook_in", ln) for c in "qkv")
            q = hp(pre + "attn.hook_q", F.linear(q_in, q_w, q_b).view(bsz, seq, h, d)).transpose(1, 2)
            k = hp(pre + "attn.hook_k", F.linear(k_in, k_w, k_b).view(bsz, seq, h, d)).transpose(1, 2)
            v = hp(pre + "attn.hook_v", F.linear(v_in, v_w, v_b).view(bsz, seq, h, d)).transpose(1, 2)
            scores = torch.matmul(q, k.transpose(-2, -1)) * (d ** (-0.5))
            scores = scores + self._mask(seq, scores)
            scores = hp(pre + "attn.hook_attn_scores", scores)
            pattern = hp(pre + "attn.hook_pattern", F.softmax(scores, dim=-1))
            z = hp(pre + "attn.hook_z", torch.matmul(pattern, v).transpose(1, 2).contiguous())
            attn_out = hp(pre + "hook_attn_out", conv1d(z.reshape(bsz, seq, h * d), blk.o_w, blk.o_b))
            x = hp(pre + "hook_resid_mid", attn_out + x)
            ln = blk.ln2(x, scale_hook(pre + "ln2.hook_scale"))
            mlp_out = hp(pre + "hook_mlp_out", conv1d(blk.act(conv1d(ln, blk.fc_w, blk.fc_b)), blk.proj_w, blk.proj_b))
            x = hp(pre + "hook_resid_post", x + mlp_out)
        if stop_at_layer is not None:
            return x
        x = self.ln_final(x, scale_hook("ln_final.hook_scale"))
        if not logits:
            return None
        return F.linear(x, self.embed.weight if self.lm_head is None else self.lm_head)

    def _hook_table(self, fwd_hooks: Iterable[tuple[str, HookFn]]) -> dict[str, list[tuple[str, HookFn]]]:
        table: dict[str, list[tuple[str, HookFn]]] = {}
        for name, fn in fwd_hooks:
            table.setdefault(self._canonical(name), []).append((name, fn))
        return table

    def forward(self, tokens: torch.Tensor, return_type: str | None = "logits",
                stop_at_layer: int | None = None) -> torch.Tensor | None:
        """Logits `[batch, pos, d_vocab]` of `tokens [batch, pos]` (see `run_with_hooks` for the options)."""
        return self._run(tokens, {}, stop_at_layer, return_type is not None)

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: Iterable[tuple[str, HookFn]] = (),
                       return_type: str | None = "logits", stop_at_layer: int | None = None) -> torch.Tensor | None:
        """One pass with `fwd_hooks` `[(hook name, fn(tensor, hook))]` (a fn's non-None return replaces the
        tensor); logits, or None for `return_type=None`, or the residual entering block `stop_at_layer`."""
        return self._run(tokens, self._hook_table(fwd_hooks), stop_at_layer, return_type is not None)

    def run_with_cache(self, tokens: torch.Tensor, names_filter: Callable[[str], bool] | str | Iterable[str] | None = None,
                       stop_at_layer: int | None = None, return_type: str | None = "logits",
                       ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """`(output, cache)`: one pass storing each hook point that `names_filter` accepts (a predicate, a name, a
        list of names, or None for all), detached, under its name (aliases included when accepted)."""
        if names_filter is None:
            keep: Callable[[str], bool] = lambda n: True  # noqa: E731
        elif isinstance(names_filter, str):
            keep = lambda n: n == names_filter  # noqa: E731
        elif callable(names_filter):
            keep = names_filter
        else:
            wanted = set(names_filter)
            keep = lambda n: n in wanted  # noqa: E731
        cache: dict[str, torch.Tensor] = {}

        def store(t: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = t.detach()

        hooks = [(n, store) for n in self.hook_names() if keep(n)]
        out = self._run(tokens, self._hook_table(hooks), stop_at_layer, return_type is not None)
        return out, cache


def load_gpt2(path: str | Path, device: torch.device, dtype: torch.dtype) -> LeanGPT2 | None:
    """A `LeanGPT2` (eval mode, on `device`, weights in `dtype`) read from a local plain GPT-2 directory, or None
    when the directory is anything else (see `sae.engine.zpass.read_gpt2_dir`): the caller then loads the bridge.
    Imports neither transformers nor TransformerLens."""
    files = read_gpt2_dir(path)
    if files is None:
        return None
    cfg, tok, tc = files.config, files.tokenizer, files.tok_config
    if cfg.get("tie_word_embeddings", True) is False and "lm_head.weight" not in files.state:
        return None
    if tc.get("clean_up_tokenization_spaces") or tc.get("add_prefix_space") or tc.get("add_bos_token"):
        return None  # options transformers' tokenizer applies on top of `tokenizers`: the bridge keeps them exact
    m, n_head = int(cfg["n_embd"]), int(cfg["n_head"])
    gcfg = GPT2Config(
        n_layers=int(cfg["n_layer"]), n_heads=n_head, d_head=m // n_head, d_model=m,
        n_ctx=int(cfg.get("n_positions", cfg.get("n_ctx", 1024))), d_vocab=int(cfg["vocab_size"]),
        d_mlp=int(cfg.get("n_inner") or 4 * m), eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        act_fn=str(cfg.get("activation_function", "gelu_new")),
    )
    sd = {k: v.to(device=device, dtype=dtype) for k, v in files.state.items()}
    if cfg.get("tie_word_embeddings", True) is not False:
        sd.pop("lm_head.weight", None)
    tokenizer = GPT2Tokenizer(tok, special_id(tok, tc, "bos_token", cfg.get("bos_token_id")),
                              special_id(tok, tc, "eos_token", cfg.get("eos_token_id")),
                              special_id(tok, tc, "pad_token", cfg.get("pad_token_id")),
                              special_id(tok, tc, "unk_token", None))
    try:
        model = LeanGPT2(gcfg, sd, tokenizer)
    except KeyError:
        return None
    return model.eval()
