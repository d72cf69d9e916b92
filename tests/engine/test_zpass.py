"""The lean training pass (`sae.engine.zpass`) gives the bridge's full-forward hook_z bit for bit (exact mode) or to
float rounding (fused kernels, the training default), computes nothing above the last layer's z, and `ZSource` falls
back to the bridge when it would not match."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae import zoo
from sae.engine.activations import ZSource
from sae.engine.models import load_model
from sae.engine.zpass import lean_z_pass, load_gpt2_z_model

FIX = Path(__file__).resolve().parents[1] / "reference" / "fixtures"


def full_forward_hook_z(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Raw hook_z `[batch, pos, n_heads * d_head]` of every layer from the bridge's whole forward (to the logits)."""
    got: dict[int, torch.Tensor] = {}

    def grab(z: torch.Tensor, hook) -> torch.Tensor:
        got[int(hook.name.split(".")[1])] = z.detach().clone()
        return z

    with torch.no_grad():
        model.bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{la}.attn.hook_z", grab) for la in
                                                       range(model.n_layers)])
    return {la: z.reshape(*tokens.shape, -1) for la, z in got.items()}


# the lean pass is checked against the bridge: these tests load both models through TransformerBridge (the
# default backend of a local GPT-2 directory is `sae.engine.gpt2.LeanGPT2`, tested in test_gpt2.py)
@pytest.fixture(scope="module")
def default_model():
    return load_model(str(zoo.DEFAULT_MODEL_DIR), device="cpu", backend="bridge")


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", backend="bridge")


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_lean_z_is_bit_identical_to_the_full_forward(which, tiny_model, default_model):
    model = tiny_model if which == "tiny" else default_model
    lean = lean_z_pass(model)
    assert lean is not None
    tokens = torch.randint(1, model.d_vocab, (5, 24))
    tokens[:, 0] = model.bos_token_id
    want = full_forward_hook_z(model, tokens)
    for layers in ([0], [model.n_layers - 1], list(range(model.n_layers))):
        got: dict[int, torch.Tensor] = {}
        lean(tokens, layers, lambda la, z: got.__setitem__(la, z.clone()))
        assert sorted(got) == layers
        for la in layers:
            assert torch.equal(got[la], want[la]), f"{which} layer {la} from {layers}"


def test_lean_pass_stops_at_the_last_z(tiny_model, monkeypatch):
    import sae.engine.zpass as zpass

    lean = lean_z_pass(tiny_model)
    calls: list[str] = []
    real_conv = zpass.conv1d
    monkeypatch.setattr(zpass, "conv1d", lambda x, w, b: (calls.append(f"conv{w.shape[1]}"), real_conv(x, w, b))[1])
    for i, blk in enumerate(lean.blocks):
        blk.act = (lambda i, f: (lambda x: (calls.append(f"act{i}"), f(x))[1]))(i, blk.act)
    got: list[int] = []
    lean(torch.randint(1, tiny_model.d_vocab, (2, 8)), [1], lambda la, z: got.append(la))
    m, f = tiny_model.d_model, 4 * tiny_model.d_model
    assert got == [1]
    assert calls == [f"conv{m}", f"conv{f}", "act0", f"conv{m}"]  # layer 0 whole; layer 1 only to its z


def test_zsource_uses_the_lean_pass_and_matches_the_full_forward(tiny_model):
    rows = torch.randint(1, tiny_model.d_vocab, (9, 16))
    rows[:, 0] = tiny_model.bos_token_id
    src = ZSource(tiny_model, rows, [0, 2], rows_per_pass=3, seed=1)
    chunks = [src.next_chunk() for _ in range(3)]
    assert src.lean_used
    order = src._epoch_order(0)
    for c, chunk in enumerate(chunks):
        want = full_forward_hook_z(tiny_model, rows[order[3 * c: 3 * c + 3]])
        for i, la in enumerate([0, 2]):
            ref = (want[la] - tiny_model.z_offset(la).reshape(-1))[:, 1:].reshape(-1, tiny_model.d_z)
            assert torch.equal(chunk[i], ref)
    off = ZSource(tiny_model, rows, [0, 2], rows_per_pass=3, seed=1, lean=False)
    assert torch.equal(off.next_chunk(), chunks[0]) and not off.lean_used


