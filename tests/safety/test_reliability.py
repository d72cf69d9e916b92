"""Issue 11: nothing lost, nothing executed, one line per error. One test (or parametrized case) per failure of
the attack; each fails on the code before the fix. Kill and concurrency cases use real processes."""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from support import dead_pid, random_sae, tree_digest
from support import SMALL, one_error_line
from sae.cli import main
from sae.engine import safe_io
from sae.engine.formats import SAEFormatError, load_sae, save_sae

ROOT = Path(__file__).resolve().parents[2]


class Evil:
    """A pickle that runs a shell command when loaded with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- 1. runs code -----------------------------------------------------------------------------------------


def test_malicious_lm_checkpoint_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": Evil(marker), "opt": {}, "sampler_rng": torch.zeros(1), "step": 0}, out / "lm_checkpoint.pt")
    rc = main(["zoo", "train-default", "--out", str(out), "--stage", "lm"])
    assert not marker.exists()
    assert rc == 2
    assert "could run code" in one_error_line(capsys)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_raw_pickle_is_refused_by_every_loader(tmp_path):
    import pickle

    from sae.engine.training.loop import load_checkpoint
    from sae.zoo.lm import load_lm_checkpoint

    marker = tmp_path / "PWNED"
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"model": Evil(marker)}))
    with pytest.raises(safe_io.UnsafeFileError):
        load_lm_checkpoint(path)
    with pytest.raises(safe_io.UnsafeFileError):  # passed on as it is, not re-wrapped
        load_checkpoint(path)
    assert not marker.exists()


def test_no_torch_load_outside_safe_io():
    """Every torch.load goes through safe_torch_load (weights only)."""
    offenders = []
    for py in list((ROOT / "sae").rglob("*.py")) + list((ROOT / "workbench").rglob("*.py")):
        if py.name == "safe_io.py":
            continue
        if re.search(r"(?<!`)\btorch\.load\(", py.read_text()):  # a call, not a `mention` in a docstring
            offenders.append(str(py.relative_to(ROOT)))
    assert offenders == []


def test_lm_checkpoint_round_trip_weights_only(tmp_path):
    from sae.zoo.lm import _atomic_torch_save, load_lm_checkpoint

    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), betas=(0.9, 0.98))
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    g = torch.Generator().manual_seed(3)
    _atomic_torch_save({"model": lin.state_dict(), "opt": opt.state_dict(), "sampler_rng": g.get_state(), "step": 7,
                        "cfg": {"betas": (0.9, 0.98), "extra": {}}}, tmp_path / "lm_checkpoint.pt")
    state = load_lm_checkpoint(tmp_path / "lm_checkpoint.pt")
    assert state["step"] == 7 and state["cfg"]["betas"] == (0.9, 0.98)
    opt.load_state_dict(state["opt"])


def test_truncated_lm_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": {"w": torch.randn(64, 64)}, "opt": {}, "sampler_rng": torch.zeros(4), "step": 3},
               out / "lm_checkpoint.pt")
    data = (out / "lm_checkpoint.pt").read_bytes()
    (out / "lm_checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert main(["zoo", "train-default", "--out", str(out), "--stage", "lm"]) == 2
    assert "truncated or corrupted" in one_error_line(capsys)


# ---- 2-5. damages or loses data -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cfg.json", "sae_weights.safetensors"])
def test_eval_write_on_a_file_keeps_the_sae(tiny_model, tiny_model_dir, corpus, tmp_path, capsys, name):
    d = save_sae(random_sae(tiny_model, 1), tmp_path / "sae")
    rc = main(["eval", str(d / name), "--model", str(tiny_model_dir), "--corpus", str(corpus), "--tokens", "64",
               "--write", "--json"])
    assert rc == 0, capsys.readouterr().err
    assert (d / name).is_file()
    assert load_sae(d).cfg.extra.get("eval", {}).get("layer") == 1  # the metrics went into the SAE dir


def test_eval_write_never_rewrites_the_shipped_saes(monkeypatch, capsys):
    from sae import zoo

    ran = []
    monkeypatch.setattr("sae.engine.metrics.evaluate_saes", lambda *a, **k: ran.append(1) or [])
    before = tree_digest(zoo.DEFAULT_SAES_DIR)
    rc = main(["eval", "--write", "--tokens", "64"])
    assert rc == 2 and not ran  # refused before the evaluation
    assert "read-only" in one_error_line(capsys)
    assert tree_digest(zoo.DEFAULT_SAES_DIR) == before


def test_save_sae_refuses_the_shipped_dir_and_files(tiny_model, tmp_path):
    from sae import zoo

    with pytest.raises(SAEFormatError, match="read-only"):
        save_sae(random_sae(tiny_model, 0), zoo.DEFAULT_SAES_DIR / "blocks.0.attn.hook_z")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SAEFormatError, match="is a file"):
        save_sae(random_sae(tiny_model, 0), f)
    assert f.read_text() == "x"


def test_train_refuses_existing_saes_without_overwrite(tiny_model, tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    sae_dir = save_sae(random_sae(tiny_model, 0), out / "blocks.0.attn.hook_z")
    before = tree_digest(sae_dir)
    args = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
            "--out", str(out), "--json", *SMALL]
    assert main(args) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert tree_digest(sae_dir) == before
    assert main([*args, "--overwrite"]) == 0
    assert tree_digest(sae_dir) != before


def test_second_writer_in_the_same_process_is_refused(tiny_model_dir, corpus, tmp_path, capsys):
    from sae.engine.training.loop import lock_output_dir

    out = tmp_path / "run"
    lock = lock_output_dir(out)  # another holder (a second fd: flock treats it as another writer)
    try:
        rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0",
                   "--tokens", "256", "--out", str(out), *SMALL])
    finally:
        lock.release()
    assert rc == 2
    assert "in use by process" in one_error_line(capsys)
    assert not (out / "train_config.json").exists()


def test_two_train_processes_into_one_out(tiny_model_dir, corpus, tmp_path, capsys):
    """A real `attnscope train` holds --out; a second run into it is refused with one line; the first run's
    files stay consistent (its config beside its weights) and it resumes."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "workbench.main", "train", "--model", str(tiny_model_dir), "--corpus", str(corpus),
         "--layers", "0", "--tokens", str(128 * 100_000), "--checkpoint-every", "0", "--out", str(out), "--seed", "1",
         *SMALL], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "train_config.json").exists():  # written under the lock, once the run started
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline
            time.sleep(0.1)
        rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0",
                   "--tokens", "256", "--out", str(out), "--seed", "2", *SMALL])
        assert rc == 2
        assert f"in use by process {first.pid}" in one_error_line(capsys)
    finally:
        first.send_signal(signal.SIGTERM)  # writes a checkpoint and stops
        first.wait(120)
    assert json.loads((out / "train_config.json").read_text())["seed"] == 1
    assert load_sae(out / "blocks.0.attn.hook_z").cfg.extra["training"]["seed"] == 1
    assert main(["train", "--out", str(out), "--resume", "--model", str(tiny_model_dir), "--tokens", "2560"]) == 0


