"""The daemon's configuration: flags > GEOPUSH_* environment > TOML file > defaults.

pydantic-settings does the layering and validation; ``load_settings`` turns any validation error
into a ``ConfigError`` that names the setting and where it can be set. deploy/geopush.toml is the
annotated example file.
"""

from __future__ import annotations

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
from engine.errors import ConfigError


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
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    input_window: int = Field(100_000, ge=1000)
    mqtt_fast: bool = True

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("a topic prefix without wildcards or leading/trailing '/'")
        return v

    @field_validator("state", mode="before")
    @classmethod
    def _state_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v

    @field_validator("group")
    @classmethod
    def _group_ok(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/+#")):
            raise ValueError("a shared-subscription group name without '/', '+' or '#'")
        return v

    @model_validator(mode="after")
    def _group_needs_redis(self) -> Settings:
        if self.group is not None and self.redis_url is None:
            raise ValueError(
                "--group needs shared state: --state redis://HOST:PORT/DB (a SQLite file "
                "belongs to one process)"
            )
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
    def pid_path(self) -> Path:
        if self.pid_file is not None:
            return self.pid_file
        if self.redis_url is not None:
            return Path(f"geopush-{self.client_id}.pid")
        state = Path(self.state)
        return state.with_name(state.name + ".pid")


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
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(
                f"{name}: {err['msg']} (set by --{name.replace('_', '-')}, "
                f"GEOPUSH_{name.upper()} or `{name} = ...` in the config file)"
            )
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from exc
    except ValueError as exc:  # e.g. a TOML syntax error
        raise ConfigError(f"config file {config_file}: {exc}") from exc


__all__ = ["HELP", "Settings", "load_settings"]
