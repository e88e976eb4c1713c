"""Flows get their settings through one runtime object: a real in-process flow run (what
``keel dev`` does before serving) writes where the settings it was handed say, whatever the
environment holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.settings import Settings
from pipelines import runtime


def test_an_in_process_flow_run_uses_the_settings_it_was_handed(
    database_url: str, prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.flows import export_lake

    decoy = tmp_path / "from-the-environment"
    monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
    monkeypatch.setenv("KEEL_DATA_DIR", str(decoy / "data"))
    monkeypatch.setenv("KEEL_LAKE_URL", str(decoy / "lake"))
    handed = Settings(database_url=database_url, data_dir=tmp_path / "data", lake_url=str(tmp_path / "lake"))

    with runtime.use(handed):
        results = export_lake()

    assert {r["table"] for r in results} >= {"events", "audit_log"}
    assert (tmp_path / "lake" / "_schema" / "events.parquet").is_file()
    assert not decoy.exists()
    # Outside the block, a flow reads the environment again.
    assert runtime.current().settings.lake_url == str(decoy / "lake")
