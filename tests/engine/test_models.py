"""The model loader and the value-bias convention of z."""

from __future__ import annotations

import pytest
import torch

from support import hf_z_offset
from sae.engine.models import ModelLoadError, load_model


def test_z_is_pre_c_proj_input_minus_folded_biases(tiny_model, tiny_model_dir):
    """Independent path: hook GPT-2's c_proj input in plain transformers, subtract b_V + ln_1.b @ W_V per head."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir).eval()
    toks = torch.randint(1, tiny_model.d_vocab, (2, 12))
    grabbed = {}
    layer = 1
    handle = hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(lambda m, a: grabbed.setdefault("z", a[0]))
    with torch.no_grad():
        hf(toks)
    handle.remove()
    c = hf_z_offset(hf, layer)
    expected = grabbed["z"] - c
    got = tiny_model.capture_z(toks, [layer])[layer]
    assert got.shape == (2, 12, tiny_model.d_z)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    d = hf.config.n_embd
    # vacuous without both parts of the offset
    assert hf.transformer.h[layer].attn.c_attn.bias[2 * d :].abs().max() > 0.01
    assert hf.transformer.h[layer].ln_1.bias.abs().max() > 0.01


def test_identity_splice_keeps_logits(tiny_model):
    toks = torch.randint(1, tiny_model.d_vocab, (1, 10))
    with torch.no_grad():
        clean = tiny_model.bridge(toks)
        spliced = tiny_model.logits_with_z_hooks(toks, {0: lambda z: z, 2: lambda z: z})
    torch.testing.assert_close(clean, spliced)


def test_missing_local_dir_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path / "empty"), device="cpu")


def test_unknown_hub_name_offline_fails_cleanly():
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_model("no-such-org/no-such-model-xyz", device="cpu")


def test_hub_reachable_is_false_when_offline_is_set(monkeypatch):
    from sae.engine.models import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False


def test_hub_reachable_is_false_for_a_closed_local_port(monkeypatch):
    """An endpoint nothing listens on (loopback, port 9) answers at once: no retry loop before the error."""
    import time

    from sae.engine.models import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.monotonic()
    assert hub_reachable(timeout_s=2.0) is False
    assert time.monotonic() - t0 < 2.5
