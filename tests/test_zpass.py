"""The lean training pass (`sae.engine.zpass`) gives the bridge's full-forward hook_z bit for bit, computes nothing
above the last layer's z, and `ZSource` falls back to the bridge when it would not match."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae import zoo
from sae.engine.activations import ZSource
from sae.engine.models import load_model
from sae.engine.zpass import lean_z_pass

FIX = Path(__file__).parent / "reference" / "fixtures"


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


@pytest.fixture(scope="module")
def default_model():
    return zoo.load_model("default", device="cpu")


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


def test_lean_pass_stops_at_the_last_z(tiny_model):
    lean = lean_z_pass(tiny_model)
    calls: list[str] = []
    blocks = lean.blocks
    handles = [blocks[0].c_fc.register_forward_hook(lambda *a: calls.append("mlp0")),
               blocks[1].o.register_forward_hook(lambda *a: calls.append("o1")),
               blocks[1].c_fc.register_forward_hook(lambda *a: calls.append("mlp1")),
               blocks[2].q.register_forward_hook(lambda *a: calls.append("q2"))]
    try:
        lean(torch.randint(1, tiny_model.d_vocab, (2, 8)), [1], lambda la, z: None)
    finally:
        for h in handles:
            h.remove()
    assert calls == ["mlp0"]  # layer 0 whole; layer 1 up to its z; nothing of layer 2


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
