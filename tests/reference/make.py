"""Regenerate the reference fixtures under tests/reference/fixtures/.

Every number in those fixtures is produced by the anchor projects' OWN code:
TransformerLens 3.x ``HookedTransformer`` (weight conversion + default weight
processing), SAELens 6.54 (SAE classes, save/load, ``run_evals``) and the
Gemma Scope JumpReLU formula (numpy, quoted below).  Nothing from attnscope is
imported here: attnscope's tests compare *against* these files.

Side environment (outside the repo; CPU-only torch FIRST, otherwise pip pulls a
multi-GB CUDA build):

    python3 -m venv /work/refenv
    /work/refenv/bin/pip install torch==2.13.0
    echo "torch==2.13.0" > /tmp/refenv_constraints.txt
    /work/refenv/bin/pip install sae-lens==6.54.0 -c /tmp/refenv_constraints.txt
    # -> transformer-lens 3.9.0, transformers 5.24.0 (see fixtures/versions.json)

Run (from the repo root; fully offline, nothing is fetched from the HF hub):

    /work/refenv/bin/python tests/reference/make.py

The script deletes and rewrites tests/reference/fixtures/.  It reads (never
writes) sae/zoo/default/model/ and
sae/zoo/default/saes/blocks.1.attn.hook_z/sae_weights.safetensors.
"""
# ruff: noqa: E402  (the environment is set before the anchors are imported, so they never reach a hub)

from __future__ import annotations

import os
import sys

# SAELens's TrainingSAE.save_inference_model builds cfg.json from a *set* of field names, so
# its key order follows str hashing; pin the hash seed so reruns are byte-identical.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import copy
import hashlib
import json
import platform
import shutil
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

warnings.filterwarnings("ignore")