# ---- 6. export through links, refuse non-regular targets, say "replaced" -------------------------------------


def export(monkeypatch, data_dir: Path, out: Path | str) -> int:
    from workbench.main import main as wb_main

    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(data_dir))
    return wb_main(["export", "--out", str(out)])


def test_export_writes_through_a_symlink(monkeypatch, tmp_path, capsys):
    real = tmp_path / "real.md"
    real.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(real)
    assert export(monkeypatch, tmp_path / "data", link) == 0
    assert link.is_symlink() and "# attnscope findings" in real.read_text()
    assert "replaced the existing file" in capsys.readouterr().out


def test_export_says_when_a_file_is_replaced(monkeypatch, tmp_path, capsys):
    out = tmp_path / "report.md"
    assert export(monkeypatch, tmp_path / "data", out) == 0
    assert "replaced" not in capsys.readouterr().out
    assert export(monkeypatch, tmp_path / "data", out) == 0
    assert "replaced the existing file" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["fifo", "device", "dir"])
def test_export_refuses_non_regular_targets(monkeypatch, tmp_path, capsys, kind):
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null twin inside tmp_path
    else:
        target.mkdir()
    mode = os.lstat(target).st_mode
    assert export(monkeypatch, tmp_path / "data", target) == 2
    one_error_line(capsys)
    assert os.lstat(target).st_mode == mode  # still the fifo / device / directory


