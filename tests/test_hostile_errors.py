"""The command line's error boundary: any failure is one line and a non-zero exit status; the traceback only when
asked for (--debug before or after the command, or CASCADECLIP_DEBUG=1)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import cascadeclip.cli.check_data as check_data_command
from cascadeclip.cli.main import UNEXPECTED_ERROR_STATUS, USER_ERROR_STATUS, main
from cascadeclip.utils import UserError

from hostile import cli, refused

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def failing_command(monkeypatch):
    """`check-data` made to raise the exception given to the returned setter (a stand-in for any bug)."""

    def fail_with(error: BaseException) -> None:
        def run(args):
            raise error

        monkeypatch.setattr(check_data_command, "run", run)

    return fail_with


def test_unexpected_error_is_one_line_with_a_pointer_to_the_traceback(failing_command, capsys, monkeypatch):
    monkeypatch.delenv("CASCADECLIP_DEBUG", raising=False)
    failing_command(RuntimeError("boom\nsecond line of a long message"))
    line = refused(capsys, "check-data", match="unexpected RuntimeError: boom", status=UNEXPECTED_ERROR_STATUS)
    assert "second line" not in line and "--debug" in line and "CASCADECLIP_DEBUG=1" in line


@pytest.mark.parametrize("where", ["before", "after", "environment"])
def test_debug_shows_the_traceback(failing_command, capsys, monkeypatch, where):
    monkeypatch.delenv("CASCADECLIP_DEBUG", raising=False)
    failing_command(RuntimeError("boom"))
    argv = {"before": ["--debug", "check-data"], "after": ["check-data", "--debug"], "environment": ["check-data"]}
    if where == "environment":
        monkeypatch.setenv("CASCADECLIP_DEBUG", "1")
    code, _, err = cli(capsys, *argv[where])
    assert code == UNEXPECTED_ERROR_STATUS and "Traceback" in err and "raise error" in err
    assert err.rstrip().splitlines()[-1].startswith("cascade-clip check-data: error: unexpected RuntimeError: boom")


def test_user_error_keeps_status_2_and_debug_shows_where(failing_command, capsys, monkeypatch):
    monkeypatch.delenv("CASCADECLIP_DEBUG", raising=False)
    failing_command(UserError("file x is bad; give another"))
    refused(capsys, "check-data", match="error: file x is bad; give another", status=USER_ERROR_STATUS)
    code, _, err = cli(capsys, "--debug", "check-data")
    assert code == USER_ERROR_STATUS and "Traceback" in err


def test_out_of_memory_and_system_errors_say_what_happened(failing_command, capsys, monkeypatch):
    monkeypatch.delenv("CASCADECLIP_DEBUG", raising=False)
    failing_command(MemoryError())
    refused(capsys, "check-data", match="out of memory", status=UNEXPECTED_ERROR_STATUS)
    failing_command(OSError(5, "Input/output error", "/data/x.jpg"))
    refused(capsys, "check-data", match="Input/output error: /data/x.jpg", status=UNEXPECTED_ERROR_STATUS)


def test_interrupt_exits_130(failing_command, capsys):
    failing_command(KeyboardInterrupt())
    code, _, err = cli(capsys, "check-data")
    assert code == 130 and err.strip() == "cascade-clip check-data: interrupted"


def test_warnings_are_one_line_and_the_display_is_restored(capsys, monkeypatch):
    def run(args):
        warnings.warn("something odd", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(check_data_command, "run", run)
    before = warnings.showwarning
    code, _, err = cli(capsys, "check-data")
    assert code == 0 and err == "cascade-clip check-data: warning: something odd\n"
    assert warnings.showwarning is before


def test_argument_errors_are_argparse_one_liners(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "x.jpg", "--classes", "a", "--short-side", "-5"])
    assert exit_info.value.code == 2
    assert "argument --short-side: must be at least 1, got -5" in capsys.readouterr().err


def test_a_real_process_prints_no_traceback(tmp_path):
    """The installed entry point, as a user runs it: an error inside a subcommand, one line, status 2."""
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "cascadeclip", "convert", str(tmp_path / "missing.pth"), str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cascade-clip convert: error:")
