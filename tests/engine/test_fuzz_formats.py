"""Property: whatever is in an SAE's files (fuzzed cfg.json fields, truncated or corrupted bytes, wrong shapes,
dtypes or missing keys in the weights of every supported format), `load_sae` gives a loadable SAE with finite
weights or one clean one-line `SAEFormatError`, never any other exception and never a traceback in the CLI."""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sae.engine.errors import AttnscopeError
from sae.engine.autoencoder import SAE, SAEConfig
from sae.engine.formats import SAEFormatError, load_sae, load_sae_set, save_sae

D_IN, D_SAE = 8, 16
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
                | st.sampled_from(["blocks.0.attn.hook_z", "jumprelu", "topk", "standard", "8", "16"]))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                              max_size=3), max_leaves=6)
CFG_KEYS = ["architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input", "normalize_activations", "metadata",
            "n_heads", "k", "hook_name", "model_name", "context_size", "prepend_bos", "activation_fn_str",
            "activation_fn_kwargs", "reshape_activations"]
META_KEYS = ["hook_name", "model_name", "context_size", "prepend_bos", "hook_head_index"]


def template_sae() -> SAE:
    torch.manual_seed(0)
    return SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, hook_name="blocks.0.attn.hook_z", n_heads=2))


def check_outcome(path: Path) -> None:
    """The property: a loadable SAE (finite weights, runs) or one user error (`AttnscopeError`: an SAEFormatError,
    or the UnsafeFileError of a torch file that is truncated or would run code) of one line."""
    try:
        sae = load_sae(path)
    except AttnscopeError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    for p in sae.parameters():
        assert torch.isfinite(p).all()
    out = sae(torch.randn(3, sae.cfg.d_in))
    assert out.shape == (3, sae.cfg.d_in)
    try:
        load_sae_set(path)
    except AttnscopeError as exc:
        assert "\n" not in str(exc)


# ---- cfg.json ------------------------------------------------------------------------------------------------

edits = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(CFG_KEYS), json_values),
        st.tuples(st.just("meta"), st.sampled_from(META_KEYS), json_values),
        st.tuples(st.just("del"), st.sampled_from(CFG_KEYS + ["metadata.hook_name"]), st.none()),
    ),
    min_size=1, max_size=4,
)


@FUZZ
@given(edits=edits)
def test_fuzzed_cfg_json(edits):
    with tempfile.TemporaryDirectory() as tmp:
        d = save_sae(template_sae(), Path(tmp) / "blocks.0.attn.hook_z")
        cfg = json.loads((d / "cfg.json").read_text())
        for op, key, value in edits:
            if op == "set":
                cfg[key] = value
            elif op == "meta":
                if isinstance(cfg.get("metadata"), dict):
                    cfg["metadata"][key] = value
            elif key == "metadata.hook_name":
                if isinstance(cfg.get("metadata"), dict):
                    cfg["metadata"].pop("hook_name", None)
            else:
                cfg.pop(key, None)
        (d / "cfg.json").write_text(json.dumps(cfg))
        check_outcome(d)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", "1e999", '{"d_in": NaN}', "\xff\xfe", '{"metadata": []}'])
def test_cfg_json_that_is_not_an_object(tmp_path, text):
    d = save_sae(template_sae(), tmp_path / "blocks.0.attn.hook_z")
    (d / "cfg.json").write_text(text, encoding="latin-1")
    with pytest.raises(SAEFormatError):
        load_sae(d)


# ---- weights files of every format ---------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int8, torch.uint8,
          torch.bool]
NAMES = ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"]
GOOD_SHAPES = {"W_enc": (D_IN, D_SAE), "W_dec": (D_SAE, D_IN), "b_enc": (D_SAE,), "b_dec": (D_IN,),
               "threshold": (D_SAE,)}

