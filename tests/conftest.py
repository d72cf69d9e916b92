"""Shared fixtures: a tiny GPT-2-architecture model in Hugging Face layout, built on the fly.

Tests never touch the network. The tiny model has random weights; tests that need the embedded default's
phenomena load the shipped artefacts instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ATTNSCOPE_CACHE", "off")  # no tokenised corpora written to the home directory by tests
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

TINY_TEXT = (
    "When Mary and John went to the store, John gave a drink to Mary. "
    "The quick brown fox jumps over the lazy dog. def foo(x): return x + 1\n"
    "import os, sys\nclass Thing(object):\n    pass\n"
) * 20


def build_tiny_model_dir(
    path: Path, n_layer: int = 3, d_model: int = 64, n_head: int = 4, n_ctx: int = 64, seed: int = 0,
    texts: list[str] | None = None, vocab_size: int = 400,
) -> Path:
    """Write a random GPT-2 (config.json, model.safetensors, tokenizer.json) into `path`, its BPE trained on
    `texts` (default: a few repeated sentences and lines of code)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts if texts is not None else [TINY_TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=d_model, n_head=n_head, n_positions=n_ctx, vocab_size=tok.get_vocab_size(),
        bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # non-zero biases so bias handling is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small training/eval corpus folder: a text file and a Python file."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text(TINY_TEXT)
    (d / "b.py").write_text("def f(x):\n    return x * 2\n" * 40)
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from sae.engine.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def random_sae(model, layer: int, d_sae: int = 96, architecture: str = "standard", seed: int = 0, k: int | None = None):
    """An SAE for `model`'s layer with random weights and non-zero biases."""
    from sae.engine.models import z_hook_name
    from sae.engine.autoencoder import SAE, SAEConfig

    torch.manual_seed(seed)
    cfg = SAEConfig(
        d_in=model.d_z, d_sae=d_sae, hook_name=z_hook_name(layer), architecture=architecture,
        model_name=model.name, n_heads=model.n_heads, k=k,
    )
    sae = SAE(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        if sae.threshold is not None:
            sae.threshold.uniform_(0, 0.1)
    return sae


def hf_z_offset(hf, layer: int):
    """By hand from a transformers GPT-2: what HookedTransformer's weight processing removes from z,
    `b_V + ln_1.bias @ W_V` per head, flattened head-major (`[n_head * d_head]`)."""
    d = hf.config.n_embd
    block = hf.transformer.h[layer]
    w_v = block.attn.c_attn.weight[:, 2 * d :].detach()  # Conv1D: [d_model, n_head * d_head]
    return block.attn.c_attn.bias[2 * d :].detach() + block.ln_1.bias.detach() @ w_v


def sae_set_dir(model, root: Path, d_sae: int = 24, seed: int = 0) -> Path:
    """A directory of SAELens dirs, one random SAE per layer of `model` (seeds `seed + layer`)."""
    from sae.engine.formats import save_sae

    for layer in range(model.n_layers):
        save_sae(random_sae(model, layer, d_sae=d_sae, seed=seed + layer), root / "saes" / f"blocks.{layer}.attn.hook_z")
    return root / "saes"
@pytest.fixture(scope="session")
def rows(tiny_model) -> torch.Tensor:
    """48 random token rows of 16 tokens (BOS first) for the tiny model: what the training tests train on."""
    g = torch.Generator().manual_seed(0)
    r = torch.randint(1, tiny_model.d_vocab, (48, 16), generator=g)
    r[:, 0] = tiny_model.bos_token_id
    return r


# ---- the workbench's pilot tests ----------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """Findings and dashboards in a tmp dir (workbench tests: `pytestmark = pytest.mark.usefixtures("data_dir")`)."""
    d = tmp_path / "data"
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(d))
    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    return d


@pytest.fixture
def saes(tiny_model):
    """Random SAEs for the tiny model's layers 0 and 1."""
    return {0: random_sae(tiny_model, 0, d_sae=48, seed=1), 1: random_sae(tiny_model, 1, d_sae=48, seed=2)}


@pytest.fixture
def app(tiny_model, saes):
    """The workbench on the tiny model and `saes`, starting on layer 1."""
    from workbench.app import WorkbenchApp
    from workbench.engine import Engine

    return WorkbenchApp(Engine.from_objects(tiny_model, saes, "random"), start_layer=1)


def run_cli(capsys, argv: list[str]) -> tuple[int, str, list[str]]:
    """Run `attnscope ARGV` in-process: exit code, stdout, and stderr lines less the libraries' progress noise."""
    from sae.cli import main

    code = main(argv)
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.strip() and "Loading weights" not in line and "it/s]" not in line]
    return code, cap.out, err

