"""Issue 25, section 1 and the silent wrong results: every file attnscope reads goes through one schema layer
(`sae.engine.schema`), and every bad value is one line naming the file and the field, never a traceback, a hang
or a silently different run. Each test fails on the code before the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from support import random_sae
from support import SMALL, one_error_line
from sae.cli import main
from sae.engine.formats import SAEFormatError, load_sae, save_sae
from sae.engine.schema import FileFormatError


# ---- the activation cache -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tiny_model, tmp_path_factory) -> Path:
    from sae.engine.activation_cache import write_cache

    out = tmp_path_factory.mktemp("cache") / "c"
    rows = torch.randint(1, 50, (6, 8))
    rows[:, 0] = tiny_model.bos_token_id
    write_cache(tiny_model, rows, [0], out, dtype="float32", rows_per_shard=3)
    return out


def copy_cache(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def edit_manifest(d: Path, change) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m = change(m)
    (d / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))


def open_cache(d: Path):
    from sae.engine.activation_cache import CacheSource

    return CacheSource(d, [0])


MANIFEST_CHANGES = {
    "a-list": lambda m: [m],
    "shards-text": lambda m: {**m, "shards": "shard_00000.safetensors"},
    "shards-number": lambda m: {**m, "shards": 3},
    "rows-text": lambda m: {**m, "rows": "6"},
    "d_in-0": lambda m: {**m, "d_in": 0},
    "zero-rows": lambda m: {**m, "rows": 0, "shards": []},
    "rows-lie": lambda m: {**m, "shards": [{**m["shards"][0], "rows": 5}, m["shards"][1]]},
    "wrong-d_in": lambda m: {**m, "d_in": m["d_in"] * 2, "n_heads": None},
    "wrong-context": lambda m: {**m, "context_size": 16},
    "wrong-layers": lambda m: {**m, "layers": [0, 1]},
    "outside": lambda m: {**m, "shards": [{"file": "../outside/x.safetensors", "rows": 3}, m["shards"][1]]},
    "absolute": lambda m: {**m, "shards": [{"file": "/etc/passwd", "rows": 3}, m["shards"][1]]},
    "n_heads-0": lambda m: {**m, "n_heads": 0},
    "nested": lambda m: json.dumps(m)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}",
}


@pytest.mark.parametrize("name", sorted(MANIFEST_CHANGES))
def test_a_damaged_manifest_is_one_line(cache_dir, tmp_path, name):
    from sae.engine.activation_cache import CacheError

    d = copy_cache(cache_dir, tmp_path / "c")
    (tmp_path / "outside").mkdir()
    import shutil

    shutil.copy(d / "shard_00000.safetensors", tmp_path / "outside" / "x.safetensors")
    edit_manifest(d, MANIFEST_CHANGES[name])
    with pytest.raises((FileFormatError, CacheError)) as info:
        open_cache(d)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "random", "narrow"])
def test_a_damaged_shard_is_one_line(cache_dir, tmp_path, damage):
    from safetensors.torch import save_file

    from sae.engine.activation_cache import CacheError

    d = copy_cache(cache_dir, tmp_path / "c")
    shard = d / "shard_00000.safetensors"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        shard.write_bytes(os.urandom(len(data)))
    else:
        m = json.loads((d / "manifest.json").read_text())
        save_file({"blocks.0.attn.hook_z": torch.zeros(3, m["context_size"], m["d_in"] - 1),
                   "tokens": torch.zeros(3, m["context_size"], dtype=torch.int32)}, str(shard))
    with pytest.raises(CacheError):
        open_cache(d)


def test_a_zero_row_cache_is_refused_by_train_not_a_hang(cache_dir, tmp_path, capsys):
    d = copy_cache(cache_dir, tmp_path / "c")
    edit_manifest(d, lambda m: {**m, "rows": 0, "shards": []})
    assert main(["train", "--activations", str(d), "--out", str(tmp_path / "run"), "--tokens", "256", *SMALL]) == 2
    assert "rows" in one_error_line(capsys)


# ---- labels.json ----------------------------------------------------------------------------------------------


LABEL_FILES = {
    "record-not-object": {"labels": {"s/0/1": 5}},
    "layer-text": {"labels": {"s/0/1": {"sae": "s", "layer": "0", "feature": 1, "family": "other"}}},
    "feature-text": {"labels": {"s/0/1": {"sae": "s", "layer": 0, "feature": "1", "family": "other"}}},
    "families-int": {"families": 3, "labels": {}},
    "rating-off-scale": {"labels": {"s/0/1": {"sae": "s", "layer": 0, "feature": 1, "family": "x", "rating": 9}}},
    "labels-list": {"labels": []},
}


@pytest.mark.parametrize("name", sorted(LABEL_FILES))
@pytest.mark.parametrize("command", [["study", "report", "--no-agreement"], ["study", "families"],
                                     ["study", "families", "--add", "new"]])
def test_a_damaged_label_file_is_one_line(tmp_path, capsys, name, command):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(LABEL_FILES[name]))
    before = path.read_bytes()
    assert main([*command, "--labels", str(path)]) == 2
    line = one_error_line(capsys)
    assert "labels.json" in line
    assert path.read_bytes() == before


# ---- findings' figure data ------------------------------------------------------------------------------------


FIGURE_DATA = {
    "values-text": {"heatmap": {"tokens": ["a", "b"], "columns": [1], "values": [["x"], ["y"]]}},
    "values-shape": {"heatmap": {"tokens": ["a", "b"], "columns": [1, 2], "values": [[1.0], [2.0]]}},
    "dfa_heads-text": {"dfa_heads": "0.1,0.2"},
    "dfa_src-too-long": {"heatmap": {"tokens": ["a"], "columns": [1], "values": [[1.0]]}, "dfa_src": [1.0, 2.0, 3.0]},
    "head_shares-dict": {"head_shares": {"0": 0.5}},
    "bars-mismatch": {"bars": {"title": "t", "labels": ["a"], "values": [1.0, 2.0]}},
}


@pytest.mark.parametrize("name", sorted(FIGURE_DATA))
def test_damaged_figure_data_is_one_line_and_keeps_the_old_report(monkeypatch, tmp_path, capsys, name):
    from workbench.findings import Finding, FindingsStore
    from workbench.main import main as wb_main

    data = tmp_path / "data"
    FindingsStore(data).add(Finding(kind="feature", title="f", layer=0, data=FIGURE_DATA[name]))
    report = tmp_path / "r.md"
    report.write_text("old")
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(data))
    assert wb_main(["export", "--out", str(report)]) == 2
    assert "findings[0].data" in one_error_line(capsys)
    assert report.read_text() == "old"


# ---- findings.json itself ---------------------------------------------------------------------------------------


GOOD_FINDING = {"kind": "feature", "title": "t", "note": "n", "body": "b", "model": "m", "saes": "s", "layer": 1,
                "data": {}, "id": "abc", "created": "2025-01-01 00:00:00"}
FINDINGS_FILES = {  # name: (findings.json content, the field the error names)
    "a-list": ([GOOD_FINDING], "expected an object"),
    "no-findings": ({"version": 1}, "field findings:"),
    "findings-text": ({"findings": "x"}, "field findings:"),
    "finding-number": ({"findings": [3]}, "field findings[0]:"),
    "no-title": ({"findings": [{"kind": "feature"}]}, "field findings[0].title:"),
    "title-number": ({"findings": [{**GOOD_FINDING, "title": 5}]}, "field findings[0].title:"),
    "layer-text": ({"findings": [GOOD_FINDING, {**GOOD_FINDING, "id": "b", "layer": "2"}]}, "field findings[1].layer:"),
    "layer-bool": ({"findings": [{**GOOD_FINDING, "layer": True}]}, "field findings[0].layer:"),
    "layer-negative": ({"findings": [{**GOOD_FINDING, "layer": -1}]}, "field findings[0].layer:"),
    "data-list": ({"findings": [{**GOOD_FINDING, "data": [1]}]}, "field findings[0].data:"),
    "note-null": ({"findings": [{**GOOD_FINDING, "note": None}]}, "field findings[0].note:"),
    "id-twice": ({"findings": [GOOD_FINDING, GOOD_FINDING]}, "field findings[1].id:"),
    "version-text": ({"version": "1", "findings": []}, "field version:"),
}


@pytest.mark.parametrize("html", [False, True])
@pytest.mark.parametrize("name", sorted(FINDINGS_FILES))
def test_a_damaged_findings_file_names_its_field_and_keeps_the_report(monkeypatch, tmp_path, capsys, name, html):
    """findings.json is read through the schema: one line naming the file and the field, exit 2, nothing
    exported, the old report and the findings file as they were."""
    from workbench.main import main as wb_main

    content, field = FINDINGS_FILES[name]
    data = tmp_path / "data"
    data.mkdir()
    (data / "findings.json").write_text(json.dumps(content))
    report = tmp_path / ("r.html" if html else "r.md")
    report.write_text("old")
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(data))
    assert wb_main(["export", "--out", str(report)] + (["--html"] if html else [])) == 2
    line = one_error_line(capsys)
    assert str(data / "findings.json") in line and field in line, line
    assert report.read_text() == "old"
    assert (data / "findings.json").read_text() == json.dumps(content)


def test_a_truncated_findings_file_never_replaces_the_report(monkeypatch, tmp_path, capsys):
    """findings.json cut at any byte (a crash of another tool, a full disk): the export refuses with one line;
    never a report of fewer findings over the old one."""
    from workbench.findings import Finding, FindingsStore
    from workbench.main import main as wb_main

    data = tmp_path / "data"
    store = FindingsStore(data)
    for i in range(2):
        store.add(Finding(kind="note", title=f"pin {i}", note="x", layer=i))
    whole = (data / "findings.json").read_bytes()
    report = tmp_path / "r.md"
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(data))
    for cut in range(0, len(whole), 7):
        (data / "findings.json").write_bytes(whole[:cut])
        report.write_text("old")
        assert wb_main(["export", "--out", str(report)]) == 2, cut
        assert "findings.json" in one_error_line(capsys)
        assert report.read_text() == "old"
    (data / "findings.json").write_bytes(whole)
    assert wb_main(["export", "--out", str(report)]) == 0
    assert "2 finding(s)" in report.read_text()


def test_a_finding_read_back_keeps_every_field(tmp_path):
    from workbench.findings import FindingsStore

    (tmp_path / "findings.json").write_text(json.dumps({"version": 1, "findings": [{**GOOD_FINDING, "later": 1},
                                                                                   {"kind": "note", "title": "x"}]}))
    a, b = FindingsStore(tmp_path).findings
    assert (a.kind, a.title, a.note, a.body, a.model, a.saes, a.layer, a.data, a.id, a.created) == (
        "feature", "t", "n", "b", "m", "s", 1, {}, "abc", "2025-01-01 00:00:00")
    assert b.layer is None and b.id and b.created and b.id != a.id


# ---- SAE configs ----------------------------------------------------------------------------------------------


def sae_with(tiny_model, tmp_path, change) -> Path:
    d = save_sae(random_sae(tiny_model, 0), tmp_path / "sae")
    cfg = json.loads((d / "cfg.json").read_text())
    change(cfg)
    (d / "cfg.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("field,value", [("apply_b_dec_to_input", "false"), ("prepend_bos", "no"),
                                         ("n_heads", 0), ("d_in", "8")])
def test_a_config_field_of_the_wrong_type_is_named(tiny_model, tmp_path, field, value):
    d = sae_with(tiny_model, tmp_path, lambda c: c.update({field: value}))
    with pytest.raises(SAEFormatError, match=field):
        load_sae(d)


def test_deeply_nested_metadata_is_one_line(tiny_model, tmp_path):
    d = save_sae(random_sae(tiny_model, 0), tmp_path / "sae")
    text = (d / "cfg.json").read_text()
    (d / "cfg.json").write_text(text.rstrip().rstrip("}") + ', "deep": ' + "[" * 10_000 + "]" * 10_000 + "}")
    with pytest.raises(SAEFormatError, match="nested"):
        load_sae(d)


# ---- training configs and flags --------------------------------------------------------------------------------


def train_args(tiny_model_dir, corpus, out, *extra):
    return ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
            "--out", str(out), *extra]


def test_an_explicit_l1_overrides_the_presets_per_layer_table():
    from sae.cli import build_parser
    from sae.cli.train import build_config

    args = build_parser().parse_args(["train", "--preset", "paper", "--l1", "0.5", "--out", "x"])
    cfg = build_config(args, d_in=64, n_layers=2, n_ctx=128, model_name="m")
    assert cfg.l1_for(0, 0.5) == 0.5 and cfg.l1_for(1, 0.5) == 0.5
    args = build_parser().parse_args(["train", "--preset", "paper", "--l1", "0.5,1", "--out", "x"])
    cfg = build_config(args, d_in=64, n_layers=2, n_ctx=128, model_name="m")
    assert cfg.sweep_values == [0.5, 1.0]


@pytest.mark.parametrize("flags,needle", [
    (["--l1", "0.1,0.1000001", "--architecture", "standard"], "both write"),
    (["--l1", "1e300", "--architecture", "standard"], "at most"),
    (["--prefetch", "1000000"], "prefetch"),
    (["--k", ",".join(str(i) for i in range(1, 200))], "at most"),
    (["--k", "2000", "--architecture", "topk"], "k must be in 1.."),
    (["--k", "8,2000", "--architecture", "topk"], "k must be in 1.."),
])
def test_bad_training_values_are_usage_errors(tiny_model_dir, corpus, tmp_path, capsys, flags, needle):
    args = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
            "--out", str(tmp_path / "run"), "--batch-size", "128", "--context-size", "16", *flags]
    assert main(args) == 2
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("change", [["--lr", "0.01"], ["--k", "4,32"], ["--l1", "3"]])
def test_resume_refuses_changed_settings(tiny_model_dir, corpus, tmp_path, capsys, change):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, corpus, out, *SMALL, "--architecture", "topk", "--k", "8,16",
                           "--checkpoint-every", "1")) == 0, capsys.readouterr().err
    capsys.readouterr()
    before = (out / "train_config.json").read_text()
    assert main(["train", "--out", str(out), "--resume", "--tokens", "512", *change]) == 2
    line = one_error_line(capsys)
    assert change[0] in line and "--resume" in line
    assert (out / "train_config.json").read_text() == before


def test_cache_context_size_one_is_a_usage_error(tiny_model_dir, corpus, tmp_path, capsys):
    assert main(["cache", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0",
                 "--context-size", "1", "--out", str(tmp_path / "c")]) == 2
    assert "context-size" in one_error_line(capsys)


def test_trace_pos_is_said_as_given(tiny_model, tiny_model_dir, tmp_path, capsys):
    d = save_sae(random_sae(tiny_model, 0), tmp_path / "blocks.0.attn.hook_z")
    assert main(["trace", "--model", str(tiny_model_dir), "--saes", str(d), "--layer", "0", "--feature", "1",
                 "--pos", "-999", "hello world"]) == 2
    line = one_error_line(capsys)
    assert "-999" in line and "-992" not in line


def test_a_path_like_saes_is_not_a_hub_id(tmp_path, monkeypatch, capsys, tiny_model_dir):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    import sae.engine.formats as formats

    monkeypatch.setattr(formats, "_download_release", lambda s: pytest.fail("went to the hub"))
    assert main(["features", "--model", str(tiny_model_dir), "--saes", "runs/mine", "--layer", "0", "hi"]) == 2
    assert "no such SAE path" in one_error_line(capsys)


def test_a_path_like_saes_without_its_folder_says_it_is_no_path_either(tmp_path, monkeypatch, capsys,
                                                                         tiny_model_dir):
    """`--saes runs/mine` where ./runs does not exist: tried as a hub repository (offline in the tests), and the
    one line says it is no local path either (not only "could not fetch SAE release")."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import sae.engine.models as models

    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    assert main(["features", "--model", str(tiny_model_dir), "--saes", "runs/mine", "--layer", "0", "hi"]) == 2
    line = one_error_line(capsys)
    assert "no such SAE path: runs/mine" in line and str(tmp_path) in line and "hub" in line