def test_zsource_falls_back_to_the_bridge_when_the_bits_differ(tiny_model):
    rows = torch.randint(1, tiny_model.d_vocab, (6, 16))
    src = ZSource(tiny_model, rows, [1], rows_per_pass=3, seed=0)
    real = src._lean

    def off_by_a_bit(tokens, layers, sink):
        real(tokens, layers, lambda la, z: sink(la, z * (1 + 1e-6)))

    src._lean = off_by_a_bit
    first = src.next_chunk()
    assert not src.lean_used and src._lean is None
    ref = ZSource(tiny_model, rows, [1], rows_per_pass=3, seed=0, lean=False).next_chunk()
    assert torch.equal(first, ref)


@pytest.mark.parametrize("stem", ["pythia_tiny", "qwen2_tiny"])
def test_other_architectures_keep_the_bridge(stem):
    model = load_model(str(FIX / stem), device="cpu", dtype="float32")
    assert lean_z_pass(model) is None


def test_zsource_on_the_default_is_hooked_transformers_hook_z(default_model):
    """Against TransformerLens 3's own HookedTransformer (tests/reference): the lean pass's z after the offset."""
    ref = load_file(str(FIX / "default_model_hook_z.safetensors"))
    tokens = ref["tokens"].long()
    layers = list(range(default_model.n_layers))
    src = ZSource(default_model, tokens, layers, rows_per_pass=tokens.shape[0], seed=0, skip_bos=False)
    src.next_chunk()  # the first chunk checks the lean pass against the bridge
    assert src.lean_used
    chunk = src.next_chunk()  # the second epoch: rows in a new order, from the lean pass
    order = src._epoch_order(1)
    for i, la in enumerate(layers):
        want = ref[f"blocks.{la}.attn.hook_z"][order].reshape(-1, default_model.d_z)
        torch.testing.assert_close(chunk[i], want, atol=2e-4 * max(want.abs().max().item(), 1.0), rtol=1e-3)


