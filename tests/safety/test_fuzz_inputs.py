"""Issue 25: Hypothesis over every file format attnscope reads (activation-cache manifest, labels.json, findings.json
and the findings' figure data, training configs; SAE configs are in test_fuzz_formats.py) and over every CLI string argument
with hostile text (markup, control characters, invalid UTF-8, very long). The property: a result, or one
`AttnscopeError` of one line; never another exception, a hang, a traceback or a control character on the terminal."""

from __future__ import annotations

import json
import shutil
import tempfile
import xml.dom.minidom
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sae.engine.errors import AttnscopeError

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
                | st.sampled_from(["0", "false", "../x", "/etc/passwd", "[/]", "\x1b[2J"]))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                              max_size=3), max_leaves=6)

HOSTILE = ["[/]", "[bold red]", "[link=file:///etc]x", "\x1b[31m", "\x1b]0;t\x07", "a\x00b", "<script>", "|", "\\",
           "\u202e", "x" * 5000, b"\xff\xfe".decode("utf-8", "surrogateescape")]
hostile_text = (st.sampled_from(HOSTILE) | st.text(max_size=30)
                | st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape"))
                | st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=4).map("".join))


def one_line(exc: BaseException) -> None:
    assert isinstance(exc, AttnscopeError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc) and str(exc)


def edit_json(data, edits):
    """Apply (path, value) edits: a path of keys/indices into `data`, the last one set (or the whole replaced)."""
    for path, value in edits:
        if not path:
            data = value
            continue
        node = data
        for key in path[:-1]:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                node = node[key]
            else:
                break
        else:
            last = path[-1]
            if isinstance(node, dict):
                node[last if isinstance(last, str) else str(last)] = value
            elif isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
                node[last] = value
    return data


def paths(keys: list[str]):
    return st.lists(st.sampled_from(keys) | st.integers(0, 2), min_size=0, max_size=3)


# ---- the activation cache manifest ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tiny_model, tmp_path_factory) -> Path:
    from sae.engine.activation_cache import write_cache

    out = tmp_path_factory.mktemp("fuzzcache") / "c"
    rows = torch.randint(1, 50, (4, 8))
    write_cache(tiny_model, rows, [0], out, dtype="float32", rows_per_shard=2)
    return out


MANIFEST_KEYS = ["format", "model", "layers", "d_in", "n_heads", "context_size", "rows", "dtype", "corpus",
                 "corpus_hash", "shards", "hooks", "file", "z_convention"]


@FUZZ
@given(edits=st.lists(st.tuples(paths(MANIFEST_KEYS), json_values), min_size=1, max_size=4))
def test_fuzzed_manifest(cache_dir, edits):
    from sae.engine.activation_cache import CacheSource

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "c"
        shutil.copytree(cache_dir, d)
        m = edit_json(json.loads((d / "manifest.json").read_text()), edits)
        (d / "manifest.json").write_text(json.dumps(m))
        try:
            src = CacheSource(d, [0])
        except Exception as exc:  # noqa: BLE001 - the property
            one_line(exc)
            return
        chunk = src.next_chunk()  # a manifest that passed reads inside its own folder and gives finite rows
        assert torch.isfinite(chunk).all()
        for shard in src.manifest.shards:
            assert (d / shard["file"]).resolve().parent == d.resolve()


# ---- labels.json ----------------------------------------------------------------------------------------------


LABEL_KEYS = ["format", "families", "labels", "positions", "s/0/1", "layer", "feature", "family", "rating", "note"]
GOOD_LABELS = {"format": 1, "families": ["induction", "other"], "positions": {},
               "labels": {"s/0/1": {"sae": "s", "layer": 0, "feature": 1, "family": "other", "rating": 2,
                                    "note": "n", "author": "a", "time": "t", "model": "m"}}}


@FUZZ
@given(edits=st.lists(st.tuples(paths(LABEL_KEYS), json_values), min_size=1, max_size=4))
def test_fuzzed_labels(edits):
    from sae.analysis.labels import LabelStore, study_report

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.json"
        path.write_text(json.dumps(edit_json(json.loads(json.dumps(GOOD_LABELS)), edits)))
        store = LabelStore(path)
        for action in (store.families, store.labels, lambda: study_report(store).to_dict(),
                       lambda: store.add_family("new")):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the property
                one_line(exc)


