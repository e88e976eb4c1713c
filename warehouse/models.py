"""The SQL models on disk and what their header comments say about them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MODELS_DIR = Path(__file__).with_name("models")
SOURCE = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Model:
    name: str
    kind: str  # staging | mart
    sql: str
    grain: str
    key: tuple[str, ...]
    description: str
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def sources(self) -> set[str]:
        return set(SOURCE.findall(self.sql))


def parse(path: Path, kind: str) -> Model:
    text = path.read_text()
    header: dict[str, str] = {}
    columns: dict[str, str] = {}
    in_columns = False
    body: list[str] = []
    for line in text.splitlines():
        if line.startswith("--") and not body:
            content = line[2:].strip()
            if in_columns and ":" in content and line.startswith("--   "):
                name, _, description = content.partition(":")
                columns[name.strip()] = description.strip()
                continue
            key, _, value = content.partition(":")
            in_columns = key == "columns"
            if not in_columns:
                header[key.strip()] = value.strip()
            continue
        body.append(line)
    for required in ("name", "grain", "key", "description"):
        if required not in header:
            raise ValueError(f"{path} lacks a `-- {required}:` header")
    return Model(
        name=header["name"],
        kind=kind,
        sql="\n".join(body).strip(),
        grain=header["grain"],
        key=tuple(k.strip() for k in header["key"].split(",")),
        description=header["description"],
        columns=columns,
    )


def load_models() -> list[Model]:
    """Staging first, then marts in dependency order (a mart may read marts listed before it)."""
    staging = [parse(p, "staging") for p in sorted((MODELS_DIR / "staging").glob("*.sql"))]
    marts = {p.stem: parse(p, "mart") for p in (MODELS_DIR / "marts").glob("*.sql")}
    ordered: list[Model] = []
    placed: set[str] = {m.name for m in staging}
    while marts:
        ready = [m for name, m in sorted(marts.items()) if not (_mentions(m, marts) - {name})]
        if not ready:
            raise ValueError(f"circular dependency among marts: {sorted(marts)}")
        for model in ready:
            ordered.append(model)
            placed.add(model.name)
            del marts[model.name]
    return staging + ordered


def _mentions(model: Model, others: dict[str, Model]) -> set[str]:
    return {name for name in others if re.search(rf"\b{name}\b", model.sql)}
