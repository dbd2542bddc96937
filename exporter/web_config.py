"""The ``--web.config.file`` format of Prometheus's exporter-toolkit: TLS and basic auth."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from exporter.config import ConfigError, validation_problem
from exporter.hints import unreadable

ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS13"


class HttpServerConfig(_Strict):
    headers: dict[str, str] = {}


class WebConfig(_Strict):
    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, str] = {}
    http_server_config: HttpServerConfig = HttpServerConfig()

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server-side TLS context, or None for plain HTTP."""
        tls = self.tls_server_config
        if tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
        context.maximum_version = _TLS_VERSIONS[tls.max_version]
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
        if tls.client_auth_type == "RequireAndVerifyClientCert":
            context.verify_mode = ssl.CERT_REQUIRED
        elif tls.client_auth_type in ("VerifyClientCertIfGiven", "RequestClientCert"):
            context.verify_mode = ssl.CERT_OPTIONAL
        elif tls.client_auth_type == "RequireAnyClientCert":
            # Python cannot accept an unverified certificate yet require one: verify it.
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def load_web_config(path: Path) -> WebConfig:
    """Read and validate a web configuration file, including its certificate files."""
    source = str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(source, [f"--web.config.file: {unreadable(path, error)}"]) from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        raise ConfigError(source, ["not valid YAML"]) from None
    try:
        config = WebConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(source, [validation_problem(e) for e in error.errors()]) from None
    tls = config.tls_server_config
    needs_ca = tls is not None and tls.client_auth_type == "RequireAndVerifyClientCert"
    if needs_ca and tls is not None and tls.client_ca_file is None:
        raise ConfigError(
            source, ["tls_server_config.client_ca_file: required to verify client certificates"]
        )
    if tls is not None:
        _check_readable(source, tls)
    try:
        config.ssl_context()
    except ssl.SSLError as error:
        assert tls is not None  # only TLS loads files
        files = f"{tls.cert_file}, {tls.key_file}" + (
            f", {tls.client_ca_file}" if tls.client_ca_file else ""
        )
        raise ConfigError(
            source,
            [
                f"tls_server_config: {files}: not PEM certificates and the certificate's key "
                f"({error.reason or error})"
            ],
        ) from None
    except (OSError, ValueError) as error:  # ValueError: a NUL in a path
        raise ConfigError(source, [f"tls_server_config: {error}"]) from None
    for user, hashed in config.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(source, [f"basic_auth_users.{user}: not a bcrypt hash"])
    return config


def _check_readable(source: str, tls: TlsServerConfig) -> None:
    """Each file the TLS configuration names can be read: say which one cannot."""
    for key in ("cert_file", "key_file", "client_ca_file"):
        path = getattr(tls, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise ConfigError(
                source, [f"tls_server_config.{key}: {unreadable(path, error)}"]
            ) from None
        except ValueError:  # a NUL in the path
            raise ConfigError(
                source, [f"tls_server_config.{key}: {str(path)!r} is not a usable path"]
            ) from None