# torchrun's stderr when rank 1 is SIGKILLed (recorded from a real run, trimmed): rank 0's gloo error is prefixed
# `[rank0]:`, the agent SIGTERMs rank 0, and its report lists rank 0's SIGTERM before the root cause.
TORCHRUN_REPORT = """training 1 SAE(s) on default layers [0]
[rank0]: Traceback (most recent call last):
[rank0]:   File "<frozen runpy>", line 198, in _run_module_as_main
[rank0]: RuntimeError: [../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:26017: Connection reset by peer.
W1205 11:55:34.073000 24116 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 24128 closing signal SIGTERM
E1205 11:55:34.190000 24116 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -9) local_rank: 1
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
workbench.main FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-05_11:55:34
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 24128)  (SIGTERM)
  traceback : Signal 15 (SIGTERM) received by PID 24128
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-05_11:55:34
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 24129)  (SIGKILL)
  traceback : Signal 9 (SIGKILL) received by PID 24129
=======================================================
"""


def test_a_killed_rank_is_one_line_naming_the_root_cause():
    """The rank named is the root cause's (rank 1, SIGKILL), not the first failure listed (rank 0, SIGTERM by
    the agent); rank 0's `[rank0]:` traceback and its "lost contact" line are held back."""
    import io

    from sae.engine.training.distributed import PEER_LOST, failure_line, filter_torchrun_stderr

    lost = f"attnscope: error: {PEER_LOST} (process 0 of 2: Connection reset by peer)\n"
    sink = io.StringIO()
    said, held = filter_torchrun_stderr(io.StringIO(TORCHRUN_REPORT.replace("W1205", "[rank0]: " + lost + "W1205", 1)),
                                        sink)
    assert sink.getvalue() == "training 1 SAE(s) on default layers [0]\n"
    line = failure_line(said, held, 1)
    assert line is not None and "rank 1" in line and "SIGKILL" in line and "SIGTERM" not in line
    assert "--resume" in line and "\n" not in line


def test_a_ranks_own_error_is_said_once_without_the_peers_echo():
    """A rank that stops with a user error of its own (exit 2): its line stands, once, and the other rank's "lost
    contact" that follows is dropped."""
    import io

    from sae.engine.training.distributed import PEER_LOST, failure_line, filter_torchrun_stderr

    text = ("attnscope: error: the corpus is empty\nattnscope: error: the corpus is empty\n"
            f"attnscope: error: {PEER_LOST} (process 0 of 2: reset)\n"
            "Root Cause (first observed failure):\n[0]:\n  rank      : 1 (local_rank: 1)\n  exitcode  : 2 (pid: 7)\n")
    said, held = filter_torchrun_stderr(io.StringIO(text), io.StringIO())
    assert failure_line(said, held, 1) is None
    assert said == ["attnscope: error: the corpus is empty"]
