"""`attnscope induction` and `attnscope ioi`: the three faces and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from support import random_sae
from support import build_ioi_model_dir

from sae.cli import main


@pytest.fixture(scope="module")
def ioi_dirs(tmp_path_factory):
    """(model dir, SAE dir) for a tiny model whose tokenizer keeps every IOI name whole."""
    from sae.engine.formats import save_sae
    from sae.engine.models import load_model

    model_dir = build_ioi_model_dir(tmp_path_factory.mktemp("cli_ioi_gpt2"))
    model = load_model(str(model_dir), device="cpu")
    root = tmp_path_factory.mktemp("cli_saes")
    for layer in range(model.n_layers):
        sae = random_sae(model, layer, d_sae=32, seed=layer)
        save_sae(sae, root / f"blocks.{layer}.attn.hook_z")
    return str(model_dir), str(root)


def _run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    # transformers' own weight-loading bar is not ours; everything else on stderr is
    err = "".join(line + "\n" for line in cap.err.splitlines() if line.strip() and "Loading weights" not in line and "it/s]" not in line)
    return code, cap.out, err


@pytest.mark.parametrize("experiment", ["clean", "splice", "heads", "features", "path", "noising"])
def test_ioi_json(capsys, ioi_dirs, experiment):
    model, saes = ioi_dirs
    extra = ["--corruptions", "names,alongside"] if experiment == "noising" else []
    code, out, _ = _run(capsys, ["ioi", "-e", experiment, "--n", "4", "--model", model, "--saes", saes, "--top", "3", "--json", *extra])
    assert code == 0
    d = json.loads(out)
    assert d["experiment"] == experiment and d["n_prompts"] == 4 and isinstance(d["clean_logit_diff"], float)
    key = {"clean": "by_order", "splice": "splices", "heads": "heads", "features": "features", "path": "paths", "noising": "results"}[experiment]
    assert isinstance(d[key], list) and d[key] and isinstance(d[key][0], dict)


def test_ioi_markdown_and_pretty(capsys, ioi_dirs):
    model, saes = ioi_dirs
    code, out, _ = _run(capsys, ["ioi", "-e", "features", "--n", "4", "--model", model, "--saes", saes, "--top", "2", "--md"])
    assert code == 0 and "| feature |" in out and "error term" in out
    code, out, _ = _run(capsys, ["ioi", "--n", "4", "--model", model])
    assert code == 0 and "clean logit diff" in out and "ABBA" in out


def test_induction_json_md_pretty(capsys, tiny_model_dir, tmp_path):
    base = ["induction", "--n", "2", "--max-prefix", "3", "--seq-len", "24", "--model", str(tiny_model_dir)]
    code, out, _ = _run(capsys, base + ["--json"])
    d = json.loads(out)
    assert code == 0 and d["model"] and "rule" in d
    assert d["thresholds"] == {"induction_score": 0.15, "short_fraction": 0.5}
    assert "0.15" in d["rule"] and "0.5" in d["rule"] and "random" in d["design"]
    h = d["heads"][0]
    assert set(h["scores"]) == {"1", "2", "3"} and h["kind"] in ("long-prefix", "short-prefix", "not induction")
    corpus = tmp_path / "text.txt"
    corpus.write_text("x = 1\n" * 60)
    code, out, _ = _run(capsys, base + ["--md", "--real-text", "--corpus", str(corpus), "--rows", "1"])
    assert code == 0 and "| head | kind |" in out and "src-2" in out
    assert "Rule:" in out and ">= 0.15" in out
    code, out, _ = _run(capsys, base)
    assert code == 0 and "Rule:" in out
    with pytest.raises(SystemExit):
        main(["induction", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert ">= 0.15" in helptext and "0.5 x" in helptext and "default 400" in helptext

@pytest.mark.parametrize(
    "argv, message",
    [
        (["ioi", "--n", "0"], "--n must be a positive"),
        (["ioi", "-e", "telepathy"], "unknown experiment 'telepathy'"),
        (["ioi", "-e", "features", "--layer", "7"], "layer 7 is outside the model"),
        (["ioi", "-e", "noising", "--layers", "1,9"], "layer 9 is outside the model"),
        (["ioi", "--names", "Zyxwvutsrq,Qponmlkjih"], "keeps only 0 of 2 IOI names"),
        (["ioi", "-e", "noising", "--corruptions", "swap"], "unknown corruption 'swap'"),
        (["ioi", "-e", "splice", "--saes", "/nonexistent/saes"], "no such SAE path"),
        (["induction", "--n", "0"], "--n must be a positive"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, ioi_dirs, argv, message):
    model, saes = ioi_dirs
    extra = ["--saes", saes] if argv[0] == "ioi" and "--saes" not in argv else []
    code, out, err = _run(capsys, argv + ["--model", model, *extra])
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("attnscope: error: ") and message in lines[0], err


def test_tokenizer_that_splits_every_name_says_which(capsys, tmp_path):
    """A model whose vocabulary is bytes only: no name survives as one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(tmp_path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=len(vocab))).save_pretrained(tmp_path)
    code, _, err = _run(capsys, ["ioi", "--n", "2", "--model", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1
    assert "keeps only 0 of" in err and "' Mary' -> 5 tokens" in err


def test_embedded_default_shows_induction_and_ioi(capsys):
    code, out, _ = _run(capsys, ["induction", "--n", "40", "--json"])
    assert code == 0
    assert any(h["kind"] != "not induction" and h["layer"] in (1, 2) for h in json.loads(out)["heads"])
    code, out, _ = _run(capsys, ["ioi", "--n", "60", "--json"])
    assert code == 0 and json.loads(out)["clean_logit_diff"] > 0
