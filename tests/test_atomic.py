"""Whole files and folders or none: unique staging names, the folder swap and its recovery, stale leftovers."""

import os

from tl_space import atomic


def test_each_writer_stages_under_its_own_name_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "metrics.json"
    assert atomic.staging_path(target) != atomic.staging_path(target)
    atomic.write_text(target, "one")
    atomic.write_text(target, "two")
    assert target.read_text() == "two" and [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_a_swap_killed_between_its_renames_is_undone_by_recover_folder(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "checkpoint").mkdir()
    (target / "checkpoint" / "progress.json").write_text("{}")
    staging = atomic.staging_path(target)
    staging.mkdir()
    target.rename(atomic.previous_path(target))  # the first rename, then the kill
    assert not target.exists()
    assert atomic.recover_folder(target)
    assert (target / "checkpoint" / "progress.json").is_file() and not atomic.previous_path(target).exists()
    assert not atomic.recover_folder(target)  # nothing to undo now


def test_a_finished_swap_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = atomic.staging_path(target)
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    atomic.replace_folder(staging, target)
    assert [path.name for path in target.iterdir()] == ["new.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["run"]


def test_stale_staging_folders_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "run"
    dead = tmp_path / ".run.partial-999999999-deadbeef"
    live = tmp_path / f".run.partial-{os.getppid()}-cafecafe"
    other = tmp_path / ".other.partial-999999999-deadbeef"
    for folder in (dead, live, other):
        folder.mkdir()
    assert atomic.remove_stale_staging(target) == [dead]
    assert live.exists() and other.exists()