import sae_lens
import sae_lens.loading.pretrained_sae_loaders as sl_loaders
import transformers
from sae_lens import (
    SAE,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.evals import get_eval_everything_config, run_evals
from sae_lens.saes.sae import SAEMetadata, TrainStepInput
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.util import get_special_token_ids
from transformer_lens import HookedTransformer  # noqa: F401 - the anchor this script records
from tl_local import gpt2_copy_with_n_ctx, tl_from_local

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "fixtures"
DEFAULT_MODEL_DIR = REPO / "sae" / "zoo" / "default" / "model"
SHIPPED_SAE = REPO / "sae" / "zoo" / "default" / "saes" / "blocks.1.attn.hook_z"

torch.set_grad_enabled(False)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

HOOK = "blocks.1.attn.hook_z"
N_EVAL_LATENTS = 256  # latents of the shipped SAE kept for the run_evals fixture
# SAE widths: non-square on purpose (a transposed W_enc/W_dec cannot go unnoticed), and small
# enough that all fixtures stay under 2 MB (a 128 x 256 fp32 SAE alone is 264 KB).
D_SAE = 160
D_SAE_SMALL = 48
META = {
    "model_name": "attnscope-default",
    "hook_name": HOOK,
    "hook_head_index": None,
    "context_size": 128,
    "prepend_bos": True,
}


# --------------------------------------------------------------------------- utils
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_st(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_tokens(seed: int, batch: int, pos: int, vocab: int, bos: int = 0) -> torch.Tensor:
    """Uniform ids in [1, vocab) with BOS id at position 0 (id 0 appears nowhere else)."""
    t = torch.randint(1, vocab, (batch, pos), generator=gen(seed), dtype=torch.int64)
    t[:, 0] = bos
    return t


# ------------------------------------------------------------ TransformerLens 3.x
# tl_from_local: tl_local.py (shared with scripts/saelens_train.py)


def hook_z_fixture(
    name: str,
    hf_dir: Path,
    hf_model_cls,
    tokens: torch.Tensor,
    tokenizer=None,
    save_logits: bool = True,
    extra_json: dict | None = None,
) -> dict:
    proc = tl_from_local(hf_dir, hf_model_cls, processed=True, tokenizer=tokenizer)
    raw = tl_from_local(hf_dir, hf_model_cls, processed=False, tokenizer=tokenizer)
    n_layers = proc.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    logits_p, cache_p = proc.run_with_cache(tokens, names_filter=names)
    logits_r, cache_r = raw.run_with_cache(tokens, names_filter=names)
    hf = hf_model_cls.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    logits_hf = hf(tokens).logits

    tensors: dict[str, torch.Tensor] = {"tokens": tokens}
    info_layers = []
    for l, hn in enumerate(names):
        zp, zr = cache_p[hn].float(), cache_r[hn].float()
        tensors[hn] = zp
        tensors[f"raw.{hn}"] = zr
        diff = zr - zp  # [batch, pos, head, d_head]
        offset = diff.mean(dim=(0, 1))  # [head, d_head]
        const_dev = (diff - offset).abs().max().item()
        a = raw.blocks[l].attn
        # TL's own parameters of the RAW model: b_V (+ ln1.b . W_V when ln1 has a bias)
        b_V = a.b_V.detach().float()
        W_V = a.W_V.detach().float()
        formula = b_V.clone()
        ln1 = raw.blocks[l].ln1
        has_ln_b = hasattr(ln1, "b")
        if has_ln_b:
            formula = formula + torch.einsum("m,hmd->hd", ln1.b.detach().float(), W_V)
        tensors[f"offset_observed.{hn}"] = offset
        tensors[f"offset_formula.{hn}"] = formula
        b_V_proc = proc.blocks[l].attn.b_V.detach().float()
        info_layers.append(
            {
                "layer": l,
                "offset_observed_norm_per_head": offset.norm(dim=-1).tolist(),
                "offset_formula_norm_per_head": formula.norm(dim=-1).tolist(),
                "offset_observed_minus_formula_maxabs": (offset - formula).abs().max().item(),
                "raw_minus_processed_nonconstancy_maxabs": const_dev,
                "raw_z_norm_mean_per_head": zr.norm(dim=-1).mean(dim=(0, 1)).tolist(),
                "processed_z_norm_mean_per_head": zp.norm(dim=-1).mean(dim=(0, 1)).tolist(),
                "processed_model_b_V_maxabs": b_V_proc.abs().max().item(),
                "formula": "b_V + ln1.b . W_V (raw TL params)" if has_ln_b else "b_V (raw TL params; RMSNorm has no bias)",
            }
        )
    if save_logits == "tail":
        tensors["logits_tail"] = logits_p[:, -4:].float()  # last 4 positions of every row (size budget)
    elif save_logits:
        tensors["logits"] = logits_p.float()
    def centred(x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True)

    info = {
        "producer": f"transformer_lens {version('transformer_lens')} HookedTransformer",
        "hf_dir": str(hf_dir.relative_to(REPO)) if hf_dir.is_relative_to(REPO) else "(temp copy, see notes)",
        "processed": {
            "fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True,
            "refactor_factored_attn_matrices": False, "dtype": "float32",
            "note": "= HookedTransformer.from_pretrained defaults",
        },
        "raw": {
            "fold_ln": False, "center_writing_weights": False, "center_unembed": False, "fold_value_biases": False,
            "refactor_factored_attn_matrices": False, "dtype": "float32",
            "note": "= HookedTransformer.from_pretrained_no_processing defaults",
        },
        "tl_cfg": {
            k: (str(v) if not isinstance(v, (int, float, bool, type(None), str)) else v)
            for k, v in proc.cfg.to_dict().items()
            if k in ("n_layers", "d_model", "n_heads", "d_head", "n_key_value_heads", "d_mlp", "d_vocab", "n_ctx",
                     "act_fn", "normalization_type", "positional_embedding_type", "rotary_dim", "parallel_attn_mlp",
                     "original_architecture", "eps", "default_prepend_bos", "gated_mlp", "final_rms")
        },
        "raw_cfg_normalization_type": raw.cfg.normalization_type,
        "tokens_shape": list(tokens.shape),
        "layers": info_layers,
        "checks": {
            "processed_vs_raw_logits_centred_maxabs": (centred(logits_p) - centred(logits_r)).abs().max().item(),
            "processed_vs_hf_logits_centred_maxabs": (centred(logits_p) - centred(logits_hf)).abs().max().item(),
        },
        "keys": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in tensors.items()},
    }
    if extra_json:
        info.update(extra_json)
    # Guard: TL's processed model must still compute the HF model's function. (TL 3.9.0's
    # _fold_mlp_layer_norm folds ln2 along the wrong axis when d_mlp == d_model -- it picks the
    # broadcast axis by shape -- which is why no model here has a square MLP.)
    for check, v in info["checks"].items():
        assert v < 1e-3, f"{name}: {check} = {v}"
    save_st(OUT / f"{name}_hook_z.safetensors", tensors)
    dump_json(OUT / f"{name}_hook_z.json", info)
    return info


def default_model_copy() -> tuple[Path, dict]:
    """A temp copy of the embedded model whose config.json adds n_ctx = n_positions (see below), and that config."""
    return gpt2_copy_with_n_ctx(DEFAULT_MODEL_DIR, prefix="attnscope_ref_gpt2_")


def make_default_model_fixture() -> dict:
    """(a) the embedded default GPT-2-shaped model."""
    # TL3's GPT2 config conversion reads hf_config.n_ctx; transformers 5's
    # GPT2Config only has that attribute when config.json carries "n_ctx" (the
    # official gpt2 config.json does; ours does not).  Use a temp copy whose
    # config.json adds n_ctx = n_positions, the only change.
    tmp, cfg = default_model_copy()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp))
    tokens = random_tokens(seed=1, batch=3, pos=16, vocab=cfg["vocab_size"], bos=0)
    info = hook_z_fixture(
        "default_model",
        tmp,
        transformers.GPT2LMHeadModel,
        tokens,
        tokenizer=tok,
        save_logits="tail",
        extra_json={
            "source": {
                "dir": str(DEFAULT_MODEL_DIR.relative_to(REPO)),
                "model.safetensors_sha256": sha256(DEFAULT_MODEL_DIR / "model.safetensors"),
                "config.json_sha256": sha256(DEFAULT_MODEL_DIR / "config.json"),
                "weights_dtype_on_disk": "float16 (loaded as float32 by GPT2LMHeadModel.from_pretrained(dtype=float32))",
                "note": "loaded from a temp copy whose config.json adds n_ctx=n_positions (TL3 reads hf_config.n_ctx)",
            },
            "tokens_recipe": "torch.randint(1, 2048, (3, 16), generator=torch.Generator().manual_seed(1)); tokens[:, 0] = 0 (BOS)",
        },
    )
    shutil.rmtree(tmp)
    return info


def perturb_(module: torch.nn.Module, g: torch.Generator) -> None:
    """Non-trivial LN/RMSNorm weights+biases and linear biases (HF inits them to 1/0)."""
    for name, p in module.named_parameters():
        if "norm" in name or "layernorm" in name:
            if name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def make_pythia_fixture() -> dict:
    """(b) tiny random GPT-NeoX (Pythia-shaped) model, parallel residual, partial rotary."""
    d = OUT / "pythia_tiny"
    config = transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
        rotary_pct=0.25, vocab_size=128, max_position_embeddings=64, use_parallel_residual=True,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(config).eval()
    perturb_(model, gen(100))
    model.half().save_pretrained(str(d))
    tokens = random_tokens(seed=2, batch=3, pos=12, vocab=128, bos=0)
    return hook_z_fixture(
        "pythia_tiny", d, transformers.GPTNeoXForCausalLM, tokens,
        extra_json={
            "source": {"dir": "tests/reference/fixtures/pythia_tiny (written by this script, fp16)",
                       "recipe": "GPTNeoXConfig(2 layers, hidden 64, 4 heads, d_mlp 128, rotary_pct 0.25, vocab 128, "
                                 "use_parallel_residual=True); torch.manual_seed(0); LN weights 1+0.2*N, LN biases 0.2*N, "
                                 "linear biases 0.1*N (Generator seed 100); saved with .half().save_pretrained"},
            "tokens_recipe": "torch.randint(1, 128, (3, 12), generator=seed 2); tokens[:, 0] = 0",
        },
    )


