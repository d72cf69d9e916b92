"""`attnscope features / trace / dashboards / dashboard / heads / families / bench features`: three faces, one-line errors."""

from __future__ import annotations

import json

import pytest
from support import TINY_TEXT, run_cli as _run, sae_set_dir



@pytest.fixture(scope="module")
def dirs(tiny_model, tmp_path_factory):
    """(model dir, SAE set dir, one-SAE dir for layer 0, corpus file) and a private dashboard cache."""
    root = tmp_path_factory.mktemp("cli_analysis")
    sae_set_dir(tiny_model, root, d_sae=24, seed=40)
    corpus = root / "heldout.txt"
    corpus.write_text(TINY_TEXT)
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNSCOPE_CACHE_DIR", str(root / "cache"))
    yield tiny_model.name, str(root / "saes"), str(root / "saes" / "blocks.0.attn.hook_z"), str(corpus)
    mp.undo()


def test_features_json_is_exact(capsys, dirs):
    model, saes, _, _ = dirs
    code, out, _ = _run(capsys, ["features", "When Mary and John went", "--layer", "1", "--top", "3",
                                 "--model", model, "--saes", saes, "--json"])
    assert code == 0
    d = json.loads(out)
    assert d["layer"] == 1 and len(d["tokens"]) == len(d["positions"])
    n = 0
    for p in d["positions"]:
        for f in p["features"]:
            assert abs(sum(f["dfa_heads"]) + f["dfa_bias"] - f["pre_act"]) < 1e-4
            assert abs(sum(f["dfa_src"]) + f["dfa_bias"] - f["pre_act"]) < 1e-4
            assert len(f["dfa_src"]) == p["pos"] + 1 and len(f["dfa_heads"]) == 4
            n += 1
    assert n > 0


def test_features_md_and_pretty(capsys, dirs):
    model, saes, _, _ = dirs
    code, out, _ = _run(capsys, ["features", "def foo(x):", "--layer", "0", "--model", model, "--saes", saes, "--md"])
    assert code == 0 and "| pos | token | feature |" in out
    code, out, _ = _run(capsys, ["features", "def foo(x):", "--layer", "0", "--model", model, "--saes", saes])
    assert code == 0 and "top features per token" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["features", "   ", "--layer", "0"], "prompt is empty"),
        (["features", "hello", "--layer", "1", "--saes", "ONE"], "no SAE for layer 1"),
        (["features", "hello", "--layer", "9"], "outside the model"),
        (["trace", "hello there", "--layer", "0", "--feature", "24"], "outside the layer-0 SAE"),
        (["dashboard", "--layer", "2", "--feature", "0"], "attnscope dashboards build --layer 2"),
        (["families", "--layer", "2"], "attnscope dashboards build --layer 2"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, dirs, argv, message):
    model, saes, one, _ = dirs
    argv = [one if a == "ONE" else a for a in argv]
    if "--saes" not in argv:
        argv += ["--saes", saes]
    code, out, err = _run(capsys, argv + ["--model", model])
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith("attnscope: error:") and message in err[0], err


def test_long_prompt_is_truncated_with_a_warning(capsys, dirs, tiny_model):
    model, saes, _, _ = dirs
    code, out, err = _run(capsys, ["features", "word " * 300, "--layer", "0", "--top", "1", "--model", model,
                                   "--saes", saes, "--json"])
    assert code == 0 and len(json.loads(out)["tokens"]) == tiny_model.n_ctx
    assert any("warning" in e and "context" in e for e in err)


def test_trace_json_md_pretty(capsys, dirs):
    model, saes, _, _ = dirs
    base = ["trace", "When Mary and John went to the store", "--layer", "2", "--feature", "5", "--depth", "1",
            "--keep", "3", "--model", model, "--saes", saes]
    code, out, _ = _run(capsys, base + ["--json"])
    assert code == 0
    d = json.loads(out)

    def check(n):
        if n["children"]:
            assert abs(sum(c["value"] for c in n["children"]) - n["value"]) < 1e-4 * (1 + abs(n["value"]))
        for c in n["children"]:
            check(c)

    check(d["root"])
    assert "frozen" in d["approximation"]
    code, out, _ = _run(capsys, base + ["--md"])
    assert code == 0 and out.startswith("## Trace of layer 2 feature 5")
    code, out, _ = _run(capsys, base)
    assert code == 0 and "L2 F5" in out