# ---- findings and their figure data ---------------------------------------------------------------------------


FIGURE_KEYS = ["heatmap", "tokens", "columns", "values", "column", "pos", "dfa_heads", "dfa_bias", "dfa_src",
               "head_shares", "bars", "labels", "title"]
GOOD_DATA = {"heatmap": {"tokens": ["a", "b"], "columns": [3], "values": [[1.0], [0.5]], "column": 0}, "pos": 1,
             "dfa_heads": [0.1, -0.2], "dfa_bias": 0.0, "dfa_src": [0.3, 0.1], "head_shares": [0.5, 0.5],
             "bars": {"title": "t", "labels": ["x"], "values": [1.0]}}


@FUZZ
@given(edits=st.lists(st.tuples(paths(FIGURE_KEYS), json_values), min_size=1, max_size=4), title=hostile_text,
       note=hostile_text)
def test_fuzzed_findings_export(edits, title, note):
    from workbench.figures import export_report
    from workbench.findings import Finding

    data = edit_json(json.loads(json.dumps(GOOD_DATA)), edits)
    f = Finding(kind="feature", title=title, note=note, layer=0, data=data if isinstance(data, dict) else {})
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.md"
        report.write_text("old")
        try:
            export_report(report, [f])
        except Exception as exc:  # noqa: BLE001 - the property
            one_line(exc)
            assert report.read_text() == "old"
            return
        for svg in (Path(tmp) / "r-figures").glob("*.svg"):
            xml.dom.minidom.parseString(svg.read_bytes())
        text = report.read_text()
        assert "<script" not in text.replace("`<script>`", "")


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from(["{", "[]", "null", '{"findings": 3}', "{" * 3000]))
def test_fuzzed_findings_file(text):
    from workbench.findings import FindingsStore

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "findings.json").write_text(text, errors="surrogateescape")
        store = FindingsStore(Path(tmp))
        assert store.error or isinstance(store.findings, list)
        assert "\n" not in store.error


FINDING_KEYS = ["version", "findings", "kind", "title", "note", "body", "model", "saes", "layer", "data", "id",
                "created", "heatmap", "pos"]
GOOD_FINDINGS = {"version": 1, "findings": [
    {"kind": "feature", "title": "a", "note": "n", "body": "b", "model": "m", "saes": "s", "layer": 0,
     "data": {"pos": 1}, "id": "x1", "created": "c"},
    {"kind": "note", "title": "b", "layer": None, "id": "x2"}]}


@FUZZ
@given(edits=st.lists(st.tuples(paths(FINDING_KEYS), json_values), min_size=1, max_size=4))
def test_fuzzed_findings_structure(edits):
    """findings.json with fields of any type or shape: read through the schema, the findings come back with the
    types the dataclass says, or the store's error is one line naming the file and what was expected, and the
    export then refuses, leaving the old report."""
    import os

    from workbench.findings import Finding, FindingsStore
    from workbench.main import main as wb_main

    with tempfile.TemporaryDirectory() as tmp:
        text = json.dumps(edit_json(json.loads(json.dumps(GOOD_FINDINGS)), edits))
        (Path(tmp) / "findings.json").write_text(text)
        store = FindingsStore(Path(tmp))
        if not store.error:
            for f in store.findings:
                assert isinstance(f, Finding) and isinstance(f.kind, str) and isinstance(f.title, str)
                assert all(isinstance(getattr(f, n), str) for n in ("note", "body", "model", "saes", "id", "created"))
                assert f.layer is None or (type(f.layer) is int and f.layer >= 0)
                assert isinstance(f.data, dict)
            assert len({f.id for f in store.findings}) == len(store.findings)
            return
        assert "\n" not in store.error and str(Path(tmp) / "findings.json") in store.error
        assert "expected" in store.error
        report = Path(tmp) / "r.md"
        report.write_text("old")
        old_env = os.environ.get("ATTNSCOPE_DATA_DIR")
        os.environ["ATTNSCOPE_DATA_DIR"] = tmp
        try:
            assert wb_main(["export", "--out", str(report)]) == 2
        finally:
            if old_env is None:
                del os.environ["ATTNSCOPE_DATA_DIR"]
            else:
                os.environ["ATTNSCOPE_DATA_DIR"] = old_env
        assert report.read_text() == "old" and (Path(tmp) / "findings.json").read_text() == text


