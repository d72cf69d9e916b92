"""Saving and loading SAEs: SAELens directories, the paper's release files and Gemma Scope's `params.npz`.

Layouts understood by `load_sae(path)`:

- **SAELens directory** (what attnscope writes): `cfg.json` + `sae_weights.safetensors` (`W_enc [d_in, d_sae]`,
  `W_dec [d_sae, d_in]`, `b_enc [d_sae]`, `b_dec [d_in]`, `threshold [d_sae]` for jumprelu), optionally
  `sparsity.safetensors` (key `sparsity`: log10 feature density). cfg.json uses SAELens 6 keys (hook and model
  under `metadata`); SAELens 5's top-level `hook_name` / `model_name` / `context_size` are read too.
- **The paper's release** (`ckkissane/attn-saes-gpt2-small-all-layers`): a torch state dict `{run}.pt` (keys
  W_enc, W_dec, b_enc, b_dec) beside `{run}_cfg.json` (act_size, dict_size, act_name, layer, ...). Read with
  `torch.load(weights_only=True)`: tensors only, never arbitrary unpickling.
- **Gemma Scope** attention SAEs: a directory holding `params.npz` (W_enc, W_dec, b_enc, b_dec, threshold;
  JumpReLU). The layer comes from a `layer_N` component of the path (their repository layout).

All of them were trained on hook_z with value biases folded out (HookedTransformer); attnscope's z follows the
same convention (see `sae.engine.models`), so these SAEs apply to attnscope's activations unchanged.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from sae.engine.autoencoder import SAE, SAEConfig, architecture, fold_decoder_norm
from sae.engine.errors import AttnscopeError
from sae.engine.models import layer_of_hook, z_hook_name
from sae.engine.schema import Bool, FileFormatError, Int, Obj, Optional, Str, check, read_json
from sae.engine.safe_io import (
    is_protected,
    is_own_temp,
    recover_children,
    recover_dir,
    safe_torch_load,
    save_safetensors,
    swap_dir,
)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
GEMMA_SCOPE_FILE = "params.npz"

# release id -> (Hugging Face repository, layout); the layouts are those `load_sae` autodetects
RELEASES: dict[str, str] = {  # release id -> Hugging Face repository (its files' layout is detected on load)
    "gpt2-small-hook-z-kk": "ckkissane/attn-saes-gpt2-small-all-layers",
    "gemma-scope-2b-pt-att": "google/gemma-scope-2b-pt-att",
}


class SAEFormatError(AttnscopeError):
    """An SAE could not be loaded or does not fit the model; the message is one line meant for the user."""


class SAEConfigError(FileFormatError, SAEFormatError):
    """An SAE's config file has a field of the wrong type or value (named, with what was expected)."""


# the typed fields of a SAELens cfg.json (and its `metadata`): a text "false" is no boolean, 0 heads no head count
SAE_CFG_SPEC = Obj(
    required={"d_in": Int(min=1, max=1 << 22), "d_sae": Int(min=1, max=1 << 26)},
    optional={"apply_b_dec_to_input": (Bool(), True), "prepend_bos": (Bool(), True),
              "n_heads": (Optional(Int(min=1, max=1 << 16)), None), "k": (Optional(Int(min=0)), None),
              "context_size": (Optional(Int(min=1)), None), "normalize_activations": (Optional(Str()), None),
              "architecture": (Str(), "standard"), "metadata": (Optional(Obj()), None),
              "activation_fn_kwargs": (Optional(Obj()), None)},
)
SAE_META_SPEC = Obj(optional={"prepend_bos": (Bool(), True), "context_size": (Optional(Int(min=1)), None),
                              "hook_name": (Optional(Str()), None), "model_name": (Optional(Str()), None)})


# ---- saving ---------------------------------------------------------------------------------------------

SAELENS_LAYOUT_VERSION = "6.0.0"  # the SAELens cfg.json layout attnscope writes (checked against SAELens 6.54)
ACTIVATION_SCALER_FILE = "activation_scaler.json"  # SAELens's training-time input scale, beside checkpoints


