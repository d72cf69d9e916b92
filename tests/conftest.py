"""Shared fixtures: a tiny GPT-2-architecture model in Hugging Face layout, built on the fly.

Tests never touch the network. The tiny model has random weights; tests that need the embedded default's
phenomena load the shipped artefacts instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ATTNSCOPE_CACHE", "off")  # no tokenised corpora written to the home directory by tests
# a test without the data_dir fixture (a CLI run that hits a bug writes bugs.log) never writes into the user's home
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="attnscope-tests-"))
os.environ.setdefault("ATTNSCOPE_DATA_DIR", str(_SESSION_DIR / "data"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

from support import TINY_TEXT, build_tiny_model_dir, random_sae  # noqa: E402 - after the environment is set


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


@pytest.fixture(scope="session")
def tiny_bridge(tiny_model_dir):
    """The tiny model through TransformerBridge (`tiny_model` is `sae.engine.gpt2.LeanGPT2`, a local GPT-2's default)."""
    from sae.engine.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", backend="bridge")


@pytest.fixture(params=["lean", "bridge"])
def tiny_either(request, tiny_model, tiny_bridge):
    """The tiny model on each backend in turn: one test per analysis kind takes it, so the bridge path stays tested."""
    return tiny_model if request.param == "lean" else tiny_bridge


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


