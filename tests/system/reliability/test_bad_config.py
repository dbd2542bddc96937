"""Bad configuration: whatever the file holds, a clear message and exit 1, never a traceback.

Property-based (hypothesis): random text, random YAML structures, and a valid file with one
value replaced by junk, run through the real command line, both ``--config.check`` and the
start-up path (engines built, then stopped by an unusable listen address).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from crmsync_testing.exporter_cli import run_cli
from crmsync_testing.helpers import runner_for, utcnow

VALID: dict[str, Any] = {
    "stores": [
        {
            "name": "main",
            "url": "postgresql+psycopg://exporter@db.invalid:5432/sync",
            "interval": "15s",
            "query_timeout": "10s",
            "settle_time": "5m",
            "objects": ["lead", "contact"],
            "max_objects": 100,
            "max_error_codes": 50,
            "operations": {"insert": ["I"], "update": ["U"]},
            "directions": {"to_crm": ["OUT"], "from_crm": ["IN"]},
            "mapping": {
                "queue": {"table": "sync_queue", "enqueued_at": "enqueued_at"},
                "history": {"table": "sync_history", "synced_at": "synced_at"},
                "errors": {"table": "sync_error", "error_code": "error_code"},
            },
        }
    ]
}
PROBLEM_LINE = re.compile(r"^  \S.*$")
CRAFTED_NAMES = [
    "sync_queue; DROP TABLE sync_history",
    'sync_queue" WHERE 1=1 --',
    "sync_queue'--",
    "id) OR (1=1",
    "a.b.c",
    "1starts_with_digit",
    "has space",
    "semi;colon",
    "back`tick",
    "x" * 64,
    "",
    "ｓｙｎｃ_queue",  # full-width letters  # noqa: RUF001
    "sync_queue\x00",
]


def run_main(text: str | bytes, *args: str) -> tuple[int, str, str]:
    """``crmsync-exporter --config.file FILE ARGS`` in this process: (exit code, stdout, stderr)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.yml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return run_cli(["--config.file", str(path), *args])


def assert_clear_outcome(code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout + stderr
    if code == 0:
        assert "valid" in stdout
        return
    assert code == 1
    lines = stderr.rstrip("\n").split("\n")
    if lines[0].startswith("invalid configuration "):
        assert len(lines) > 1
        for line in lines[1:]:
            assert PROBLEM_LINE.match(line), line
    else:
        assert lines[0].startswith("crmsync-exporter: "), stderr
        assert len(lines) == 1, stderr


def check_both_paths(text: str | bytes) -> None:
    assert_clear_outcome(*run_main(text, "--config.check"))
    # The start-up path: engines are built, then start-up stops at the listen address.
    code, stdout, stderr = run_main(text, "--web.listen-address", "no-port-here")
    assert_clear_outcome(code, stdout, stderr)
    assert code == 1


junk_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(
        ["", "0", "-1s", "1e999", ".inf", "NaN", "15", "15x", "1m30s", "9999999d", "\x00", "null"]
    )
)
junk = st.recursive(
    junk_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            paths += leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths += leaf_paths(value, (*prefix, index))
    return paths


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = document.copy()
    copy[path[0]] = replaced(document[path[0]], path[1:], value)
    return copy


PATHS = leaf_paths(VALID)
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FAST
@given(path=st.sampled_from(PATHS), value=junk)
def test_any_value_anywhere_gives_a_clear_outcome(path: tuple[Any, ...], value: Any) -> None:
    check_both_paths(yaml.safe_dump(replaced(VALID, path, value), allow_unicode=True))


@FAST
@given(path=st.sampled_from(PATHS), key=st.text(max_size=12), value=junk)
def test_any_extra_key_gives_a_clear_outcome(path: tuple[Any, ...], key: str, value: Any) -> None:
    parent: Any = VALID
    for part in path:
        parent = parent[part]
    assume(isinstance(parent, dict))
    check_both_paths(
        yaml.safe_dump(replaced(VALID, path, {**parent, key: value}), allow_unicode=True)
    )


@FAST
@given(text=st.text(max_size=300))
def test_any_text_gives_a_clear_outcome(text: str) -> None:
    check_both_paths(text)


@FAST
@given(data=st.data())
def test_a_damaged_valid_file_gives_a_clear_outcome(data: st.DataObject) -> None:
    text = yaml.safe_dump(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 5))
        insert = data.draw(st.sampled_from(["", ":", "-", " ", "\n", "[", "{", "'", "&a", "*a"]))
        text = text[:position] + insert + text[position + cut :]
    check_both_paths(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,  # nesting deeper than the parser's recursion
        "a: &a [" + ",".join(["x"] * 50) + "]\nb: &b [" + ",".join(["*a"] * 50) + "]\nstores: *b",
        "stores:\n  - name: m\n    url: sqlite:///x.db\n    interval: .inf\n",
        "stores:\n  - name: m\n    url: sqlite:///x.db\n    query_timeout: 1e400\n",
        'stores:\n  - name: m\n    url: sqlite:///x.db\n    password_file: "a\\0b"\n',
        "stores:\n  - name: m\n    url: 'postgresql://u:pw@h:notaport/db'\n",
        "stores:\n  - name: m\n    url: 'nosuchdb://u@h/db'\n",
        "stores:\n  - name: m\n    url: 'mssql+pyodbc://u@h/db'\n",
        "!!python/object/apply:os.system ['true']",
        "\ufeffstores: []",
    ],
    ids=[
        "deep-nesting",
        "alias-bomb",
        "infinite-interval",
        "huge-timeout",
        "nul-in-path",
        "bad-port",
        "unknown-database",
        "missing-driver",
        "python-tag",
        "bom-empty",
    ],
)
def test_known_nasty_files_give_a_clear_outcome(text: str) -> None:
    check_both_paths(text)