def saelens_cfg_dict(cfg: SAEConfig) -> dict[str, Any]:
    """cfg.json contents in SAELens 6 layout, plus attnscope's own keys (n_heads, k, training, eval)."""
    d: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
        "metadata": {
            # SAELens 6 reads the nested metadata only when it finds a version >= 6 here; without it, it takes the
            # file for a pre-6 config and drops this whole object (hook, model and context come back None)
            "sae_lens_version": SAELENS_LAYOUT_VERSION,
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "hook_head_index": None,
            "context_size": cfg.context_size,
            "prepend_bos": cfg.prepend_bos,
            "sae_lens_training_version": None,
        },
        "n_heads": cfg.n_heads,
    }
    if cfg.k is not None:
        d["k"] = cfg.k
    for key, value in cfg.extra.items():
        if key != "path":  # where it was loaded from is not part of what it is
            d.setdefault(key, value)
    return d


SAE_FILES = frozenset({"cfg.json", "sae_weights.safetensors", "sparsity.safetensors"})  # what save_sae owns


def _write_atomically_dir(target: Path, write: Any) -> None:
    """Write a directory through a temporary sibling and swap it into place (`sae.engine.safe_io.swap_dir`): a
    kill at any point leaves the old or the new SAE loadable (after `recover_dir`, which every load runs). Only
    the SAE's own files are replaced: anything else in the directory (the user's notes, plots) is kept."""
    swap_dir(Path(target), write, owned=SAE_FILES)


def is_shipped(path: str | Path) -> bool:
    """Whether `path` lies inside a protected root (the package's embedded default, registered by `sae.zoo`
    through `safe_io.protect`): read-only to the program."""
    return is_protected(path)


def check_sae_write_target(path: str | Path) -> Path:
    """The SAELens directory a save to `path` would replace, or SAEFormatError (one line): a file (cfg.json,
    weights) is not an SAE directory, and the shipped SAEs are never rewritten."""
    p = Path(path).expanduser()
    if is_shipped(p):
        raise SAEFormatError(f"{p} is one of attnscope's shipped SAEs, which are read-only; copy it elsewhere first")
    if p.exists() and not p.is_dir():
        raise SAEFormatError(f"{p} is a file, not an SAE directory; refusing to replace it with one")
    return p


def save_sae(sae: SAE, path: str | Path, log10_density: torch.Tensor | None = None) -> Path:
    """Save `sae` as a SAELens directory at `path` (atomically). `log10_density [d_sae]` -> sparsity.safetensors."""

    check_sae_write_target(path)

    cfg = sae.cfg
    tensors = {
        "W_enc": sae.W_enc.detach().float().cpu().contiguous(),
        "W_dec": sae.W_dec.detach().float().cpu().contiguous(),
        "b_enc": sae.b_enc.detach().float().cpu().contiguous(),
        "b_dec": sae.b_dec.detach().float().cpu().contiguous(),
    }
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.detach().float().cpu().contiguous()
    cfg_dict = saelens_cfg_dict(cfg)
    cfg_dict["dtype"] = "float32"

    def write(d: Path) -> None:
        save_safetensors(tensors, d / WEIGHTS_FILE)  # a full disk: OSError, one line from swap_dir
        if log10_density is not None:
            save_safetensors({"sparsity": log10_density.detach().float().cpu().contiguous()}, d / SPARSITY_FILE)
        (d / CFG_FILE).write_text(json.dumps(cfg_dict, indent=2, default=_json_default) + "\n")

    _write_atomically_dir(Path(path), write)
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and o != o:
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# ---- loading --------------------------------------------------------------------------------------------


def _sae_from_tensors(cfg: SAEConfig, tensors: dict[str, Any], source: Path) -> SAE:
    """An SAE from named arrays, after checking every shape against the config (before allocating anything, so
    a config claiming a huge d_sae costs nothing) and refusing NaN/inf values."""
    if not isinstance(tensors, dict):
        raise SAEFormatError(f"{source} does not hold named tensors")
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_enc": (cfg.d_sae,),
        "b_dec": (cfg.d_in,),
    }
    if architecture(cfg.architecture).has_threshold:
        shapes["threshold"] = (cfg.d_sae,)
    checked: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name not in tensors:
            raise SAEFormatError(f"{source}: weights have no {name!r} tensor")
        try:
            t = torch.as_tensor(tensors[name])
            if t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"dtype {t.dtype}")
            t = t.float()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise SAEFormatError(f"{source}: {name} is not a real-valued array ({str(exc).splitlines()[0][:80]})") from None
        if tuple(t.shape) != shape:
            raise SAEFormatError(f"{source}: {name} has shape {tuple(t.shape)}, expected {shape} from its config")
        if not bool(torch.isfinite(t).all()):
            raise SAEFormatError(f"{source}: {name} holds NaN or inf values; the SAE is damaged (or its training diverged)")
        checked[name] = t
    sae = SAE(cfg, init=False)
    with torch.no_grad():
        for name, t in checked.items():
            getattr(sae, name).copy_(t)
    return sae


