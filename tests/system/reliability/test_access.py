"""Access: TLS and basic auth with real clients, secrets kept out of every output, a role that
can only read, and a container image that runs as nobody in particular and holds no secret."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import sqlalchemy as sa

from crmsync_testing.exporter_process import Exporter, up, write_config
from crmsync_testing.helpers import add_errors, add_history, add_pending, runner_for
from crmsync_testing.pg_instance import PgStore
from crmsync_testing.servers import unavailable
from exporter.schema import create_reference_schema

ROOT = Path(__file__).resolve().parents[3]
USER, PASSWORD = "prometheus", "scrape-Pa55word"
DISTINCTIVE = "Zq7-crmsync-SECRET-pw-4Kx9"  # searched for in every output


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        unavailable("openssl is not installed (apt-get install openssl)")
        raise AssertionError
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=crmsync test CA", "-keyout", "ca.key", "-out", "ca.crt",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=prometheus")):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
            cwd=directory,
        )  # fmt: skip
        extra = ["-extfile", "server.ext"] if name == "server" else []
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra,
            cwd=directory,
        )  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def tls_exporter(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    directory = tmp_path_factory.mktemp("tls")
    url = f"sqlite:///{directory / 'store.db'}"
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    add_history(engine, 20)
    engine.dispose()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = directory / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        f"  cert_file: {pki / 'server.crt'}\n"
        f"  key_file: {pki / 'server.key'}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {pki / 'ca.crt'}\n"
        f"basic_auth_users:\n  {USER}: '{hashed}'\n"
    )
    config = write_config(
        directory / "exporter.yml", [{"name": "main", "url": url, "interval": "1s"}]
    )
    exporter = Exporter(config, ["--web.config.file", str(web)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", exporter.port), 1).close()
            break
        time.sleep(0.05)
    yield exporter
    exporter.stop()


def client_context(pki: Path, certificate: bool = True, trust: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt") if trust else None)
    if certificate:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    return context


def basic(user: str, password: str) -> dict[str, str]:
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_tls_with_client_certificate_and_password_is_served(
    tls_exporter: Exporter, pki: Path
) -> None:
    code, body = tls_exporter.get(
        headers=basic(USER, PASSWORD), context=client_context(pki), timeout=10
    )
    assert code == 200
    assert b"crmsync_records_synced_total" in body


@pytest.mark.parametrize(
    "headers",
    [{}, basic(USER, "wrong"), basic("nobody", PASSWORD), {"Authorization": "Basic !!!"}],
    ids=["no-password", "wrong-password", "unknown-user", "garbage"],
)
def test_missing_or_wrong_credentials_get_401(
    tls_exporter: Exporter, pki: Path, headers: dict[str, str]
) -> None:
    code, body = tls_exporter.get(headers=headers, context=client_context(pki))
    assert code == 401
    assert b"crmsync_" not in body


def test_without_a_client_certificate_the_handshake_fails(
    tls_exporter: Exporter, pki: Path
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_exporter.get(headers=basic(USER, PASSWORD), context=client_context(pki, False))


def test_a_client_that_does_not_trust_the_ca_refuses_the_server(
    tls_exporter: Exporter, pki: Path
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_exporter.get(headers=basic(USER, PASSWORD), context=client_context(pki, trust=False))


def test_old_tls_and_plain_http_are_refused(tls_exporter: Exporter, pki: Path) -> None:
    old = client_context(pki)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_exporter.get(headers=basic(USER, PASSWORD), context=old)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        tls_exporter.get(headers=basic(USER, PASSWORD), timeout=5)


def test_silent_clients_do_not_stall_the_tls_endpoint(tls_exporter: Exporter, pki: Path) -> None:
    silent = [socket.create_connection(("127.0.0.1", tls_exporter.port)) for _ in range(5)]
    try:
        started = time.monotonic()
        code, _ = tls_exporter.get(
            headers=basic(USER, PASSWORD), context=client_context(pki), timeout=5
        )
        assert code == 200
        assert time.monotonic() - started < 2.0
    finally:
        for sock in silent:
            sock.close()


def test_the_store_password_never_shows(pg_store: PgStore, tmp_path: Path) -> None:
    """The password reaches the database, and nothing else: logs, errors, pages, checks."""
    pg_store.server.execute(
        pg_store.database, [f"ALTER ROLE {pg_store.role} PASSWORD '{DISTINCTIVE}'"]
    )
    engine = pg_store.engine()
    add_pending(engine, 5)
    add_history(engine, 20)
    inline = pg_store.server.url(pg_store.database, pg_store.role, DISTINCTIVE)
    dead = sa.make_url(inline).set(port=1).render_as_string(hide_password=False)
    wrong = pg_store.server.url(pg_store.database, pg_store.role, DISTINCTIVE + "-not")
    (tmp_path / "secret").write_text(DISTINCTIVE + "\n")
    stores = [
        {"name": "inline", "url": inline, "interval": "300ms"},
        {"name": "dead", "url": dead, "interval": "300ms", "query_timeout": "1s"},
        {"name": "wrong", "url": wrong, "interval": "300ms"},
        {
            "name": "file",
            "url": pg_store.server.url(pg_store.database, pg_store.role),
            "password_file": str(tmp_path / "secret"),
            "interval": "300ms",
        },
        {
            "name": "env",
            "url": pg_store.server.url(pg_store.database, pg_store.role),
            "password_env": "CRMSYNC_TEST_SECRET",
            "interval": "300ms",
        },
    ]
    config = write_config(tmp_path / "exporter.yml", stores)
    outputs: list[str] = []

    check = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--config.check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # --config.check also checks that the password sources are there.
        env={**os.environ, "CRMSYNC_TEST_SECRET": DISTINCTIVE},
    )
    assert check.returncode == 0, check.stderr
    outputs += [check.stdout, check.stderr]
    broken = write_config(
        tmp_path / "broken.yml",
        [{"name": "x", "url": inline.replace(f":{pg_store.server.port}/", ":port/")}],
    )
    failed = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    outputs += [failed.stdout, failed.stderr]

    exporter = Exporter(config, env={"CRMSYNC_TEST_SECRET": DISTINCTIVE}, log_level="debug")
    try:
        exporter.wait_serving()
        exporter.wait_until(
            lambda r: (
                all(up(r, name) == 1.0 for name in ("inline", "file", "env"))
                and up(r, "dead") == 0.0
                and up(r, "wrong") == 0.0
            ),
            seconds=30,
        )
        for path in ("/metrics", "/", "/-/healthy", "/nope"):
            outputs.append(exporter.get(path)[1].decode(errors="replace"))
    finally:
        exporter.stop()
    logs = exporter.output()
    assert "password authentication failed" in logs  # the failures were logged...
    assert "Connection refused" in logs or "connection refused" in logs.lower()
    outputs.append(logs)
    forms = {DISTINCTIVE, urllib.parse.quote(DISTINCTIVE), urllib.parse.quote_plus(DISTINCTIVE)}
    for output in outputs:
        for form in forms:
            assert form not in output  # ...without the password
    engine.dispose()


STATEMENT = re.compile(r"(?:statement|execute [^:]*): (.*)$")
# Reads, session settings and transaction control (psycopg's own savepoints, its empty ";"
# pings): no statement that could write.
READ_ONLY_VERBS = {
    "SELECT",
    "SET",
    "SHOW",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "",
}


def test_a_select_only_role_is_enough_and_nothing_is_written(pg_store: PgStore) -> None:
    engine = pg_store.engine()
    add_pending(engine, 15)
    add_history(engine, 120)
    add_errors(engine, 12)
    runner = runner_for(pg_store.reader_url, interval="200ms")
    for _ in range(3):
        assert runner.run_once().last_error is None
        add_history(engine, 7, seed=int(time.monotonic()))
    state = runner.run_once()
    assert state.last_error is None
    # Counted since the first read: the three batches added after it.
    assert sum(state.totals.synced.values()) == 3 * 7

    # Everything the role sent, as the server logged it (log_statement = all).
    sent = [
        match.group(1).strip()
        for line in pg_store.server.log_lines(pg_store.role)
        if (match := STATEMENT.search(line))
    ]
    assert sent, "the server logged no statement of the exporter's role"
    verbs = {statement.split()[0].upper().rstrip(";") for statement in sent}
    assert verbs <= READ_ONLY_VERBS, verbs
    assert "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY" in sent

    # The exporter's own sessions refuse writes, and the role could not write anyway.
    with runner.reader.engine.connect() as connection:
        assert connection.execute(sa.text("SHOW transaction_read_only")).scalar_one() == "on"
        with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
            connection.execute(sa.text("CREATE TEMP TABLE t (x int)"))
    reader = sa.create_engine(pg_store.reader_url)
    with (
        reader.connect() as connection,
        pytest.raises(sa.exc.DBAPIError, match="permission denied"),
    ):
        connection.execute(sa.text("DELETE FROM sync_queue"))
    reader.dispose()
    runner.reader.close()
    engine.dispose()


def test_the_container_image_runs_as_non_root_and_holds_no_secrets() -> None:
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.exists():
        unavailable("there is no Dockerfile yet")
    text = dockerfile.read_text()
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    last_from = max(i for i, line in enumerate(instructions) if line.upper().startswith("FROM "))
    users = [
        line.split(None, 1)[1].strip()
        for line in instructions[last_from:]
        if line.upper().startswith("USER ")
    ]
    assert users, "the final stage never switches away from root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    secret_words = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE)", re.IGNORECASE)
    for line in instructions:
        keyword = line.split(None, 1)[0].upper()
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not secret_words.search(line), line
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.(pem|key|crt|p12|env)\b|id_rsa|secret", line), line
    # Only what the image needs is sent to the build: no .git, databases or local secrets.
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "the build context should start from nothing (a first line '*')"
