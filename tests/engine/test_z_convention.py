"""attnscope's z is HookedTransformer's processed `hook_z`: checked against TransformerLens 3's own output.

The fixtures in tests/reference/fixtures were written by `tests/reference/make.py` in a side environment with
TransformerLens 3.9 (`HookedTransformer` with `from_pretrained`'s default processing: fold_ln,
center_writing_weights, fold_value_biases). Nothing here recomputes the rule: the reference is TL's output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae import zoo
from sae.engine.models import load_model

FIX = Path(__file__).resolve().parents[1] / "reference" / "fixtures"

CASES = {
    # fixture stem -> model directory (GPT-2 with LayerNorm + value bias; GPT-NeoX with parallel attention and
    # partial rotary; Qwen2 with RMSNorm, value bias and grouped-query attention)
    "default_model": zoo.DEFAULT_MODEL_DIR,
    "pythia_tiny": FIX / "pythia_tiny",
    "qwen2_tiny": FIX / "qwen2_tiny",
}
# the default loads as `sae.engine.gpt2.LeanGPT2`; its bridge path is checked against the same fixture too
CASE_IDS = ["default_model", "default_model@bridge", "pythia_tiny", "qwen2_tiny"]


@pytest.fixture(scope="module", params=CASE_IDS)
def case(request):
    stem, _, backend = request.param.partition("@")
    ref = load_file(str(FIX / f"{stem}_hook_z.safetensors"))
    model = load_model(str(CASES[stem]), device="cpu", dtype="float32", backend=backend or None)
    want = "TransformerBridge" if backend or stem != "default_model" else "LeanGPT2"
    assert type(model.bridge).__name__ == want
    return stem, model, ref


def _layers(ref: dict[str, torch.Tensor]) -> list[int]:
    return sorted(int(k.split(".")[1]) for k in ref if k.startswith("blocks.") and k.endswith("hook_z"))


def test_capture_z_is_hooked_transformer_hook_z(case):
    stem, model, ref = case
    layers = _layers(ref)
    got = model.capture_z(ref["tokens"].long(), layers)
    for layer in layers:
        want = ref[f"blocks.{layer}.attn.hook_z"].flatten(-2)
        scale = want.abs().max().item()
        torch.testing.assert_close(got[layer].float(), want, atol=2e-4 * max(scale, 1.0), rtol=1e-3,
                                   msg=lambda m: f"{stem} layer {layer}: {m}")


def test_offset_is_what_processing_removes(case):
    """The constant attnscope subtracts equals TL's raw hook_z minus its processed hook_z (per head)."""
    stem, model, ref = case
    for layer in _layers(ref):
        observed = (ref[f"raw.blocks.{layer}.attn.hook_z"] - ref[f"blocks.{layer}.attn.hook_z"]).mean(dim=(0, 1))
        torch.testing.assert_close(model.z_offset(layer).float(), observed, atol=2e-5, rtol=1e-4)


def test_offset_is_not_just_the_value_bias():
    """Guards the old, wrong rule (raw z minus b_V only): on the embedded model the LayerNorm bias term matters."""
    ref = load_file(str(FIX / "default_model_hook_z.safetensors"))
    model = load_model("default" if False else str(zoo.DEFAULT_MODEL_DIR), device="cpu")
    for layer in _layers(ref):
        b_v = model.bridge.b_V[layer].detach().float()
        assert (model.z_offset(layer).float() - b_v).norm() > 0.1


def test_zero_ablation_and_splice_follow_the_convention(case):
    """Splicing TL's processed z back in (identity) keeps the logits; TL's logits are matched on the last tokens."""
    stem, model, ref = case
    toks = ref["tokens"].long()
    with torch.no_grad():
        clean = model.bridge(toks)
        spliced = model.logits_with_z_hooks(toks, {layer: (lambda z: z) for layer in _layers(ref)})
    torch.testing.assert_close(spliced, clean)
    tl_logits = ref.get("logits", ref.get("logits_tail"))
    ours = clean[:, -tl_logits.shape[1]:].float()
    # TL's center_unembed shifts every logit of a position by one constant: compare log-softmax
    torch.testing.assert_close(ours.log_softmax(-1), tl_logits.log_softmax(-1), atol=2e-3, rtol=1e-3)