def make_qwen2_fixture() -> dict:
    """(b, optional) tiny random Qwen2: RMSNorm (no LN bias), q/k/v biases, grouped-query attention."""
    d = OUT / "qwen2_tiny"
    config = transformers.Qwen2Config(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    perturb_(model, gen(101))
    model.half().save_pretrained(str(d))
    tokens = random_tokens(seed=3, batch=2, pos=12, vocab=128, bos=0)
    return hook_z_fixture(
        "qwen2_tiny", d, transformers.Qwen2ForCausalLM, tokens,
        extra_json={
            "source": {"dir": "tests/reference/fixtures/qwen2_tiny (written by this script, fp16)",
                       "recipe": "Qwen2Config(2 layers, hidden 32, 4 heads (d_head 8), 2 kv heads, d_mlp 64, vocab 128, tied); "
                                 "torch.manual_seed(0); RMSNorm weights 1+0.2*N, q/k/v biases 0.1*N (seed 101); fp16"},
            "tokens_recipe": "torch.randint(1, 128, (2, 12), generator=seed 3); tokens[:, 0] = 0",
        },
    )


# -------------------------------------------------------------------- SAELens 6.54
def random_sae_params(seed: int, d_in: int, d_sae: int, threshold: bool = False) -> dict[str, torch.Tensor]:
    g = gen(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * (0.5 + torch.rand(d_sae, 1, generator=g))  # non-unit norms
    W_enc = 0.8 * W_dec.T / W_dec.norm(dim=-1) + 0.3 * torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    p = {
        "W_enc": W_enc.contiguous(),
        "W_dec": W_dec.contiguous(),
        "b_enc": 0.1 * torch.randn(d_sae, generator=g) - 0.05,
        "b_dec": 0.2 * torch.randn(d_in, generator=g),
    }
    if threshold:
        p["threshold"] = 0.05 + 0.25 * torch.rand(d_sae, generator=g)
    return p


def sae_inputs(seed: int = 7, n: int = 16, d_in: int = 128) -> torch.Tensor:
    g = gen(seed)
    x = torch.randn(n, d_in, generator=g) + 0.3  # a mean component, like real activations
    return x / x.norm(dim=-1, keepdim=True) * (3.0 + 4.0 * torch.rand(n, 1, generator=g))  # norms in [3, 7]


def run_sae(sae, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """encode / decode(encode) / forward plus the SAE's own hook points."""
    enc = sae.encode(x)
    dec = sae.decode(enc)  # must follow encode on the same batch (norm + hook_z state)
    fwd, cache = sae.run_with_cache(x)
    out = {
        "encode": enc,
        "decode_encode": dec,
        "forward": fwd,
        "hook_sae_acts_pre": cache["hook_sae_acts_pre"],
    }
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        out["hook_sae_recons"] = cache["hook_sae_recons"]  # decoder output before the out-normalization
    return out


NORM_NOTES = {
    "none": "no run-time normalization.",
    "expected_average_only_in": (
        "At INFERENCE SAELens 6.54 treats this as identity: SAE._setup_activation_normalization only special-cases "
        "constant_norm_rescale and layer_norm, everything else gets lambda x: x. During training the scaling factor "
        "s = sqrt(d_in)/E||x|| lives in an ActivationScaler (written to activation_scaler.json next to checkpoints) and "
        "is applied outside the SAE (scale(x)=x*s before encode, unscale(y)=y/s after decode); at the end of training "
        "SAETrainer calls sae.fold_activation_norm_scaling_factor(s) (W_enc*=s, W_dec/=s, b_dec/=s) which sets "
        "cfg.normalize_activations='none' before save_inference_model. SAE.from_pretrained folds the registry's "
        "norm_scaling_factor the same way; SAE.load_from_disk does NOT (no folding, identity at run time)."
    ),
    "constant_norm_rescale": (
        "encode: process_sae_in computes x_norm_coeff = sqrt(d_in)/||x|| per row (AFTER hook_z flattening, BEFORE "
        "subtracting b_dec) and multiplies x by it; decode: (acts @ W_dec + b_dec) / x_norm_coeff, AFTER hook_sae_recons "
        "and BEFORE hook_z un-flattening. The coefficient is stashed on the module by encode and deleted by decode, so "
        "decode only works right after encode on the same batch."
    ),
    "layer_norm": (
        "encode: mu = mean(x), x = (x - mu) / (std(x, unbiased=True) + 1e-5) per row (torch .std default = Bessel-"
        "corrected; eps added to std, not var), AFTER hook_z flattening, BEFORE subtracting b_dec; decode: "
        "y * std + mu (no eps) AFTER hook_sae_recons, BEFORE hook_z un-flattening. mu/std are stashed by encode and "
        "deleted by decode."
    ),
}


def make_sae_dir(
    name: str,
    cls,
    cfg_cls,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    normalize: str = "none",
    reshape: str = "hook_z",
    extra_cfg: dict | None = None,
    extra_note: dict | None = None,
) -> dict:
    d = OUT / "saelens" / name
    d_sae, d_in = params["W_dec"].shape
    cfg = cfg_cls(
        d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu", apply_b_dec_to_input=True,
        normalize_activations=normalize, reshape_activations=reshape, metadata=SAEMetadata(**META),
        **(extra_cfg or {}),
    )
    sae = cls(cfg)
    sae.load_state_dict(params, strict=True)
    sae.save_model(d)  # SAELens's own writer (SAE.save_model -> cfg.json + sae_weights.safetensors)
    loaded = SAE.load_from_disk(d)  # and its own reader
    x_in = x.reshape(x.shape[0], 4, 32) if reshape == "hook_z" else x
    before = run_sae(sae, x_in)
    out = run_sae(loaded, x_in)
    tensors = {"x": x, **out}
    extra_tensors, extra_info = {}, {}
    if normalize == "expected_average_only_in":
        # a checkpoint-style scaler file, and the training-time / folded behaviour
        s = (d_in**0.5) / x.norm(dim=-1).mean().item()
        scaler = ActivationScaler(scaling_factor=s)
        scaler.save(str(d / "activation_scaler.json"))
        enc_s = loaded.encode(scaler.scale(x_in))
        dec_s = scaler.unscale(loaded.decode(enc_s))
        folded = copy.deepcopy(loaded)
        folded.fold_activation_norm_scaling_factor(s)
        fo = run_sae(folded, x_in)
        extra_tensors = {
            "scaler.encode": enc_s,
            "scaler.decode_encode": dec_s,
            "folded.encode": fo["encode"],
            "folded.decode_encode": fo["decode_encode"],
        }
        extra_info = {
            "scaling_factor": s,
            "scaler_keys": "scaler.* = unscale(decode(encode(scale(x_in)))) with ActivationScaler(scaling_factor=s) "
                           "(what SAELens does in training/run_evals when the scaler holds s)",
            "folded_keys": "folded.* = outputs after sae.fold_activation_norm_scaling_factor(s) "
                           "(what the final SAELens training save / SAE.from_pretrained produce); equal to scaler.*",
            "max_abs_scaler_vs_folded_encode": (enc_s - fo["encode"]).abs().max().item(),
            "max_abs_scaler_vs_folded_decode": (dec_s - fo["decode_encode"]).abs().max().item(),
        }
    tensors.update(extra_tensors)
    save_st(d / "reference_io.safetensors", tensors)
    info = {
        "producer": f"sae_lens {sae_lens.__version__}: {cls.__name__}.save_model -> SAE.load_from_disk -> encode/decode/forward",
        "architecture": cfg.architecture(),
        "d_in": d_in,
        "d_sae": d_sae,
        "apply_b_dec_to_input": True,
        "reshape_activations": reshape,
        "normalize_activations": normalize,
        "normalization_where": NORM_NOTES[normalize],
        "hook_z_reshape": (
            "reshape_activations='hook_z': encode takes x_in [..., n_heads=4, d_head=32] and flattens it to [..., 128] "
            "(before hook_sae_input); decode returns [..., 4, 32] (d_head remembered from the last encode). "
            "run_evals turns this reshaping off and flattens hook_z itself." if reshape == "hook_z" else
            "reshape_activations='none': inputs/outputs are flat [..., d_in]."
        ),
        "inputs": "x = sae_inputs(seed=7): 16 x 128 float32, rows N(0,1)+0.3 rescaled to norms in [3,7]; "
                  "the SAE is called on x.reshape(16, 4, 32) for hook_z SAEs, else on x",
        "keys": {k: list(v.shape) for k, v in tensors.items()},
        "l0_per_row": (out["encode"] != 0).sum(-1).tolist(),
        "max_abs_before_save_vs_after_load": max((before[k] - out[k]).abs().max().item() for k in out),
        "forward_equals_decode_encode": bool(torch.equal(out["forward"], out["decode_encode"])),
        **extra_info,
        **(extra_note or {}),
    }
    dump_json(d / "note.json", info)
    return info


def make_training_saved_topk(x: torch.Tensor) -> dict:
    """A TopK SAE written the way a SAELens training run writes its final SAE:
    TopKTrainingSAE (rescale_acts_by_decoder_norm=True by default) with
    normalize_activations='expected_average_only_in', scaler folded by
    fold_activation_norm_scaling_factor, then TrainingSAE.save_inference_model."""
    d = OUT / "saelens" / "topk_training_save_inference_model"
    params = random_sae_params(seed=16, d_in=128, d_sae=D_SAE_SMALL)
    cfg = TopKTrainingSAEConfig(
        d_in=128, d_sae=D_SAE_SMALL, k=8, dtype="float32", device="cpu", apply_b_dec_to_input=True,
        normalize_activations="expected_average_only_in", reshape_activations="none",
        metadata=SAEMetadata(**META),
    )
    tsae = TopKTrainingSAE(cfg)
    tsae.load_state_dict(params, strict=True)
    s = (128**0.5) / x.norm(dim=-1).mean().item()
    scaler = ActivationScaler(scaling_factor=s)
    enc_t = tsae.encode(scaler.scale(x))
    dec_t = scaler.unscale(tsae.decode(enc_t))
    tsae.fold_activation_norm_scaling_factor(s)  # what SAETrainer does after the last step
    tsae.save_inference_model(d)
    loaded = SAE.load_from_disk(d)
    out = run_sae(loaded, x)
    tensors = {"x": x, **out, "training.encode": enc_t, "training.decode_encode": dec_t}
    save_st(d / "reference_io.safetensors", tensors)
    info = {
        "producer": f"sae_lens {sae_lens.__version__}: TopKTrainingSAE -> fold_activation_norm_scaling_factor(s) "
                    "-> save_inference_model -> SAE.load_from_disk",
        "architecture": "topk",
        "k": 8,
        "d_in": 128,
        "d_sae": D_SAE_SMALL,
        "scaling_factor": s,
        "normalization_where": "training used ActivationScaler(s) around the SAE; folded before saving, so the "
                               "saved cfg says normalize_activations='none'. " + NORM_NOTES["expected_average_only_in"],
        "rescale_acts_by_decoder_norm": "TopKTrainingSAEConfig default True; save_inference_model folds the W_dec "
                                        "row norms into W_enc/b_enc and normalises W_dec (process_state_dict_for_"
                                        "saving_inference) and the cfg keeps rescale_acts_by_decoder_norm=true, "
                                        "which is then a no-op (unit-norm rows).",
        "keys": {k: list(v.shape) for k, v in tensors.items()},
        "training_keys": "training.* = TopKTrainingSAE outputs on unscale(decode(encode(scale(x)))) before folding",
        "max_abs_training_vs_loaded_encode": (enc_t - out["encode"]).abs().max().item(),
        "max_abs_training_vs_loaded_decode": (dec_t - out["decode_encode"]).abs().max().item(),
        "active_sets_identical_training_vs_loaded": bool(torch.equal(enc_t != 0, out["encode"] != 0)),
        "training_over_loaded_encode_ratio_min_max": [
            (enc_t[enc_t != 0] / out["encode"][enc_t != 0]).min().item(),
            (enc_t[enc_t != 0] / out["encode"][enc_t != 0]).max().item(),
        ],
        "why_encode_differs": "fold_activation_norm_scaling_factor divides W_dec by s, so with "
                              "rescale_acts_by_decoder_norm=True the (rescaled) feature activations shrink by 1/s; "
                              "save_inference_model then folds the (now /s) W_dec norms. Reconstructions are unchanged, "
                              "feature activations of the saved SAE = training activations / s.",
        "l0_per_row": (out["encode"] != 0).sum(-1).tolist(),
        "loaded_cfg_normalize_activations": loaded.cfg.normalize_activations,
        "loaded_cfg_rescale_acts_by_decoder_norm": loaded.cfg.rescale_acts_by_decoder_norm,
    }
    dump_json(d / "note.json", info)
    return info


def make_topk_train_step() -> dict:
    """One SAELens TopK training step's loss and gradients (TopKTrainingSAE, rescale_acts_by_decoder_norm=True,
    its default): the reference for attnscope's "rescale" decoder-norm training (`rescaled_step_grads`).

    Weights: SAELens's own init (decoder rows at decoder_init_norm 0.1, encoder their transpose), then perturbed so
    row norms differ and the biases are non-zero. Loss = mse + aux_loss_coefficient * AuxK over the given dead mask,
    gradients by autograd through SAELens's training_forward_pass; then save_inference_model's folded weights."""
    d = OUT / "saelens" / "topk_train_step"
    d_in, d_sae, k, n = 128, D_SAE_SMALL, 8, 64
    torch.manual_seed(21)
    cfg = TopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu", apply_b_dec_to_input=True,
        normalize_activations="none", reshape_activations="none", aux_loss_coefficient=0.5,
        metadata=SAEMetadata(**META),
    )
    tsae = TopKTrainingSAE(cfg)
    g = gen(22)
    with torch.no_grad():
        tsae.W_dec.mul_(torch.rand(d_sae, 1, generator=g) * 3 + 0.25)
        tsae.W_enc.add_(torch.randn(d_in, d_sae, generator=g) * 0.02)
        tsae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.05)
        tsae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
    params = {k_: v.detach().clone() for k_, v in tsae.state_dict().items()}
    x = torch.randn(n, d_in, generator=gen(23)) * 2.0
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=gen(24))[:20]] = True
    step_in = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0,
                             is_logging_step=False)
    with torch.enable_grad():
        out = tsae.training_forward_pass(step_in)
        out.loss.backward()
    tensors = {
        **{f"param.{k_}": v for k_, v in params.items()},
        **{f"grad.{k_}": p_.grad for k_, p_ in tsae.named_parameters()},
        "x": x, "dead": dead.to(torch.uint8), "sae_out": out.sae_out.detach(),
        "feature_acts": out.feature_acts.detach(), "loss": out.loss.detach().reshape(1),
        "mse_loss": out.losses["mse_loss"].detach().reshape(1),
        "aux_loss": out.losses["auxiliary_reconstruction_loss"].detach().reshape(1),
    }
    tsae.zero_grad()
    tsae.save_inference_model(d)
    save_st(d / "reference_io.safetensors", tensors)
    info = {
        "producer": f"sae_lens {sae_lens.__version__}: TopKTrainingSAE.training_forward_pass + autograd; "
                    "save_inference_model",
        "k": k, "d_in": d_in, "d_sae": d_sae, "aux_loss_coefficient": 0.5, "n_dead": int(dead.sum()),
        "rescale_acts_by_decoder_norm": True,
        "loss": "mse_loss (squared error summed over d_in, mean over batch) + 0.5 * min(n_dead / (d_in // 2), 1) * "
                "AuxK (top d_in // 2 dead pre-activations decode the detached residual, no b_dec)",
        "keys": {k_: list(v.shape) for k_, v in tensors.items()},
        "saved": "cfg.json + sae_weights.safetensors: save_inference_model's weights (row norms folded into W_enc and b_enc)",
    }
    dump_json(d / "note.json", info)
    return info