def _int_field(raw: dict[str, Any], key: str, value: Any) -> int:
    """A whole-number config field: bools, fractions, NaN, infinities and text are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and (
            not math.isfinite(value) or value != int(value))):
        raise ValueError(f"{key} must be a whole number, got {value!r}")
    return int(value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, "SAE config", error=SAEConfigError)  # FIFO, NaN, 10k-deep nesting: one line
    except FileNotFoundError:
        raise SAEFormatError(f"{path} is missing") from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path} does not hold a JSON object")
    return data


def _load_saelens_dir(d: Path) -> SAE:
    from safetensors.torch import load_file

    recover_dir(d, clean=False)  # a load restores a half-swapped SAE but deletes nothing
    raw = _read_json(d / CFG_FILE)
    if isinstance(raw.get("metadata"), list) or isinstance(raw.get("metadata"), str):
        raise SAEFormatError(f"{d / CFG_FILE}: metadata must be a JSON object, got {type(raw['metadata']).__name__}")
    if "d_in" in raw and "d_sae" in raw:
        check(raw, SAE_CFG_SPEC, d / CFG_FILE, error=SAEConfigError)
        if isinstance(raw.get("metadata"), dict):
            check(raw["metadata"], SAE_META_SPEC, d / CFG_FILE, "metadata", error=SAEConfigError)
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise SAEFormatError(f"{d / CFG_FILE}: metadata must be a JSON object, got {type(meta).__name__}")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(key, raw.get(key, default))

    hook = get("hook_name")
    if not hook or not isinstance(hook, str):
        raise SAEFormatError(f"{d / CFG_FILE} names no hook_name")
    arch = raw.get("architecture", "standard")
    if raw.get("activation_fn_str") == "jumprelu":  # older SAELens configs name the activation here
        arch = "jumprelu"
    if not isinstance(arch, str):
        raise SAEFormatError(f"{d / CFG_FILE}: architecture must be a string, got {arch!r}"[:200])
    fn_kwargs = raw.get("activation_fn_kwargs") or {}
    if not isinstance(fn_kwargs, dict):
        raise SAEFormatError(f"{d / CFG_FILE}: activation_fn_kwargs must be a JSON object")
    k = raw.get("k") or fn_kwargs.get("k")
    known = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
             "reshape_activations", "metadata", "n_heads", "k", "hook_name", "model_name", "context_size",
             "prepend_bos"}
    try:
        n_heads = raw.get("n_heads")
        cfg = SAEConfig(
            d_in=_int_field(raw, "d_in", raw["d_in"]),
            d_sae=_int_field(raw, "d_sae", raw["d_sae"]),
            hook_name=str(hook),
            architecture=arch,
            model_name=str(get("model_name", "") or ""),
            k=_int_field(raw, "k", k) if k else None,
            n_heads=None if n_heads is None else _int_field(raw, "n_heads", n_heads),
            context_size=_int_field(raw, "context_size", get("context_size", 128) or 128),
            prepend_bos=bool(get("prepend_bos", True)),
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
            normalize_activations=str(raw.get("normalize_activations", "none") or "none"),
            extra={key: v for key, v in raw.items() if key not in known},
        )
        if cfg.n_heads is not None and cfg.n_heads <= 0:
            raise ValueError(f"n_heads must be positive, got {cfg.n_heads}")
        if cfg.context_size <= 0:
            raise ValueError(f"context_size must be positive, got {cfg.context_size}")
        layer_of_hook(cfg.hook_name)
    except KeyError as exc:
        raise SAEFormatError(f"{d / CFG_FILE} is not a usable SAE config: no {exc} field") from None
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        raise SAEFormatError(f"{d / CFG_FILE} is not a usable SAE config: {exc}"[:300]) from None
    try:
        tensors = load_file(str(d / WEIGHTS_FILE))
    except Exception as exc:  # SafetensorError, I/O, dtype errors of a damaged file: all one line
        raise SAEFormatError(f"{d / WEIGHTS_FILE} is truncated or corrupted ({str(exc).splitlines()[0][:120]})") from exc
    sae = _sae_from_tensors(cfg, tensors, d / WEIGHTS_FILE)
    if raw.get("rescale_acts_by_decoder_norm") is True:
        _fold_decoder_norm(sae)
    if cfg.normalize_activations == "expected_average_only_in":
        _fold_saelens_scaler(sae, d)
    return sae


def _fold_decoder_norm(sae: SAE) -> None:
    """SAELens TopK `rescale_acts_by_decoder_norm`: pre-activations are multiplied by each decoder row's norm and
    the decoder reads acts / norm; `fold_decoder_norm` turns that into a plain top-k SAE with unit rows."""
    try:
        fold_decoder_norm(sae)
    except ValueError:
        raise SAEFormatError("a decoder row has zero norm; cannot fold rescale_acts_by_decoder_norm") from None
    sae.cfg.extra["folded"] = "rescale_acts_by_decoder_norm"


def _fold_saelens_scaler(sae: SAE, d: Path) -> None:
    """`expected_average_only_in`: SAELens scales inputs by `activation_scaler.json`'s factor during training and
    folds it into the weights before the final save. A directory that still holds the file (a training
    checkpoint) is folded here, so the SAE reads raw activations; without the file the weights already read raw
    activations, and the mode means nothing at inference, as in SAELens's `load_from_disk`."""
    f = d / ACTIVATION_SCALER_FILE
    if not f.is_file():
        sae.cfg.normalize_activations = "none"
        return
    raw = _read_json(f)
    s = raw.get("scaling_factor")
    if s is None:
        sae.cfg.normalize_activations = "none"
        return
    if not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
        raise SAEFormatError(f"{f}: scaling_factor must be a positive number, got {s!r}")
    sae.fold_activation_scale(float(s))


