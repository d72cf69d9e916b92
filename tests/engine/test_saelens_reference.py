"""SAELens's and Gemma Scope's own outputs, recorded by tests/reference/make.py, reproduced by attnscope.

- directories SAELens 6.54 wrote (standard, topk, jumprelu; run-time normalisations; a training-time scaler;
  a TopK saved with decoder-norm rescaling) load in attnscope and give SAELens's features and reconstructions;
- Gemma Scope's params.npz gives the activations of Gemma Scope's published JumpReLU formula;
- `attnscope eval`'s metrics equal SAELens's `run_evals` on the same SAE, model and tokens, under both BOS rules;
- a top-k training step with decoder-norm rescaling (`decoder_norm="rescale"`) gives SAELens's loss and gradients,
  and saving folds the row norms as SAELens's save_inference_model does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae import zoo
from sae.engine.formats import SAEFormatError, load_sae

FIX = Path(__file__).resolve().parents[1] / "reference" / "fixtures"
SAELENS = FIX / "saelens"


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", ["standard", "topk", "jumprelu", "standard_constant_norm_rescale",
                                  "standard_layer_norm"])
def test_saelens_written_dirs_give_saelens_outputs(name):
    ref = load_file(str(SAELENS / name / "reference_io.safetensors"))
    sae = load_sae(SAELENS / name)
    assert sae.cfg.hook_name == "blocks.1.attn.hook_z" and sae.cfg.model_name == "attnscope-default"
    x = ref["x"]
    with torch.no_grad():
        f, x_hat = sae.encode_and_reconstruct(x.reshape(-1, 4, 32))
        _close(f, ref["encode"], f"{name} encode")
        _close(x_hat, ref["decode_encode"].flatten(-2), f"{name} reconstruction")
        _close(sae(x), ref["forward"].flatten(-2), f"{name} forward")
    assert (f >= 0).all()


def test_expected_average_scaler_beside_the_weights_is_folded(tmp_path):
    """A training checkpoint still holding activation_scaler.json: SAELens's runner scales x by s before the SAE
    and unscales after; attnscope folds s in and gives SAELens's folded features and the same reconstruction."""
    ref = load_file(str(SAELENS / "topk_expected_average_only_in" / "reference_io.safetensors"))
    sae = load_sae(SAELENS / "topk_expected_average_only_in")
    assert sae.cfg.normalize_activations == "none"
    with torch.no_grad():
        f, x_hat = sae.encode_and_reconstruct(ref["x"])
    _close(f, ref["folded.encode"], "folded encode")
    _close(x_hat, ref["scaler.decode_encode"].flatten(-2), "scale -> SAE -> unscale")
    # the file alone decides: without it the weights are read as they are (SAELens's load_from_disk)
    d = tmp_path / "no_scaler"
    shutil.copytree(SAELENS / "topk_expected_average_only_in", d)
    (d / "activation_scaler.json").unlink()
    with torch.no_grad():
        _close(load_sae(d).encode(ref["x"]), ref["encode"], "identity without the scaler file")


def test_topk_with_decoder_norm_rescaling():
    ref = load_file(str(SAELENS / "topk_training_save_inference_model" / "reference_io.safetensors"))
    sae = load_sae(SAELENS / "topk_training_save_inference_model")
    with torch.no_grad():
        f, x_hat = sae.encode_and_reconstruct(ref["x"])
    _close(f, ref["encode"], "encode")
    _close(x_hat, ref["decode_encode"], "reconstruction")


def test_unsupported_normalisation_is_refused(tmp_path):
    d = tmp_path / "odd"
    shutil.copytree(SAELENS / "standard", d)
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["normalize_activations"] = "whiten_everything"
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="normalize_activations"):
        load_sae(d)


def test_gemma_scope_formula(tmp_path):
    ref = load_file(str(FIX / "gemmascope" / "reference_io.safetensors"))
    d = tmp_path / "layer_1" / "width_16k" / "average_l0_10"
    d.mkdir(parents=True)
    shutil.copy(FIX / "gemmascope" / "params.npz", d / "params.npz")
    sae = load_sae(d)
    assert not sae.cfg.apply_b_dec_to_input
    with torch.no_grad():
        f, x_hat = sae.encode_and_reconstruct(ref["x"])
        pre = sae.encode_pre(ref["x"])
    _close(pre, ref["pre_acts"], "pre-activations (x @ W_enc + b_enc)")
    _close(f, ref["encode"], "JumpReLU activations")
    _close(x_hat, ref["decode_encode"], "reconstruction")
    _close(f, ref["saelens.encode"], "SAELens's JumpReLU on the same weights")
    assert (f >= 0).all() and (pre < 0).any()


@pytest.fixture(scope="module")
def default_model():
    from sae.engine.models import load_model

    return load_model(str(zoo.DEFAULT_MODEL_DIR), device="cpu", dtype="float32")


@pytest.mark.parametrize("variant,exclude", [("bos_excluded", True), ("bos_included", False)])
def test_metrics_agree_with_run_evals(default_model, variant, exclude):
    from sae.engine.metrics import evaluate_saes

    ref = json.loads((FIX / "run_evals.json").read_text())["variants"][variant]["metrics"]
    tokens = load_file(str(FIX / "run_evals_tokens.safetensors"))["tokens"].long()
    sae = load_sae(SAELENS / "run_evals_topk")
    (r,) = evaluate_saes(default_model, {1: sae}, tokens, batch_rows=4, exclude_special_tokens=exclude)
    perf, behav = ref["model_performance_preservation"], ref["model_behavior_preservation"]
    pairs = {
        "l0": (r.l0, ref["sparsity"]["l0"]),
        "explained_variance": (r.explained_variance, ref["reconstruction_quality"]["explained_variance"]),
        "ce_loss_score": (r.ce_loss_recovered, perf["ce_loss_score"]),
        "ce_loss_with_sae": (r.ce_sae, perf["ce_loss_with_sae"]),
        "ce_loss_without_sae": (r.ce_clean, perf["ce_loss_without_sae"]),
        "ce_loss_with_ablation": (r.ce_zero_abl, perf["ce_loss_with_ablation"]),
        "kl_div_with_sae": (r.kl, behav["kl_div_with_sae"]),
        "kl_div_with_ablation": (r.kl_abl, behav["kl_div_with_ablation"]),
        "kl_div_score": (r.kl_score, behav["kl_div_score"]),
    }
    off = {k: (ours, theirs) for k, (ours, theirs) in pairs.items() if abs(ours - theirs) > 1e-3}
    assert not off, off
    assert r.tokens == tokens.numel() - (tokens.shape[0] if exclude else 0)  # BOS only at position 0 here


