"""The label store (concurrent writers lose nothing, writes are atomic), sampling, the study report's shares."""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest

from sae.analysis import labels
from sae.analysis.labels import LabelError, LabelStore


def test_two_instances_interleaved_keep_every_label(tmp_path):
    path = tmp_path / "labels.json"
    a, b = LabelStore(path), LabelStore(path)
    a.put("sae1", 0, 1, "induction", 2, author="ann")
    b.put("sae1", 0, 2, "previous-token", 1, author="bob")  # b never read a's label before writing
    a.put("sae1", 1, 3, "other", 0, author="ann")
    b.add_family("successor-ish")
    a.put("sae1", 1, 4, "successor-ish", author="ann")  # a sees b's new family without reloading
    got = {(x.layer, x.feature): (x.family, x.rating, x.author) for x in LabelStore(path).labels()}
    assert got == {(0, 1): ("induction", 2, "ann"), (0, 2): ("previous-token", 1, "bob"),
                   (1, 3): ("other", 0, "ann"), (1, 4): ("successor-ish", None, "ann")}
    assert a.remove("sae1", 0, 2) and not b.remove("sae1", 0, 2)
    assert b.get("sae1", 0, 2) is None and b.get("sae1", 0, 1).family == "induction"


def test_threads_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "labels.json"

    def writer(who: str, start: int) -> None:
        store = LabelStore(path)  # each its own instance, as two app windows would have
        for i in range(start, start + 25):
            store.put("s", 2, i, "induction" if i % 2 else "other", i % 3, note=who, author=who)

    ts = [threading.Thread(target=writer, args=(w, k * 100)) for k, w in enumerate(("ann", "bob", "cy"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    got = LabelStore(path).labels()
    assert len(got) == 75 and {x.feature for x in got} == {k * 100 + i for k in range(3) for i in range(25)}
    assert all(x.note == x.author for x in got)


def _process_writer(path: str, start: int) -> None:
    store = LabelStore(path)
    for i in range(start, start + 20):
        store.put("s", 0, i, "other", 1, author=str(start))


def test_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "labels.json")
    ctx = multiprocessing.get_context("fork")
    ps = [ctx.Process(target=_process_writer, args=(path, k * 1000)) for k in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
    assert all(p.exitcode == 0 for p in ps)
    assert {x.feature for x in LabelStore(path).labels()} == set(range(20)) | set(range(1000, 1020))


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "labels.json"
    store = LabelStore(path)
    store.put("s", 0, 1, "induction", 2)
    before = path.read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(labels.json, "dumps", boom)  # the text is made before the atomic write
    with pytest.raises(OSError):
        store.put("s", 0, 2, "other")
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.json", "labels.json.lock"]


def test_bad_labels_and_files_are_one_line_errors(tmp_path):
    store = LabelStore(tmp_path / "labels.json")
    with pytest.raises(LabelError, match="unknown family 'telepathy'"):
        store.put("s", 0, 1, "telepathy")
    with pytest.raises(LabelError, match="rating must be one of"):
        store.put("s", 0, 1, "other", rating=5)
    (tmp_path / "bad.json").write_text("{not json")
    from sae.engine.schema import FileFormatError

    with pytest.raises(FileFormatError, match="bad.json: expected valid JSON"):  # the schema layer's one error type
        LabelStore(tmp_path / "bad.json").put("s", 0, 1, "other")
    assert (tmp_path / "bad.json").read_text() == "{not json"  # nothing already saved is lost


def test_sampling_is_seeded_live_only_and_per_layer():
    live = [3, 5, 8, 13, 21, 34, 55, 89, 144]
    a = labels.sample_features(live, 4, seed=1, layer=2)
    assert a == labels.sample_features(list(reversed(live)), 4, seed=1, layer=2)  # order of the input is irrelevant
    assert len(set(a)) == 4 and set(a) <= set(live)
    assert a != labels.sample_features(live, 4, seed=2, layer=2) or a != labels.sample_features(live, 4, seed=1, layer=3)
    assert sorted(labels.sample_features(live, 50, seed=0, layer=0)) == live
    with pytest.raises(LabelError):
        labels.sample_features(live, 0, 0, 0)


def test_report_shares_equal_a_hand_count(tmp_path):
    store = LabelStore(tmp_path / "labels.json")
    # layer 0: 4 labels; layer 1: 3 labels (one unrated)
    store.put("s", 0, 1, "previous-token", 2)
    store.put("s", 0, 2, "previous-token", 1)
    store.put("s", 0, 3, "short-range context", 2)
    store.put("s", 0, 4, "other", 0)
    store.put("s", 1, 1, "induction", 2)
    store.put("s", 1, 2, "induction", None)
    store.put("s", 1, 3, "long-range context", 0)
    rep = labels.study_report(store)
    by = {ls.layer: ls for ls in rep.layers}
    assert by[0].n == 4 and by[0].shares["previous-token"] == 0.5 and by[0].shares["short-range context"] == 0.25
    assert by[0].shares["other"] == 0.25 and by[0].shares["induction"] == 0.0
    assert by[0].interpretable == pytest.approx(2 / 4) and by[0].n_rated == 4
    assert by[1].shares["induction"] == pytest.approx(2 / 3) and by[1].shares["long-range context"] == pytest.approx(1 / 3)
    assert by[1].n_rated == 2 and by[1].interpretable == pytest.approx(1 / 2)
    assert by[1].ratings == {"yes": 1, "maybe": 0, "no": 1, "unrated": 1}
    assert sum(by[0].shares.values()) == pytest.approx(1.0)
    d = rep.to_dict()
    json.dumps(d)  # plain data
    assert rep.human[("s", 1)] == {1: "induction", 2: "induction", 3: "long-range context"}


def test_stacked_bar_runs_add_up():
    bar = labels.stacked_bar({"a": 0.5, "b": 0.25, "c": 0.25, "d": 0.0}, width=8, glyphs="ABCD")
    assert bar == "AAAABBCC"
    bar = labels.stacked_bar({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, width=10, glyphs="ABC")
    assert len(bar) == 10 and sorted(bar.count(g) for g in "ABC") == [3, 3, 4]
    assert labels.stacked_bar({"a": 0.0}, width=5) == "·····"
