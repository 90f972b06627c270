"""Repair after an interrupted landing: make a folder of parts agree with the database's landed batches.

Landing is stage -> commit -> publish (`retrain.features.offline`), so a crash leaves at most staged
parts (of a batch that committed, or of one that never did) and temp files of an unfinished write.
`sweep` runs under the ingest lock before each landing (and from start-up paths) and says what it did.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from retrain.features.offline import ORPHANED, PART, STAGED, fsync_dir, published_path

log = logging.getLogger(__name__)

_TEMP = re.compile(r"\.(.+)\.[0-9a-f]{32}\.tmp")  # write_parquet_atomic's temp file of `.group(1)`


@dataclass
class SweepReport:
    """What `sweep` did to make the files agree with the database (file names per action)."""

    published: list[str] = field(default_factory=list)  # staged parts of committed batches, moved into place
    discarded: list[str] = field(default_factory=list)  # staged parts of batches that never committed; temp files
    orphaned: list[str] = field(default_factory=list)  # published parts no landed batch records, moved aside
    missing: list[str] = field(default_factory=list)  # landed batches whose part is nowhere (not repairable)

    def counts(self) -> dict[str, int]:
        """Non-zero counts per action (empty when the files already agreed)."""
        return {k: len(v) for k, v in vars(self).items() if v}

    def add(self, other: SweepReport) -> SweepReport:
        for key, names in vars(other).items():
            getattr(self, key).extend(names)
        return self

    def logged(self, what: str) -> SweepReport:
        """Log the repairs (warning) and anything missing (error); returns self."""
        if self.missing:
            log.error("%s: %d landed part(s) missing from the offline store: %s", what, len(self.missing),
                      ", ".join(self.missing[:5]))
        repaired = {k: v for k, v in self.counts().items() if k != "missing"}
        if repaired:
            log.warning("%s: offline store swept after an interrupted landing: %s", what, repaired)
        return self


def sweep(folder: Path, landed: Collection[int], pattern: re.Pattern[str] = PART, *,
          report_missing: bool = True) -> SweepReport:
    """Make `folder` agree with the database, whose landed batches `landed` each own one part here.

    A staged part of a landed batch is published (the crash hit between commit and publish); a staged
    part of any other batch is deleted (its transaction never committed), as are temp files of a write
    that never finished; a published part of no landed batch is moved to `orphaned/` (read by nobody,
    kept for inspection); a landed batch with no part at all is reported missing (unless
    `report_missing` is off: files nobody reads). The caller holds the ingest lock, so no landing is
    under way.
    """
    report = SweepReport()
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file())
    except FileNotFoundError:
        names = []
    present = set()
    for name in names:
        path = folder / name
        staged = name.startswith(STAGED) and pattern.fullmatch(name[len(STAGED):])
        match = staged or pattern.fullmatch(name)
        temp = _TEMP.fullmatch(name)
        if temp and pattern.fullmatch(published_path(Path(temp.group(1))).name):  # a part write that never finished
            path.unlink()
            report.discarded.append(str(path))
        elif match and int(match.group(1)) in landed:
            present.add(int(match.group(1)))
            if staged:
                target = published_path(path)
                if target.exists():  # published already: the staged copy is a leftover
                    path.unlink()
                    report.discarded.append(str(path))
                else:
                    os.replace(path, target)
                    report.published.append(str(target))
        elif staged:
            path.unlink()
            report.discarded.append(str(path))
        elif match:
            report.orphaned.append(str(_set_aside(path)))
    if report_missing:
        report.missing = [f"{folder}: batch {i}" for i in sorted(set(landed) - present)]
    if report.published or report.discarded or report.orphaned:
        fsync_dir(folder)
    return report


def _set_aside(path: Path) -> Path:
    target_dir = path.parent / ORPHANED
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    n = 0
    while target.exists():
        n += 1
        target = target_dir / f"{path.stem}.{n}{path.suffix}"
    os.replace(path, target)
    return target