READS = FIX / "saelens_reads_attnscope"


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_reads_what_attnscope_writes(arch, tmp_path):
    """SAELens 6.54 loaded attnscope's directories with hook, model and context intact and computed these
    activations; attnscope still writes those exact files and computes the same on them."""
    import hashlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
    import attnscope_written

    reads = json.loads((READS / "reads.json").read_text())["dirs"][arch]
    assert reads["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    assert reads["metadata"]["model_name"] == "attnscope-default"
    assert reads["metadata"]["context_size"] == 128
    assert reads["architecture"] == arch and reads["reshape_activations"] == "hook_z"
    written = attnscope_written.write(tmp_path)[arch]
    for name, key in (("cfg.json", "cfg_sha256"), ("sae_weights.safetensors", "weights_sha256")):
        digest = hashlib.sha256((written / name).read_bytes()).hexdigest()
        assert digest == reads[key], (
            f"save_sae now writes a different {name} than the one SAELens was checked on: run "
            "tests/reference/attnscope_written.py, then make.py in the side environment"
        )
    ref = load_file(str(READS / f"{arch}.safetensors"))
    sae = load_sae(written)
    with torch.no_grad():
        f, x_hat = sae.encode_and_reconstruct(ref["x"])
    _close(f, ref["encode"], f"{arch} encode")
    _close(x_hat, ref["decode_encode"], f"{arch} reconstruction")


def test_attribution_refuses_per_token_normalisation():
    from sae.analysis.dfa import AttributionError, encoder_by_head

    sae = load_sae(SAELENS / "standard_layer_norm")
    with pytest.raises(AttributionError, match="normalize_activations=layer_norm"):
        encoder_by_head(sae, 4)
    assert encoder_by_head(load_sae(SAELENS / "standard"), 4).shape == (4, 32, 160)


# ---- training with SAELens's decoder-norm rescaling ----------------------------------------------------------


def _train_step_fixture():
    from sae.engine.autoencoder import SAE, SAEConfig

    ref = load_file(str(SAELENS / "topk_train_step" / "reference_io.safetensors"))
    note = json.loads((SAELENS / "topk_train_step" / "note.json").read_text())
    sae = SAE(SAEConfig(d_in=note["d_in"], d_sae=note["d_sae"], hook_name="blocks.1.attn.hook_z",
                        architecture="topk", k=note["k"]))
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, name).copy_(ref[f"param.{name}"])
    return sae, ref, note


@pytest.mark.parametrize("sparse", [True, False])
def test_rescaled_topk_step_gives_saelens_gradients(sparse):
    """`decoder_norm="rescale"`: SAELens's TopKTrainingSAE (rescale_acts_by_decoder_norm) loss and gradients, with
    AuxK on a fixed dead mask, from the hand-written step carried back to the free parameters."""
    from sae.engine.training.steps import rescaled_step_grads, topk_step_grads

    sae, ref, note = _train_step_fixture()
    assert not torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(note["d_sae"]), atol=0.1)  # rows really vary
    out = rescaled_step_grads(sae, topk_step_grads, ref["x"], note["k"], ref["dead"].bool(), note["d_in"] // 2,
                              note["aux_loss_coefficient"], sparse=sparse)
    _close(out["mse"].reshape(1), ref["mse_loss"], "mse")
    _close((note["aux_loss_coefficient"] * out["aux"]).reshape(1), ref["aux_loss"], "aux")
    _close(out["x_hat"], ref["sae_out"], "reconstruction")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, ref[f"grad.{name}"], atol=2e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


def test_rescaled_autocast_forward_gives_saelens_gradients():
    """The autograd path (used under bf16 autocast) computes the same SAELens loss in fp32."""
    from sae.engine.training.steps import sae_forward_train, topk_aux_loss

    sae, ref, note = _train_step_fixture()
    x = ref["x"]
    pre, f, x_hat = sae_forward_train(sae, x, "rescale")
    mse = (x_hat - x).pow(2).sum(-1).mean()
    aux = topk_aux_loss(sae, x, pre, x_hat, ref["dead"].bool(), note["d_in"] // 2, "rescale")
    (mse + note["aux_loss_coefficient"] * aux).backward()
    _close(f.detach(), ref["feature_acts"], "feature acts")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, ref[f"grad.{name}"], atol=2e-5, rtol=1e-4)


def test_fold_decoder_norm_gives_saelens_saved_weights():
    """Saving a rescale-trained SAE folds the row norms as SAELens's save_inference_model does."""
    from sae.engine.autoencoder import fold_decoder_norm

    sae, ref, note = _train_step_fixture()
    saved = load_file(str(SAELENS / "topk_train_step" / "sae_weights.safetensors"))
    with torch.no_grad():
        fold_decoder_norm(sae)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        _close(getattr(sae, name).detach(), saved[name], f"folded {name}")
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(note["d_sae"]), atol=1e-5)
