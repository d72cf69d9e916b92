"""Every SAE layout on files built here in its exact layout; bad files give one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from support import random_sae
from sae.engine.safe_io import UnsafeFileError
from sae.engine.formats import SAEFormatError, detect_format, load_sae, load_sae_set, load_sparsity, save_sae

WEIGHTS = ("W_enc", "W_dec", "b_enc", "b_dec")


def assert_same_weights(a, b) -> None:
    for name in WEIGHTS:
        assert torch.equal(getattr(a, name).detach(), getattr(b, name).detach()), name


def write_kissane(dir_, sae, layer: int, run: str = "gpt2-small_L{L}_Hcat_z_lr1.20e-03_l11.00e+00_ds96_v9") -> str:
    run = run.format(L=layer)
    dir_.mkdir(parents=True, exist_ok=True)
    torch.save({k: getattr(sae, k).detach().clone() for k in WEIGHTS}, dir_ / f"{run}.pt")
    cfg = {"act_size": sae.cfg.d_in, "dict_size": sae.cfg.d_sae, "act_name": f"blocks.{layer}.attn.hook_z",
           "layer": layer, "l1_coeff": 1.0, "lr": 0.0012, "seq_len": 128, "model_name": "gpt2-small"}
    (dir_ / f"{run}_cfg.json").write_text(json.dumps(cfg))
    return run


def test_saelens_roundtrip_and_cfg_keys(tiny_model, tmp_path):
    sae = random_sae(tiny_model, 1)
    sae.cfg.extra["training"] = {"lr": 0.001}
    density = torch.linspace(-5, 0, 96)
    save_sae(sae, tmp_path / "s", density)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    for key in ("architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input", "normalize_activations"):
        assert key in cfg
    assert cfg["reshape_activations"] == "hook_z"
    assert cfg["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    assert cfg["metadata"]["model_name"] == tiny_model.name
    assert {"context_size", "prepend_bos"} <= set(cfg["metadata"])
    assert cfg["training"] == {"lr": 0.001}
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert raw["W_enc"].shape == (tiny_model.d_z, 96) and raw["W_dec"].shape == (96, tiny_model.d_z)
    loaded = load_sae(tmp_path / "s")
    assert_same_weights(sae, loaded)
    assert loaded.cfg.hook_name == "blocks.1.attn.hook_z"
    torch.testing.assert_close(load_sparsity(tmp_path / "s"), density)
    assert detect_format(tmp_path / "s") == "saelens"


def test_saelens_v5_top_level_keys_and_jumprelu(tmp_path):
    from safetensors.torch import save_file

    d = tmp_path / "v5"
    d.mkdir()
    t = {"W_enc": torch.randn(8, 16), "W_dec": torch.randn(16, 8), "b_enc": torch.randn(16), "b_dec": torch.randn(8),
         "threshold": torch.rand(16)}
    save_file(t, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": 8, "d_sae": 16,
                                            "hook_name": "blocks.0.attn.hook_z", "model_name": "m", "context_size": 64}))
    sae = load_sae(d)
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.context_size == 64
    x = torch.randn(3, 8)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    f = pre * (pre > t["threshold"])
    torch.testing.assert_close(sae.encode(x), f)


def test_save_replaces_atomically_and_leaves_no_temp(tiny_model, tmp_path):
    a, b = random_sae(tiny_model, 0, seed=1), random_sae(tiny_model, 0, seed=2)
    save_sae(a, tmp_path / "s")
    save_sae(b, tmp_path / "s")
    assert_same_weights(b, load_sae(tmp_path / "s"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_paper_release_layout(tiny_model, tmp_path):
    sae = random_sae(tiny_model, 2)
    run = write_kissane(tmp_path / "rel", sae, 2)
    assert detect_format(tmp_path / "rel" / f"{run}.pt") == "kissane"
    loaded = load_sae(tmp_path / "rel" / f"{run}.pt")
    assert_same_weights(sae, loaded)
    assert loaded.cfg.hook_name == "blocks.2.attn.hook_z" and loaded.cfg.d_sae == 96
    x = torch.randn(5, tiny_model.d_z)
    hand = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc) @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(loaded(x), hand.detach(), atol=1e-5, rtol=1e-5)
    # the whole release folder (several layers) as a set
    write_kissane(tmp_path / "rel", random_sae(tiny_model, 0, seed=3), 0)
    saes = load_sae_set(tmp_path / "rel", model=tiny_model)
    assert sorted(saes) == [0, 2]


def test_paper_release_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"W_enc": Evil()}, tmp_path / "run.pt")
    (tmp_path / "run_cfg.json").write_text(json.dumps({"act_size": 4, "dict_size": 8, "act_name": "blocks.0.attn.hook_z", "layer": 0}))
    with pytest.raises(UnsafeFileError, match="could run code"):  # safe_io's own error, not re-wrapped
        load_sae(tmp_path / "run.pt")


def test_gemma_scope_layout(tmp_path):
    d = tmp_path / "layer_3" / "width_16k" / "average_l0_50"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {"W_enc": rng.normal(size=(8, 16)).astype(np.float32), "W_dec": rng.normal(size=(16, 8)).astype(np.float32),
              "b_enc": rng.normal(size=16).astype(np.float32), "b_dec": rng.normal(size=8).astype(np.float32),
              "threshold": rng.uniform(size=16).astype(np.float32)}
    np.savez(d / "params.npz", **arrays)
    sae = load_sae(d)
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.hook_name == "blocks.3.attn.hook_z"
    x = rng.normal(size=(4, 8)).astype(np.float32)
    # the layout only; the formula itself is checked against Gemma Scope's in test_saelens_reference
    pre = x @ arrays["W_enc"] + arrays["b_enc"]
    f = np.maximum(pre, 0) * (pre > arrays["threshold"])
    torch.testing.assert_close(sae.encode(torch.from_numpy(x)), torch.from_numpy(f), atol=1e-5, rtol=1e-5)
    assert sorted(load_sae_set(tmp_path)) == [3]


def test_sae_set_from_dir_of_dirs_and_single_dir(tiny_model, tmp_path):
    for layer in (0, 2):
        save_sae(random_sae(tiny_model, layer), tmp_path / f"blocks.{layer}.attn.hook_z")
    assert sorted(load_sae_set(tmp_path, model=tiny_model)) == [0, 2]
    assert sorted(load_sae_set(tmp_path / "blocks.2.attn.hook_z", model=tiny_model)) == [2]


def test_d_in_mismatch_and_missing_layer(tiny_model, tmp_path):
    from sae.engine.models import z_hook_name
    from sae.engine.autoencoder import SAE, SAEConfig

    wrong = SAE(SAEConfig(d_in=tiny_model.d_z + 4, d_sae=8, hook_name=z_hook_name(0)))
    save_sae(wrong, tmp_path / "wrong")
    with pytest.raises(SAEFormatError, match="does not match"):
        load_sae_set(tmp_path / "wrong", model=tiny_model)
    far = SAE(SAEConfig(d_in=tiny_model.d_z, d_sae=8, hook_name=z_hook_name(9)))
    save_sae(far, tmp_path / "far")
    with pytest.raises(SAEFormatError, match="names layer 9"):
        load_sae_set(tmp_path / "far", model=tiny_model)


def test_truncated_and_corrupted_files(tiny_model, tmp_path):
    save_sae(random_sae(tiny_model, 0), tmp_path / "s")
    w = tmp_path / "s" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    with pytest.raises(SAEFormatError, match="truncated or corrupted"):
        load_sae(tmp_path / "s")
    run = write_kissane(tmp_path / "rel", random_sae(tiny_model, 0), 0)
    pt = tmp_path / "rel" / f"{run}.pt"
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.raises(UnsafeFileError, match="truncated"):
        load_sae(pt)
    d = tmp_path / "layer_1"
    d.mkdir()
    (d / "params.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SAEFormatError, match="truncated or corrupted"):
        load_sae(d)
    (tmp_path / "s" / "cfg.json").write_text('{"d_in": 4, ')
    with pytest.raises(SAEFormatError, match="truncated"):
        load_sae(tmp_path / "s")


def test_release_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SAEFormatError, match="could not fetch SAE release 'gpt2-small-hook-z-kk'"):
        load_sae_set("gpt2-small-hook-z-kk")
    with pytest.raises(SAEFormatError, match="no such SAE path"):
        load_sae_set("/definitely/not/here")
