"""The lake on object storage: export-lake and build-warehouse against ``s3://bucket/lake`` on a
real S3 endpoint over HTTP (moto's server on a free local port), configured as a user would
(``KEEL_LAKE_URL``, ``KEEL_LAKE_S3_ENDPOINT``), answer exactly what a local lake does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest
from sqlalchemy import Engine

from pipelines.lake import Lake, LakeError
from pipelines.tasks import export as export_tasks
from tests.harness import OrgWorld, auth, free_port
from tests.test_pipelines import known_activity, send

BUCKET = "keel-lake"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the AWS SDK reads; never the instance metadata service (no network beyond loopback)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "keel-test",
        "AWS_SECRET_ACCESS_KEY": "keel-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


def warehouse_contents(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every mart and staging view, rows sorted: what an analyst can ask the warehouse."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM keel_catalog ORDER BY name").fetchall()]
        assert names
        # keel_params.built_at is when each file was built: the one value that must differ.
        columns = {name: "* EXCLUDE (built_at)" if name == "keel_params" else "*" for name in names}
        return {n: con.execute(f"SELECT {columns[n]} FROM {n} ORDER BY ALL").fetchall() for n in names}
    finally:
        con.close()


def test_export_and_warehouse_on_s3_answer_as_a_local_lake_does(
    client: httpx.Client,
    engine: Engine,
    org: OrgWorld,
    database_url: str,
    prefect_harness: None,
    pipeline_env: dict[str, Path],
    s3_endpoint: str,
    s3_credentials: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.flows import build_warehouse_flow, export_lake

    today = datetime.now(UTC).date()
    send(client, org.ingest_key, known_activity(today, users=6, seed=23))
    make_bucket(s3_endpoint, BUCKET)
    local_url, s3_url = str(pipeline_env["lake"]), f"s3://{BUCKET}/lake"
    local_lake = Lake.open(local_url)
    s3_lake = Lake.open(s3_url, s3_endpoint=s3_endpoint)
    # Yesterday's snapshots, then a change: the warehouse must read only the latest snapshot.
    for lake in (local_lake, s3_lake):
        for snapshot in export_tasks.SNAPSHOTS.values():
            export_tasks.export_snapshot(
                database_url, lake, snapshot, day=(today - timedelta(days=1)).isoformat()
            )
    response = client.patch(
        f"/v1/orgs/{org.id}", json={"name": "Renamed after a snapshot"}, headers=auth(org.tokens["owner"])
    )
    assert response.status_code == 200, response.text

    warehouses = {}
    for name, url in (("local", local_url), ("s3", s3_url)):
        monkeypatch.setenv("KEEL_LAKE_URL", url)
        if name == "s3":
            monkeypatch.setenv("KEEL_LAKE_S3_ENDPOINT", s3_endpoint)
        warehouses[name] = pipeline_env["data"] / f"warehouse-{name}.duckdb"
        monkeypatch.setenv("KEEL_WAREHOUSE_PATH", str(warehouses[name]))
        export_lake(chunk_rows=500)
        build_warehouse_flow(as_of=today.isoformat())

    s3_files = s3_lake.list_files("events")
    assert s3_files and not s3_lake.list_temporary("events")
    assert len(s3_files) == len(local_lake.list_files("events"))
    assert export_tasks.read_watermark(s3_lake, "events") == export_tasks.read_watermark(local_lake, "events")
    local, remote = warehouse_contents(warehouses["local"]), warehouse_contents(warehouses["s3"])
    assert remote.keys() == local.keys()
    for name in local:
        assert remote[name] == local[name], name
    con = duckdb.connect(str(warehouses["s3"]), read_only=True)
    try:
        names = con.execute(
            "SELECT name FROM stg_organizations WHERE organization_id = ?", [org.id]
        ).fetchall()
    finally:
        con.close()
    assert names == [("Renamed after a snapshot",)]

    # A second run on S3 finds nothing new and writes nothing twice.
    monkeypatch.setenv("KEEL_LAKE_URL", s3_url)
    export_lake(chunk_rows=500)
    keys = export_tasks.lake_keys(s3_lake, export_tasks.EVENTS)
    assert (
        keys.height == keys.unique().height == export_tasks.lake_keys(local_lake, export_tasks.EVENTS).height
    )


def test_a_missing_bucket_or_an_unreachable_endpoint_is_a_clear_error(
    s3_endpoint: str, s3_credentials: None
) -> None:
    with pytest.raises(LakeError, match="does not exist"):
        Lake.open("s3://no-such-bucket/lake", s3_endpoint=s3_endpoint)
    with pytest.raises(LakeError, match="unreachable"):
        Lake.open(f"s3://{BUCKET}/lake", s3_endpoint=f"http://127.0.0.1:{free_port()}")


def test_the_s3_endpoint_setting_is_checked_when_read() -> None:
    from api.settings import SettingsError, load_settings

    read = load_settings({"KEEL_LAKE_S3_ENDPOINT": "http://127.0.0.1:9000"}, env_file=None)
    assert read.lake_s3_endpoint == "http://127.0.0.1:9000"
    assert load_settings({}, env_file=None).lake_s3_endpoint is None
    for bad in ("127.0.0.1:9000", "ftp://store", "http://store/bucket"):
        with pytest.raises(SettingsError, match="KEEL_LAKE_S3_ENDPOINT"):
            load_settings({"KEEL_LAKE_S3_ENDPOINT": bad}, env_file=None)
