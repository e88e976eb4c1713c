"""The dbt project's models (``warehouse/dbt/models``) as Keel reads them: name, kind (the folder),
grain and key (``meta`` in ``schema.yml``), description, documented columns and the lake sources
the SQL reads. dbt itself builds them (``warehouse/build.py``); this is for checks and docs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MODELS_DIR = Path(__file__).with_name("dbt") / "models"
SOURCE = re.compile(r"source\(\s*'lake'\s*,\s*'(\w+)'\s*\)")
#: The folder a model is in, as the kind the catalog names.
KINDS = {"staging": "staging", "intermediate": "intermediate", "marts": "mart", "": "parameters"}


@dataclass(frozen=True)
class Model:
    name: str
    kind: str  # parameters | staging | intermediate | mart
    sql: str
    grain: str
    key: tuple[str, ...]
    description: str
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def sources(self) -> set[str]:
        return set(SOURCE.findall(self.sql))


def load_models() -> list[Model]:
    """Every model with its ``schema.yml`` entry (a model without one is an error)."""
    models = []
    for folder, kind in KINDS.items():
        directory = MODELS_DIR / folder
        entries: dict[str, dict] = {}
        schema = directory / "schema.yml"
        if schema.is_file():
            entries = {m["name"]: m for m in (yaml.safe_load(schema.read_text()) or {}).get("models", [])}
        for path in sorted(directory.glob("*.sql")):
            entry = entries.get(path.stem)
            if entry is None:
                raise ValueError(f"{path} has no entry in {schema}")
            meta = entry.get("meta") or {}
            for required in ("grain", "key"):
                if required not in meta:
                    raise ValueError(f"{schema}: {path.stem} lacks meta.{required}")
            models.append(
                Model(
                    name=path.stem,
                    kind=kind,
                    sql=path.read_text(),
                    grain=meta["grain"],
                    key=tuple(meta["key"]),
                    description=entry.get("description", ""),
                    columns={c["name"]: c.get("description", "") for c in entry.get("columns", [])},
                )
            )
    return models