def make_saelens_dirs() -> dict:
    x = sae_inputs()
    res = {}
    res["standard"] = make_sae_dir("standard", StandardSAE, StandardSAEConfig, random_sae_params(11, 128, D_SAE), x)
    res["topk"] = make_sae_dir("topk", TopKSAE, TopKSAEConfig, random_sae_params(12, 128, D_SAE), x, extra_cfg={"k": 8})
    res["jumprelu"] = make_sae_dir(
        "jumprelu", JumpReLUSAE, JumpReLUSAEConfig, random_sae_params(13, 128, D_SAE, threshold=True), x
    )
    res["topk_expected_average_only_in"] = make_sae_dir(
        "topk_expected_average_only_in", TopKSAE, TopKSAEConfig, random_sae_params(14, 128, D_SAE_SMALL), x,
        normalize="expected_average_only_in", extra_cfg={"k": 8},
    )
    res["standard_constant_norm_rescale"] = make_sae_dir(
        "standard_constant_norm_rescale", StandardSAE, StandardSAEConfig, random_sae_params(15, 128, D_SAE_SMALL), x,
        normalize="constant_norm_rescale",
    )
    res["standard_layer_norm"] = make_sae_dir(
        "standard_layer_norm", StandardSAE, StandardSAEConfig, random_sae_params(17, 128, D_SAE_SMALL), x,
        normalize="layer_norm",
    )
    res["topk_training_save_inference_model"] = make_training_saved_topk(x)
    res["topk_train_step"] = make_topk_train_step()
    return res