# ---- 7. two workbenches, one findings file ------------------------------------------------------------------


def test_two_stores_keep_each_others_pins(tmp_path):
    from workbench.findings import Finding, FindingsStore

    a, b = FindingsStore(tmp_path), FindingsStore(tmp_path)
    fa = a.add(Finding(kind="feature", title="from a"))
    fb = b.add(Finding(kind="feature", title="from b"))  # b never re-read the file by hand
    a.add(Finding(kind="head", title="from a again"))
    a.set_note(fb.id, "noted in a")  # a pin a did not make when it loaded
    b.remove(fa.id)
    titles = {f.title: f.note for f in FindingsStore(tmp_path).findings}
    assert titles == {"from b": "noted in a", "from a again": ""}


def test_reload_if_changed(tmp_path):
    from workbench.findings import Finding, FindingsStore

    a, b = FindingsStore(tmp_path), FindingsStore(tmp_path)
    assert a.reload_if_changed() is False
    b.add(Finding(kind="note", title="seen by a"))
    assert a.reload_if_changed() is True
    assert [f.title for f in a.findings] == ["seen by a"]
    assert a.reload_if_changed() is False
    a.add(Finding(kind="note", title="second"))
    assert a.reload_if_changed() is False  # its own write is not "a change by someone else"


PIN_MANY = """
import sys
from pathlib import Path
from workbench.findings import Finding, FindingsStore

def pin_many(directory, who, n):
    store = FindingsStore(Path(directory))
    for i in range(n):
        store.add(Finding(kind="note", title=f"{who}-{i}"))

if __name__ == "__main__":
    pin_many(sys.argv[1], sys.argv[2], 15)
"""


def _pin_many(directory: str, who: str, n: int) -> None:
    scope: dict = {}
    exec(PIN_MANY, scope)  # the same code the child processes run
    scope["pin_many"](directory, who, n)


def test_findings_from_several_processes_and_threads_all_survive(tmp_path):
    code = PIN_MANY
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"p{i}"], cwd=ROOT, env=env) for i in range(3)]
    threads = [threading.Thread(target=_pin_many, args=(str(tmp_path), f"t{i}", 15)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(60) == 0 for p in procs)
    from workbench.findings import FindingsStore

    titles = sorted(f.title for f in FindingsStore(tmp_path).findings)
    assert len(titles) == 75 and len(set(titles)) == 75


# ---- 8. a damaged findings file ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"findings": [{"kind": "feature", "title": 5}]}),
    json.dumps({"findings": [{"kind": "feature", "title": "x", "layer": "two"}]}),
    json.dumps({"findings": [{"kind": "feature", "title": "x", "data": [1]}]}),
    json.dumps({"findings": {"kind": "feature"}}),
    json.dumps([1, 2]),
])
def test_export_with_damaged_findings_is_one_line_and_keeps_the_file(monkeypatch, tmp_path, capsys, content):
    data = tmp_path / "data"
    data.mkdir()
    (data / "findings.json").write_text(content)
    out = tmp_path / "report.md"
    assert export(monkeypatch, data, out) == 2
    assert "findings" in one_error_line(capsys)
    assert (data / "findings.json").read_text() == content
    assert sorted(p.name for p in data.iterdir() if not p.name.endswith(".lock")) == ["findings.json"]
    assert not out.exists()


