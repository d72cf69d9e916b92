"""Loading causal LMs (through TransformerLens 4's TransformerBridge, or for a local plain GPT-2 the bit-identical
bridge-free `sae.engine.gpt2.LeanGPT2`) and reading attention outputs from them.

**The z convention (its one home).** attnscope's `z` for layer L is `blocks.L.attn.hook_z`
(`[batch, pos, head, d_head]`) exactly as TransformerLens' `HookedTransformer` computes it after its default weight
processing (`fold_ln`, `center_writing_weights`, `fold_value_biases`), the setting the paper's SAEs were trained in.
`TransformerBridge` runs the raw Hugging Face weights, whose z differs from that by a constant per head:

    c[L, h] = b_V[L, h] + ln1_b[L] @ W_V[L, h]        ([head, d_head])

`fold_ln` first moves the pre-attention LayerNorm's bias through the value weights into `b_V`, then
`fold_value_biases` moves that whole bias into `b_O`. Because every attention row sums to 1, c contributes exactly c
to each head's z whatever the prompt, so `z = raw z - c` (`LoadedModel.z_offset`). For RMSNorm models (no norm
bias) c is `b_V`; for models without value biases and without a norm bias it is zero. Every place that captures,
splices, zero-ablates or decomposes z goes through `z_offset`; `tests/reference/` holds HookedTransformer's own
`hook_z` on which this is checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch

from sae.engine.errors import AttnscopeError


class ModelLoadError(AttnscopeError):
    """A model could not be loaded; the message is one line meant for the user."""


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError as exc:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(DTYPES))}") from exc


def z_hook_name(layer: int) -> str:
    """The TransformerLens hook name of a layer's concatenated per-head attention outputs."""
    return f"blocks.{layer}.attn.hook_z"


def layer_of_hook(hook_name: str) -> int:
    """`blocks.5.attn.hook_z` -> 5."""
    parts = hook_name.split(".")
    if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"hook name {hook_name!r} does not name a layer (expected blocks.L....)")
    return int(parts[1])


