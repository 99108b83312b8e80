"""Files: atomic writes whose killed temporaries the next write removes, and input opened
without ever blocking on a FIFO or a device."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from rarespecies.core.files import (
    UnreadableFile,
    atomic_path,
    file_problem,
    open_regular,
    remove_stale_temporaries,
    walk_files,
    write_json,
    write_metrics,
)

from conftest import killed_writer, start_writer


def siblings(target):
    return sorted(p.name for p in target.parent.iterdir())


def test_atomic_write_leaves_only_the_target(tmp_path):
    target = tmp_path / "out/report.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed in the middle")
    assert target.read_text() == '{\n  "a": 1\n}\n' and siblings(target) == ["report.json"]


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "images"
    leftover = killed_writer(target)
    assert (leftover / "images/part.jpg").is_file()
    with atomic_path(target) as tmp:
        tmp.mkdir()
    assert siblings(target) == ["images"]


def test_a_living_writers_temporary_is_kept_until_it_dies(tmp_path):
    target = tmp_path / "images"
    proc, temporary, _ = start_writer(target)
    try:
        with atomic_path(target) as tmp:  # a second writer of the same target
            tmp.mkdir()
        assert temporary.is_dir()
        assert remove_stale_temporaries(target) == []
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert remove_stale_temporaries(target) == [temporary]
    assert siblings(target) == ["images"]


def test_a_killed_writers_orphaned_children_do_not_keep_its_temporary(tmp_path):
    target = tmp_path / "images"
    proc, temporary, child = start_writer(target, fork=True)  # as ingest forks its workers
    try:
        proc.kill()  # the writer alone, as the kernel's OOM killer would
        proc.wait()
        assert remove_stale_temporaries(target) == [temporary]
    finally:
        os.kill(child, signal.SIGKILL)
        proc.stdout.close()


def test_only_this_targets_temporaries_are_swept(tmp_path):
    other = killed_writer(tmp_path / "images2")  # another output's: its own next write's job
    legacy = tmp_path / ".images.k2j3h4g5"  # the former mkdtemp naming, left by a kill
    (legacy / "images").mkdir(parents=True)
    kept = tmp_path / ".images.notes"
    kept.mkdir()
    (kept / "mine.txt").write_text("not a temporary")
    assert remove_stale_temporaries(tmp_path / "images") == [legacy]
    assert other.is_dir() and kept.is_dir()


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_what_is_not_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    path = {"fifo": tmp_path / "pipe.jpg", "folder": tmp_path, "device": "/dev/zero"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    # In a child process, bounded in time: opening a FIFO for reading would wait for a writer.
    code = ("import sys\nfrom rarespecies.core.files import file_problem\n"
            "print(file_problem(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == {"fifo": "FIFO", "folder": "folder",
                   "device": "character device"}[kind] + ", not a regular file"


def test_unreadable_paths_get_their_reason(tmp_path, deny_reading):
    (tmp_path / "photo.jpg").write_bytes(b"jpeg")
    (tmp_path / "locked.jpg").write_bytes(b"jpeg")
    deny_reading(tmp_path / "locked.jpg")
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    os.symlink("gone.jpg", tmp_path / "dangling.jpg")
    assert file_problem(tmp_path / "photo.jpg") is None
    assert {name: file_problem(tmp_path / name)
            for name in ("locked.jpg", "loop.jpg", "dangling.jpg", "missing.jpg")} == {
        "locked.jpg": "permission denied", "loop.jpg": "symlink loop",
        "dangling.jpg": "dangling symlink", "missing.jpg": "file missing"}
    with open_regular(tmp_path / "photo.jpg") as handle:
        assert handle.read() == b"jpeg"
    with pytest.raises(UnreadableFile, match="symlink loop"):
        open_regular(tmp_path / "loop.jpg")


def test_walk_lists_links_without_following_them_and_reports_unlistable_folders(
        tmp_path, deny_reading):
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "a/b/photo.jpg").write_bytes(b"jpeg")
    os.symlink("..", tmp_path / "a/b/up")  # a folder loop
    os.symlink("self", tmp_path / "a/self")  # a file loop
    (tmp_path / "locked").mkdir()
    deny_reading(tmp_path / "locked")
    entries, failed = walk_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in entries] == [
        "a/b/photo.jpg", "a/b/up", "a/self"]
    assert failed == [(tmp_path / "locked", "permission denied")]


def test_metrics_files_hold_numbers_and_booleans_at_any_depth(tmp_path):
    figures = {"parity": {"max_diff": 2.9e-7, "top1": 1.0}, "images": 55, "shipped": True}
    write_metrics(tmp_path / "m.json", figures)
    assert json.loads((tmp_path / "m.json").read_text()) == figures


@pytest.mark.parametrize(("figures", "key"), [
    ({"model": "convnext_full"}, "'model' is 'convnext_full'"),
    ({"int8": {"reason": "within the drop"}}, "'int8.reason' is 'within the drop'"),
    ({"sizes": [1, 2]}, "'sizes' is [1, 2]"),
    ({"p50": None}, "'p50' is None"),
    ({"f1": float("nan")}, "'f1' is nan"),
])
def test_a_metric_that_is_not_a_number_is_refused_naming_its_key(tmp_path, figures, key):
    with pytest.raises(ValueError, match=re.escape(key) + ".*reports/"):
        write_metrics(tmp_path / "m.json", figures)
    assert not (tmp_path / "m.json").exists()
