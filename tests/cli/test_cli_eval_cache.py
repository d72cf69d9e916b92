"""`attnscope eval` through the analysis cache: a second run with the same arguments is read back (and says so in
JSON and markdown), a changed SAE file is evaluated again, `--no-cache` evaluates again, and `ATTNSCOPE_CACHE=off`
neither reads nor stores."""

from __future__ import annotations

import json

import pytest
from support import random_sae, run_cli

from sae.engine import metrics
from sae.engine.formats import save_sae


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """A private cache, the cache switched on, and a count of the real evaluations."""
    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path / "tokens"))
    calls: list[list[int]] = []
    real = metrics.evaluate_saes

    def counting(model, saes, *a, **k):
        calls.append(sorted(saes))
        return real(model, saes, *a, **k)

    monkeypatch.setattr(metrics, "evaluate_saes", counting)
    return calls


def _flip_weight_bytes(path) -> None:
    """Change a few bytes of the weights' data (not the safetensors header): the file still loads, with other
    weights."""
    w = path / "sae_weights.safetensors"
    data = bytearray(w.read_bytes())
    header = int.from_bytes(data[:8], "little") + 8
    for i in range(header + 16, header + 64):
        data[i] ^= 0x5A
    w.write_bytes(bytes(data))


def test_second_eval_is_read_from_the_cache_and_a_changed_sae_file_is_evaluated_again(
        tiny_model, tiny_model_dir, corpus, tmp_path, capsys, counted):
    sae_dir = tmp_path / "sae"
    save_sae(random_sae(tiny_model, 1, d_sae=24, seed=3), sae_dir)
    argv = ["eval", str(sae_dir), "--model", str(tiny_model_dir), "--corpus", str(corpus), "--tokens", "128"]

    code, out, err = run_cli(capsys, argv + ["--json"])
    assert code == 0, err
    first = json.loads(out)
    assert counted == [[1]] and [r["cached"] for r in first] == [False]

    code, out, _ = run_cli(capsys, argv + ["--json"])
    again = json.loads(out)
    assert counted == [[1]] and [r["cached"] for r in again] == [True]
    assert [{k: v for k, v in r.items() if k != "cached"} for r in again] == \
           [{k: v for k, v in r.items() if k != "cached"} for r in first]

    code, out, _ = run_cli(capsys, argv + ["--md"])
    assert code == 0 and "(cached" in out and counted == [[1]]

    # other settings are another key
    code, out, _ = run_cli(capsys, argv + ["--include-bos", "--json"])
    assert json.loads(out)[0]["cached"] is False and len(counted) == 2

    # the SAE file changes: evaluated again, with other results
    _flip_weight_bytes(sae_dir)
    code, out, err = run_cli(capsys, argv + ["--json"])
    assert code == 0, err
    changed = json.loads(out)
    assert changed[0]["cached"] is False and len(counted) == 3
    assert changed[0]["explained_variance"] != first[0]["explained_variance"]

    # --no-cache evaluates again even when the cache holds it
    code, out, _ = run_cli(capsys, argv + ["--no-cache", "--json"])
    assert json.loads(out)[0]["cached"] is False and len(counted) == 4
    code, out, _ = run_cli(capsys, argv + ["--md"])
    assert "(cached" in out and len(counted) == 4


def test_eval_cache_off(tiny_model, tiny_model_dir, corpus, tmp_path, capsys, counted, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_CACHE", "off")
    sae_dir = tmp_path / "sae"
    save_sae(random_sae(tiny_model, 0, d_sae=24, seed=4), sae_dir)
    argv = ["eval", str(sae_dir), "--model", str(tiny_model_dir), "--corpus", str(corpus), "--tokens", "64", "--json"]
    for _ in range(2):
        code, out, _ = run_cli(capsys, argv)
        assert code == 0 and json.loads(out)[0]["cached"] is False
    assert len(counted) == 2
    assert not (tmp_path / "cache" / "results" / "eval").exists()