@dataclass
class LoadedModel:
    """A TransformerBridge (or `sae.engine.gpt2.LeanGPT2`, which offers the same calls) plus the facts attnscope
    needs about it.

    Weight tensors follow TransformerLens' shapes: `W_V[layer]` is `[head, d_model, d_head]`,
    `W_O[layer]` is `[head, d_head, d_model]`, `W_U` is `[d_model, d_vocab]`.
    """

    bridge: object
    name: str
    device: torch.device
    dtype: torch.dtype
    _z_offsets: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def d_head(self) -> int:
        return int(self.cfg.d_head)

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def d_z(self) -> int:
        """Width of a flattened hook_z: n_heads * d_head."""
        return self.n_heads * self.d_head

    @property
    def n_ctx(self) -> int:
        return int(self.cfg.n_ctx)

    @property
    def d_vocab(self) -> int:
        return int(self.cfg.d_vocab)

    @property
    def tokenizer(self):
        return self.bridge.tokenizer

    @property
    def bos_token_id(self) -> int:
        tok = self.tokenizer
        bos = getattr(tok, "bos_token_id", None)
        if bos is None:
            bos = getattr(tok, "eos_token_id", None)
        return int(bos if bos is not None else 0)

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} is outside the model ({self.name} has layers 0..{self.n_layers - 1})")

    def z_offset(self, layer: int) -> torch.Tensor:
        """The per-head constant `c = b_V + ln1_b @ W_V` that processed z lacks, `[head, d_head]` (model dtype).

        See the module docstring; computed once per layer in float32 from the raw weights.
        """
        self.check_layer(layer)
        if layer not in self._z_offsets:
            self._z_offsets[layer] = _z_offset(self.bridge, layer, self.n_heads, self.d_head)
        return self._z_offsets[layer].to(device=self.device, dtype=self.dtype)

    # ---- tokens ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without BOS. ModelLoadError when text gives no token at all: the model came
        without a usable tokenizer (a model folder without tokenizer files loads an empty one)."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if not ids and text.strip():
            raise ModelLoadError(
                f"{self.name} has no usable tokenizer (tokenizer.json, or vocab.json + merges.txt): text gives no "
                "tokens; copy the model's tokenizer files into its folder"
            )
        return ids

    def to_tokens(self, text: str, prepend_bos: bool = True, truncate: bool = True) -> tuple[torch.Tensor, bool]:
        """`[1, pos]` token ids with BOS at position 0, cut to the model's context; also whether it was cut."""
        ids = self.encode(text)
        if prepend_bos:
            ids = [self.bos_token_id] + ids
        truncated = len(ids) > self.n_ctx
        if truncated:
            if not truncate:
                raise ValueError(f"prompt has {len(ids)} tokens; the model's context is {self.n_ctx}")
            ids = ids[: self.n_ctx]
        return torch.tensor([ids], dtype=torch.long, device=self.device), truncated

    def token_strs(self, tokens: torch.Tensor | Iterable[int]) -> list[str]:
        """One display string per token id (byte-level BPE pieces decoded one at a time). A piece holding part of
        a multi-byte character shows its stray bytes as `<0xE2>` instead of `�`."""
        ids = tokens.flatten().tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        out = []
        for i in ids:
            text = self.tokenizer.decode([i])
            out.append(self._byte_piece(i) if "\ufffd" in text else text)
        return out

    def _byte_piece(self, token_id: int) -> str:
        raw = self.tokenizer.convert_ids_to_tokens(token_id)
        inverse = _byte_level_inverse()
        if isinstance(raw, str) and raw and all(ch in inverse for ch in raw):
            return bytes_text(bytes(inverse[ch] for ch in raw))
        return str(raw)

    # ---- forward passes -------------------------------------------------------------------------------

    def capture_z(self, tokens: torch.Tensor, layers: Iterable[int]) -> dict[int, torch.Tensor]:
        """Run the model on `tokens [batch, pos]` up to the last layer needed.

        Returns `{layer: z [batch, pos, n_heads * d_head]}` (head-major flatten, value bias removed),
        in the model's dtype. The forward pass stops after the last requested layer's block.
        """
        layers = sorted(set(layers))
        for layer in layers:
            self.check_layer(layer)
        out: dict[int, torch.Tensor] = {}

        def grab(z: torch.Tensor, hook) -> torch.Tensor:
            layer = layer_of_hook(hook.name)
            out[layer] = (z - self.z_offset(layer)).flatten(-2).detach()
            return z

        # hook names in the bridge resolve aliases; register under the canonical TL name.
        hooks = [(z_hook_name(layer), grab) for layer in layers]
        stop = layers[-1] + 1
        with torch.no_grad():
            if stop >= self.n_layers:
                self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None)
            else:
                self.bridge.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=stop, return_type=None)
        # the bridge reports the hook's own name (e.g. blocks.L.attn.o.hook_in); layer_of_hook only reads L
        return out

    def attention_patterns(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention patterns of every layer, `[layer, batch, head, query, key]` (float32, on the CPU)."""
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(self.n_layers)]
        wanted = set(names)
        with torch.no_grad():
            _, cache = self.bridge.run_with_cache(tokens.to(self.device), names_filter=lambda n: n in wanted)
        return torch.stack([cache[n].float().cpu() for n in names])

    def logits_with_z_hooks(
        self, tokens: torch.Tensor, z_fns: dict[int, Callable[[torch.Tensor], torch.Tensor]]
    ) -> torch.Tensor:
        """Logits `[batch, pos, d_vocab]` with each `z_fns[layer]` replacing that layer's z.

        Each function receives and returns z in attnscope's convention, `[batch, pos, n_heads * d_head]`
        with the value bias removed; the bias is added back before the output projection.
        """

        def make(layer: int, fn: Callable[[torch.Tensor], torch.Tensor]):
            def hook(z: torch.Tensor, hook) -> torch.Tensor:
                b_v = self.z_offset(layer)
                flat = (z - b_v).flatten(-2)
                new = fn(flat).to(z.dtype).reshape(z.shape)
                return new + b_v

            return hook

        hooks = [(z_hook_name(layer), make(layer, fn)) for layer, fn in z_fns.items()]
        return self.bridge.run_with_hooks(tokens, fwd_hooks=hooks)


def _z_offset(bridge: object, layer: int, n_heads: int, d_head: int) -> torch.Tensor:
    """`b_V[layer] + ln1_b[layer] @ W_V[layer]`, `[head, d_head]` float32 on the weights' device."""
    try:
        b_v_all = getattr(bridge, "b_V", None)
        b_v = None if b_v_all is None else b_v_all[layer].detach().float()  # [head, d_head]
    except (AttributeError, TypeError, IndexError, KeyError, NotImplementedError):
        b_v = None
    if b_v is None:
        # zero only when the model truly has no value bias; one the bridge does not expose would stay inside z and
        # silently break the convention, so that is refused
        if hf_has_value_bias(bridge):
            raise ModelLoadError(
                "the model has attention value biases but its TransformerBridge exposes no b_V, so attnscope cannot "
                "fold them out of z; this architecture is not supported yet"
            )
        b_v = torch.zeros(n_heads, d_head)
    blocks = getattr(bridge, "blocks", None)
    ln1 = getattr(blocks[layer], "ln1", None) if blocks is not None else None
    ln_bias = None
    if ln1 is not None:
        inner = getattr(ln1, "original_component", None) or getattr(ln1, "_original_component", None) or ln1
        ln_bias = getattr(inner, "bias", None)
    if ln_bias is not None:  # RMSNorm, or no norm before attention: nothing is folded through W_V
        W_V = bridge.W_V[layer].detach().float()  # [head or kv head, d_model, d_head]
        b_v = b_v.to(W_V.device) + torch.einsum("m,hmd->hd", ln_bias.detach().float(), W_V)
    if b_v.shape[0] != n_heads:  # grouped-query attention: each query head reads its kv head's values
        b_v = b_v.repeat_interleave(n_heads // b_v.shape[0], dim=0)
    return b_v


def quiet_transformers() -> None:
    """transformers prints per-load progress bars and config warnings on stderr; our commands own stderr."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:  # the hub client logs every retry when offline; the final error is reported by load_model
        import huggingface_hub

        huggingface_hub.utils.logging.set_verbosity_error()
    except (ImportError, AttributeError):
        pass


# parameter-name endings of a value (or fused q/k/v) projection bias in Hugging Face attention modules
_VALUE_BIAS_NAMES = ("v_proj.bias", "c_attn.bias", "query_key_value.bias", "qkv_proj.bias", "Wqkv.bias",
                     "value.bias", "v.bias", "k_v_proj.bias", "qkv.bias")


def hf_has_value_bias(bridge) -> bool:
    """Whether the wrapped Hugging Face model has a (non-zero) value-projection bias parameter."""
    hf = getattr(bridge, "original_model", None)
    if hf is None or not hasattr(hf, "named_parameters"):
        return False
    for name, p in hf.named_parameters():
        if name.endswith(_VALUE_BIAS_NAMES) and bool((p.detach() != 0).any()):
            return True
    return False


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """While active and `offline`: the hub is offline for transformers and huggingface_hub, also when they were
    imported earlier (they read HF_HUB_OFFLINE once, at import, into `huggingface_hub.constants`)."""
    if not offline:
        yield
        return
    old_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import huggingface_hub.constants as hub_constants

    old_const = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_const
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


BACKENDS = ("auto", "bridge", "lean")


def resolve_backend(backend: str | None = None) -> str:
    """`backend`, else the `ATTNSCOPE_BACKEND` environment variable, else "auto": "bridge" forces
    TransformerBridge, "lean" requires `sae.engine.gpt2` (a local plain GPT-2), "auto" uses the lean model where it
    applies and the bridge elsewhere."""
    value = backend if backend is not None else (os.environ.get("ATTNSCOPE_BACKEND") or "auto")
    value = value.strip().lower()
    if value not in BACKENDS:
        raise ModelLoadError(f"unknown model backend {value!r} (ATTNSCOPE_BACKEND); choose one of {', '.join(BACKENDS)}")
    return value


def load_model(
    name: str, device: str = "auto", dtype: str | torch.dtype = "float32", display_name: str | None = None,
    backend: str | None = None,
) -> LoadedModel:
    """Load a causal LM by Hugging Face name or local directory (Hugging Face layout).

    A local plain GPT-2 directory (the embedded default among them) loads as `sae.engine.gpt2.LeanGPT2`, which
    computes what the bridge computes, bit for bit, without importing transformers or TransformerLens; anything
    else goes through TransformerBridge. `backend` (default: `ATTNSCOPE_BACKEND`, else "auto"; see
    `resolve_backend`) forces one or the other. A local directory never touches the network (HF_HUB_OFFLINE is set
    for the duration of the load). `display_name` is what `LoadedModel.name` shows (default: `name`). The embedded
    default is not known here: `sae.zoo.load_model` resolves "default" to its directory and calls this.
    """
    path = name
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    how = resolve_backend(backend)
    local = _is_local(path)
    if local:
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{p} has no config.json: not a model directory in Hugging Face layout")
        path = str(p.resolve())
    if how != "bridge":
        lean = None
        if local:
            from sae.engine.gpt2 import load_gpt2

            lean = load_gpt2(path, dev, dt)
        if lean is not None:
            return LoadedModel(bridge=lean, name=display_name or name, device=dev, dtype=dt)
        if how == "lean":
            raise ModelLoadError(f"{name} is not a local plain GPT-2 directory (config.json, model.safetensors, "
                                 "tokenizer.json), which the lean backend needs; unset ATTNSCOPE_BACKEND")

    # A local dir is read from disk by transformers without any hub call. For a hub name, a hub that does not
    # answer means offline mode: the hub cache still serves what it holds, and a missing model fails at once
    # instead of after a minute of retries. `hub_offline` sets the flag where huggingface_hub already read it.
    try:
        with hub_offline(not local and not hub_reachable()):
            quiet_transformers()
            from transformer_lens.model_bridge import TransformerBridge

            bridge = TransformerBridge.boot_transformers(path, device=str(dev), dtype=dt)
    except Exception as exc:  # the hub, transformers and TL raise many kinds; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if local:
            raise ModelLoadError(f"could not load model from {path}: {first}") from exc
        raise ModelLoadError(
            f"could not load model {name!r}: not a local directory, and the Hugging Face hub did not provide it "
            f"({first[:160]})"
        ) from exc
    bridge.eval()
    return LoadedModel(bridge=bridge, name=display_name or name, device=dev, dtype=dt)


def bytes_text(b: bytes) -> str:
    """UTF-8 text of `b`, with each byte that is not part of a whole character written as `<0xE2>`."""
    out, i = [], 0
    while i < len(b):
        for n in (1, 2, 3, 4):
            try:
                out.append(b[i:i + n].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += n
            break
        else:
            out.append(f"<0x{b[i]:02X}>")
            i += 1
    return "".join(out)


_INVERSE: dict[str, int] = {}


def _byte_level_inverse() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (`bytes_to_unicode`) read backwards: printable stand-in -> byte."""
    if not _INVERSE:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _INVERSE.update({chr(c): b for b, c in zip(bs, cs)})
    return _INVERSE