def test_read_only_data_dir_with_damaged_findings(monkeypatch, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "findings.json").write_text("{oops")

    def no_writes(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", no_writes)  # a read-only data dir (root ignores chmod)
    monkeypatch.setattr(os, "rename", no_writes)
    assert export(monkeypatch, data, tmp_path / "r.md") == 2
    one_error_line(capsys)
    from workbench.findings import Finding, FindingsError, FindingsStore

    store = FindingsStore(data)
    assert store.error and store.findings == []
    with pytest.raises(FindingsError):
        store.add(Finding(kind="note", title="x"))
    assert (data / "findings.json").read_text() == "{oops"


def test_a_pin_after_damage_keeps_the_damaged_file_aside_and_says_so(tmp_path):
    from workbench.findings import Finding, FindingsStore

    (tmp_path / "findings.json").write_text("{oops")
    store = FindingsStore(tmp_path)
    store.add(Finding(kind="note", title="fresh"))
    aside = list(tmp_path.glob("findings.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{oops"
    assert aside[0].name in store.warning
    assert [f.title for f in FindingsStore(tmp_path).findings] == ["fresh"]


# ---- 9. crash windows ---------------------------------------------------------------------------------------


KILL_POINTS = [("replace", 1), ("replace", 2), ("replace", 3), ("rmtree", 1), ("fsync", 2)]


@pytest.mark.parametrize("what,nth", KILL_POINTS)
def test_kill_at_each_point_of_the_directory_swap(tiny_model, tmp_path, what, nth):
    """A child process saves a new SAE over an old one and is killed (os._exit) at the nth call of os.replace /
    shutil.rmtree / os.fsync; the next load finds the old or the new SAE, and no leftovers remain."""
    target = tmp_path / "blocks.0.attn.hook_z"
    old, new = random_sae(tiny_model, 0, seed=1), random_sae(tiny_model, 0, seed=2)
    save_sae(old, target)
    pid = os.fork()
    if pid == 0:  # the child: die at the chosen point
        try:
            calls = {"n": 0}
            real = {"replace": os.replace, "rmtree": shutil.rmtree, "fsync": os.fsync}[what]

            def dying(*a, **k):
                calls["n"] += 1
                if calls["n"] == nth:
                    os._exit(9)
                return real(*a, **k)

            if what == "rmtree":
                shutil.rmtree = dying
            else:
                setattr(os, what, dying)
            save_sae(new, target)
        except BaseException:  # noqa: BLE001 - the child reports any failure by its exit status
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the child failed before its kill point (exit {code})"  # 9: killed there, 0: finished
    loaded = load_sae(target)
    got = loaded.W_enc.detach()
    if code == 0:  # the save finished (the nth call never came): the new SAE is there
        assert torch.equal(got, new.W_enc.detach())
    else:
        assert torch.equal(got, old.W_enc.detach()) or torch.equal(got, new.W_enc.detach())
    safe_io.recover_dir(target)  # a writer cleans the dead process's leftovers (a load deletes nothing: issue 25)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_kill_between_the_renames_then_load_a_set(tiny_model, tmp_path):
    """The parent directory scan (`load_sae_set` on a dir of SAE dirs) also recovers a half-swapped SAE."""
    from sae.engine.formats import load_sae_set

    target = tmp_path / "blocks.1.attn.hook_z"
    save_sae(random_sae(tiny_model, 1, seed=1), target)
    pid = os.fork()
    if pid == 0:
        try:
            real, n = os.replace, {"n": 0}

            def dying(*a, **k):
                n["n"] += 1
                if n["n"] == 2:
                    os._exit(9)
                return real(*a, **k)

            os.replace = dying
            save_sae(random_sae(tiny_model, 1, seed=2), target)
        except BaseException:  # noqa: BLE001 - the child reports any failure by its exit status
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9  # killed at the second rename, nothing else
    assert not target.exists()  # the crash window itself
    assert list(load_sae_set(tmp_path, model=tiny_model)) == [1]


def test_stale_checkpoint_temporaries_are_cleaned(tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f".checkpoint.pt.attnscope-tmp-{dead_pid()}-1"
    stale.write_bytes(b"x" * 1000)
    live = out / f".checkpoint.pt.attnscope-tmp-{os.getppid()}-1"  # a live process's temporary stays
    live.write_bytes(b"y")
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
               "--out", str(out), *SMALL])
    assert rc == 0, capsys.readouterr().err
    assert not stale.exists() and live.exists()


def test_failure_between_the_renames_in_process_puts_the_old_copy_back(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "sae"
    old = random_sae(tiny_model, 0, seed=1)
    save_sae(old, target)
    real, n = os.replace, {"n": 0}

    def failing(*a, **k):
        n["n"] += 1
        if n["n"] == 2:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(*a, **k)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(safe_io.OutputError):
        save_sae(random_sae(tiny_model, 0, seed=2), target)
    monkeypatch.setattr(os, "replace", real)
    assert torch.equal(load_sae(target).W_enc.detach(), old.W_enc.detach())


# ---- 10. the umask ------------------------------------------------------------------------------------------


def test_sae_dirs_exports_and_checkpoints_follow_the_umask(tiny_model, monkeypatch, tmp_path):
    old = os.umask(0o027)
    try:
        d = save_sae(random_sae(tiny_model, 0), tmp_path / "sae")
        assert stat.S_IMODE(d.stat().st_mode) == 0o750
        assert {stat.S_IMODE(f.stat().st_mode) for f in d.iterdir()} == {0o640}
        from workbench.findings import write_export

        assert stat.S_IMODE(write_export(tmp_path / "r.md", "x").stat().st_mode) == 0o640
        from sae.engine.training.loop import save_checkpoint

        save_checkpoint(tmp_path / "c.pt", {"a": torch.ones(1)})
        assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o640
        os.umask(0o022)
        d = save_sae(random_sae(tiny_model, 0), tmp_path / "sae")  # replacing keeps to the umask too
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
        assert {stat.S_IMODE(f.stat().st_mode) for f in d.iterdir()} == {0o644}
    finally:
        os.umask(old)


def test_replacing_a_file_keeps_its_mode(tmp_path):
    f = tmp_path / "r.md"
    f.write_text("a")
    os.chmod(f, 0o604)
    assert safe_io.atomic_write_text(f, "b") is True
    assert stat.S_IMODE(f.stat().st_mode) == 0o604 and f.read_text() == "b"


# ---- 11. NaN / inf weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(tiny_model, tiny_model_dir, tmp_path, capsys, bad):
    sae = random_sae(tiny_model, 0)
    with torch.no_grad():
        sae.W_dec[3, 2] = bad
    d = save_sae(sae, tmp_path / "sae")
    with pytest.raises(SAEFormatError, match="NaN or inf"):
        load_sae(d)
    assert main(["eval", str(d), "--model", str(tiny_model_dir), "--tokens", "64"]) == 2
    assert "NaN or inf" in one_error_line(capsys)


# ---- 12. one line and exit 2 instead of tracebacks -----------------------------------------------------------


def _sae_with_cfg(tiny_model, tmp_path, change) -> Path:
    d = save_sae(random_sae(tiny_model, 0), tmp_path / "sae")
    cfg = json.loads((d / "cfg.json").read_text())
    change(cfg)
    (d / "cfg.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("change", [
    lambda c: c.update(d_sae=10**12),
    lambda c: c.update(d_sae=1e12),
    lambda c: c.update(metadata=[1, 2]),
    lambda c: c.update(metadata="blocks.0.attn.hook_z"),
    lambda c: c.update(n_heads=0),
    lambda c: c.update(activation_fn_kwargs=[3]),
], ids=["d_sae-1e12-int", "d_sae-1e12-float", "metadata-list", "metadata-text", "n_heads-0", "fn-kwargs-list"])
def test_bad_cfg_fields_are_one_line(tiny_model, tiny_model_dir, tmp_path, capsys, change):
    d = _sae_with_cfg(tiny_model, tmp_path, change)
    assert main(["eval", str(d), "--model", str(tiny_model_dir), "--tokens", "64"]) == 2
    one_error_line(capsys)


@pytest.mark.parametrize("flags,needle", [
    # TrainConfig's errors name its fields (the CLI flags are generated from them: --warmup-steps <-> warmup_steps)
    (["--context-size", "1"], "context_size"),
    (["--warmup-steps", "-1"], "warmup_steps"),
    (["--checkpoint-every", "-5"], "checkpoint_every"),
    (["--resample-every", "-100"], "resample_every"),
])
def test_bad_training_numbers_are_one_line(tiny_model_dir, corpus, tmp_path, capsys, flags, needle):
    base = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
            "--out", str(tmp_path / "run"), *SMALL]
    assert main([*base, *flags]) == 2
    assert needle in one_error_line(capsys)


def test_resume_with_negative_checkpoint_every_is_one_line(tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens",
                 "256", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--checkpoint-every", "-1"]) == 2
    assert "checkpoint_every" in one_error_line(capsys)


def test_out_that_is_a_file_is_one_line_before_loading(tiny_model_dir, corpus, tmp_path, capsys, monkeypatch):
    f = tmp_path / "out"
    f.write_text("not a dir")
    monkeypatch.setattr("sae.cli.train.open_model", lambda *a, **k: pytest.fail("model loaded before --out checked"))
    assert main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--out", str(f), *SMALL]) == 2
    assert "is a file" in one_error_line(capsys)
    assert f.read_text() == "not a dir"


def test_read_only_out_is_one_line_before_loading(tiny_model_dir, corpus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()

    def read_only(d):
        raise PermissionError(errno.EROFS, "Read-only file system")

    if os.geteuid() == 0:  # root writes anywhere: simulate the read-only mount
        monkeypatch.setattr(safe_io, "_probe", read_only)
    else:
        os.chmod(out, 0o555)
    monkeypatch.setattr("sae.cli.train.open_model", lambda *a, **k: pytest.fail("model loaded before --out checked"))
    assert main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--out", str(out), *SMALL]) == 2
    assert "not writable" in one_error_line(capsys)


def test_full_disk_during_training_is_one_line(tiny_model_dir, corpus, tmp_path, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
                 "--out", str(out), *SMALL]) == 2
    assert "no space left" in one_error_line(capsys)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_a_disk_that_fills_while_torch_writes_a_checkpoint_is_one_line(tiny_model_dir, corpus, tmp_path, capsys,
                                                                        monkeypatch):
    """The disk fills part-way through torch.save's write of checkpoint.pt: torch itself turns the OS's ENOSPC into
    a RuntimeError ("unexpected pos ..."); the user still gets one line naming the full disk, exit 2, no temp."""
    import builtins

    from sae.engine import safe_io

    class FillsUp:
        def __init__(self, fh):
            self.fh, self.left = fh, 200

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def opener(path, mode="r", *a, **k):
        fh = builtins.open(path, mode, *a, **k)
        return FillsUp(fh) if mode == "wb" else fh  # save_torch's file: fills up

    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(safe_io, "open", opener, raising=False)
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
                 "--out", str(out), *SMALL]) == 2
    assert "no space left" in one_error_line(capsys).lower()
    assert not [p for p in out.iterdir() if "-tmp-" in p.name]