# --------------------------------------------------------------- run_evals (d)
class FixedTokenStore:
    """Stands in for sae_lens.ActivationsStore: run_evals only calls
    get_batch_tokens(n) / reset_input_dataset() and reads context_size and
    store_batch_size_prompts.  It serves fixed token rows in order."""

    def __init__(self, tokens: torch.Tensor, batch: int):
        self.tokens = tokens
        self.context_size = tokens.shape[1]
        self.store_batch_size_prompts = batch
        self._i = 0

    def get_batch_tokens(self, batch_size: int | None = None, raise_at_epoch_end: bool = False) -> torch.Tensor:
        b = batch_size or self.store_batch_size_prompts
        rows = torch.arange(self._i, self._i + b) % self.tokens.shape[0]
        self._i += b
        return self.tokens[rows]

    def reset_input_dataset(self) -> None:
        self._i = 0


def eval_tokens(tokenizer, vocab: int = 2048) -> tuple[torch.Tensor, dict]:
    """8 rows x 128: rows 0-5 consecutive 127-token chunks of the Python standard library's
    textwrap.py (the default model was trained on stdlib source + pydoc, so this is
    in-distribution), rows 6-7 a 64-token random half repeated twice (induction rows).
    BOS id 0 at position 0 of every row and nowhere else."""
    import textwrap as _tw

    src = Path(_tw.__file__)
    ids = tokenizer(src.read_text(), add_special_tokens=False)["input_ids"]
    text_rows = torch.tensor([ids[i * 127 : (i + 1) * 127] for i in range(6)], dtype=torch.int64)
    assert (text_rows != 0).all()
    g = gen(5)
    half = torch.randint(1, vocab, (2, 64), generator=g)
    rep = torch.cat([half, half], dim=1)[:, :127]
    t = torch.cat([torch.zeros(8, 1, dtype=torch.int64), torch.cat([text_rows, rep], dim=0)], dim=1)
    recipe = {
        "rows_0_5": f"tokenizer(textwrap.py)[i*127:(i+1)*127], i=0..5, from {src} "
                    f"(Python {platform.python_version()}, sha256 {sha256(src)})",
        "rows_6_7": "h = torch.randint(1, 2048, (2, 64), generator=seed 5); cat([h, h])[:, :127]",
        "bos": "id 0 prepended to every row (0 appears nowhere else)",
    }
    return t, recipe