def test_dashboards_build_show_heads_families(capsys, dirs):
    model, saes, _, corpus = dirs
    flags = ["--model", model, "--saes", saes]
    code, out, _ = _run(capsys, ["dashboards", "build", "--layer", "1", "--tokens", "1200", "--context", "3",
                                 "--corpus", corpus, "--json", *flags])
    assert code == 0
    b = json.loads(out)["builds"][0]
    assert b["status"] == "built" and b["n_tokens"] > 500
    code, out, _ = _run(capsys, ["dashboard", "--layer", "1", "--feature", "4", "--json", *flags])
    assert code == 0
    d = json.loads(out)
    assert d["feature"] == 4 and {"top", "quantiles", "histogram", "logits_top", "head_shares", "dfa"} <= set(d)
    code, out, _ = _run(capsys, ["dashboard", "--layer", "1", "--feature", "4", "--md", *flags])
    assert code == 0 and "### Top examples" in out and "### Logit effects" in out
    code, out, _ = _run(capsys, ["dashboard", "--layer", "1", "--feature", "4", *flags])
    assert code == 0 and "top examples" in out
    code, _, err = _run(capsys, ["dashboard", "--layer", "1", "--feature", "99", *flags])
    assert code == 2 and "outside" in err[0]

    code, out, _ = _run(capsys, ["families", "--layer", "1", "--json", *flags])
    assert code == 0
    f = json.loads(out)
    assert sum(x["count"] for x in f["families"]) == f["n_live"] and len(f["role_rules"]) == 6
    assert f["mapping"]["previous-token"] == "short-range context" and "mapped from the automatic roles" in f["source"]
    code, out, _ = _run(capsys, ["roles", "--layer", "1", "--json", *flags])
    r = json.loads(out)
    by_role = {x["role"]: set(x["features"]) for x in r["roles"]}
    for fam in f["families"]:  # each family is the union of the roles mapped to it, the same features
        assert set(fam["features"]) == set().union(*(by_role[x] for x in fam["from_roles"]))
    code, out, _ = _run(capsys, ["families", "--layer", "1", "--md", *flags])
    assert code == 0 and "Role rules (first match wins)" in out and "| previous-token | short-range context |" in out
    with pytest.raises(SystemExit):
        _run(capsys, ["families", "--help"])
    assert "mapped from the feature's automatic role" in " ".join(capsys.readouterr().out.split())

    code, out, _ = _run(capsys, ["heads", "--layer", "1", "--json", *flags])
    assert code == 0
    h = json.loads(out)
    assert len(h["layers"]) == 1 and len(h["layers"][0]["heads"]) == 4 and "top-10" in h["criterion"]
    code, out, _ = _run(capsys, ["heads", "--layer", "1", "--md", *flags])
    assert code == 0 and "polysemantic" in out
    code, _, err = _run(capsys, ["heads", *flags])  # layers 0 and 2 not built
    assert code == 2 and "attnscope dashboards build" in err[0]


def test_bench_features(capsys, dirs):
    model, saes, _, _ = dirs
    code, out, _ = _run(capsys, ["bench", "features", "--repeats", "2", "--tokens", "16", "--model", model,
                                 "--saes", saes, "--json"])
    assert code == 0
    d = json.loads(out)
    assert d["prompt_tokens"] == 16 and d["median_ms"] > 0


def test_bench_dashboards(capsys, dirs):
    model, saes, _, _ = dirs
    code, out, _ = _run(capsys, ["bench", "dashboards", "--tokens", "600", "--model", model, "--saes", saes, "--md"])
    assert code == 0 and "scan tokens per s" in out
