"""A PostgreSQL server of the tests' own (initdb, a free port), which they may stop and restart."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from crmsync_testing.servers import unavailable
from exporter.schema import create_reference_schema

SUPERUSER = "postgres"
# Statements of every session are logged, so tests can see what the exporter sent.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    # On: a crash (immediate stop) must not lose commits the exporter has already counted.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "60",
    "log_statement": "'all'",
    "log_line_prefix": "'%m [%p] user=%u app=%a '",
    "log_min_messages": "warning",
}


def find_binaries() -> Path:
    """The directory holding initdb and pg_ctl, or a skip (a failure under CI)."""
    candidates = [os.environ.get("CRMSYNC_TEST_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    raise AssertionError  # unreachable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgInstance:
    """A throw-away cluster; as root it runs as the ``postgres`` OS user, as PostgreSQL insists."""

    def __init__(self) -> None:
        self.bin = find_binaries()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="crmsync-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root, but there is no 'postgres' OS user to run the server")
                raise
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        # The superuser trusts 127.0.0.1; every other role must give its password.
        hba = (
            f"local all all trust\nhost all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        conf = "".join(f"{key} = {value}\n" for key, value in SETTINGS.items())
        conf += f"port = {self.port}\nunix_socket_directories = '{self.root}'\n"
        self._write(self.data / "pg_hba.conf", hba)
        with (self.data / "postgresql.conf").open("a") as handle:
            handle.write(conf)
        self.start()

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self._as_user:
            account = pwd.getpwnam("postgres")
            os.chown(path, account.pw_uid, account.pw_gid)

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [*self._as_user, str(self.bin / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")
        return result

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> float:
        """Start the server; return the monotonic time at which it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        return self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> float:
        self.stop(mode)
        return self.start()

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def wait_ready(self, seconds: float = 30.0) -> float:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"PostgreSQL on port {self.port} did not come up")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases and roles ----------------------------------------------------------------

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str = "") -> str:
        url = sa.URL.create(
            "postgresql+psycopg",
            username=user,
            password=password or None,
            host="127.0.0.1",
            port=self.port,
            database=database,
        )
        return url.render_as_string(hide_password=False)

    def admin(self, database: str = "postgres") -> sa.Engine:
        return sa.create_engine(self.url(database), isolation_level="AUTOCOMMIT")

    def create_database(self) -> str:
        name = f"store_{uuid.uuid4().hex[:10]}"
        engine = self.admin()
        with engine.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return name

    def execute(self, database: str, statements: Sequence[str]) -> None:
        engine = self.admin(database)
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(sa.text(statement))
        engine.dispose()

    def log_lines(self, user: str) -> list[str]:
        """Statements the server logged for ``user``'s sessions."""
        marker = f" user={user} "
        return [
            line for line in self.log.read_text(errors="replace").splitlines() if marker in line
        ]


READ_ONLY_GRANTS = (
    "GRANT CONNECT ON DATABASE {database} TO {role}",
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON sync_queue, sync_history, sync_error TO {role}",
)


@dataclass(frozen=True)
class PgStore:
    """A reference store in a database of its own, and a role that may only read it."""

    server: PgInstance
    database: str
    role: str
    password: str

    @property
    def admin_url(self) -> str:
        return self.server.url(self.database)

    @property
    def reader_url(self) -> str:
        """The exporter's URL, with the read-only role's password in it."""
        return self.server.url(self.database, self.role, self.password)

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.admin_url, pool_pre_ping=True)


def reference_store(pg: PgInstance) -> PgStore:
    """A new database on ``pg`` holding the reference tables, and a role that may only read it."""
    database = pg.create_database()
    role = f"reader_{database.removeprefix('store_')}"
    password = f"pw-{secrets.token_hex(8)}"
    engine = sa.create_engine(pg.url(database))
    create_reference_schema(engine)
    engine.dispose()
    pg.execute(
        database,
        [
            f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
            *(grant.format(database=database, role=role) for grant in READ_ONLY_GRANTS),
        ],
    )
    return PgStore(pg, database, role, password)
