"""Partition manifests: a partition changed after its run wrote it is named by every reader, with the run that
writes it again; one without a manifest reads as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from krone_jobs.manifests import MANIFEST, differences, read_manifest
from krone_jobs.partitions import (
    PartitionMismatch,
    count_rows,
    damaged_files,
    partition_dir,
    read_table,
    swap_in,
    temp_dir_for,
)

DAY, OTHER_DAY = "2026-11-20", "2026-11-21"
REWRITE = f"run `krone sessionize --source app --date {DAY}` again"


def _written(root: Path, dt: str = DAY, sessions: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """A sessions partition as a job leaves it: two part files staged, then swapped in (and so sealed)."""
    target = partition_dir(root, "sessions", "app", dt)
    staged = temp_dir_for(target)
    staged.mkdir(parents=True)
    pq.write_table(pa.table({"session_id": list(sessions[:1])}), staged / "part-00000.parquet")
    pq.write_table(pa.table({"session_id": list(sessions[1:])}), staged / "part-00001.parquet")
    swap_in(staged, target)
    return target


def _refused(folder: Path, *found: str) -> None:
    for read in (count_rows, read_table):
        with pytest.raises(PartitionMismatch) as err:
            read(folder)
        message = str(err.value)
        assert message.startswith(f"{folder} is not the partition that was written: ") and REWRITE in message
        for what in found:
            assert what in message


def test_a_written_partition_is_sealed_and_reads_as_written(tmp_path: Path) -> None:
    folder = _written(tmp_path)
    manifest = read_manifest(folder)
    assert manifest is not None and manifest["partition"] == f"sessions/source=app/dt={DAY}"
    assert manifest["rows"] == 3 and sorted(manifest["files"]) == ["part-00000.parquet", "part-00001.parquet"]
    assert count_rows(folder) == 3 and read_table(folder).column("session_id").to_pylist() == ["a", "b", "c"]
    assert damaged_files(folder) == (2, [])
    again = _written(tmp_path / "rerun")  # the same bytes give the same manifest: nothing in it is a clock
    assert (again / MANIFEST).read_bytes() == (folder / MANIFEST).read_bytes()


def test_a_restore_that_missed_a_file_is_not_read_as_a_smaller_day(tmp_path: Path) -> None:
    folder = _written(tmp_path)
    (folder / "part-00001.parquet").unlink()
    _refused(folder, "part-00001.parquet is missing (2 rows)")


def test_a_file_that_was_not_written_with_the_partition_is_named(tmp_path: Path) -> None:
    folder = _written(tmp_path)
    pq.write_table(pa.table({"session_id": ["z"]}), folder / "part-00002.parquet")
    _refused(folder, "part-00002.parquet was not written with the partition")


def test_another_days_partition_restored_in_its_place_is_named(tmp_path: Path) -> None:
    folder = partition_dir(tmp_path, "sessions", "app", DAY)
    shutil.copytree(_written(tmp_path, OTHER_DAY), folder)
    _refused(folder, f"it holds the partition written as sessions/source=app/dt={OTHER_DAY}")


def test_a_file_of_another_size_is_named_by_readers_and_other_bytes_by_the_full_check(tmp_path: Path) -> None:
    folder = _written(tmp_path)
    written = (folder / "part-00001.parquet").stat().st_size
    pq.write_table(pa.table({"session_id": ["b", "c", "d"]}), folder / "part-00001.parquet")
    _refused(folder, f"part-00001.parquet is {(folder / 'part-00001.parquet').stat().st_size:,} bytes where "
                     f"{written:,} were written")
    folder = _written(tmp_path / "same-size")
    pq.write_table(pa.table({"session_id": ["b", "x"]}), folder / "part-00001.parquet")  # same size, other rows
    assert count_rows(folder) == 3  # readers check a stat per file only
    files, problems = damaged_files(folder)
    assert files == 2 and len(problems) == 1
    assert "part-00001.parquet holds other bytes than were written (its SHA-256 differs)" in problems[0]


@pytest.mark.parametrize("text", ["{", '{"partition": "x"}', '{"partition": "x", "files": {"a": {"bytes": "1"}}}'])
def test_a_damaged_manifest_is_named(tmp_path: Path, text: str) -> None:
    folder = _written(tmp_path)
    (folder / MANIFEST).write_text(text, encoding="utf-8")
    _refused(folder, str(folder / MANIFEST))


def test_a_partition_without_a_manifest_reads_as_before(tmp_path: Path) -> None:
    folder = _written(tmp_path)
    (folder / MANIFEST).unlink()
    (folder / "part-00001.parquet").unlink()
    assert read_manifest(folder) is None and differences(folder) == []
    assert count_rows(folder) == 1 and damaged_files(folder) == (1, [])


def test_krone_seal_gives_partitions_written_before_manifests_one_unless_they_do_not_read_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from krone_jobs.cli import main

    legacy, damaged = (partition_dir(tmp_path, "sessions", "app", dt) for dt in (DAY, OTHER_DAY))
    for folder in (legacy, damaged):
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"session_id": ["a", "b"]}), folder / "part-00000.parquet")
    (damaged / "part-00000.parquet").write_bytes((damaged / "part-00000.parquet").read_bytes()[:-20])
    sealed = _written(tmp_path, "2026-11-22")
    before = (sealed / MANIFEST).read_bytes()
    argv = ["seal", "--source", "app", "--data-root", str(tmp_path)]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert out.startswith("app: 1 partition sealed, 1 not (below): write them again first\n")
    assert f"  not sealed: {damaged / 'part-00000.parquet'} is not a readable Parquet file" in out
    assert read_manifest(damaged) is None and (sealed / MANIFEST).read_bytes() == before  # the others untouched
    assert read_manifest(legacy)["rows"] == 2 and count_rows(legacy) == 2  # type: ignore[index]
    (legacy / "part-00000.parquet").unlink()  # from now on a file gone is named
    with pytest.raises(PartitionMismatch, match="part-00000.parquet is missing"):
        count_rows(legacy)
    assert sorted(p.name for p in legacy.iterdir()) == [MANIFEST]  # no temporary file left