def make_run_evals() -> dict:
    tmp, cfg = default_model_copy()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp))
    model = tl_from_local(tmp, transformers.GPT2LMHeadModel, processed=True, tokenizer=tok)
    raw_model = tl_from_local(tmp, transformers.GPT2LMHeadModel, processed=False, tokenizer=tok)
    shutil.rmtree(tmp)

    # The shipped layer-1 attnscope SAE (trained, so the metrics mean something): read ONLY its tensors, keep its
    # first N_EVAL_LATENTS latents (a few hundred KB), build a SAELens TopKSAE around them and write it with
    # SAELens's own save_model into fixtures/saelens/run_evals_topk/. The tests load that directory, so the
    # reference does not depend on the shipped file staying as it is.
    wpath = SHIPPED_SAE / "sae_weights.safetensors"
    with safe_open(str(wpath), framework="pt") as f:
        w = {k: f.get_tensor(k).float() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    tokens, token_recipe = eval_tokens(model.tokenizer, model.cfg.d_vocab)
    # the k of the shipped SAE the committed fixture was made from (1024 wide, k 32, before issue 22.5's retraining;
    # the shipped layer-1 SAE is now 8192 wide with k 28: use 28 when regenerating from it); hard-coded so only
    # tensors are read
    k = 32
    # keep the N_EVAL_LATENTS latents that fire most often (top-k of the full SAE) on TL's processed hook_z of
    # the eval tokens, in index order, so the small SAE still reconstructs well
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
        z = cache[HOOK].flatten(-2).reshape(-1, w["W_enc"].shape[0])
        pre = (z - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        fired = torch.zeros(pre.shape[1]).index_add_(0, pre.topk(k, dim=-1).indices.flatten(),
                                                      torch.ones(pre.shape[0] * k))
    keep = fired.topk(N_EVAL_LATENTS).indices.sort().values
    w = {"W_enc": w["W_enc"][:, keep].contiguous(), "W_dec": w["W_dec"][keep].contiguous(),
         "b_enc": w["b_enc"][keep].contiguous(), "b_dec": w["b_dec"].contiguous()}
    d_in, d_sae = w["W_enc"].shape
    assert d_in == model.cfg.n_heads * model.cfg.d_head
    sae = TopKSAE(
        TopKSAEConfig(
            d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu", apply_b_dec_to_input=True,
            normalize_activations="none", reshape_activations="hook_z", metadata=SAEMetadata(**META),
        )
    )
    sae.load_state_dict(w, strict=True)
    sae.eval()
    sae_dir = OUT / "saelens" / "run_evals_topk"
    if sae_dir.exists():
        shutil.rmtree(sae_dir)
    sae_dir.mkdir(parents=True)
    sae.save_model(sae_dir)

    batch = 4
    eval_cfg = get_eval_everything_config(
        batch_size_prompts=batch, n_eval_reconstruction_batches=2, n_eval_sparsity_variance_batches=2
    )
    eval_cfg.git_hash = "n/a"  # do not let the value depend on the cwd's git checkout
    special = get_special_token_ids(model.tokenizer)
    variants = {}
    feat = {}
    runs = (
        ("bos_excluded", True, model, "processed"),
        ("bos_included", False, model, "processed"),
        ("raw_model.bos_excluded", True, raw_model, "raw"),
        ("raw_model.bos_included", False, raw_model, "raw"),
    )
    for label, excl, m, which in runs:
        store = FixedTokenStore(tokens, batch)
        metrics, feature_metrics = run_evals(
            sae, store, m, ActivationScaler(), eval_config=eval_cfg, exclude_special_tokens=excl
        )
        variants[label] = {
            "model": which,
            "exclude_special_tokens": excl,
            "resolved_ignore_tokens": sorted(special) if excl is True else [],
            "metrics": metrics,
        }
        for kk in ("feature_density", "consistent_activation_heuristic"):
            feat[f"{label}.{kk}"] = torch.tensor(feature_metrics[kk], dtype=torch.float32)
    save_st(OUT / "run_evals_tokens.safetensors", {"tokens": tokens, **feat})
    res = {
        "producer": f"sae_lens {sae_lens.__version__} sae_lens.evals.run_evals (also exported as sae_lens.run_evals)",
        "model": "embedded default model (sae/zoo/default/model) as TL3 HookedTransformer. variants with "
                 "model='processed': exactly like default_model_hook_z.json (from_pretrained defaults: fold_ln, "
                 "center_writing_weights, center_unembed, fold_value_biases); model='raw': "
                 "from_pretrained_no_processing flags (hook_z then includes b_V + ln1.b . W_V)",
        "sae": {
            "dir": "saelens/run_evals_topk (written by SAELens save_model)",
            "from": f"{wpath.relative_to(REPO)} (sha256 {sha256(wpath)}), the {N_EVAL_LATENTS} latents that fire most on these tokens",
            "built_as": f"sae_lens.TopKSAE(TopKSAEConfig(d_in={d_in}, d_sae={d_sae}, k={k}, apply_b_dec_to_input=True, "
                        "normalize_activations='none', reshape_activations='hook_z', rescale_acts_by_decoder_norm=False)) "
                        "with W_enc/W_dec/b_enc/b_dec copied 1:1",
            "hook_name": HOOK,
            "note": "the shipped SAE was trained on attnscope's z, which is TL's processed hook_z.",
        },
        "tokens": {"file": "run_evals_tokens.safetensors['tokens'] int64 [8,128]", **token_recipe},
        "activation_store": "FixedTokenStore (make.py): serves the 8 rows in order, 4 per batch; "
                            "reset_input_dataset() rewinds. Reconstruction (CE/KL) metrics use batches [0:4],[4:8]; "
                            "after the reset the sparsity/variance metrics use the same two batches.",
        "activation_scaler": "ActivationScaler() (no scaling)",
        "eval_config": {k2: v for k2, v in vars(eval_cfg).items()},
        "bos_handling": (
            "exclude_special_tokens=True -> ignore_tokens = get_special_token_ids(model.tokenizer) = "
            f"{sorted(special)}; positions whose INPUT token is in ignore_tokens are (a) left untouched by the SAE "
            "splice (torch.where(mask, sae_out, original)) and (b) dropped from every per-token average; for CE the "
            "mask is mask[:, :-1] (loss at position i predicts token i+1). exclude_special_tokens=False -> nothing "
            "masked. The zero-ablation run zeroes hook_z at ALL positions in both variants."
        ),
        "metric_definitions": {
            "explained_variance": "1 - mean_t ||x-x_hat||^2 / (mean_t ||x||^2 - ||mean_t x||^2) over all kept tokens "
                                  "(ExplainedVarianceCalculator, float64 sums)",
            "explained_variance_legacy": "mean over tokens of 1 - ||x-x_hat||^2 / ||x - batch_mean(x)||^2 (per batch mean)",
            "mse": "mean over tokens of ||x-x_hat||^2 (sum over d_in)",
            "l0": "mean over tokens of #(acts != 0)",
            "ce_loss_score": "(ce_with_ablation - ce_with_sae) / (ce_with_ablation - ce_without_sae)",
            "kl_div_score": "(kl_with_ablation - kl_with_sae) / kl_with_ablation, KL(orig || new) summed over vocab",
        },
        "variants": variants,
    }
    dump_json(OUT / "run_evals.json", res)
    return res


# ------------------------------------------------------------- Gemma Scope (e)
def gemmascope_encode(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Gemma Scope's published JumpReLU formula ("Gemma Scope tutorial", Google DeepMind,
    colab 'Tutorial: Gemma Scope from Scratch', class JumpReLUSAE):

        pre_acts = input_acts @ W_enc + b_enc
        mask = (pre_acts > threshold)
        acts = mask * relu(pre_acts)
        decode(acts) = acts @ W_dec + b_dec

    (no b_dec subtraction on the input)."""
    pre = x @ params["W_enc"] + params["b_enc"]
    mask = pre > params["threshold"]
    return mask * np.maximum(pre, 0.0)


def gemmascope_decode(params: dict[str, np.ndarray], acts: np.ndarray) -> np.ndarray:
    return acts @ params["W_dec"] + params["b_dec"]


def make_gemmascope() -> dict:
    d = OUT / "gemmascope"
    d.mkdir(parents=True, exist_ok=True)
    p = random_sae_params(21, 128, D_SAE, threshold=True)
    params = {k: p[k].numpy().astype(np.float32) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    np.savez(d / "params.npz", **params)
    params = dict(np.load(d / "params.npz"))  # exactly what is on disk
    x = sae_inputs().numpy()
    pre_np = x @ params["W_enc"] + params["b_enc"]
    enc_np = gemmascope_encode(params, x)
    dec_np = gemmascope_decode(params, enc_np)

    # SAELens's own Gemma Scope conversion: gemma_2_sae_huggingface_loader (reads params.npz via
    # hf_hub_download; here hf_hub_download is pointed at the local file, nothing else changes).
    repo_id, folder = "google/gemma-scope-2b-pt-att", "layer_1/width_16k/average_l0_10"

    def local_hub_download(repo_id=None, filename=None, subfolder=None, **kw):
        assert filename == "params.npz"
        return str(d / "params.npz")

    orig = sl_loaders.hf_hub_download
    sl_loaders.hf_hub_download = local_hub_download
    try:
        overrides = {"d_in": 128, "d_sae": D_SAE, "model_name": META["model_name"], "hook_name": HOOK, "context_size": 128}

        def converter(path, device="cpu", cfg_overrides=None):
            cfg_dict, state_dict, _ = sl_loaders.gemma_2_sae_huggingface_loader(
                repo_id, folder, device=device, cfg_overrides={**overrides, **(cfg_overrides or {})}
            )
            return cfg_dict, state_dict

        sae = SAE.load_from_disk(d, converter=converter)
    finally:
        sl_loaders.hf_hub_download = orig
    assert isinstance(sae, JumpReLUSAE)
    xt = torch.from_numpy(x)
    x_in = xt.reshape(16, 4, 32) if sae.cfg.reshape_activations == "hook_z" else xt
    out = run_sae(sae, x_in)
    enc_sl = out["encode"]
    dec_sl = out["decode_encode"].reshape(16, 128)
    tensors = {
        "x": xt,
        "pre_acts": torch.from_numpy(pre_np),
        "encode": torch.from_numpy(enc_np.astype(np.float32)),
        "decode_encode": torch.from_numpy(dec_np.astype(np.float32)),
        "saelens.encode": enc_sl,
        "saelens.decode_encode": dec_sl,
    }
    save_st(d / "reference_io.safetensors", tensors)
    info = {
        "producer": "Gemma Scope JumpReLU formula in numpy (gemmascope_encode/gemmascope_decode in make.py) and "
                    f"sae_lens {sae_lens.__version__} JumpReLUSAE via its Gemma Scope loader "
                    "(sae_lens.loading.pretrained_sae_loaders.gemma_2_sae_huggingface_loader, repo_id "
                    f"{repo_id!r}, folder {folder!r}, hf_hub_download redirected to params.npz)",
        "params.npz": {k: [str(v.dtype), list(v.shape)] for k, v in params.items()},
        "formula": "pre = x @ W_enc + b_enc; acts = (pre > threshold) * relu(pre); recon = acts @ W_dec + b_dec",
        "saelens_cfg_after_conversion": {
            "architecture": sae.cfg.architecture(),
            "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
            "normalize_activations": sae.cfg.normalize_activations,
            "reshape_activations": sae.cfg.reshape_activations,
            "metadata": {k: v for k, v in sae.cfg.metadata.to_dict().items()},
        },
        "note": "the Gemma Scope loader's cfg carries no sae_lens_version, so handle_config_defaulting runs "
                "handle_pre_6_0_config, which sets reshape_activations='hook_z' because hook_name contains 'hook_z'; "
                "SAELens therefore gets x.reshape(16,4,32) and its decode is flattened back for the saelens.* keys.",
        "keys": {k: list(v.shape) for k, v in tensors.items()},
        "l0_per_row": (enc_np != 0).sum(-1).tolist(),
        "max_abs_numpy_vs_saelens_encode": (torch.from_numpy(enc_np) - enc_sl).abs().max().item(),
        "max_abs_numpy_vs_saelens_decode": (torch.from_numpy(dec_np) - dec_sl).abs().max().item(),
        "active_sets_identical": bool(torch.equal(torch.from_numpy(enc_np) != 0, enc_sl != 0)),
    }
    dump_json(d / "note.json", info)
    return info


# ------------------------------------------------- SAELens reads attnscope's dirs
ATTNSCOPE_WRITTEN = HERE / "attnscope_written"


def make_saelens_reads_attnscope() -> dict:
    """Load each directory attnscope's save_sae wrote (tests/reference/attnscope_written.py) with SAELens's own
    SAE.load_from_disk and record what SAELens reads and computes on fixed inputs."""
    out_dir = OUT / "saelens_reads_attnscope"
    out_dir.mkdir(parents=True, exist_ok=True)
    x = sae_inputs(seed=11)
    info = {}
    for d in sorted(p for p in ATTNSCOPE_WRITTEN.iterdir() if p.is_dir()):
        sae = SAE.load_from_disk(str(d), device="cpu")
        md = sae.cfg.metadata
        with torch.no_grad():
            x_in = x.reshape(x.shape[0], 4, 32) if sae.cfg.reshape_activations == "hook_z" else x
            enc = sae.encode(x_in)
            dec = sae.decode(enc)
        save_st(out_dir / f"{d.name}.safetensors", {"x": x, "encode": enc, "decode_encode": dec.reshape(x.shape[0], -1)})
        info[d.name] = {
            "loaded_class": type(sae).__name__,
            "architecture": sae.cfg.architecture(),
            "reshape_activations": sae.cfg.reshape_activations,
            "normalize_activations": sae.cfg.normalize_activations,
            "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
            "metadata": {k: md.to_dict().get(k) for k in ("hook_name", "model_name", "context_size", "prepend_bos",
                                                           "hook_head_index", "sae_lens_version")},
            "cfg_sha256": sha256(d / "cfg.json"),
            "weights_sha256": sha256(d / "sae_weights.safetensors"),
        }
    dump_json(out_dir / "reads.json", {
        "producer": f"sae_lens {sae_lens.__version__} SAE.load_from_disk on tests/reference/attnscope_written/*",
        "inputs": "x = sae_inputs(seed=11) [16,128]; hook_z SAEs get x.reshape(16,4,32)",
        "dirs": info,
    })
    return info


# ------------------------------------------------------------------------- main
def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    summary = {}
    summary["default_model"] = make_default_model_fixture()
    summary["pythia_tiny"] = make_pythia_fixture()
    summary["qwen2_tiny"] = make_qwen2_fixture()
    summary["saelens"] = make_saelens_dirs()
    summary["run_evals"] = make_run_evals()
    summary["gemmascope"] = make_gemmascope()
    summary["saelens_reads_attnscope"] = make_saelens_reads_attnscope()
    dump_json(
        OUT / "versions.json",
        {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformer_lens": version("transformer_lens"),
            "sae_lens": sae_lens.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "safetensors": version("safetensors"),
            "command": "/work/refenv/bin/python tests/reference/make.py",
        },
    )
    total = 0
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            total += f.stat().st_size
            print(f"{f.stat().st_size:>9}  {f.relative_to(OUT)}")
    print(f"{total:>9}  total bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
