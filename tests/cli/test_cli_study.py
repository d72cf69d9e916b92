"""`attnscope study sample / label / families / report`, `attnscope roles` and the head survey from labels."""

from __future__ import annotations

import json

import pytest
from support import TINY_TEXT, run_cli as _run, sae_set_dir

from sae.cli import main


@pytest.fixture(scope="module")
def env(tiny_model, tmp_path_factory):
    """Model and SAE flags with layers 0 and 1 built into a private cache, and a private label file."""
    root = tmp_path_factory.mktemp("cli_study")
    sae_set_dir(tiny_model, root, d_sae=24, seed=60)
    corpus = root / "heldout.txt"
    corpus.write_text(TINY_TEXT)
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNSCOPE_CACHE_DIR", str(root / "cache"))
    mp.setenv("ATTNSCOPE_LABELS", str(root / "labels.json"))
    flags = ["--model", tiny_model.name, "--saes", str(root / "saes")]
    for layer in (0, 1):
        assert main(["dashboards", "build", "--layer", str(layer), "--tokens", "1200", "--context", "3",
                     "--corpus", str(corpus), "--json", *flags]) == 0
    yield flags, root
    mp.undo()


def test_sample_label_report(capsys, env):
    flags, root = env
    code, out, _ = _run(capsys, ["study", "sample", "--layer", "1", "--n", "4", "--seed", "3", "--json", *flags])
    assert code == 0
    s = json.loads(out)
    ids = [r["feature"] for r in s["features"]]
    assert len(ids) == 4 == len(set(ids)) and s["n_labelled"] == 0
    code, out2, _ = _run(capsys, ["study", "sample", "--layer", "1", "--n", "4", "--seed", "3", "--json", *flags])
    assert [r["feature"] for r in json.loads(out2)["features"]] == ids  # seeded

    plan = [(1, ids[0], "induction", "yes"), (1, ids[1], "induction", "no"), (1, ids[2], "previous-token", "maybe"),
            (1, ids[3], "other", None), (0, 2, "previous-token", "yes")]
    for layer, f, fam, rating in plan:
        argv = ["study", "label", "--layer", str(layer), "--feature", str(f), "--family", fam, "--note", "n", *flags]
        code, out, err = _run(capsys, argv + (["--rating", rating] if rating else []))
        assert code == 0, err
    code, out, _ = _run(capsys, ["study", "sample", "--layer", "1", "--n", "4", "--seed", "3", "--json", *flags])
    assert json.loads(out)["n_labelled"] == 4

    code, out, _ = _run(capsys, ["study", "report", "--json", "--no-confirm", *flags])
    assert code == 0
    r = json.loads(out)
    by = {ls["layer"]: ls for ls in r["layers"]}
    assert by[1]["n"] == 4 and by[1]["shares"]["induction"] == 0.5 and by[1]["shares"]["previous-token"] == 0.25
    assert by[1]["interpretable"] == pytest.approx(1 / 3) and by[1]["n_rated"] == 3
    assert by[0]["n"] == 1 and by[0]["interpretable"] == 1.0
    assert set(r["agreement"]) == {"0", "1"} and r["agreement"]["1"]["n"] == 4

    code, out, _ = _run(capsys, ["study", "report", "--md", "--no-agreement", *flags])
    assert code == 0
    assert "| layer | labels | induction | previous-token | other | interpretable (rated) |" in out
    assert "| L1 | 4 | 50% | 25% | 25% | 33% (3) |" in out
    # the figure: one stacked bar of 40 cells per layer, runs as the shares say, and a legend
    bars = [line for line in out.splitlines() if line.startswith("L1 ")]
    assert len(bars) == 1 and bars[0].split()[1] == "█" * 20 + "▓" * 10 + "▒" * 10
    assert "`█` induction" in out and "`▓` previous-token" in out

    code, out, _ = _run(capsys, ["study", "report", "--no-confirm", *flags])
    assert code == 0 and "share of each family per layer" in out and "automatic roles against" in out


