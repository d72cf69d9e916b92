"""`attnscope train`, `eval` and `bench` end to end on the tiny model; every bad input is one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from support import SMALL, one_error_line, random_sae
from sae.cli import main
from sae.engine.formats import save_sae


def test_train_then_eval_json(tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0,2",
               "--tokens", "1280", "--out", str(out), "--json", *SMALL])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "finished" and data["step"] == 10
    assert [r["layer"] for r in data["layers"]] == [0, 2]
    assert (out / "blocks.0.attn.hook_z" / "cfg.json").is_file()
    rc = main(["eval", str(out), "--model", str(tiny_model_dir), "--corpus", str(corpus), "--tokens", "256", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {"hook", "layer", "d_in", "d_sae", "l0", "explained_variance", "nmse", "ce_clean", "ce_sae", "ce_zero_abl",
            "ce_loss_recovered", "kl", "dead_fraction", "dense_fraction", "tokens"}
    assert [r["layer"] for r in rows] == [0, 2] and all(keys <= set(r) for r in rows)
    assert rows[0]["tokens"] > 0 and rows[0]["d_sae"] == 64
    # resume past the end with more tokens
    rc = main(["train", "--out", str(out), "--resume", "--model", str(tiny_model_dir), "--tokens", "1536", "--json"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["step"] == 12
    # markdown face
    assert main(["eval", str(out / "blocks.2.attn.hook_z"), "--model", str(tiny_model_dir), "--corpus", str(corpus),
                 "--tokens", "64", "--md"]) == 0
    assert "| layer |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tokens", "0"], "total_tokens must be positive"),
        (["--warmup-steps", "-1"], "warmup_steps must be >= 0"),
        (["--checkpoint-every", "-5"], "checkpoint_every must be >= 0"),
        (["--resample-every", "-2"], "resample_every must be >= 0"),
        (["--tokens", "100"], "less than one batch"),
        (["--layers", "5"], "outside the model"),
        (["--layers", "x"], "--layers expects"),
    ],
)
def test_train_bad_arguments(tiny_model_dir, corpus, tmp_path, capsys, extra, message):
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "o"),
               *SMALL, *extra])
    assert rc == 2
    assert message in one_error_line(capsys)


def test_train_corpus_too_small_and_missing(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "tiny.txt").write_text("def f(x): return x\n" * 3)
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(tmp_path / "tiny.txt"), "--out",
               str(tmp_path / "o"), "--tokens", "8192", "--context-size", "16", "--batch-size", "4096"])
    assert rc == 2
    assert "too small for one batch" in one_error_line(capsys)
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "neither 'default' nor an existing" in one_error_line(capsys)


def test_train_model_unreachable_offline(tmp_path, capsys):
    rc = main(["train", "--model", "no-such-org/no-such-model-xyz", "--out", str(tmp_path / "o"), "--corpus", "x"])
    assert rc == 2 and "could not load model" in one_error_line(capsys)


def test_nan_loss_keeps_last_good_checkpoint(tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "nan"
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "1", "--tokens", "2560",
               "--out", str(out), "--checkpoint-every", "1", *SMALL[:-4], "--warmup-steps", "0", "--lr", "1e30"])
    assert rc == 2
    line = one_error_line(capsys)
    assert "NaN" in line and "kept the last good checkpoint" in line
    from sae.engine.training.loop import load_checkpoint

    state = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in state["units"]["L1"]["sae"].values())


def test_resume_and_rerun_errors(tiny_model_dir, corpus, tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "none"), "--resume", "--model", str(tiny_model_dir)])
    assert rc == 2 and "nothing to resume" in one_error_line(capsys)
    out = tmp_path / "r"
    assert main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
                 "--out", str(out), "--json", *SMALL]) == 0
    capsys.readouterr()
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
               "--out", str(out), *SMALL])
    assert rc == 2 and "--resume" in one_error_line(capsys)


def test_eval_bad_saes(tiny_model, tiny_model_dir, corpus, tmp_path, capsys):
    from sae.engine.autoencoder import SAE, SAEConfig

    save_sae(SAE(SAEConfig(d_in=tiny_model.d_z * 2, d_sae=8, hook_name="blocks.0.attn.hook_z")), tmp_path / "wide")
    save_sae(SAE(SAEConfig(d_in=tiny_model.d_z, d_sae=8, hook_name="blocks.11.attn.hook_z")), tmp_path / "deep")
    save_sae(random_sae(tiny_model, 0), tmp_path / "broken")
    w = tmp_path / "broken" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:64])
    for name, message in (("wide", "does not match"), ("deep", "names layer 11"), ("broken", "truncated or corrupted"),
                          ("missing", "no such SAE path")):
        rc = main(["eval", str(tmp_path / name), "--model", str(tiny_model_dir), "--corpus", str(corpus)])
        assert rc == 2
        assert message in one_error_line(capsys)


def test_bench_group_and_train_json(tiny_model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "train" in capsys.readouterr().out
    rc = main(["bench", "train", "--model", str(tiny_model_dir), "--width", "64", "--batch-size", "256", "--steps", "1",
               "--no-reference", "--process-tokens", "0", "--one-pass", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["architecture"] for r in data["runs"]] == ["standard", "topk"]
    for run in data["runs"]:
        assert run["loop_tokens_per_s"] > 0 and run["sae_step"]["fraction_of_matmul"] > 0
    for key in ("model_pass_tokens_per_s", "one_layer", "all_layers_one_pass", "separate_runs", "sae_step"):
        assert key in data["one_pass"]


@pytest.mark.parametrize("argv", [
    ["train", "--k", "8,x"],
    ["train", "--l1", "1,abc"],
    ["train", "--tokens", "many"],
    ["train", "--architecture", "gated"],
    ["train", "--decoder-norm", "free"],
    ["eval", "--tokens", "abc"],
    ["bench", "train", "--bogus"],
])
def test_a_bad_command_line_is_one_line(argv, capsys, tmp_path):
    """argparse's usage block is not printed: one `attnscope: error:` line, exit 2, before anything runs."""
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "run")] if argv[0] == "train" else argv)
    assert exc.value.code == 2
    line = one_error_line(capsys)
    assert argv[-1].split(",")[-1] in line and "--help" in line
    assert not (tmp_path / "run").exists()


def test_an_unknown_command_is_one_line(capsys):
    from workbench.main import main as attnscope

    assert attnscope(["bogus"]) == 2
    line = one_error_line(capsys)
    assert "'bogus'" in line and "train" in line
