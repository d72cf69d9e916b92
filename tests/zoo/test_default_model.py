"""The shipped embedded default: its phenomena and SAE quality, recomputed here (not read from the card)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sae.zoo import corpus

from sae.experiments import phenomena

from sae import zoo
from sae.engine.activations import pack_tokens
from sae.zoo import load_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default_model():
    return load_model("default", device="cpu")


@pytest.fixture(scope="module")
def heldout_rows(default_model):
    return pack_tokens(corpus.documents("heldout"), default_model.encode, 128, default_model.bos_token_id, max_rows=64)


def test_artefacts_are_small_and_complete():
    files = [p for p in zoo.DEFAULT_DIR.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total < 25_000_000, f"embedded default is {total / 1e6:.1f} MB"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (zoo.DEFAULT_MODEL_DIR / name).is_file()
    assert (zoo.DEFAULT_DIR / "MODEL_CARD.md").is_file()


def test_induction_head(default_model):
    r = phenomena.induction(default_model, n=16, span=30, seed=1)
    assert r.best_score >= 0.5, r.scores
    assert r.loss_second_copy < 0.5 * r.loss_first_copy


def test_previous_token_head(default_model, heldout_rows):
    r = phenomena.previous_token(default_model, heldout_rows[:32])
    assert r.best_score >= 0.5, r.scores


def test_ioi_competence_on_heldout_templates_and_pairs(default_model):
    r = phenomena.ioi_logit_diff(default_model, n=100, seed=3, split="heldout")
    assert r.logit_diff >= 1.0
    assert r.logit_diff_abba > 0 and r.logit_diff_baba > 0


def test_heldout_loss_beats_unigram(default_model, heldout_rows):
    train_rows = pack_tokens(corpus.documents("train"), default_model.encode, 128, default_model.bos_token_id, max_rows=512)
    assert phenomena.mean_loss(default_model, heldout_rows[:32]) < phenomena.unigram_loss(
        train_rows, heldout_rows, default_model.d_vocab
    ) - 1.0


def test_heldout_names_and_templates_never_in_training_text():
    """Every training IOI line matches a training template, none a held-out one; no held-out pair appears."""
    import re

    from sae.experiments import ioi_data

    def regex(t: str) -> re.Pattern:
        body = re.escape(t)
        for slot in ("\\[A\\]", "\\[B\\]", "\\[PLACE\\]", "\\[OBJECT\\]"):
            body = body.replace(slot, r"\w+")
        return re.compile("^" + body + r"\.$")

    held = [regex(ioi_data.BABA_TEMPLATES[i]) for i in ioi_data.HELDOUT_TEMPLATES]
    train_t = [regex(t) for i, t in enumerate(ioi_data.BABA_TEMPLATES) if i not in ioi_data.HELDOUT_TEMPLATES]
    lines = [ln for d in corpus.document_records("train") if d.source == "ioi" for ln in d.text.splitlines()]
    assert len(lines) > 1000
    for ln in lines[:3000]:
        assert not any(r.match(ln) for r in held), ln
        assert any(r.match(ln) for r in train_t), ln
        names = [w for w in re.findall(r"[A-Z][a-z]+", ln) if w in ioi_data.NAMES]
        assert not ioi_data.is_heldout_pair(names[0], names[1]), ln


def test_package_data_in_built_wheel(tmp_path):
    """A real (non-editable) wheel carries the model, tokenizer, SAEs and card."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    wheel = next(tmp_path.glob("attnscope-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("sae/zoo/default/model/model.safetensors", "sae/zoo/default/model/tokenizer.json",
                     "sae/zoo/default/model/config.json", "sae/zoo/default/MODEL_CARD.md",
                     "sae/zoo/default/saes/blocks.0.attn.hook_z/sae_weights.safetensors"):
        assert required in names, required


@pytest.fixture(scope="module")
def shipped_sae_results() -> list[dict]:
    from sae.zoo.build import evaluate_default_saes

    return evaluate_default_saes(zoo.DEFAULT_MODEL_DIR, zoo.DEFAULT_SAES_DIR, max_rows=512)


def test_shipped_saes_meet_quality_targets(shipped_sae_results):
    """Issue 22.5's figures on 512 x 128 held-out tokens, every layer: CE loss recovered >= 0.93, explained variance
    >= 0.85, dead <= 0.03; top-k L0 = k."""
    assert [r["layer"] for r in shipped_sae_results] == [0, 1, 2]
    for r in shipped_sae_results:
        assert r["ce_loss_recovered"] >= 0.93, r
        assert r["explained_variance"] >= 0.85, r
        assert r["l0"] <= 32, r
        assert r["dead_fraction"] <= 0.03, r
        assert r["tokens"] >= 60_000


def test_shipped_saes_have_few_dense_latents(shipped_sae_results):
    """Issue 22.5: at most 1% of latents firing on more than 10% of tokens, every layer."""
    for r in shipped_sae_results:
        assert r["dense_fraction"] <= 0.01, r


def test_shipped_saes_were_trained_with_the_zoo_recipe():
    """Each shipped SAE's saved training settings are what `attnscope zoo train-default` would train it with, so
    the rebuild path reproduces the shipped set (the per-layer widths and AuxK settings included)."""
    import json

    from sae.zoo.build import SAE_TOKENS, default_sae_configs

    compared = ("architecture", "k", "decoder_norm", "expansion", "aux_k", "aux_coeff", "dead_tokens", "lr",
                "batch_size", "context_size", "normalize_activations", "b_dec_init", "total_tokens", "seed")
    seen = []
    for cfg in default_sae_configs([0, 1, 2], SAE_TOKENS):
        want = cfg.to_dict()
        for layer in cfg.layers:
            saved = json.loads((zoo.DEFAULT_SAES_DIR / f"blocks.{layer}.attn.hook_z" / "cfg.json").read_text())
            train = saved["training"]
            assert {f: train[f] for f in compared} == {f: want[f] for f in compared}, layer
            assert saved["d_sae"] == train["d_sae"] == cfg.width(layer, saved["d_in"]), layer
            seen.append(layer)
    assert sorted(seen) == [0, 1, 2]


def test_saes_stage_trains_one_run_per_recipe_group(tmp_path, monkeypatch):
    """`zoo train-default --stage saes`: layers sharing a recipe train in one run under OUT/sae_runs/, a layer with
    its own entry in its own run, and every layer's SAE lands in OUT/saes/ with its group's width and settings."""
    import json
    import shutil

    from sae.zoo import build

    monkeypatch.setattr(build, "SAE_RECIPE", {"architecture": "topk", "k": 4, "decoder_norm": "unit", "expansion": 1})
    monkeypatch.setattr(build, "SAE_LAYER_RECIPES", {1: {"expansion": 2, "aux_k": 8, "dead_tokens": 1024}})
    shutil.copytree(zoo.DEFAULT_MODEL_DIR, tmp_path / "model")
    build.run(tmp_path, stage="saes", sae_tokens=2 * 4096, log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / "sae_runs").iterdir()) == ["layers-0-2", "layers-1"]
    widths = {}
    for layer in (0, 1, 2):
        cfg = json.loads((tmp_path / "saes" / f"blocks.{layer}.attn.hook_z" / "cfg.json").read_text())
        widths[layer] = (cfg["d_sae"], cfg["training"]["aux_k"])
    assert widths == {0: (128, None), 1: (256, 8), 2: (128, None)}
    runs = {p.name: json.loads((p / "train_config.json").read_text())["layers"] for p in (tmp_path / "sae_runs").iterdir()}
    assert runs == {"layers-0-2": [0, 2], "layers-1": [1]}