def test_full_disk_while_saving_an_sae_keeps_the_old_one(tiny_model, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    old = random_sae(tiny_model, 0, seed=1)
    d = save_sae(old, tmp_path / "sae")

    def full(*a, **k):  # what safetensors really raises on a full disk: not an OSError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(safe_io.OutputError, match="no space left"):
        save_sae(random_sae(tiny_model, 0, seed=2), d)
    monkeypatch.undo()
    assert torch.equal(load_sae(d).W_enc.detach(), old.W_enc.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


@pytest.fixture
def dash_env(tiny_model, tmp_path, monkeypatch):
    sae_dir = save_sae(random_sae(tiny_model, 0, d_sae=32), tmp_path / "saes" / "blocks.0.attn.hook_z")
    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    return sae_dir


def _dash(tiny_model_dir, sae_dir, corpus, *extra: str) -> list[str]:
    return ["--model", str(tiny_model_dir), "--saes", str(sae_dir), *extra]


@pytest.mark.parametrize("damage", ["index", "data", "partial"])
def test_corrupt_dashboard_cache_is_one_line_and_rebuilt_without_force(
        tiny_model_dir, corpus, dash_env, tmp_path, capsys, damage):
    build = ["dashboards", "build", "--layer", "0", "--tokens", "600", "--corpus", str(corpus), "--json",
             *_dash(tiny_model_dir, dash_env, corpus)]
    show = ["dashboard", "--layer", "0", "--feature", "1", "--json", *_dash(tiny_model_dir, dash_env, corpus)]
    assert main(build) == 0, capsys.readouterr().err
    built = Path(json.loads(capsys.readouterr().out)["builds"][0]["directory"])
    if damage == "index":
        (built / "index.json").write_text("{")
    elif damage == "data":
        (built / "dashboards.safetensors").write_bytes(b"\x00" * 10)
    else:
        (built / "partial.json").write_text("[")
        (built / "partial.safetensors").write_bytes(b"junk")
        (built / "index.json").unlink()
    if damage != "partial":
        assert main(show) == 2
        assert "damaged" in one_error_line(capsys)
    assert main(build) == 0, capsys.readouterr().err  # no --force needed
    assert json.loads(capsys.readouterr().out)["builds"][0]["status"] == "built"
    assert main(show) == 0


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_unwritable_cache_dir_fails_before_the_scan(tiny_model_dir, corpus, dash_env, tmp_path, capsys, monkeypatch,
                                                    kind):
    cache = tmp_path / "cache"
    if kind == "file":
        cache.write_text("a file")
    else:
        cache.mkdir()
        monkeypatch.setattr(safe_io, "_probe", lambda d: (_ for _ in ()).throw(PermissionError(errno.EACCES, "no")))
    monkeypatch.setattr("sae.analysis.dashboards.heldout_rows", lambda *a, **k: pytest.fail("scan started"))
    rc = main(["dashboards", "build", "--layer", "0", "--tokens", "600", "--corpus", str(corpus),
               *_dash(tiny_model_dir, dash_env, corpus)])
    assert rc == 2
    assert "dashboard cache folder" in one_error_line(capsys)


def test_model_dir_without_tokenizer_is_one_line(tiny_model, tiny_model_dir, corpus, tmp_path, capsys):
    d = tmp_path / "model"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, d / name)
    from sae.engine.models import ModelLoadError, load_model

    model = load_model(str(d), device="cpu")  # weights alone load (tests of the z convention need no text)
    with pytest.raises(ModelLoadError, match="no usable tokenizer"):
        model.to_tokens("hello there")
    sae_dir = save_sae(random_sae(tiny_model, 0), tmp_path / "sae")
    assert main(["eval", str(sae_dir), "--model", str(d), "--corpus", str(corpus), "--tokens", "64"]) == 2
    assert "no usable tokenizer" in one_error_line(capsys)


# ---- 13. cancel, fingerprints, offline, value bias -----------------------------------------------------------


def test_cancelled_evaluation_raises(tiny_model):
    from sae.engine.jobs import CancelToken, Cancelled
    from sae.engine.metrics import evaluate_saes

    rows = torch.randint(1, 50, (4, 8))
    rows[:, 0] = tiny_model.bos_token_id
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        evaluate_saes(tiny_model, {0: random_sae(tiny_model, 0)}, rows, cancel=tok)
    ev = CancelToken()
    seen = []

    def progress(p):
        seen.append(p.done)
        ev.cancel()  # cancelled after the first batch: no result from part of the rows

    with pytest.raises(Cancelled):
        evaluate_saes(tiny_model, {0: random_sae(tiny_model, 0)}, rows, batch_rows=2, on_progress=progress, cancel=ev)
    assert seen == [2]


class _FakeCfg:
    n_layers, d_model, n_heads, d_head, d_vocab = 1, 4, 2, 2, 8


class _FakeBridge:
    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.cfg = _FakeCfg()
        self.W_E = torch.randn(8, 4, generator=g)
        self.W_V = torch.randn(1, 2, 4, 2, generator=g)
        self.W_O = torch.randn(1, 2, 2, 4, generator=g)


def test_model_fingerprint_is_not_keyed_on_a_reused_id(monkeypatch):
    """Two models alive one after the other at the same address (CPython reuses a freed object's id): here
    every id() is made equal, the worst case of that reuse."""
    import sae.analysis.dashboards.store as dash
    from sae.engine.models import LoadedModel

    monkeypatch.setattr(dash, "id", lambda obj: 4242, raising=False)  # shadows the builtin inside the module

    def model(seed: int) -> LoadedModel:
        return LoadedModel(bridge=_FakeBridge(seed), name="fake", device=torch.device("cpu"), dtype=torch.float32)

    first = model(0)
    fp0 = dash.model_fingerprint(first)
    del first
    gc.collect()
    other = model(1)
    assert dash.model_fingerprint(other) != fp0
    assert dash.model_fingerprint(model(0)) == fp0  # same weights, same fingerprint
    gc.collect()
    # entries die with their models (other tests' session models may hold entries of their own)
    assert sum(isinstance(k, _FakeBridge) for k in list(dash._FINGERPRINTS.keys())) <= 2


def test_offline_fallback_reaches_an_already_imported_hub(monkeypatch):
    import huggingface_hub.constants as hc
    from transformer_lens.model_bridge import TransformerBridge

    from sae.engine import models

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)  # imported while online
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    seen = {}

    def boot(*a, **k):
        seen["offline"] = hc.is_offline_mode() if hasattr(hc, "is_offline_mode") else hc.HF_HUB_OFFLINE
        raise RuntimeError("not cached")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    with pytest.raises(models.ModelLoadError):
        models.load_model("no-such-org/no-such-model", device="cpu")
    assert seen["offline"] is True
    assert hc.HF_HUB_OFFLINE is False  # restored


