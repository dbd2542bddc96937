"""The docker-compose stack and every file it mounts, checked by the tools that know them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from crmsync_testing.dashboards import ROOT
from crmsync_testing.servers import require_binary
from crmsync_tools.dashboards import PROMETHEUS_UID, STORE_UID
from exporter.schema import metadata

COMPOSE = ROOT / "docker-compose.yml"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> repository path of the service's bind mounts."""
    mounts = {}
    for volume in _compose()["services"][service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = ROOT / source
    return mounts


def test_docker_compose_accepts_the_file() -> None:
    binary = require_binary("docker-compose")
    result = _run(binary, "-f", str(COMPOSE), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_the_stack_has_every_part_of_the_demo() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "store",
        "simulator",
        "exporter",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    # The exporter runs the runtime image; the simulator the image with the tools.
    assert services["exporter"]["build"] == "."
    assert services["simulator"]["build"] == {"context": ".", "target": "tools"}
    assert "--create-schema" in " ".join(services["simulator"]["command"])
    for service in services.values():
        for mounted in _mounts_of(service):
            assert mounted.exists(), mounted


def _mounts_of(service: dict[str, Any]) -> list[Path]:
    return [
        ROOT / volume.split(":")[0]
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]


def test_the_exporter_image_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "EXPOSE 9312" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignored[ignored.index("*") :][:1] == ["*"]


def test_promtool_accepts_the_prometheus_configuration_and_its_rules() -> None:
    promtool = require_binary("promtool")
    (config,) = [
        path / "prometheus.yml"
        for target, path in _mounts("prometheus").items()
        if target == "/etc/crmsync/deploy/prometheus"
    ]
    result = _run(promtool, "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule files are found relative to the configuration, as in the container.
    assert "SUCCESS: 2 rule files found" in result.stdout
    assert "alerts/recording_rules.yml" in result.stdout


def test_the_prometheus_mounts_keep_the_relative_rule_paths() -> None:
    mounts = _mounts("prometheus")
    assert mounts["/etc/crmsync/alerts"] == ROOT / "alerts"
    assert mounts["/etc/crmsync/deploy/prometheus"] == ROOT / "deploy" / "prometheus"
    command = " ".join(_compose()["services"]["prometheus"]["command"])
    assert "--config.file=/etc/crmsync/deploy/prometheus/prometheus.yml" in command
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text("utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The alert pack selects the exporter's series by job="crmsync".
    assert jobs["crmsync"]["static_configs"][0]["targets"] == ["exporter:9312"]


def test_amtool_accepts_the_alertmanager_configuration() -> None:
    amtool = require_binary("amtool")
    (config,) = _mounts("alertmanager").values()
    result = _run(amtool, "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_grafana_provisions_the_datasources_the_dashboards_default_to() -> None:
    mounts = _mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    document = yaml.safe_load((PROVISIONING / "datasources" / "crmsync.yml").read_text("utf-8"))
    assert document["apiVersion"] == 1
    sources = {source["uid"]: source for source in document["datasources"]}
    assert sources[PROMETHEUS_UID]["type"] == "prometheus"
    assert sources[PROMETHEUS_UID]["url"] == "http://prometheus:9090"
    store = sources[STORE_UID]
    assert store["type"] == "grafana-postgresql-datasource"
    # Grafana reads the store through the read-only role of deploy/postgres/init.sql.
    assert store["user"] == "crmsync_grafana"
    init = (ROOT / "deploy" / "postgres" / "init.sql").read_text(encoding="utf-8")
    assert "ALTER ROLE crmsync_grafana SET default_transaction_read_only = on" in init
    assert "GRANT SELECT ON TABLES TO crmsync_exporter, crmsync_grafana" in init
    assert not re.search(r"GRANT\s+(ALL|INSERT|UPDATE|DELETE)", init, flags=re.IGNORECASE)


def test_grafana_loads_the_dashboards_folder() -> None:
    document = yaml.safe_load((PROVISIONING / "dashboards" / "crmsync.yml").read_text("utf-8"))
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    mounts = _mounts("grafana")
    assert mounts[provider["options"]["path"]] == ROOT / "dashboards"


@pytest.mark.postgres
def test_the_store_roles_script_leaves_grafana_able_to_read_and_not_to_write(
    postgres_url: str,
) -> None:
    """deploy/postgres/init.sql on a real server, with role names of this test's own."""
    schema = _schema(postgres_url)
    owner, grafana, exporter = (f"{schema}_owner", f"{schema}_grafana", f"{schema}_exporter")
    script = (
        (ROOT / "deploy" / "postgres" / "init.sql")
        .read_text(encoding="utf-8")
        .replace("crmsync_grafana", grafana)
        .replace("crmsync_exporter", exporter)
        .replace("FOR ROLE crmsync ", f"FOR ROLE {owner} ")
        .replace("DATABASE sync", "DATABASE test")
        .replace("SCHEMA public", f"SCHEMA {schema}")
    )
    admin = sa.create_engine(postgres_url)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {owner}")
            connection.exec_driver_sql(f"GRANT ALL ON SCHEMA {schema} TO {owner}")
            connection.exec_driver_sql(script)
            connection.exec_driver_sql(f"SET ROLE {owner}")
            metadata.create_all(connection)
            connection.exec_driver_sql("RESET ROLE")
        with admin.connect() as connection:
            settings = connection.exec_driver_sql(
                f"SELECT rolconfig FROM pg_roles WHERE rolname = '{grafana}'"
            ).scalar_one()
            assert "TimeZone=UTC" in settings
            assert "default_transaction_read_only=on" in settings
            connection.exec_driver_sql(f"SET ROLE {grafana}")
            assert connection.exec_driver_sql("SELECT count(*) FROM sync_error").scalar_one() == 0
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                connection.exec_driver_sql("DELETE FROM sync_error")
            connection.rollback()
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
            for role in (grafana, exporter, owner):
                connection.exec_driver_sql(f"DROP OWNED BY {role}")
                connection.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def _schema(url: str) -> str:
    match = re.search(r"search_path(?:%3D|=)(\w+)", url)
    assert match, url
    return match.group(1)