def load_sparsity(path: str | Path) -> torch.Tensor | None:
    """`[d_sae]` log10 feature densities from an SAE directory's sparsity.safetensors, or None."""
    from safetensors.torch import load_file

    p = Path(path) / SPARSITY_FILE
    if not p.is_file():
        return None
    try:
        return load_file(str(p))["sparsity"]
    except Exception:  # noqa: BLE001 - a damaged optional file must not stop the SAE from loading
        return None


def _kissane_cfg_path(pt: Path) -> Path:
    return pt.with_name(pt.name[: -len(".pt")] + "_cfg.json")


def _load_kissane(pt: Path) -> SAE:
    cfg_path = _kissane_cfg_path(pt)
    if not cfg_path.is_file():
        raise SAEFormatError(f"{pt} has no config beside it (expected {cfg_path.name})")
    raw = _read_json(cfg_path)
    try:
        hook = raw.get("act_name") or z_hook_name(_int_field(raw, "layer", raw["layer"]))
        cfg = SAEConfig(
            d_in=_int_field(raw, "act_size", raw["act_size"]),
            d_sae=_int_field(raw, "dict_size", raw["dict_size"]),
            hook_name=str(hook),
            architecture="standard",
            model_name=str(raw.get("model_name", "gpt2-small")),
            context_size=_int_field(raw, "seq_len", raw.get("seq_len", 128)),
            extra={"source_format": "kissane", "source_cfg": raw},
        )
        layer_of_hook(cfg.hook_name)
    except KeyError as exc:
        raise SAEFormatError(f"{cfg_path} is not a usable SAE config: no {exc} field") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SAEFormatError(f"{cfg_path} is not a usable SAE config: {exc}"[:300]) from None
    state = safe_torch_load(pt, "SAE weights")  # a pickle that would run code, truncation: UnsafeFileError
    if not isinstance(state, dict):
        raise SAEFormatError(f"{pt} does not hold a state dict")
    return _sae_from_tensors(cfg, state, pt)


def _gemma_scope_layer(path: Path) -> int | None:
    for part in reversed(path.resolve().parts):
        m = re.fullmatch(r"layer_(\d+)", part)
        if m:
            return int(m.group(1))
    return None