def test_binary_and_unreadable_files(tmp_path: Path) -> None:
    assert_clear_outcome(*run_main(b"\xff\xfe\x00garbage"))
    for args in (["--config.file", str(tmp_path)], ["--config.file", str(tmp_path / "none")]):
        code, out, err = run_cli([*args, "--config.check"])
        assert_clear_outcome(code, out, err)
        assert code == 1


def test_password_file_that_is_not_text(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xffS3cr3t\xfe")
    config = {"stores": [{"name": "m", "url": "postgresql+psycopg://u@h/db"}]}
    config["stores"][0]["password_file"] = str(secret)
    code, stdout, stderr = run_main(yaml.safe_dump(config), "--web.listen-address", "x")
    assert_clear_outcome(code, stdout, stderr)
    assert "not UTF-8 text" in stderr
    assert "S3cr3t" not in stderr


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,
        "stores:\n  - name: m\n    url: sqlite:///x.db\n    interval: often\n",
        "stores:\n  - name: m\n    url: sqlite:///x.db\n"
        "    mapping: {queue: {table: 'q; DROP TABLE q'}}\n",
    ],
    ids=["deep-nesting", "bad-duration", "injection"],
)
def test_the_real_command_exits_1_with_a_message(tmp_path: Path, text: str) -> None:
    config = tmp_path / "config.yml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("invalid configuration ")
    assert len(result.stderr.splitlines()) <= 3


@pytest.mark.parametrize("name", CRAFTED_NAMES)
@pytest.mark.parametrize("key", ["queue.table", "history.synced_at", "errors.error_code"])
def test_names_crafted_to_inject_sql_are_rejected(name: str, key: str) -> None:
    table, column = key.split(".")
    document = replaced(VALID, ("stores", 0, "mapping", table, column), name)
    code, _, stderr = run_main(yaml.safe_dump(document, allow_unicode=True), "--config.check")
    assert code == 1
    assert f"stores[0].mapping.{key}: " in stderr
    assert "is not a plain SQL identifier" in stderr or "String should" in stderr
    assert "Traceback" not in stderr


WHITE_SPACE = "".join(
    character
    for character in map(chr, range(0x3001))
    if character.isspace() and character not in "\x1c\x1d\x1e\x1f"
)


@FAST
@given(name=st.text(min_size=1, max_size=70))
@example(name="A\x1f")
def test_only_plain_identifiers_are_accepted(name: str) -> None:
    document = replaced(VALID, ("stores", 0, "mapping", "queue", "table"), name)
    code, _, stderr = run_main(yaml.safe_dump(document, allow_unicode=True), "--config.check")
    # Surrounding whitespace is stripped, as from every value of the file: Unicode's White_Space,
    # which pydantic strips, is Python's whitespace without the separators \x1c-\x1f.
    identifier = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
    plain = re.fullmatch(rf"{identifier}(\.{identifier})?", name.strip(WHITE_SPACE))
    assert (code == 0) == bool(plain), stderr