tensor_edits = st.fixed_dictionaries({
    "drop": st.lists(st.sampled_from(NAMES), max_size=2, unique=True),
    "reshape": st.dictionaries(st.sampled_from(NAMES), st.lists(st.integers(0, 17), min_size=0, max_size=3), max_size=2),
    "dtype": st.dictionaries(st.sampled_from(NAMES), st.sampled_from(DTYPES), max_size=2),
    "poison": st.dictionaries(st.sampled_from(NAMES), st.sampled_from([math.nan, math.inf, -math.inf, 1e30]), max_size=1),
})
byte_edits = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("none"), st.none()),
)


def make_tensors(edit: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for name in NAMES:
        if name in edit["drop"]:
            continue
        shape = tuple(edit["reshape"].get(name, GOOD_SHAPES[name]))
        t = torch.randn(shape, generator=g) if len(shape) else torch.randn((), generator=g)
        if name in edit["poison"] and t.numel():
            t.view(-1)[0] = edit["poison"][name]
        dtype = edit["dtype"].get(name, torch.float32)
        out[name] = t.to(dtype) if dtype != torch.bool else t > 0
    return out


def damage(data: bytes, edit: tuple) -> bytes:
    kind, arg = edit
    if kind == "truncate":
        return data[: int(len(data) * arg)]
    if kind == "flip":
        b = bytearray(data)
        for where, value in arg:
            if b:
                b[min(int(where * len(b)), len(b) - 1)] = value
        return bytes(b)
    return data


@FUZZ
@given(edit=tensor_edits, bytes_edit=byte_edits, arch=st.sampled_from(["standard", "jumprelu"]))
def test_fuzzed_saelens_weights(edit, bytes_edit, arch):
    from safetensors.torch import save

    with tempfile.TemporaryDirectory() as tmp:
        d = save_sae(template_sae(), Path(tmp) / "blocks.0.attn.hook_z")
        cfg = json.loads((d / "cfg.json").read_text())
        cfg["architecture"] = arch
        (d / "cfg.json").write_text(json.dumps(cfg))
        tensors = {k: v.contiguous() for k, v in make_tensors(edit).items()}
        (d / "sae_weights.safetensors").write_bytes(damage(save(tensors), bytes_edit))
        check_outcome(d)


@FUZZ
@given(edit=tensor_edits, bytes_edit=byte_edits,
       wrapper=st.sampled_from(["dict", "list", "tensor", "int", "nested"]))
def test_fuzzed_kissane_weights(edit, bytes_edit, wrapper):
    tensors = make_tensors(edit)
    obj = {"dict": tensors, "list": list(tensors.values()), "tensor": torch.ones(3), "int": 7,
           "nested": {"state": tensors}}[wrapper]
    buf = io.BytesIO()
    torch.save(obj, buf)
    with tempfile.TemporaryDirectory() as tmp:
        pt = Path(tmp) / "run.pt"
        pt.write_bytes(damage(buf.getvalue(), bytes_edit))
        (Path(tmp) / "run_cfg.json").write_text(json.dumps(
            {"act_size": D_IN, "dict_size": D_SAE, "act_name": "blocks.0.attn.hook_z", "layer": 0}))
        check_outcome(pt)


NP_DTYPES = [np.float32, np.float16, np.float64, np.int32, np.uint8, np.bool_, np.complex64, "U3"]


@FUZZ
@given(edit=tensor_edits, bytes_edit=byte_edits, np_dtype=st.sampled_from(NP_DTYPES), objects=st.booleans())
def test_fuzzed_gemma_scope_weights(edit, bytes_edit, np_dtype, objects):
    arrays = {k: v.float().numpy() for k, v in make_tensors(edit).items()}
    if arrays:
        first = next(iter(arrays))
        with np.errstate(invalid="ignore", over="ignore"):
            arrays[first] = arrays[first].astype(np_dtype)
    if objects:
        arrays["meta"] = np.array([{"a": 1}], dtype=object)  # savez pickles it; the loader must not unpickle
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "layer_0" / "width_16" / "l0_10"
        d.mkdir(parents=True)
        (d / "params.npz").write_bytes(damage(buf.getvalue(), bytes_edit))
        check_outcome(d / "params.npz")