def _load_gemma_scope(npz: Path, hook_name: str | None = None) -> SAE:
    import numpy as np

    try:
        with np.load(str(npz), allow_pickle=False) as data:
            tensors = {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    except Exception as exc:  # noqa: BLE001 - zip, zlib, dtype errors of a damaged file: all one line
        raise SAEFormatError(f"{npz} is truncated or corrupted ({type(exc).__name__})") from None
    if "W_enc" not in tensors:
        raise SAEFormatError(f"{npz} has no W_enc array: not a Gemma Scope params.npz")
    if tensors["W_enc"].dim() != 2 or 0 in tensors["W_enc"].shape:
        raise SAEFormatError(f"{npz}: W_enc has shape {tuple(tensors['W_enc'].shape)}, expected [d_in, d_sae]")
    if hook_name is None:
        layer = _gemma_scope_layer(npz)
        if layer is None:
            raise SAEFormatError(f"{npz}: cannot tell the layer (no layer_N folder in its path)")
        hook_name = z_hook_name(layer)
    d_in, d_sae = tensors["W_enc"].shape
    cfg = SAEConfig(
        d_in=int(d_in), d_sae=int(d_sae), hook_name=hook_name, architecture="jumprelu",
        model_name="gemma-2-2b", context_size=1024, extra={"source_format": "gemma-scope"},
        # Gemma Scope encodes x @ W_enc + b_enc: b_dec is not subtracted from the input
        apply_b_dec_to_input=False,
    )
    return _sae_from_tensors(cfg, tensors, npz)


def detect_format(path: str | Path) -> str:
    """'saelens', 'kissane' or 'gemma-scope' for a path `load_sae` can open; SAEFormatError otherwise."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix == ".pt":
            return "kissane"
        if p.name == GEMMA_SCOPE_FILE:
            return "gemma-scope"
        if p.name in (CFG_FILE, WEIGHTS_FILE):
            return "saelens"
        raise SAEFormatError(f"{p} is not an SAE file (.pt with _cfg.json, params.npz, or a SAELens directory)")
    if p.is_dir():
        if (p / CFG_FILE).is_file() and (p / WEIGHTS_FILE).is_file():
            return "saelens"
        if (p / CFG_FILE).is_file():
            raise SAEFormatError(f"{p} has cfg.json but no {WEIGHTS_FILE}")
        if (p / GEMMA_SCOPE_FILE).is_file():
            return "gemma-scope"
        pts = [f for f in p.glob("*.pt") if _kissane_cfg_path(f).is_file()]
        if len(pts) == 1:
            return "kissane"
        raise SAEFormatError(f"{p} is not an SAE directory (no cfg.json + {WEIGHTS_FILE}, params.npz or one {{run}}.pt)")
    raise SAEFormatError(f"no such SAE path: {p}")


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load one SAE from any supported layout (autodetected), on `device`, in eval mode."""
    p = Path(path).expanduser()
    if not p.exists():
        recover_dir(p, clean=False)  # a save killed between its two renames left the old copy aside
    fmt = detect_format(p)
    if fmt == "saelens":
        sae = _load_saelens_dir(p if p.is_dir() else p.parent)
    elif fmt == "kissane":
        pt = p if p.is_file() else next(f for f in p.glob("*.pt") if _kissane_cfg_path(f).is_file())
        sae = _load_kissane(pt)
    else:
        sae = _load_gemma_scope(p if p.is_file() else p / GEMMA_SCOPE_FILE)
    # where it lives: the SAELens *directory* even when a file inside it was named (a save goes there)
    sae.cfg.extra["path"] = str((p.parent if fmt == "saelens" and p.is_file() else p).resolve())
    return sae.to(device).eval()


def check_sae_fits(sae: SAE, model) -> None:
    """Raise SAEFormatError unless `sae` reads a hook_z the model has, with d_in == n_heads * d_head."""
    try:
        layer = layer_of_hook(sae.cfg.hook_name)
    except ValueError as exc:
        raise SAEFormatError(str(exc)) from exc
    where = sae.cfg.extra.get("path", sae.cfg.hook_name)
    if not sae.cfg.hook_name.endswith("hook_z"):
        raise SAEFormatError(f"{where}: hook {sae.cfg.hook_name!r} is not an attention hook_z")
    if not 0 <= layer < model.n_layers:
        raise SAEFormatError(
            f"{where}: hook {sae.cfg.hook_name} names layer {layer}, but {model.name} has layers 0..{model.n_layers - 1}"
        )
    if sae.cfg.d_in != model.d_z:
        raise SAEFormatError(
            f"{where}: SAE d_in={sae.cfg.d_in} does not match {model.name}'s n_heads*d_head = "
            f"{model.n_heads}*{model.d_head} = {model.d_z}"
        )
    if sae.cfg.n_heads is None:
        sae.cfg.n_heads = model.n_heads


def _download_release(spec: str, maybe_path: bool = False) -> Path:
    """Fetch a known release id, or `hf:owner/name`, from the Hugging Face hub; one-line error offline
    (`maybe_path`: `spec` may as well be a mistyped local path, and the error says that it is not one either)."""
    repo = RELEASES.get(spec, spec[3:] if spec.startswith("hf:") else spec)
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.pt", "*_cfg.json", "*/cfg.json", "cfg.json", "*.safetensors", "*/params.npz", "params.npz"]
        from sae.engine.models import hub_reachable

        # unreachable hub: serve a cached snapshot if there is one, else fail at once (no retry loop)
        return Path(snapshot_download(repo_id=repo, allow_patterns=patterns, local_files_only=not hub_reachable()))
    except Exception as exc:  # offline, unknown repo, auth: the user needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        if maybe_path:
            raise SAEFormatError(
                f"no such SAE path: {spec} (from {Path.cwd()}), and no Hugging Face hub repository {repo} could be "
                f"fetched either ({first})") from exc
        raise SAEFormatError(
            f"could not fetch SAE release {spec!r} (repository {repo}) from the Hugging Face hub; offline? ({first})"
        ) from exc


def _candidates(root: Path) -> list[Path]:
    """Every loadable SAE under a directory (SAELens dirs, {run}.pt files, params.npz), sorted by path."""
    found: list[Path] = []
    for cfg in root.rglob(CFG_FILE):
        if (cfg.parent / WEIGHTS_FILE).is_file():
            found.append(cfg.parent)
    for pt in root.rglob("*.pt"):
        if _kissane_cfg_path(pt).is_file():
            found.append(pt)
    for npz in root.rglob(GEMMA_SCOPE_FILE):
        found.append(npz)
    # attnscope's own temporaries (a dead save's half-written copy) are never SAEs to load
    return sorted(p for p in set(found) if not any(is_own_temp(part) for part in p.relative_to(root).parts))


def load_sae_set(
    spec: str | Path, model=None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> dict[int, SAE]:
    """SAEs by layer from `spec`: a directory of SAE directories or release files, one SAE directory or file, or
    a release id (e.g. `gpt2-small-hook-z-kk`) fetched from the hub. ("default", the embedded SAEs, is resolved
    above the engine: `sae.zoo.load_sae_set`.)

    With `model`, every SAE is checked against it (d_in == n_heads*d_head, layer inside the model).
    Two SAEs for one layer are an error: pass the one you mean. `dtype` (e.g. the model's bfloat16) converts
    each SAE as it loads, so only one copy of each is ever resident.
    """
    text = str(spec)
    root = Path(text).expanduser()
    if not root.exists():
        first = text.split("/", 1)[0]
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and first not in (".", "..") and Path(first).expanduser().is_dir():
            # `runs/mine` where ./runs exists: a mistyped local path, not a hub repository
            raise SAEFormatError(f"no such SAE path: {text} (the folder {first}/ is here, so this is read as a path; "
                                 f"for a hub repository write hf:{text})")
        if text in RELEASES or text.startswith("hf:"):
            root = _download_release(text)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", text):  # a hub repository, or a mistyped path: the error says both
            root = _download_release(text, maybe_path=True)
        else:
            raise SAEFormatError(f"no such SAE path or known release: {text!r} (known: {', '.join(RELEASES)})")
    if root.is_dir():
        recover_children(root)
    try:
        detect_format(root)
        paths = [root]
    except SAEFormatError:
        if root.is_file():
            raise
        paths = _candidates(root)
        if not paths:
            raise SAEFormatError(f"{root} holds no SAEs") from None
    out: dict[int, SAE] = {}
    for p in paths:
        sae = load_sae(p, device=device)
        if dtype is not None and dtype != sae.W_enc.dtype:
            sae = sae.to(dtype)
            sae.cfg.dtype = str(dtype).removeprefix("torch.")
        if model is not None:
            check_sae_fits(sae, model)
        layer = sae.cfg.layer
        if layer in out:
            raise SAEFormatError(f"{root} holds two SAEs for layer {layer}; pass the SAE directory you mean")
        out[layer] = sae
    return dict(sorted(out.items()))
