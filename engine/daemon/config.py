"""The daemon's configuration: flags > GEOPUSH_* environment > TOML file > defaults.

pydantic-settings does the layering and validation; ``load_settings`` turns any validation error
into a ``ConfigError`` that names the setting and where it can be set. deploy/geopush.toml is the
annotated example file.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engine.daemon.settings_help import HELP  # noqa: E402  (no pydantic: fast --help)
from engine.errors import ConfigError, TransportError


class Settings(BaseSettings):
    """Every daemon setting (see HELP)."""

    model_config = SettingsConfigDict(env_prefix="GEOPUSH_", extra="forbid")

    broker: str = "mqtt://localhost:1883"
    username: str | None = None
    password: str | None = None
    fences: Path | None = None
    campaigns: Path | None = None
    profiles: Path | None = None
    state: str = "geopush-state.sqlite"  # a path, or a redis:// URL (kept a str: Path eats "//")
    group: str | None = None
    prefix: str = "geopush"
    client_id: str = "geopush-engine"
    metrics_port: int = Field(0, ge=0, le=65535)
    batch_size: int = Field(500, ge=1, le=100_000)
    linger_ms: float = Field(1.0, ge=0, le=1000)
    linger_batch: int = Field(64, ge=1, le=100_000)
    max_in_flight: int = Field(200, ge=1, le=65000)
    max_pending: int = Field(20_000, ge=1)
    sqlite_sync: Literal["normal", "full"] = "normal"
    owntracks: bool = True
    status_interval: float = Field(5.0, gt=0)
    idle_flush: float = Field(0.0, ge=0)
    drain_timeout: float = Field(10.0, ge=0)
    pid_file: Path | None = None
    fences_snapshot: str | None = None  # a path, or "off"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    input_window: int = Field(100_000, ge=1000)
    http: str | None = None  # HOST:PORT of the HTTP API (engine/api), off when None
    api_follow_ms: float = Field(20.0, ge=1, le=1000)  # how often the engine reads the API's changes
    deadletter_payload: int = Field(4096, ge=0, le=65536)
    deadletter_rate: float = Field(100.0, ge=0)
    max_skew: float = Field(300.0, gt=0)
    watermark_quorum: int = Field(3, ge=1)
    sys_username: str | None = None  # the $SYS watch's own login (broker_watch.py)
    sys_password: str | None = None
    new_state: bool = False
    quarantine_corrupt: bool = False
    coupon_secret: str | None = Field(None, min_length=16)
    attribution_window_s: float = Field(604800.0, ge=0)
    mqtt_fast: bool = True
    intake: str | None = None  # nats://... : consume partitions from a NATS JetStream cluster
    partitions: str = "all"
    partition_count: int = Field(256, ge=1, le=16384)  # engine.partitions.DEFAULT_PARTITIONS

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a topic prefix without wildcards or leading/trailing '/'")
        return v

    @field_validator("state", "fences_snapshot", mode="before")
    @classmethod
    def _state_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v

    @field_validator("group")
    @classmethod
    def _group_ok(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError("must be a shared-subscription group name without '/', '+' or '#'")
        return v

    @field_validator("http")
    @classmethod
    def _http_ok(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_http(v)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _group_needs_redis(self) -> Settings:
        if self.group is not None and self.redis_url is None:
            raise ValueError(
                "--group needs shared state: add --state redis://HOST:PORT/0 (or "
                'GEOPUSH_STATE, or `state = "redis://HOST:PORT/0"` in the config file); the state '
                f"is now the SQLite file {self.state}, which belongs to one process"
            )
        return self

    @model_validator(mode="after")
    def _partitions_ok(self) -> Settings:
        if self.intake is not None:
            from engine.transport.jetstream import parse_nats_urls, parse_partition_list

            try:
                parse_nats_urls(self.intake)
                parse_partition_list(self.partitions, self.partition_count)
            except (ConfigError, TransportError) as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def redis_url(self) -> str | None:
        """The Redis URL when ``state`` is one (shared state for a worker group), else None."""
        return self.state if self.state.startswith(("redis://", "rediss://", "unix://")) else None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @property
    def fences_snapshot_path(self) -> Path | None:
        """Where the compiled snapshot of --fences is kept (fences.snapshot): ``fences_snapshot``;
        "off" for none; by default beside a SQLite state file (``<state>.fences.snapshot``); with
        Redis state, none unless set (there is no file of ours to stand beside)."""
        if self.fences_snapshot is not None:
            return (
                None
                if self.fences_snapshot.strip().lower() == "off"
                else Path(self.fences_snapshot)
            )
        if self.redis_url is not None:
            return None
        state = Path(self.state)
        return state.with_name(state.name + ".fences.snapshot")

    @property
    def pid_path(self) -> Path | None:
        """Where the pid is written: ``pid_file``; by default beside a SQLite state file
        (``<state>.pid``, where `geopush reload --state` looks); with Redis state, none (there is
        no file of ours to stand beside, and the working directory is no place for one)."""
        if self.pid_file is not None:
            return self.pid_file
        if self.redis_url is not None:
            return None
        state = Path(self.state)
        return state.with_name(state.name + ".pid")

    @property
    def inflight_path(self) -> Path:
        """The crash breadcrumb (engine/daemon/poison.py): ``<state>.inflight``; for a Redis state
        beside the pid file, or without one ``geopush-<client_id>.inflight`` in the temporary
        directory (it only has to outlive the process, not the machine)."""
        if self.redis_url is not None:
            pid = self.pid_path
            if pid is None:
                import tempfile

                return Path(tempfile.gettempdir()) / f"geopush-{self.client_id}.inflight"
            return pid.with_name(pid.stem + ".inflight")
        state = Path(self.state)
        return state.with_name(state.name + ".inflight")


def parse_http(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--http`` (``[::1]:8080`` for IPv6; port 0 picks a free one)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"--http {text!r} is not HOST:PORT; e.g. --http 127.0.0.1:8080 (0.0.0.0:8080 for "
            "every interface, behind a TLS proxy)"
        )
    return host, int(port)


def load_settings(flags: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Settings from (highest first) ``flags`` (None values ignored), GEOPUSH_* variables, the
    TOML ``config_file`` and the defaults."""
    init = {k: v for k, v in (flags or {}).items() if v is not None}
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file {config_file} not found")

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    try:
        return _Layered(**init)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        head = "invalid setting:" if len(problems) == 1 else "invalid settings:"
        raise ConfigError(head + "\n  " + "\n  ".join(problems)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc


_NEGATIVE_FLAGS = {"owntracks": "--no-owntracks", "mqtt_fast": "--mqtt-plain"}


def _flag(name: str) -> str:
    return _NEGATIVE_FLAGS.get(name, f"--{name.replace('_', '-')}")


def _problem(err: Any) -> str:
    """One validation error as a line that says what is wrong and where to fix it."""
    loc = [str(p) for p in err["loc"]]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:  # a rule across settings: its message names them and what to do
        return msg
    name = loc[0]
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(name, list(Settings.model_fields), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return (
            f"`{name}`: no such setting ({hint}the settings are those of `geopush run --help`, "
            "written with '_', e.g. `client_id`; deploy/geopush.toml lists them)"
        )
    secret = name in ("password", "coupon_secret")
    got = "" if secret or "input" not in err else f" (got {err['input']!r})"
    return (
        f"{name}: {msg}{got}; set by {_flag(name)}, GEOPUSH_{name.upper()} or `{name} = ...` "
        "in the config file"
    )


__all__ = ["HELP", "Settings", "load_settings", "parse_http"]
