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
