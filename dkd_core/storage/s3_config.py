"""Where the S3 server is and how to sign requests: `S3Config.from_env`.

The endpoint and the keys come from the environment only; the secret never
appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dkd_core.errors import DKDError

DEFAULT_RETRY_SECONDS = 60.0
CREDENTIAL_VARS = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY/MINIO_SECRET_KEY)"
ENDPOINT_EXAMPLE = "http://minio.minio.svc.cluster.local:9000, https://s3.example.org or minio:9000"


def _env_flag(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, bool] | None:
    """The first of `names` that is set, parsed as a boolean, or None if none is set."""
    for name in names:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        value = raw.lower()
        if value in ("true", "1", "yes", "on"):
            return name, True
        if value in ("false", "0", "no", "off"):
            return name, False
        raise DKDError(f"{name}={raw!r}: expected true or false")
    return None


@dataclass(frozen=True)
class S3Config:
    """Where the S3 server is and how to sign requests; read from the environment.

    `secret_key` is left out of repr() and str(), so logging a config (or an
    exception holding one) never shows it.
    """

    endpoint: str  # host:port, no scheme
    secure: bool
    access_key: str
    secret_key: str = field(repr=False)
    region: str | None = None
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    endpoint_var: str = "S3_ENDPOINT"  # which variable the endpoint came from, for messages

    @property
    def url(self) -> str:
        """The endpoint as a URL, e.g. `http://minio:9000`: safe to show."""
        return ("https://" if self.secure else "http://") + self.endpoint

    def __str__(self) -> str:
        return f"S3 endpoint {self.url} (access key {self.access_key})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Config:
        """Read the configuration from `env` (default: `os.environ`).

        Endpoint: `S3_ENDPOINT` or `MINIO_ENDPOINT`, as `http://host:port`,
        `https://host:port` or `host:port`. TLS: the URL's scheme, or for a bare
        `host:port` `S3_SECURE`/`MINIO_SECURE` (default false). Keys:
        `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` or
        `MINIO_ACCESS_KEY`/`MINIO_SECRET_KEY`. Region (optional): `S3_REGION` or
        `AWS_REGION`. Retry budget: `S3_RETRY_SECONDS` (default 60).
        """
        env = os.environ if env is None else env
        endpoint_var = next((n for n in ("S3_ENDPOINT", "MINIO_ENDPOINT") if env.get(n)), None)
        if endpoint_var is None:
            raise DKDError(
                "S3 URIs need the S3 server's address: set S3_ENDPOINT (or MINIO_ENDPOINT), "
                f"e.g. {ENDPOINT_EXAMPLE}"
            )
        endpoint, secure = _parse_endpoint(endpoint_var, env[endpoint_var].strip(), env)

        access_var = next(
            (n for n in ("AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY") if env.get(n)), None
        )
        secret_var = next(
            (n for n in ("AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY") if env.get(n)), None
        )
        # Name the variable of the family (AWS_* or MINIO_*) already in use first.
        minio_names = "MINIO" in f"{access_var}{secret_var}"
        missing = []
        if access_var is None:
            missing.append(
                "MINIO_ACCESS_KEY (or AWS_ACCESS_KEY_ID)"
                if minio_names
                else "AWS_ACCESS_KEY_ID (or MINIO_ACCESS_KEY)"
            )
        if secret_var is None:
            missing.append(
                "MINIO_SECRET_KEY (or AWS_SECRET_ACCESS_KEY)"
                if minio_names
                else "AWS_SECRET_ACCESS_KEY (or MINIO_SECRET_KEY)"
            )
        if missing:
            raise DKDError(f"S3 URIs need credentials for {endpoint}: set {' and '.join(missing)}")
        assert access_var is not None and secret_var is not None

        region = (env.get("S3_REGION") or env.get("AWS_REGION") or "").strip() or None
        raw_retry = env.get("S3_RETRY_SECONDS", "").strip()
        try:
            retry_seconds = float(raw_retry) if raw_retry else DEFAULT_RETRY_SECONDS
        except ValueError:
            retry_seconds = -1.0
        if not retry_seconds >= 0:  # also rejects nan
            raise DKDError(f"S3_RETRY_SECONDS={raw_retry!r}: expected a number of seconds >= 0")
        return cls(
            endpoint=endpoint,
            secure=secure,
            access_key=env[access_var].strip(),
            secret_key=env[secret_var].strip(),
            region=region,
            retry_seconds=retry_seconds,
            endpoint_var=endpoint_var,
        )


def _parse_endpoint(var: str, raw: str, env: Mapping[str, str]) -> tuple[str, bool]:
    """`http(s)://host[:port]` or `host[:port]` -> ("host[:port]", secure)."""
    expected = f"set {var} to the S3 server's address, e.g. {ENDPOINT_EXAMPLE}"
    if "://" in raw:
        parts = urlsplit(raw)
        shown = f"{parts.scheme}://{parts.hostname or ''}"  # never echo a user:password@
        if parts.username or parts.password:
            raise DKDError(
                f"{var}={shown}...: the endpoint must not hold credentials; "
                f"put them in {CREDENTIAL_VARS}"
            )
        if parts.scheme.lower() not in ("http", "https"):
            raise DKDError(f"{var}={raw!r}: the scheme must be http or https; {expected}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise DKDError(f"{var}={raw!r}: no path is allowed after host:port; {expected}")
        netloc, secure = parts.netloc, parts.scheme.lower() == "https"
    else:
        netloc = raw.rstrip("/")
        if "/" in netloc:
            raise DKDError(f"{var}={raw!r}: no path is allowed after host:port; {expected}")
        flag = _env_flag(env, ("S3_SECURE", "MINIO_SECURE"))
        secure = flag[1] if flag else False
    try:
        check = urlsplit("//" + netloc)
        host, _ = check.hostname, check.port  # .port raises ValueError for a bad port
    except ValueError:
        host = None
    if not host or any(c.isspace() for c in netloc):
        raise DKDError(f"{var}={raw!r} is not a valid host:port; {expected}")
    return netloc, secure
