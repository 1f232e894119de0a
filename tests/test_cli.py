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
        if name in ("pid_file", "fences_snapshot"):  # computed from --state (Settings.*_path)
            continue
        want = "none" if field.default is None else str(field.default)
        assert DEFAULTS[name].lower() == want.lower(), name


def test_bench_e2e_help_is_plain_text():
    """Its description is the module's docstring: no reStructuredText markup on the terminal."""
    import contextlib
    import importlib

    text = _help_of("bench", "e2e")
    assert "``" not in text and ":class:" not in text and ":func:" not in text
    assert "unless --broker)" in text and "`geopush run` as a subprocess" in text
    assert text.count("The daemon end to end") == 1  # not "`geopush bench e2e`: the daemon..."
    mods = []  # the module that registers `bench e2e` is moving next to the simulator
    for name in ("engine.daemon.bench_e2e", "simulator.bench.e2e"):
        with contextlib.suppress(ImportError):
            mods.append(importlib.import_module(name))
    mod = next(m for m in mods if hasattr(m, "plain_help"))
    doc = "`geopush x`: does :class:`~engine.core.Core` and :py:func:`publish_paced` with ``--n``"
    assert mod.plain_help(doc) == "Does Core and publish_paced with --n\n"
