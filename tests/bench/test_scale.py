"""`attnscope bench scale` at the tiny shape (seconds), and SAEs loaded in the model's dtype."""

from __future__ import annotations

import json

import pytest
import torch
from support import random_sae, run_cli

from sae.engine.formats import load_sae_set, save_sae


def test_bench_scale_tiny_times_every_analysis(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path / "data"))
    code, out, err = run_cli(capsys, ["bench", "scale", "--shape", "tiny", "--json"])
    assert code == 0, err
    d = json.loads(out)
    t = d["timings"]
    assert {"heatmap", "trace", "scan", "head_survey", "roles", "study", "induction", "ioi", "eval"} <= set(t)
    # each trace is one forward pass of the model, however deep (the trace reads one cached run)
    assert all(x["forwards"] == 1 for x in t["trace"].values())
    sc = t["scan"]
    assert sc["tokens"] > 0 and 0 <= sc["bookkeeping_share"] <= 1
    assert sc["model_s"] + sc["encode_s"] + sc["bookkeeping_s"] <= sc["scan_s"] * 1.01
    # the heatmap: one forward per prompt, then each layer's encode, next to its FLOP floor at the measured rate
    for h in t["heatmap"].values():
        assert abs(h["forward_s"] + h["encode_s"] - h["all_layers_s"]) < 1e-9 and h["floor_s"] > 0
        n = h["tokens"]
        assert abs(h["encode_gflop"] - 2 * n * 64 * 256 * 2 / 1e9) < 1e-12  # 2 SAEs 64 -> 256
        assert h["vs_floor"] == pytest.approx(h["all_layers_s"] / h["floor_s"])
        attn = 2 * n * 3 * 64 * 64 + 4 * n * n * 64  # tiny: d_model 64, 2 heads of 32, MLP 256; stops at layer 1's z
        assert h["model_gflop"] == pytest.approx((2 * attn + 2 * n * 64 * 64 + 4 * n * 64 * 256) / 1e9)
    assert d["matmul_gflops"] > 0 and set(d["stages_s"]) >= {"heatmaps", "traces", "dashboard scan", "IOI"}
    # the roles are the head survey's own (timed inside it, not computed a second time)
    assert t["roles"]["layers"] == 2 and t["roles"]["seconds"] <= t["head_survey"]["seconds"]
    # a second head survey is read from the analysis cache
    assert t["head_survey"]["cached_s"] is not None
    m = d["memory"]
    assert m["sae_bf16_bytes"] * 2 == m["sae_fp32_bytes"]
    # 2 layers of 64 -> 256: W_enc, W_dec, b_enc, b_dec
    assert m["sae_fp32_bytes"] == 2 * 4 * (2 * 64 * 256 + 256 + 64)
    assert d["targets"] and all(isinstance(x["met"], bool) for x in d["targets"].values())


def test_sae_set_loads_in_the_asked_dtype(tiny_model, tmp_path):
    for layer in (0, 1):
        save_sae(random_sae(tiny_model, layer, d_sae=24, seed=layer), tmp_path / "saes" / f"blocks.{layer}.attn.hook_z")
    full = load_sae_set(tmp_path / "saes", tiny_model)
    half = load_sae_set(tmp_path / "saes", tiny_model, dtype=torch.bfloat16)
    for layer in (0, 1):
        assert all(p.dtype == torch.bfloat16 for p in half[layer].parameters())
        assert half[layer].cfg.dtype == "bfloat16"
        torch.testing.assert_close(half[layer].W_enc.float(), full[layer].W_enc.bfloat16().float())
        z = torch.randn(5, tiny_model.d_z)
        torch.testing.assert_close(half[layer].encode(z.bfloat16()).float(), full[layer].encode(z), atol=0.1, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: SAEs move between CPU memory and the device")
async def test_resident_saes_move_to_the_gpu_on_demand(tmp_path, monkeypatch):
    from workbench.engine import Engine

    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    eng = Engine("default", "default", device="cuda", resident_saes=1)
    try:
        await eng.open()
        await eng.features("When Mary and John went to the store", 1)
        on = {x: s.W_enc.device.type for x, s in eng._saes.items()}
        assert on[1] == "cuda" and [x for x, d in on.items() if d == "cuda"] == [1]
        await eng.features("When Mary and John went to the store", 0)
        on = {x: s.W_enc.device.type for x, s in eng._saes.items()}
        assert [x for x, d in on.items() if d == "cuda"] == [0]
        assert [x for x, _ in eng.sae_moves] == [1, 0] and "moved on in" in eng.sae_residency()
    finally:
        eng.close()