# ---- training configs (a resumed run) --------------------------------------------------------------------------


TRAIN_KEYS = ["layers", "architecture", "k", "l1_coeff", "lr", "batch_size", "total_tokens", "context_size",
              "layer_l1", "layer_d_sae", "prefetch", "autocast", "d_sae", "world_size", "seed"]


@FUZZ
@given(edits=st.lists(st.tuples(st.lists(st.sampled_from(TRAIN_KEYS), min_size=1, max_size=1), json_values),
                      min_size=1, max_size=3))
def test_fuzzed_train_config(edits):
    import argparse

    from sae.cli.train import resumed_config
    from sae.engine.training.config import TrainConfig

    good = TrainConfig(layers=[0], total_tokens=1024, batch_size=128, context_size=16).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "train_config.json").write_text(json.dumps(edit_json(good, edits)))
        args = argparse.Namespace(total_tokens=None, prefetch=None, checkpoint_every=None, preset=None)
        try:
            resumed_config(args, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - the property
            one_line(exc)


# ---- every CLI string argument, hostile ------------------------------------------------------------------------


def string_options() -> list[tuple[str, str]]:
    """(command, --option) for every option of every command that takes free text (no type, no choices)."""
    from sae.cli import build_parser

    import argparse

    out = []

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub_name, sub in a.choices.items():
                    walk(sub, f"{name} {sub_name}".strip())
            elif a.option_strings and a.type is None and a.choices is None and a.nargs is None \
                    and a.const is None and a.dest != "help":
                out.append((name, a.option_strings[-1]))

    walk(build_parser(), "")
    return out


STRING_OPTIONS = string_options()


def test_the_string_options_are_found():
    assert ("train", "--out") in STRING_OPTIONS and ("study label", "--note") in STRING_OPTIONS
    assert len(STRING_OPTIONS) > 40


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(STRING_OPTIONS), value=hostile_text)
def test_hostile_text_in_any_string_option_is_parsed_and_shown_safely(option, value):
    """Every free-text option takes hostile text through the parser and the text-safety layer: the argv is valid
    text afterwards, a usage error about it is one line without control characters."""
    import contextlib
    import io

    from sae.cli import build_parser, text_args
    from sae.cli.common import fail

    command, flag = option
    argv = text_args([*command.split(), flag, value])
    for a in argv:
        a.encode("utf-8")  # valid text: tokenizers, JSON and terminals take it
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            build_parser().parse_known_args(argv)
        except SystemExit:
            pass
        fail(f"something about {value}")
    for line in err.getvalue().splitlines():
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line), repr(line)
    assert err.getvalue().count("attnscope: error:") >= 1


CHEAP_COMMANDS = [
    lambda v, tmp: ["study", "families", "--labels", str(tmp / "l.json"), "--add", v],
    lambda v, tmp: ["study", "report", "--labels", v],
    lambda v, tmp: ["study", "families", "--labels", v],
    lambda v, tmp: ["train", "--out", str(tmp / "r"), "--resume", "--tokens", "256", "--activations", v],
    lambda v, tmp: ["train", "--out", v, "--resume"],
    lambda v, tmp: ["cache", "--out", str(tmp / "file"), "--model", v],
    lambda v, tmp: ["train", "--out", str(tmp / "file"), "--model", v],
]


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(CHEAP_COMMANDS) - 1), value=hostile_text)
def test_hostile_text_through_real_commands(which, value):
    """Commands that answer without a model: exit 0 or 2, one error line, nothing raw on the terminal."""
    import contextlib
    import io

    from sae.cli import main

    import os

    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        (tmp_p / "file").write_text("a file")
        (tmp_p / "cwd").mkdir()
        out, err = io.StringIO(), io.StringIO()
        here = os.getcwd()
        os.chdir(tmp_p / "cwd")  # a relative hostile path lands in the temporary folder
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(CHEAP_COMMANDS[which](value, tmp_p))
        finally:
            os.chdir(here)
        assert sorted(os.listdir(tmp_p / "cwd")) == [], "a command that failed left files behind"
        assert rc in (0, 2), err.getvalue()
        text = out.getvalue() + err.getvalue()
        assert "Traceback" not in text
        assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7F <= ord(c) <= 0x9F for c in text), repr(text[:200])
        if rc == 2:
            assert err.getvalue().count("attnscope: error:") == 1