RESERVED = sa.Table(
    "order",
    sa.MetaData(),
    sa.Column("select", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("from", sa.String(32), nullable=False),
    sa.Column("where", sa.String(32), nullable=False),
    sa.Column("group", sa.String(32), nullable=False),
    sa.Column("user", sa.String(32), nullable=False),
    sa.Column("desc", sa.DateTime, nullable=False),
    sa.Column("limit", sa.DateTime, nullable=False),
)


def test_names_that_are_sql_keywords_are_quoted(store_url: str) -> None:
    """A store whose names are reserved words works: names reach SQL only quoted."""
    engine = sa.create_engine(store_url)
    RESERVED.create(engine)
    names = {
        "table": "order",
        "id": "select",
        "object_type": "from",
        "operation": "where",
        "direction": "group",
        "record_id": "user",
        "enqueued_at": "desc",
    }
    mapping = {
        "queue": {k: v for k, v in names.items() if k != "id"},
        "history": {**{k: v for k, v in names.items() if k != "record_id"}, "synced_at": "limit"},
        "errors": {
            **{k: v for k, v in names.items() if k != "enqueued_at"},
            "error_code": "user",
            "failed_at": "limit",
        },
    }
    runner = runner_for(store_url, mapping=mapping)
    assert runner.run_once().last_error is None
    now = utcnow()
    row = {"from": "lead", "where": "insert", "group": "to_crm", "user": "x", "desc": now}
    with engine.begin() as connection:
        connection.execute(RESERVED.insert(), [{**row, "limit": now}] * 7)
    state = runner.run_once()
    assert state.last_error is None, state.last_error
    assert sum(state.totals.synced.values()) == 7
    runner.reader.close()
    with engine.begin() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(RESERVED)).scalar() == 7
    RESERVED.drop(engine)
    engine.dispose()


SUPPORTED = (
    "postgresql+psycopg://user@host:5432/db, mysql+pymysql://user@host:3306/db "
    "or sqlite:///path/to/store.db"
)
STORE = "stores:\n  - name: m\n    url: sqlite:///{dir}/store.db\n"
EXACT_MESSAGES = [
    (
        "stores: [{name: m, url: 'postgres://exporter:s3cret@db:5432/sync'}]",
        "stores[0].url: postgres://exporter:***@db:5432/sync: the scheme 'postgres://' is not "
        "SQLAlchemy's; write postgresql+psycopg://exporter:***@db:5432/sync",
    ),
    (
        "stores: [{name: m, url: 'mysql://exporter@db/sync'}]",
        "stores[0].url: mysql://exporter@db/sync: names no driver, and SQLAlchemy's default for "
        "mysql is not installed; write mysql+pymysql://exporter@db/sync",
    ),
    (
        "stores: [{name: m, url: 'postgresql://exporter@db/sync'}]",
        "stores[0].url: postgresql://exporter@db/sync: names no driver, and SQLAlchemy's default "
        "for postgresql is not installed; write postgresql+psycopg://exporter@db/sync",
    ),
    (
        "stores: [{name: m, url: 'postgresql+psycopg2://exporter@db/sync'}]",
        "stores[0].url: postgresql+psycopg2://exporter@db/sync: the driver 'psycopg2' is not "
        "supported; write postgresql+psycopg://exporter@db/sync",
    ),
    (
        "stores: [{name: m, url: 'mssql+pyodbc://exporter@db/sync'}]",
        f"stores[0].url: mssql+pyodbc://exporter@db/sync: database 'mssql' is not supported; "
        f"use {SUPPORTED}",
    ),
    (
        "stores: [{name: m, url: 'oracle://exporter@db/sync'}]",
        f"stores[0].url: oracle://exporter@db/sync: database 'oracle' is not supported; "
        f"use {SUPPORTED}",
    ),
    (
        "stores: [{name: m, url: 'db.example.com:5432'}]",
        f"stores[0].url: not a database URL (no scheme://); use {SUPPORTED}",
    ),
    (
        "stores: [{name: m, url: 'postgresql+psycopg://u:pw@db:port/sync'}]",
        f"stores[0].url: not a database URL (a malformed host, port or query?); use {SUPPORTED}",
    ),
    (
        STORE + "    objects: lead\n",
        "stores[0].objects: a list is wanted, not 'lead'; write [lead] or one '- ' item per line",
    ),
    (
        "stores: main\n",
        "stores: a list is wanted, not 'main'; write [main] or one '- ' item per line",
    ),
    (
        STORE + "    operations: insert\n",
        "stores[0].operations: a mapping (key: value) is wanted, not 'insert'",
    ),
    (
        STORE + "    max_objects: many\n",
        "stores[0].max_objects: a whole number is wanted, not 'many'",
    ),
    (
        STORE + "    max_objects: 0\n",
        "stores[0].max_objects: must be greater than or equal to 1, not 0",
    ),
    (STORE + "    interval: -5\n", "stores[0].interval: must be greater than 0, not -5"),
    (
        STORE + "    interval: often\n",
        "stores[0].interval: 'often' is not a duration (use seconds or e.g. 15s, 1m30s, 500ms)",
    ),
    (STORE + "    name: [m]\n", "stores[0].name: a text value is wanted, not a list"),
    (
        STORE + "    mapping: {single_table: {table: changes}}\n",
        "stores[0].mapping.status_values: not set, and the defaults (pending: ['pending'], "
        "synced: ['synced'], failed: ['failed']) are used only where the store holds no other "
        "status: set mapping.status_values to the status column's values, or run "
        "--config.connect-check, which confirms the defaults when they are all the store holds",
    ),
]


