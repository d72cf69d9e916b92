"""Loading causal LMs through TransformerLens 4 and reading attention outputs from them.

Numerics choice (documented in the README): attnscope's `z` for layer L is the input of the attention output
projection (`blocks.L.attn.hook_z`, `[batch, pos, head, d_head]`) **minus the per-head value bias** `b_V[L]`.
Because every attention row sums to 1, `b_V` contributes exactly `b_V` to each head's z, independent of the
prompt; TransformerLens' HookedTransformer folds it into `b_O` (`fold_value_biases`), and the paper's SAEs were
trained on that folded z. Raw Hugging Face models (what `TransformerBridge` wraps) keep `b_V` inside z, so we
subtract it when capturing and add it back when splicing a reconstruction into the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch

from sae import zoo
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
    """A TransformerBridge plus the facts attnscope needs about it.

    Weight tensors follow TransformerLens' shapes: `W_V[layer]` is `[head, d_model, d_head]`,
    `W_O[layer]` is `[head, d_head, d_model]`, `W_U` is `[d_model, d_vocab]`.
    """

    bridge: object
    name: str
    device: torch.device
    dtype: torch.dtype

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

    def value_bias(self, layer: int) -> torch.Tensor:
        """Per-head value bias `b_V[layer]`, `[head, d_head]` (zeros for models without one)."""
        self.check_layer(layer)
        b_v = getattr(self.bridge, "b_V", None)
        if b_v is None:
            # zero only when the model truly has no value bias; one the bridge does not expose would stay inside
            # z and silently break the convention, so that is refused
            if "_hf_value_bias" not in self.__dict__:  # looked up once per model
                self.__dict__["_hf_value_bias"] = hf_has_value_bias(self.bridge)
            if self.__dict__["_hf_value_bias"]:
                raise ModelLoadError(
                    f"{self.name}: the model has attention value biases but its TransformerBridge exposes no b_V, "
                    "so attnscope cannot fold them out of z; this architecture is not supported yet"
                )
            return torch.zeros(self.n_heads, self.d_head, device=self.device)
        return b_v[layer].detach()

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
        """One display string per token id (byte-level BPE pieces decoded one at a time)."""
        ids = tokens.flatten().tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        return [self.tokenizer.decode([i]) for i in ids]

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
            out[layer] = (z - self.value_bias(layer)).flatten(-2).detach()
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
                b_v = self.value_bias(layer)
                flat = (z - b_v).flatten(-2)
                new = fn(flat).to(z.dtype).reshape(z.shape)
                return new + b_v

            return hook

        hooks = [(z_hook_name(layer), make(layer, fn)) for layer, fn in z_fns.items()]
        return self.bridge.run_with_hooks(tokens, fwd_hooks=hooks)


def _quiet_transformers() -> None:
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


def load_model(name: str = "default", device: str = "auto", dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load a causal LM by Hugging Face name or local directory (Hugging Face layout) through TransformerBridge.

    `name="default"` opens the embedded default shipped inside the package. A local directory never touches
    the network (HF_HUB_OFFLINE is set for the duration of the load).
    """
    path = zoo.resolve_model(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    local = _is_local(path)
    if local:
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{p} has no config.json: not a model directory in Hugging Face layout")
        path = str(p.resolve())
    elif name == "default":
        raise ModelLoadError("the embedded default model is missing; rebuild it with `attnscope zoo train-default`")

    # A local dir is read from disk by transformers without any hub call. For a hub name, a hub that does not
    # answer means offline mode: the hub cache still serves what it holds, and a missing model fails at once
    # instead of after a minute of retries. `hub_offline` sets the flag where huggingface_hub already read it.
    try:
        with hub_offline(not local and not hub_reachable()):
            _quiet_transformers()
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
    display = zoo.DEFAULT_NAME if Path(path) == zoo.DEFAULT_MODEL_DIR.resolve() else name
    return LoadedModel(bridge=bridge, name=display, device=dev, dtype=dt)
