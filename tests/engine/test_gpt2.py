"""The bridge-free GPT-2 (`sae.engine.gpt2.LeanGPT2`) against TransformerBridge itself, the independent computation:
every hook point and the logits bit for bit, with and without hooks that replace values, with `stop_at_layer`; the
weights, z offsets, fingerprint and tokenizer calls the analyses read; and a CLI command on the default that imports
neither transformers nor TransformerLens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae import zoo
from sae.engine.gpt2 import LeanGPT2, UnknownHookError
from sae.engine.models import ModelLoadError, load_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["default", "tiny"])
def pair(request, tiny_model_dir):
    """(lean, bridge) `LoadedModel`s of the same directory."""
    path = str(zoo.DEFAULT_MODEL_DIR if request.param == "default" else tiny_model_dir)
    lean = load_model(path, device="cpu")
    bridge = load_model(path, device="cpu", backend="bridge")
    assert isinstance(lean.bridge, LeanGPT2)
    assert type(bridge.bridge).__name__ == "TransformerBridge"
    return lean, bridge


def _tokens(model, batch: int = 3, seq: int = 17, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, model.d_vocab, (batch, seq), generator=g)
    t[:, 0] = model.bos_token_id
    return t


def _assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: {tuple(a.shape)} vs {tuple(b.shape)}"
    assert torch.equal(a, b), f"{what}: differs by {(a - b).abs().max():.3g}"


@pytest.mark.parametrize("stop", [None, 1, 2])
def test_every_hook_point_and_the_logits_equal_the_bridge(pair, stop):
    lean, bridge = pair
    tokens = _tokens(lean)
    with torch.no_grad():
        out_l, cache_l = lean.bridge.run_with_cache(tokens, stop_at_layer=stop)
        out_b, cache_b = bridge.bridge.run_with_cache(tokens, stop_at_layer=stop)
    top = lean.n_layers if stop is None else stop
    names = [n for n in lean.bridge.hook_names() if not n.startswith("blocks.") or int(n.split(".")[1]) < top]
    if stop is not None:
        names.remove("ln_final.hook_scale")
    for name in names:
        assert name in cache_l, name
        assert name in cache_b, f"the bridge has no {name}"
        _assert_same(cache_l[name], cache_b[name], name)
    assert not any(n.startswith(f"blocks.{top}.") for n in cache_l)
    if stop is None:
        _assert_same(out_l, out_b, "logits")
        with torch.no_grad():
            _assert_same(lean.bridge(tokens), out_b, "__call__")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_hook_points_equal_the_bridge(dtype):
    path = str(zoo.DEFAULT_MODEL_DIR)
    lean = load_model(path, device="cpu", dtype=dtype)
    bridge = load_model(path, device="cpu", dtype=dtype, backend="bridge")
    tokens = _tokens(lean, batch=2, seq=12)
    with torch.no_grad():
        out_l, cache_l = lean.bridge.run_with_cache(tokens)
        out_b, cache_b = bridge.bridge.run_with_cache(tokens)
    for name in lean.bridge.hook_names():
        assert cache_l[name].dtype == cache_b[name].dtype, name
        _assert_same(cache_l[name], cache_b[name], name)
    _assert_same(out_l, out_b, "logits")
    for layer in range(lean.n_layers):
        _assert_same(lean.z_offset(layer), bridge.z_offset(layer), f"z_offset {layer}")


def _edits(model, tokens: torch.Tensor) -> dict[str, list]:
    """Hook sets that replace values at the hook points the analyses edit."""

    def zero_head(z, hook):  # z [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    def edit_v(v, hook):
        v = v.clone()
        v[:, 2, 0] += 0.5
        return v

    def zero_at(out, hook):
        out = out.clone()
        out[:, 3] = 0.0
        return out

    def uniform(p, hook):  # causal uniform pattern
        keep = torch.ones(p.shape[-1], p.shape[-1]).tril()
        return (keep / keep.sum(-1, keepdim=True)).expand_as(p).to(p.dtype)

    def shift(x, hook):
        return x + 0.25

    def double(s, hook):
        return s * 2.0

    return {
        "zero_head_z": [("blocks.0.attn.hook_z", zero_head)],
        "edit_v": [("blocks.1.attn.hook_v", edit_v)],
        "zero_attn_out": [("blocks.0.hook_attn_out", zero_at), ("blocks.1.hook_attn_out", zero_at)],
        "uniform_pattern": [("blocks.1.attn.hook_pattern", uniform)],
        "resid_pre": [("blocks.2.hook_resid_pre", shift)],
        "v_input": [("blocks.1.attn.v.hook_in", shift)],
        "embed_alias": [("embed.hook_out", shift)],
        "ln1_scale": [("blocks.0.ln1.hook_scale", double)],
        "final_scale": [("ln_final.hook_scale", double)],
    }


@pytest.mark.parametrize("edit", ["zero_head_z", "edit_v", "zero_attn_out", "uniform_pattern", "resid_pre",
                                  "v_input", "embed_alias", "ln1_scale", "final_scale"])
def test_replacing_hooks_change_the_logits_as_on_the_bridge(pair, edit):
    lean, bridge = pair
    tokens = _tokens(lean, seed=1)
    hooks = _edits(lean, tokens)[edit]
    with torch.no_grad():
        clean = lean.bridge(tokens)
        got = lean.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        want = bridge.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    assert not torch.equal(got, clean), "the hook changed nothing"
    _assert_same(got, want, edit)


def test_hooks_see_their_registered_name_and_exceptions_stop_the_pass(pair):
    lean, _ = pair
    seen: list[str] = []

    class Stop(Exception):
        pass

    def grab(t, hook):
        seen.append(hook.name)
        if hook.name == "blocks.1.attn.hook_z":
            raise Stop

    hooks = [("pos_embed.hook_out", grab), ("blocks.0.attn.hook_z", grab), ("blocks.1.attn.hook_z", grab),
             ("blocks.2.attn.hook_z", grab)]
    with pytest.raises(Stop):
        lean.bridge.run_with_hooks(_tokens(lean), fwd_hooks=hooks, return_type=None)
    assert seen == ["pos_embed.hook_out", "blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    with pytest.raises(UnknownHookError):
        lean.bridge.run_with_hooks(_tokens(lean), fwd_hooks=[("blocks.9.attn.hook_z", grab)])
    assert lean.bridge.run_with_hooks(_tokens(lean), return_type=None) is None


def test_weights_offsets_fingerprint_and_sizes_equal_the_bridge(pair):
    from sae.analysis.dashboards.store import model_fingerprint
    from sae.analysis.trace import ln1_params

    lean, bridge = pair
    for w in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O", "W_U"):
        _assert_same(getattr(lean.bridge, w), getattr(bridge.bridge, w), w)
    for layer in range(lean.n_layers):
        _assert_same(lean.z_offset(layer), bridge.z_offset(layer), f"z_offset {layer}")
        for a, b in zip(ln1_params(lean, layer), ln1_params(bridge, layer)):
            assert a == b if isinstance(a, bool) else torch.equal(a, b)
        x = torch.randn(2, 5, lean.d_model)
        _assert_same(lean.bridge.blocks[layer].ln1(x), bridge.bridge.blocks[layer].ln1(x), f"ln1 {layer}")
    x = torch.randn(2, 5, lean.d_model)
    _assert_same(lean.bridge.ln_final(x), bridge.bridge.ln_final(x), "ln_final")
    assert model_fingerprint(lean) == model_fingerprint(bridge)
    for f in ("n_layers", "n_heads", "d_head", "d_model", "n_ctx", "d_vocab", "d_mlp"):
        assert getattr(lean.cfg, f) == getattr(bridge.cfg, f), f


def test_tokenizer_calls_equal_the_bridge(pair):
    lean, bridge = pair
    ids = list(range(lean.d_vocab))
    assert lean.token_strs(ids) == bridge.token_strs(ids)
    assert [lean.tokenizer.convert_ids_to_tokens(i) for i in ids[:300]] == \
        [bridge.tokenizer.convert_ids_to_tokens(i) for i in ids[:300]]
    assert lean.tokenizer.decode(ids[:200]) == bridge.tokenizer.decode(ids[:200])
    for text in ("The cat sat on the mat.", "  two  spaces, Émile — 東京 <|endoftext|> def f(x):\n\treturn x"):
        assert lean.encode(text) == bridge.encode(text)
        assert torch.equal(lean.to_tokens(text)[0], bridge.to_tokens(text)[0])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(lean.tokenizer, attr) == getattr(bridge.tokenizer, attr), attr
    assert lean.tokenizer.all_special_ids == bridge.tokenizer.all_special_ids


def test_backend_choice(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "bridge")
    assert type(load_model(str(tiny_model_dir), device="cpu").bridge).__name__ == "TransformerBridge"
    assert isinstance(load_model(str(tiny_model_dir), device="cpu", backend="auto").bridge, LeanGPT2)
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "nonsense")
    with pytest.raises(ModelLoadError, match="unknown model backend"):
        load_model(str(tiny_model_dir), device="cpu")
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "lean")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="lean backend"):
        load_model(str(tmp_path), device="cpu")
    # a tokenizer option transformers applies on top of `tokenizers` (decoding's space clean-up): the bridge
    monkeypatch.delenv("ATTNSCOPE_BACKEND")
    d = shutil.copytree(tiny_model_dir, tmp_path / "cleanup")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "clean_up_tokenization_spaces": True}))
    assert type(load_model(str(d), device="cpu").bridge).__name__ == "TransformerBridge"


def test_an_analysis_command_on_the_default_imports_neither_transformers_nor_transformer_lens(tmp_path):
    code = (
        "import contextlib, io, json, sys\n"
        "from sae.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    rc = main(['features', 'The cat sat on the mat', '--layer', '1', '--json'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'transformer_lens'))\n"
        "print(json.dumps({'rc': rc, 'model': json.loads(buf.getvalue())['model'], 'heavy': heavy}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTNSCOPE_DATA_DIR": str(tmp_path / "data"),
           "ATTNSCOPE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("ATTNSCOPE_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"rc": 0, "model": "attnscope-default", "heavy": []}