def z_model(model, path, exact: bool = True) -> object:
    zm = load_gpt2_z_model(path, torch.device("cpu"), torch.float32, model.name, exact=exact)
    assert zm is not None
    return zm


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_fused_pass_is_the_bridge_to_float_rounding(which, tiny_model, tiny_model_dir, default_model):
    """The training model's default pass (fused layer norm, causal SDPA, one-kernel tanh GELU) against the bridge's
    full forward; and it really is the fused one (its GELU is not Hugging Face's formula)."""
    from sae.engine.zpass import gelu_tanh

    model, path = (tiny_model, tiny_model_dir) if which == "tiny" else (default_model, zoo.DEFAULT_MODEL_DIR)
    zm = load_gpt2_z_model(path, torch.device("cpu"), torch.float32, model.name)
    assert zm is not None and not zm.lean.exact and zm.lean.blocks[0].act is gelu_tanh
    tokens = torch.randint(1, model.d_vocab, (4, 40), generator=torch.Generator().manual_seed(5))
    tokens[:, 0] = model.bos_token_id
    want = full_forward_hook_z(model, tokens)
    got: dict[int, torch.Tensor] = {}
    zm.lean(tokens, list(range(model.n_layers)), lambda la, z: got.__setitem__(la, z.clone()))
    for la in range(model.n_layers):
        scale = want[la].abs().max().item()
        torch.testing.assert_close(got[la], want[la], atol=1e-5 * scale, rtol=1e-5, msg=lambda m, la=la: f"{la}: {m}")
        assert not torch.equal(got[la], torch.zeros_like(got[la]))


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_bridge_free_model_is_the_bridge_bit_for_bit(which, tiny_model, tiny_model_dir, default_model):
    """The model training loads without transformers or TransformerLens: the same z, offsets, sizes and tokens."""
    model, path = (tiny_model, tiny_model_dir) if which == "tiny" else (default_model, zoo.DEFAULT_MODEL_DIR)
    zm = z_model(model, path, exact=True)
    for attr in ("n_layers", "n_heads", "d_head", "d_model", "d_z", "n_ctx", "d_vocab", "bos_token_id", "name"):
        assert getattr(zm, attr) == getattr(model, attr), attr
    assert zm.tokenizer.eos_token_id == model.tokenizer.eos_token_id
    for text in ("def f(x):\n    return x + 1  # ünïcode", "When Mary and John went to the store", " \t\n"):
        assert zm.encode(text) == model.encode(text)
    tokens = torch.randint(1, model.d_vocab, (4, 20))
    tokens[:, 0] = model.bos_token_id
    want = full_forward_hook_z(model, tokens)
    got: dict[int, torch.Tensor] = {}
    zm.lean(tokens, list(range(model.n_layers)), lambda la, z: got.__setitem__(la, z.clone()))
    for la in range(model.n_layers):
        assert torch.equal(got[la], want[la]), la
        assert torch.equal(zm.z_offset(la), model.z_offset(la)), la
    rows = tokens.repeat(3, 1)
    a = ZSource(zm, rows, [0, 1], rows_per_pass=4, seed=3)
    b = ZSource(model, rows, [0, 1], rows_per_pass=4, seed=3, lean=False)
    for _ in range(3):
        assert torch.equal(a.next_chunk(), b.next_chunk())


def test_bridge_free_model_token_rows_and_cache_key(tiny_model, tiny_model_dir, corpus):
    from sae.engine.activations import corpus_token_rows
    from sae.zoo.token_cache import token_cache_key

    zm = z_model(tiny_model, tiny_model_dir)
    assert torch.equal(corpus_token_rows(zm, corpus, 16), corpus_token_rows(tiny_model, corpus, 16))
    assert token_cache_key(zm, str(corpus), 16, "train", None) == token_cache_key(tiny_model, str(corpus), 16,
                                                                                  "train", None)


def test_bridge_free_model_refuses_what_it_cannot_compute(tmp_path, tiny_model_dir):
    import json
    import shutil

    assert load_gpt2_z_model(FIX / "pythia_tiny", torch.device("cpu"), torch.float32, "x") is None
    d = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "scale_attn_by_inverse_layer_idx": True}))
    assert load_gpt2_z_model(d, torch.device("cpu"), torch.float32, "x") is None
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer.json").unlink()
    assert load_gpt2_z_model(d, torch.device("cpu"), torch.float32, "x") is None


def test_training_imports_neither_transformers_nor_transformer_lens(tiny_model_dir, corpus, tmp_path):
    """`attnscope train` on a local GPT-2 reads z without the bridge: neither library is ever imported; nor are
    `torch._dynamo` (any `torch.optim` optimizer imports it) and sympy (the autograd engine's first use does)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from sae.cli import main\n"
        f"rc = main(['train', '--model', {str(tiny_model_dir)!r}, '--corpus', {str(corpus)!r}, '--layers', '1', "
        f"'--tokens', '2048', '--batch-size', '256', '--context-size', '16', '--out', {str(tmp_path / 'run')!r}, "
        "'--json'])\n"
        "print('HEAVY', [m for m in ('transformers', 'transformer_lens', 'torch._dynamo', 'sympy') if m in sys.modules], "
        "rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "ATTNSCOPE_CACHE": "off"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY [] 0" in res.stdout, res.stdout[-500:] + res.stderr[-2000:]
    assert (tmp_path / "run" / "blocks.1.attn.hook_z" / "cfg.json").is_file()
