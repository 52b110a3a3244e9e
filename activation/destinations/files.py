"""File drops for SFTP- or bucket-style imports: one CSV or Parquet file per run and action,
``<sync>__<run_id>__<action>.<ext>``, written under a temporary name and renamed into place
(a reader never sees half a file). Columns: action, person_id, key, then the mapped fields.
Erasure rewrites every earlier drop of the sync without the erased persons.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from activation.destinations.base import Destination, ErasureTarget, Outcome
from activation.plan import Change
from core.settings.activation import Files as FilesConfig


class FilesDestination(Destination):
    name = "files"

    def __init__(self, sync: str, cfg: FilesConfig, root: Path, run_id: str, field_names: list[str]):
        self.sync = sync
        self.cfg = cfg
        self.folder = Path(cfg.folder) if Path(cfg.folder).is_absolute() else Path(root) / cfg.folder
        self.run_id = run_id
        self.field_names = field_names

    def _write(self, table: pa.Table, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.partial")
        if self.cfg.format == "csv":
            pacsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _read(self, path: Path) -> pa.Table:
        if self.cfg.format == "csv":
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        return pq.read_table(path)

    def _table(self, action: str, changes: list[Change]) -> pa.Table:
        cols = {"action": [action] * len(changes), "person_id": [c.person_id for c in changes],
                "key": [c.key for c in changes]}
        for f in self.field_names:
            cols[f] = [None if c.fields.get(f) is None else str(c.fields.get(f)) for c in changes]
        return pa.table({k: pa.array(v, type=pa.string()) for k, v in cols.items()})

    def drops(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.sync}__*.{self.cfg.format}"))

    def deliver(self, action: str, changes: list[Change]) -> Iterator[list[Outcome]]:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(self._table(action, changes), self.folder / f"{self.sync}__{self.run_id}__{action}.{self.cfg.format}")
        yield [Outcome(c, True) for c in changes]

    def erase(self, targets: list[ErasureTarget]):
        ids = {t.person_id for t in targets}
        keys = {t.key for t in targets}
        for path in self.drops():
            table = self._read(path)
            pids = table.column("person_id").to_pylist()
            ks = table.column("key").to_pylist()
            keep = [i for i, (p, k) in enumerate(zip(pids, ks)) if str(p) not in ids and str(k) not in keys]
            if len(keep) != table.num_rows:
                if keep:
                    self._write(table.take(keep), path)
                else:
                    path.unlink()
        yield [(t, True, None) for t in targets]
