"""Partition manifests: what a stage run wrote, so that a partition changed after it is named instead of read.

Jobs swap a partition in whole (:func:`krone_jobs.partitions.swap_in`), so they never leave a torn one. But a
partition can be changed from outside afterwards, and the result is still valid Parquet: a restore that
missed a file (a quarter of a day's sessions gone, without a word), a file or a whole folder copied from
another day, a file cut short and padded back by a broken copy. None of these fails a read.

Just before the swap, the staged folder is sealed with :data:`MANIFEST`: the partition it was written as
(``<stage>/source=S/dt=D``, or ``S/open/dt=D`` for open sessions: the last three parts of its path), and every
data file with its bytes, rows and SHA-256. Readers check names and sizes (a ``stat`` per file, no data read);
``krone status --check``, which reads every byte anyway, checks the hashes too. A partition without a
manifest (written before manifests, by hand, or copied by a tool that drops ``_`` files) is read as before;
``krone seal`` gives one to each that reads whole.

Manifests hold no time of writing: a rerun that writes the same bytes writes the same manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

MANIFEST = "_krone_manifest.json"
_HASH_CHUNK = 1 << 20


def data_files(folder: Path) -> list[Path]:
    """The files a reader takes as the partition's data, sorted: every file but hidden and ``_`` ones, as
    Spark lists a folder (the stages write no sub-folders)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_")) and p.is_file())


def identity(folder: Path) -> str:
    """What a partition folder is, from its path: ``sessions/source=S/dt=D``, ``S/open/dt=D``."""
    return "/".join(folder.parts[-3:])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _rows(path: Path) -> int | None:
    if path.suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def manifest_text(staged: Path, target: Path, inputs: Mapping[str, Any] | None = None) -> str:
    """The manifest of the partition staged in ``staged`` that is about to become ``target`` (or is ``target``:
    a partition written before manifests, sealed in place), with what it was built from (``inputs``,
    :func:`krone_jobs.lineage.inputs`) where the stage says; :func:`krone_jobs.partitions.seal` writes it."""
    files = {p.name: {"bytes": p.stat().st_size, "rows": _rows(p), "sha256": file_sha256(p)}
             for p in data_files(staged)}
    manifest = {"partition": identity(target), "rows": sum(f["rows"] or 0 for f in files.values()), "files": files}
    if inputs is not None:
        manifest["inputs"] = inputs
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, ``None`` where it has none; ValueError if it cannot be read as one."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error})") from error
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not isinstance(manifest.get("partition"), str) or not all(
            isinstance(f, dict) and isinstance(f.get("bytes"), int) and isinstance(f.get("sha256"), str)
            for f in files.values()):
        raise ValueError(f"{path} is not a partition manifest")
    return manifest


def differences(folder: Path, *, content: bool = False, damaged: Collection[str] = ()) -> list[str]:
    """How ``folder`` differs from what its manifest says was written: its place, missing, extra and resized
    files, and with ``content`` the bytes themselves; files named in ``damaged`` (already reported as
    unreadable) are only looked for. Empty where it matches or has no manifest."""
    try:
        manifest = read_manifest(folder)
    except ValueError as error:
        return [str(error)]
    if manifest is None:
        return []
    found: list[str] = []
    if manifest["partition"] != identity(folder):
        found.append(f"it holds the partition written as {manifest['partition']} (copied or restored to the "
                     "wrong place?)")
    written: dict[str, dict[str, Any]] = manifest["files"]
    present = {p.name: p for p in data_files(folder)}
    for name, f in sorted(written.items()):
        path = present.get(name)
        n = f.get("rows")
        rows = f" ({n:,} row{'' if n == 1 else 's'})" if isinstance(n, int) else ""
        if path is None:
            found.append(f"{name} is missing{rows}")
        elif name in damaged:
            continue
        elif (size := path.stat().st_size) != f["bytes"]:
            found.append(f"{name} is {size:,} bytes where {f['bytes']:,} were written")
        elif content and file_sha256(path) != f["sha256"]:
            found.append(f"{name} holds other bytes than were written (its SHA-256 differs)")
    found += [f"{name} was not written with the partition" for name in sorted(present.keys() - written.keys())]
    return found
