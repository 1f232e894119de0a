"""A bad setting gets one clear line: what is wrong, and where it is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.daemon.config import load_settings
from engine.errors import ConfigError


def test_group_without_redis_says_what_to_add(capsys: pytest.CaptureFixture[str]) -> None:
    """`geopush run --group NAME` on the default SQLite state."""
    assert main(["run", "--group", "engines"]) == 1
    err = capsys.readouterr().err
    assert "--group needs shared state: add --state redis://HOST:PORT/0" in err
    assert "GEOPUSH_STATE" in err and "geopush-state.sqlite" in err
    assert "?" not in err and "Value error" not in err


def test_a_field_error_names_the_flag_the_variable_and_the_value() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"prefix": "a/"})
    text = str(exc.value)
    assert "prefix: must be a topic prefix" in text and "(got 'a/')" in text
    assert "--prefix, GEOPUSH_PREFIX or `prefix = ...`" in text
    assert "Value error" not in text
    with pytest.raises(ConfigError) as exc:
        load_settings({"owntracks": "maybe"})
    assert "--no-owntracks" in str(exc.value)  # the flag that exists, not --owntracks


def test_a_password_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"password": 12345})
    assert "12345" not in str(exc.value)


def test_an_unknown_key_in_the_config_file_is_named_with_a_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "geopush.toml"
    cfg.write_text('client-id = "w1"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings({}, cfg)
    text = str(exc.value)
    assert "`client-id`: no such setting (did you mean `client_id`?" in text
    assert "--client-id" not in text  # not "set by --client-id": the key is the problem


def test_a_toml_syntax_error_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "geopush.toml"
    cfg.write_text("broker = \n")
    with pytest.raises(ConfigError, match=r"is not valid TOML: .*line 1"):
        load_settings({}, cfg)
