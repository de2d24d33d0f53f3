"""Hierarchy stage: grow ``state/<source>/hierarchy.csv`` with the templates the miner found since last time.

Only new templates are extracted (offline extractor by default), so existing node ids never change and
models trained on the old hierarchy stay valid. Human decisions in ``state/<source>/overrides.csv``
(``template_id,entity,action[,status]``) win; :meth:`Hierarchy.with_overrides` skips overrides already in
effect, so a rerun changes nothing.
Every run also leaves a dated snapshot (``state/<source>/hierarchy/dt=D.csv``, D = the miner state's day),
the version a run of that day used. No Spark: the hierarchy has one row per template.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from krone_jobs.config import settings
from krone_jobs.hierarchy.extractor import HierarchyExtractor, build_hierarchy
from krone_jobs.hierarchy.model import Hierarchy, HierarchyError, load_overrides
from krone_jobs.miner_state import read_state, templates_dir
from krone_jobs.partitions import atomic_write_text, check_date, check_source, latest_before, state_dir
from krone_jobs.source_lock import holds_source_lock


@dataclass(frozen=True)
class HierarchyMetrics:
    source: str
    dt: str
    templates: int
    new_templates: int
    overrides_applied: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hierarchy_path(root: Path, source: str) -> Path:
    return state_dir(root, source) / "hierarchy.csv"


def load_hierarchy(root: Path, source: str) -> Hierarchy:
    path = hierarchy_path(root, source)
    if not path.is_file():
        raise FileNotFoundError(f"no hierarchy at {path}: run `krone hierarchy --source {source}` first")
    return _load_current(root, source)


def _load_current(root: Path, source: str) -> Hierarchy:
    """The source's hierarchy; a damaged file names the newest dated copy the stage kept to put back."""
    try:
        return Hierarchy.load_csv(hierarchy_path(root, source))
    except HierarchyError as exc:
        copy = latest_before(state_dir(root, source) / "hierarchy", "9999-12-31", inclusive=True)
        raise HierarchyError(f"{exc}: put back {copy} (the stage's copy of its last day) or a backup" if copy else
                             f"{exc}: put back a backup") from exc


def hierarchy_at(root: Path, source: str, dt: str) -> Hierarchy | None:
    """The hierarchy a run of day ``dt`` used (the newest dated snapshot at or before it), or ``None``."""
    path = latest_before(state_dir(root, source) / "hierarchy", dt, inclusive=True)
    return Hierarchy.load_csv(path) if path is not None else None


def _save(hierarchy: Hierarchy, path: Path) -> None:
    atomic_write_text(path, hierarchy.csv_text())


@holds_source_lock("hierarchy")
def run_hierarchy(
    source: str,
    date: str | None = None,
    *,
    data_root: str | Path | None = None,
    extractor: HierarchyExtractor | None = None,
) -> HierarchyMetrics:
    """Extend the source's hierarchy with the templates of its miner state (the newest, or at ``date``)."""
    check_source(source)
    root = Path(data_root) if data_root is not None else settings().data_root
    folder = templates_dir(root, source)
    state = latest_before(folder, check_date(date) if date else "9999-12-31", inclusive=True)
    if state is None:
        raise FileNotFoundError(f"no miner state under {folder}: parse the source first")
    if extractor is None:
        from krone_jobs.hierarchy.offline import OfflineExtractor

        extractor = OfflineExtractor()
    store = read_state(state)
    path = hierarchy_path(root, source)
    base = _load_current(root, source) if path.is_file() else None
    grown = build_hierarchy({t.template_id: t.template for t in store.templates()}, extractor, base)
    overrides_path = state_dir(root, source) / "overrides.csv"
    overrides = load_overrides(overrides_path, grown) if overrides_path.is_file() else []
    hierarchy = grown.with_overrides(overrides) if overrides else grown
    _save(hierarchy, path)
    dt = state.name.removeprefix("dt=").removesuffix(".json")
    _save(hierarchy, state_dir(root, source) / "hierarchy" / f"dt={dt}.csv")
    return HierarchyMetrics(
        source=source,
        dt=dt,
        templates=len(hierarchy),
        new_templates=len(hierarchy) - (len(base) if base is not None else 0),
        overrides_applied=sum(hierarchy[o.template_id] != grown.get(o.template_id) for o in overrides),
        path=str(path),
    )