def test_bad_study_input_is_one_line(capsys, env):
    flags, _ = env
    for argv, msg in [
        (["study", "label", "--layer", "1", "--feature", "3", "--family", "telepathy"], "unknown family 'telepathy'"),
        (["study", "label", "--layer", "1", "--feature", "3", "--family", "other", "--rating", "9"], "--rating must be"),
        (["study", "label", "--layer", "1", "--feature", "999", "--family", "other"], "outside the layer-1 SAE"),
        (["study", "sample", "--layer", "2"], "not built"),
    ]:
        code, _, err = _run(capsys, argv + flags)
        assert code == 2 and len(err) == 1 and msg in err[0], (argv, err)


def test_families_can_be_extended(capsys, env):
    flags, _ = env
    code, out, _ = _run(capsys, ["study", "families", "--add", "bracket matcher"])
    assert code == 0 and "bracket matcher" in out and "induction" in out
    code, _, err = _run(capsys, ["study", "label", "--layer", "0", "--feature", "1", "--family", "bracket matcher", *flags])
    assert code == 0


def test_roles_cli_and_heads_from_labels(capsys, env):
    flags, root = env
    own = ["--labels", str(root / "heads-labels.json")]
    code, out, _ = _run(capsys, ["roles", "--layer", "1", "--json", *flags])
    assert code == 0
    d = json.loads(out)
    assert sum(r["count"] for r in d["roles"]) == d["n_live"] and len(d["rules"]) == 6
    assert "repeated random tokens" in d["confirmation"] or not d["candidates"]
    code, out, _ = _run(capsys, ["roles", "--layer", "0", "--md", *flags])
    assert code == 0 and "| induction | 0 | 0% |" in out and "layer 0" in out

    for f in range(0, 24, 3):  # label every third feature, so some of each head's top-10 are labelled
        assert main(["study", "label", "--layer", "1", "--feature", str(f), "--family", "successor", *own, *flags]) == 0
    capsys.readouterr()
    code, out, _ = _run(capsys, ["roles", "--layer", "1", "--json", "--no-confirm", *own, *flags])
    a = json.loads(out)["agreement"]["1"]
    auto = {f: r["role"] for r in json.loads(out)["roles"] for f in r["features"]}
    labelled = [f for f in range(0, 24, 3) if f in auto]  # the live ones among the labelled
    assert a["n"] == len(labelled) and a["accuracy"] == 0.0  # no automatic rule says "successor"
    assert all(r["role"] != "successor" and r["n_human"] == 0 for r in a["roles"])  # a human family, not a rule
    assert sum(r["n_auto"] for r in a["roles"]) == len(labelled)
    assert {r["role"]: r["n_auto"] for r in a["roles"]} == {r: sum(auto[f] == r for f in labelled) for r in
                                                             [x["role"] for x in a["roles"]]}
    code, out, _ = _run(capsys, ["roles", "--layer", "1", "--md", "--no-confirm", *own, *flags])
    assert "### Agreement with the human labels" in out
    code, out, _ = _run(capsys, ["heads", "--layer", "1", "--json", "--no-confirm", *own, *flags])
    assert code == 0
    h = json.loads(out)
    lh = h["layers"][0]
    assert "human label" in h["criterion"] and "automatic role" in h["criterion"]
    tops = [f for hd in lh["heads"] for f in hd["top_by_decoder"]]
    assert any(f["id"] % 3 == 0 for f in tops)
    for f in tops:  # labelled features carry their human label; the rest their automatic role
        if f["id"] % 3 == 0:
            assert f["source"] == "human" and f["role"] == "successor"
        else:
            assert f["source"] == "automatic" and f["role"] != "successor"
    for hd in lh["heads"]:
        n_h = sum(f["id"] % 3 == 0 for f in hd["top_by_decoder"])
        assert hd["source"] == ("human" if n_h == len(hd["top_by_decoder"]) else "automatic" if n_h == 0
                                else f"mixed ({n_h} of {len(hd['top_by_decoder'])} human)")
    assert "human labels for" in lh["source"] or lh["source"] == "human labels"
    with pytest.raises(SystemExit):
        main(["heads", "--help"])
    assert "monosemantic when all of the head's top-10" in " ".join(capsys.readouterr().out.split())
