"""Where code lives: each domain's tables in its own ``models.py``, all of them gathered by
``api.models``; ``api/db`` (the base, engines, sessions) imports no domain; the Stripe-compatible
test server is development tooling that product code never imports."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from sqlalchemy import Table

import api.models
from api.db.base import Base

ROOT = Path(__file__).resolve().parent.parent
DB = ROOT / "api" / "db"
#: Alembic loads env.py from the script directory (nothing imports it); it needs every table.
ALEMBIC_ENV = DB / "migrations" / "env.py"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, enclosing top-level function) for every import in a file, at any depth of
    its code (lazy imports in functions too)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    for top in tree.body:
        function = top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name, function
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                yield node.lineno, base, function
                for alias in node.names:  # `from api import orgs` imports the package api.orgs
                    yield node.lineno, f"{base}.{alias.name}", function


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_api_db_imports_no_domain() -> None:
    offending = []
    for path in sorted(DB.rglob("*.py")):
        if path == ALEMBIC_ENV:
            continue
        for line, module, _ in imported_modules(path):
            if module.startswith("api.") and not within(module, "api.db"):
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert offending == []


def tables_declared_in(module: ModuleType) -> set[str]:
    """The tables a module declares: its own ORM classes' and its Core ``Table`` objects."""
    found = set()
    for value in vars(module).values():
        if isinstance(value, type) and isinstance(getattr(value, "__table__", None), Table):
            if value.__module__ == module.__name__:
                found.add(value.__table__.name)  # type: ignore[attr-defined]
        elif isinstance(value, Table) and value.name not in mapped_tables():
            found.add(value.name)
    return found


def mapped_tables() -> set[str]:
    return {table.name for mapper in Base.registry.mappers for table in mapper.tables}


def test_every_table_lives_in_a_domain_and_is_gathered_for_alembic() -> None:
    """A domain's models.py that api.models forgot would be missing from Alembic's comparison and
    from the application role's grants."""
    # A domain's own part may keep its tables beside it (api/audit/streams/models.py).
    on_disk = {module_name(p) for p in (ROOT / "api").rglob("models.py") if p.parent != ROOT / "api"}
    assert on_disk == {m.__name__ for m in api.models.DOMAINS}
    declared = {m.__name__: tables_declared_in(m) for m in api.models.DOMAINS}
    every = [name for tables in declared.values() for name in tables]
    assert sorted(every) == sorted(api.models.metadata.tables)  # each table in exactly one domain


#: The development tooling: the Stripe-compatible server, its store, seeds and the demo's Stripe.
STRIPE_FAKE = "api.stripe_local"
#: Who may import it, besides itself and the tests: `keel dev` (all of pipelines/dev.py) and the
#: `keel stripe-mock` command (only its function in the CLI).
STRIPE_FAKE_USERS: dict[str, set[str] | None] = {
    "pipelines/dev.py": None,
    "api/cli/billing.py": {"stripe_mock_serve"},
}


def product_files() -> Iterator[Path]:
    fake = ROOT / Path(*STRIPE_FAKE.split("."))
    for top in ("api", "pipelines", "warehouse"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if fake not in path.parents:
                yield path


def test_product_code_never_imports_the_stripe_fake() -> None:
    offending = []
    for path in product_files():
        allowed = STRIPE_FAKE_USERS.get(str(path.relative_to(ROOT)), set())
        for line, module, function in imported_modules(path):
            if within(module, STRIPE_FAKE) and allowed is not None and function not in allowed:
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert offending == []


def test_no_product_path_branches_on_the_fakes_key() -> None:
    """Neither the fake's key nor its name for it appears in product code (outside the functions
    of STRIPE_FAKE_USERS), so no product path can tell the fake from Stripe."""
    from api.stripe_local import DEFAULT_API_KEY

    offending = []
    for path in product_files():
        allowed = STRIPE_FAKE_USERS.get(str(path.relative_to(ROOT)), set())
        for top in ast.parse(path.read_text(), str(path)).body:
            function = top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef) else None
            if allowed is None or function in allowed:
                continue
            for node in ast.walk(top):
                named = (isinstance(node, ast.Constant) and node.value == DEFAULT_API_KEY) or (
                    isinstance(node, ast.Name | ast.alias)
                    and "DEFAULT_API_KEY" in (getattr(node, "id", None), getattr(node, "name", None))
                )
                if named:
                    offending.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}")
    assert offending == []