def test_missing_value_bias_is_explicit():
    from sae.engine.models import LoadedModel, ModelLoadError

    class HF(torch.nn.Module):
        def __init__(self, bias: bool) -> None:
            super().__init__()
            self.v_proj = torch.nn.Linear(4, 4, bias=bias)
            if bias:
                torch.nn.init.constant_(self.v_proj.bias, 0.5)

    class Bridge:  # exposes no b_V
        def __init__(self, bias: bool) -> None:
            self.cfg = _FakeCfg()
            self.original_model = HF(bias)

    with_bias = LoadedModel(Bridge(True), "biased", torch.device("cpu"), torch.float32)
    with pytest.raises(ModelLoadError, match="exposes no b_V"):
        with_bias.z_offset(0)
    without = LoadedModel(Bridge(False), "bias-free", torch.device("cpu"), torch.float32)
    assert torch.equal(without.z_offset(0), torch.zeros(2, 2))


# ---- the lock itself ----------------------------------------------------------------------------------------


def test_lock_of_a_killed_process_is_free_again(tmp_path):
    code = ("import sys, time; from sae.engine.safe_io import DirLock; DirLock(sys.argv[1], 'holder').acquire(); "
            "print('held', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(safe_io.LockedError, match=f"process {p.pid} .*holder"):
            safe_io.DirLock(tmp_path).acquire()
    finally:
        p.kill()
        p.wait()
    with safe_io.DirLock(tmp_path, "me") as lock:  # stale: its holder is gone
        assert lock.held


def test_zoo_out_that_is_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "out"
    f.write_text("x")
    assert main(["zoo", "train-default", "--out", str(f), "--stage", "lm"]) == 2
    assert "is a file" in one_error_line(capsys)


def test_full_disk_while_saving_the_default_lm_keeps_the_old_files(tmp_path, monkeypatch):
    """`zoo train-default` writes the LM file by file through a temporary sibling: ENOSPC is one line, and every
    file already there stays whole."""
    import errno
    import shutil as shutil_mod

    from transformers import GPT2Config, GPT2LMHeadModel

    from sae.engine.safe_io import OutputError
    from sae.zoo.lm import save_model_files

    d = tmp_path / "model"
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8,
                                       bos_token_id=0, eos_token_id=0))
    save_model_files(model, d)
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil_mod, "copyfile", full)
    with pytest.raises(OutputError, match="(?i)no space"):
        save_model_files(model, d)
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before  # no temporaries left, old files whole