@pytest.mark.parametrize(("text", "problem"), EXACT_MESSAGES)
def test_each_bad_configuration_has_its_exact_message(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(text.replace("{dir}", str(tmp_path)))
    code, _, err = run_cli(["--config.file", str(path), "--config.check"])
    assert (code, err) == (1, f"invalid configuration {path}:\n  {problem}\n")


def test_each_unreadable_file_is_named(tmp_path: Path) -> None:
    """The file that cannot be read, by the key that names it, with the reason."""
    missing = tmp_path / "missing"
    (tmp_path / "empty.db").touch()
    store = f"stores:\n  - name: m\n    url: sqlite:///{tmp_path}/empty.db\n"
    cases = [
        (
            ["--config.file", str(missing)],
            f"invalid configuration {missing}:\n"
            f"  --config.file: cannot read {missing}: No such file or directory\n",
        ),
        (
            ["--config.file", str(tmp_path)],
            f"invalid configuration {tmp_path}:\n"
            f"  --config.file: cannot read {tmp_path}: it is a directory, not a file\n",
        ),
        (
            ["--config.file", "{config}", "--web.config.file", str(missing)],
            f"invalid configuration {missing}:\n"
            f"  --web.config.file: cannot read {missing}: No such file or directory\n",
        ),
        (
            ["--config.file", "{config}", "--web.config.file", "{web}"],
            "invalid configuration {web}:\n"
            f"  tls_server_config.cert_file: cannot read {missing}.crt: "
            "No such file or directory\n",
        ),
    ]
    config = tmp_path / "config.yml"
    config.write_text(store)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {missing}.crt\n  key_file: {missing}.key\n")
    for args, expected in cases:
        filled = [arg.format(config=config, web=web) for arg in args]
        code, _, err = run_cli([*filled, "--config.check"])
        assert (code, err) == (1, expected.format(web=web))

    for extra, message in (
        (
            f"    password_file: {missing}\n",
            f"stores[0].password_file: cannot read {missing}: No such file or directory",
        ),
        (
            "    password_env: CRMSYNC_NO_SUCH_VARIABLE\n",
            "stores[0].password_env: environment variable CRMSYNC_NO_SUCH_VARIABLE is not set "
            "(set it in the exporter's environment, or use password_file)",
        ),
    ):
        postgres_store = "stores:\n  - name: m\n    url: postgresql+psycopg://u@h/d\n"
        code, _, stderr = run_main(postgres_store + extra, "--config.check")
        assert (code, stderr) == (1, f"crmsync-exporter: {message}\n")
