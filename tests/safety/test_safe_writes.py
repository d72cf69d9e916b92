"""Issue 25, sections 0 and 2: every writer removes only what it wrote, refuses a directory that is not its own,
never writes inside the installed package or through a link the user did not name, keeps modes, and says a
permission or full-disk error in one line. Each test fails on the code before the fix."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from support import random_sae
from support import SMALL, one_error_line
from support import dead_pid, tree_digest
from sae.cli import main
from sae.engine import safe_io
from sae.engine.formats import load_sae, load_sae_set, save_sae


def snapshot(d: Path) -> dict[str, bytes | str]:
    """Every entry under `d` (hidden ones too) with its bytes, or its link target, or 'dir'."""
    out: dict[str, bytes | str] = {}
    for p in sorted(d.rglob("*")):
        key = str(p.relative_to(d))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[key] = "dir"
        else:
            out[key] = p.read_bytes()
    return out


def users_home(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / ".draft.tmp-1234").write_text("my draft")
    (d / ".build.tmp-4242").mkdir()
    (d / ".build.tmp-4242" / "artifact.bin").write_bytes(b"\x01\x02")
    photos = d / f".photos.old-{dead_pid()}"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"jpg")
    (d / f".notes.trash-{dead_pid()}-1").write_text("still mine")
    (d / "thesis.tex").write_text("\\section{}")
    return d


# ---- 0. training deletes nothing it did not write ----------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_train_refuses_a_directory_of_the_users_files(tiny_model_dir, corpus, tmp_path, capsys, overwrite):
    home = users_home(tmp_path / "home")
    before = snapshot(home)
    args = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
            "--out", str(home), *SMALL] + (["--overwrite"] if overwrite else [])
    assert main(args) == 2
    assert "not an attnscope training run" in one_error_line(capsys)
    assert snapshot(home) == before  # not even a lock file


def test_train_refuses_an_sae_folder_holding_only_a_readme(tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "blocks.0.attn.hook_z").mkdir(parents=True)
    (out / "blocks.0.attn.hook_z" / "README.md").write_text("mine")
    assert main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
                 "--out", str(out), "--overwrite", *SMALL]) == 2
    one_error_line(capsys)
    assert (out / "blocks.0.attn.hook_z" / "README.md").read_text() == "mine"


def test_overwrite_keeps_the_users_note_in_an_sae_folder(tiny_model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
            "--out", str(out), *SMALL]
    assert main(base) == 0, capsys.readouterr().err
    (out / "blocks.0.attn.hook_z" / "MY_NOTES.md").write_text("notes")
    (out / "README.md").write_text("top-level notes")
    assert main([*base, "--overwrite", "--seed", "3"]) == 0, capsys.readouterr().err
    assert (out / "blocks.0.attn.hook_z" / "MY_NOTES.md").read_text() == "notes"
    assert (out / "README.md").read_text() == "top-level notes"
    load_sae(out / "blocks.0.attn.hook_z")


def test_train_never_writes_inside_the_installed_package(tiny_model_dir, corpus, capsys, monkeypatch):
    from sae import zoo

    target = zoo.DEFAULT_SAES_DIR
    before = tree_digest(zoo.DEFAULT_DIR)
    names = sorted(p.name for p in zoo.DEFAULT_DIR.rglob("*"))
    monkeypatch.setattr("sae.cli.train.open_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "256",
                 "--out", str(target), "--overwrite", *SMALL]) == 2
    assert "read-only" in one_error_line(capsys) or "installed" in capsys.readouterr().err
    assert tree_digest(zoo.DEFAULT_DIR) == before
    assert sorted(p.name for p in zoo.DEFAULT_DIR.rglob("*")) == names


def test_eval_write_keeps_the_users_files_in_the_sae_folder(tiny_model, tiny_model_dir, corpus, tmp_path, capsys):
    d = save_sae(random_sae(tiny_model, 1), tmp_path / "sae")
    (d / "README.md").write_text("about my SAE")
    (d / "plots").mkdir()
    (d / "plots" / "curve.png").write_bytes(b"png")
    rc = main(["eval", str(d), "--model", str(tiny_model_dir), "--corpus", str(corpus), "--tokens", "64", "--write",
               "--json"])
    assert rc == 0, capsys.readouterr().err
    assert (d / "README.md").read_text() == "about my SAE"
    assert (d / "plots" / "curve.png").read_bytes() == b"png"
    assert load_sae(d).cfg.extra.get("eval")


def test_a_read_only_command_removes_nothing(tiny_model, tmp_path):
    root = tmp_path / "saes"
    save_sae(random_sae(tiny_model, 0), root / "blocks.0.attn.hook_z")
    pid = dead_pid()
    (root / ".thesis.old-2020").mkdir()
    (root / ".thesis.old-2020" / "ch1.tex").write_text("x")
    (root / f".thesis.tmp-{pid}").write_text("y")
    (root / f".thesis.trash-{pid}-1").mkdir()
    (root / f".blocks.0.attn.hook_z.tmp-{pid}-1").write_text("a user's file named like an old temporary")
    before = snapshot(root)
    assert list(load_sae_set(root)) == [0]
    load_sae(root / "blocks.0.attn.hook_z")
    assert snapshot(root) == before


def test_a_save_removes_only_attnscopes_own_leftovers(tiny_model, tmp_path):
    root = tmp_path / "saes"
    target = root / "blocks.0.attn.hook_z"
    save_sae(random_sae(tiny_model, 0), target)
    pid = dead_pid()
    mine = root / f".blocks.0.attn.hook_z.tmp-{pid}-1"
    mine.write_text("user")
    ours = root / f".blocks.0.attn.hook_z.attnscope-tmp-{pid}-1-x"
    ours.mkdir()
    save_sae(random_sae(tiny_model, 0, seed=4), target)
    assert mine.read_text() == "user" and not ours.exists()


# ---- 2. writes never follow links the user did not name -----------------------------------------------------


def export(monkeypatch, data: Path, out: Path) -> int:
    from workbench.main import main as wb_main

    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(data))
    return wb_main(["export", "--out", str(out)])


def pin_with_figures(data: Path) -> None:
    from workbench.findings import Finding, FindingsStore

    FindingsStore(data).add(Finding(kind="feature", title="f", layer=0, data={
        "heatmap": {"tokens": ["a", "b"], "columns": [1], "values": [[1.0], [0.5]]}, "dfa_heads": [0.1, 0.2]}))


@pytest.mark.parametrize("html", [False, True])
def test_both_exports_write_through_a_link_the_user_named(monkeypatch, tmp_path, capsys, html):
    """One rule for every writer: the report path the user named may be a symlink, and is written through (the
    link stays a link, the file it points to gets the report and keeps its mode); the figures folder the program
    names beside it is never followed (the tests below)."""
    from workbench.main import main as wb_main

    data = tmp_path / "data"
    pin_with_figures(data)
    elsewhere = tmp_path / "notes"
    elsewhere.mkdir()
    real = elsewhere / ("real.html" if html else "real.md")
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / ("link.html" if html else "link.md")
    link.symlink_to(real)
    monkeypatch.setenv("ATTNSCOPE_DATA_DIR", str(data))
    assert wb_main(["export", "--out", str(link)] + (["--html"] if html else [])) == 0, capsys.readouterr().err
    assert "replaced the existing file" in capsys.readouterr().out
    assert link.is_symlink() and os.readlink(link) == str(real)
    text = real.read_text()
    assert text.startswith("<!DOCTYPE html>") if html else text.startswith("# attnscope findings")
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert [p.name for p in elsewhere.iterdir()] == [real.name]  # nothing else written beside the target
    if not html:  # the figures go beside the name the user gave, in a real folder
        assert (tmp_path / "link-figures").is_dir() and not (tmp_path / "link-figures").is_symlink()


def test_export_refuses_a_figures_folder_that_is_a_symlink(monkeypatch, tmp_path, capsys):
    data = tmp_path / "data"
    pin_with_figures(data)
    users = tmp_path / "users-files"
    users.mkdir()
    (users / "01-f-heatmap.svg").write_text("my own drawing")
    (tmp_path / "r-figures").symlink_to(users)
    (tmp_path / "r.md").write_text("old report")
    assert export(monkeypatch, data, tmp_path / "r.md") == 2
    assert "symbolic link" in one_error_line(capsys)
    assert (users / "01-f-heatmap.svg").read_text() == "my own drawing"
    assert (tmp_path / "r.md").read_text() == "old report"


def test_export_never_writes_a_figure_through_a_link(monkeypatch, tmp_path, capsys):
    data = tmp_path / "data"
    pin_with_figures(data)
    unrelated = tmp_path / "unrelated.txt"
    unrelated.write_text("precious")
    figs = tmp_path / "r-figures"
    figs.mkdir()
    (figs / "01-f-heatmap.svg").symlink_to(unrelated)
    (figs / "my-notes.txt").write_text("kept")
    assert export(monkeypatch, data, tmp_path / "r.md") == 0, capsys.readouterr().err
    assert unrelated.read_text() == "precious"
    assert (figs / "my-notes.txt").read_text() == "kept"
    assert "<svg" in (figs / "01-f-heatmap.svg").read_text()


def test_export_keeps_the_old_report_when_the_figures_cannot_be_written(monkeypatch, tmp_path, capsys):
    data = tmp_path / "data"
    pin_with_figures(data)
    (tmp_path / "r-figures").write_text("a file, not a folder")
    (tmp_path / "r.md").write_text("old report")
    assert export(monkeypatch, data, tmp_path / "r.md") == 2
    one_error_line(capsys)
    assert (tmp_path / "r.md").read_text() == "old report"
    assert (tmp_path / "r-figures").read_text() == "a file, not a folder"


def test_export_refuses_a_read_only_report(monkeypatch, tmp_path, capsys):
    data = tmp_path / "data"
    pin_with_figures(data)
    report = tmp_path / "r.md"
    report.write_text("old report")
    os.chmod(report, 0o444)
    assert export(monkeypatch, data, report) == 2
    assert "read-only" in one_error_line(capsys)
    assert report.read_text() == "old report" and stat.S_IMODE(report.stat().st_mode) == 0o444
    assert not (tmp_path / "r-figures").exists()


def test_export_of_a_truncated_findings_file_keeps_the_old_report_in_the_workbench(tmp_path, monkeypatch):
    """The workbench's export (e) on a findings file that became unreadable: an inline error, no '0 findings'."""
    from workbench.findings import FindingsStore

    data = tmp_path / "data"
    pin_with_figures(data)
    store = FindingsStore(data)
    text = (data / "findings.json").read_text()
    (data / "findings.json").write_text(text[: len(text) // 2])
    report = tmp_path / "r.md"
    report.write_text("old report")
    store.reload_if_changed()
    assert store.error
    from workbench.app import WorkbenchApp

    captured = {}

    class FakeApp:
        findings = store
        export_default = str(report)

        def push_screen(self, screen, callback=None):
            captured["check"] = screen.check

        def notify(self, *a, **k):
            captured["notified"] = a

    WorkbenchApp.action_export(FakeApp())  # type: ignore[arg-type]
    fresh = tmp_path / "new.md"  # a path with nothing to replace: the export runs at once (no y/n question)
    error = captured["check"](str(fresh))
    assert error and "nothing exported" in error
    assert not fresh.exists()
    assert report.read_text() == "old report"


# ---- labels -------------------------------------------------------------------------------------------------


def test_labels_through_a_symlink_reach_the_real_file(tmp_path):
    from sae.analysis.labels import LabelStore

    real = tmp_path / "real" / "labels.json"
    real.parent.mkdir()
    LabelStore(real).add_family("mine")
    link = tmp_path / "labels.json"
    link.symlink_to(real)
    LabelStore(link).put("s", 0, 1, "mine")
    assert link.is_symlink()
    assert "s/0/1" in json.loads(real.read_text())["labels"]


def test_labels_keep_their_mode_and_a_read_only_file_is_refused(tmp_path):
    from sae.analysis.labels import LabelStore

    path = tmp_path / "labels.json"
    LabelStore(path).add_family("x")
    os.chmod(path, 0o644)
    LabelStore(path).put("s", 0, 1, "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(safe_io.OutputError, match="read-only"):
        LabelStore(path).put("s", 0, 2, "x")
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o444


@pytest.mark.parametrize("device", ["/dev/full", "/dev/zero", "fifo"])
def test_labels_on_a_device_or_fifo_are_one_line(tmp_path, capsys, monkeypatch, device):
    path = Path(device)
    if device == "fifo":
        path = tmp_path / "labels.json"
        os.mkfifo(path)
    elif not path.exists():
        pytest.skip(f"{device} is missing here")
    monkeypatch.setenv("ATTNSCOPE_LABELS", str(path))
    assert main(["study", "families"]) == 2
    one_error_line(capsys)
    assert main(["study", "families", "--add", "x"]) == 2
    one_error_line(capsys)


def test_labels_in_an_unwritable_folder_are_one_line(tmp_path, capsys, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(safe_io, "atomic_write_with", denied)  # a folder the user cannot write (root ignores chmod)
    import sae.analysis.labels as labels

    monkeypatch.setattr(labels, "atomic_write_text", lambda *a, **k: denied())
    assert main(["study", "families", "--labels", str(tmp_path / "l.json"), "--add", "x"]) == 2
    assert "permission denied" in one_error_line(capsys)


# ---- the activation cache -----------------------------------------------------------------------------------


def test_two_caches_into_one_out_the_second_is_refused(tiny_model, tmp_path):
    import torch

    from sae.engine.activation_cache import write_cache

    out = tmp_path / "cache"
    rows = torch.randint(1, 50, (4, 8))
    with safe_io.DirLock(out, what="attnscope cache"):  # the other `attnscope cache`, still writing
        with pytest.raises(safe_io.LockedError):
            write_cache(tiny_model, rows, [0], out)
    assert not (out / "manifest.json").exists()
    write_cache(tiny_model, rows, [0], out)


def test_full_disk_while_writing_a_shard_is_one_line(tiny_model_dir, corpus, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):  # what safetensors really raises on a full disk: not an OSError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "cache"
    assert main(["cache", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "64",
                 "--context-size", "16", "--out", str(out)]) == 2
    assert "no space left" in one_error_line(capsys)
    assert not [p for p in out.iterdir() if "-tmp-" in p.name]


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_cache_out_a_file_or_read_only_is_one_line(tiny_model_dir, corpus, tmp_path, capsys, monkeypatch, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
    else:
        out.mkdir()
        monkeypatch.setattr(safe_io, "_probe", lambda d: (_ for _ in ()).throw(PermissionError(errno.EROFS, "ro")))
    assert main(["cache", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--layers", "0", "--tokens", "64",
                 "--context-size", "16", "--out", str(out)]) == 2
    one_error_line(capsys)


# ---- modes, permissions, safe_io itself ---------------------------------------------------------------------


def test_dashboard_files_follow_the_umask(tiny_model, tiny_model_dir, corpus, tmp_path, monkeypatch, capsys):
    d = save_sae(random_sae(tiny_model, 0, d_sae=32), tmp_path / "saes" / "blocks.0.attn.hook_z")
    monkeypatch.setenv("ATTNSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    old = os.umask(0o022)
    try:
        assert main(["dashboards", "build", "--layer", "0", "--tokens", "600", "--corpus", str(corpus), "--json",
                     "--model", str(tiny_model_dir), "--saes", str(d)]) == 0, capsys.readouterr().err
    finally:
        os.umask(old)
    built = Path(json.loads(capsys.readouterr().out)["builds"][0]["directory"])
    assert stat.S_IMODE((built / "dashboards.safetensors").stat().st_mode) == 0o644


def test_permission_errors_from_anywhere_are_one_line(monkeypatch, capsys):
    import sae.cli.study as study

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/labels.json")

    monkeypatch.setattr(study, "run_families", denied)
    assert main(["study", "families"]) == 2
    line = one_error_line(capsys)
    assert "permission denied" in line and "/data/labels.json" in line


def test_safe_io_refuses_links_it_was_not_given_and_read_only_files(tmp_path):
    target = tmp_path / "t"
    target.write_text("precious")
    link = tmp_path / "l"
    link.symlink_to(target)
    with pytest.raises(safe_io.OutputError, match="symbolic link"):
        safe_io.atomic_write_text(link, "x", follow_symlink=False)
    safe_io.atomic_write_text(link, "through")  # the user named the link
    assert target.read_text() == "through" and link.is_symlink()
    os.chmod(target, 0o444)
    with pytest.raises(safe_io.OutputError, match="read-only"):
        safe_io.atomic_write_text(target, "y")
    assert target.read_text() == "through"


def test_safe_io_never_writes_inside_a_protected_root(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    safe_io.protect(root)
    try:
        with pytest.raises(safe_io.OutputError, match="installed"):
            safe_io.atomic_write_text(root / "x", "x")
        with pytest.raises(safe_io.OutputError, match="installed"):
            safe_io.check_writable_dir(root / "sub")
        with pytest.raises(safe_io.OutputError, match="installed"):
            safe_io.swap_dir(root / "d", lambda t: None)
        assert list(root.iterdir()) == []
    finally:
        safe_io.READ_ONLY_ROOTS.remove(root.resolve())


def test_read_text_file_refuses_fifos_and_devices(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(safe_io.UnreadableFileError, match="not a regular file"):
        safe_io.read_text_file(fifo)
    with pytest.raises(safe_io.UnreadableFileError):
        safe_io.read_text_file("/dev/zero")


def test_a_lock_file_that_is_a_link_never_empties_its_target(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".attnscope.lock").symlink_to(precious)
    with pytest.raises(safe_io.OutputError):
        safe_io.DirLock(run).acquire()
    assert precious.read_text() == "keep me"


def test_a_checkpoint_name_that_is_a_link_is_refused(tmp_path):
    import torch

    from sae.engine.training.checkpoint import save_checkpoint

    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"mine")
    (tmp_path / "checkpoint.pt").symlink_to(precious)
    with pytest.raises(safe_io.OutputError, match="symbolic link"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"a": torch.ones(1)})
    assert precious.read_bytes() == b"mine"


@pytest.mark.parametrize("out", ["new-run", ""])
def test_a_failed_resume_or_an_empty_out_creates_nothing(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", out, "--resume"]) == 2
    one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
