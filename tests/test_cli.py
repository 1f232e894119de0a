import subprocess
import sys

from engine.cli import build_parser, main


def test_help_lists_commands(capsys):
    parser = build_parser()
    text = parser.format_help()
    assert "geopush" in text


def test_no_command_is_usage_error():
    assert main([]) == 2


def test_console_entry_runs():
    out = subprocess.run([sys.executable, "-m", "engine", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "geopush" in out.stdout


def _help_of(*argv):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(buf.getvalue().split())  # argparse wraps lines: compare on single spaces


def test_run_help_shows_every_default_and_variable():
    from engine.daemon.cli import _FLAGS
    from engine.daemon.settings_help import DEFAULTS

    text = _help_of("run")
    for flag, field, _kw in _FLAGS:
        assert f"(default: {DEFAULTS[field]}; env GEOPUSH_{field.upper()})" in text, flag
    assert "default: 500; env GEOPUSH_BATCH_SIZE" in text
    assert "env GEOPUSH_CONFIG" in text and "GEOPUSH_OWNTRACKS=false" in text


def test_the_defaults_help_shows_are_the_settings_defaults():
    from engine.daemon.config import Settings
    from engine.daemon.settings_help import DEFAULTS, HELP

    assert set(DEFAULTS) == set(HELP) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        if name == "pid_file":  # computed from --state (Settings.pid_path)
            continue
        want = "none" if field.default is None else str(field.default)
        assert DEFAULTS[name].lower() == want.lower(), name
