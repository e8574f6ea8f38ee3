"""worker.commandline: help layout, early path and number checks, TensorFlow's notices."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.commandline import (
    HelpFormatter,
    UsageError,
    check_readable,
    check_writable,
    fraction,
    is_notice,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

ONEDNN = (b"I0000 00:00:1796079811.937755   20515 port.cc:153] oneDNN custom operations are "
          b"on. You may see slightly different numerical results.\n")
PREAMBLE = (b"WARNING: All log messages before absl::InitializeLog() is called are written to "
            b"STDERR\n")
ERROR = b"E1124 03:00:00.123456   20515 cuda_dnn.cc:8310] Unable to register cuDNN factory\n"


def test_notices_below_the_level_are_dropped_errors_never() -> None:
    assert is_notice(ONEDNN, 1) and is_notice(ONEDNN, 2) and not is_notice(ONEDNN, 0)
    assert is_notice(PREAMBLE, 2) and not is_notice(PREAMBLE, 0)
    assert not is_notice(ERROR, 2) and is_notice(ERROR, 3)
    for line in (b"Traceback (most recent call last):\n", b"ValueError: bad\n",
                 b"stamp-worker classify: x: no such file or directory\n",
                 b"I think this is fine] but not a log line\n"):
        assert not is_notice(line, 3)


def _import_keras_stderr(level: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    code = ("import os, sys\n"
            "from worker.commandline import import_keras\n"
            "print('before', file=sys.stderr, flush=True)\n"
            "os.write(2, " + repr(ERROR) + ")\n"
            "import_keras()\n"
            "os.write(2, " + repr(ONEDNN) + ")\n"
            "print('after', 'keras' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_keras_imports_without_tensorflow_notices() -> None:
    err = _import_keras_stderr("2")
    # TensorFlow 2.21 writes the oneDNN notice twice during the import; only the line
    # this test writes after it is left.
    assert err.count("oneDNN") == 1 and "absl::InitializeLog" not in err
    # What is written outside the import, errors included, is left as it is.
    assert err.splitlines()[:2] == ["before", ERROR.decode().strip()]
    assert err.splitlines()[-2:] == [ONEDNN.decode().strip(), "after True"]


def test_help_formatter_shows_defaults_and_keeps_indented_blocks() -> None:
    parser = argparse.ArgumentParser(
        prog="x", formatter_class=HelpFormatter, description="one paragraph",
        epilog="exit status:\n  0  fine\n  2  wrong")
    parser.add_argument("--batch", type=int, default=256, help="alerts per call")
    parser.add_argument("--said", default=5, help="already says it (default 5)")
    parser.add_argument("--model", help="artifact")
    parser.add_argument("--quiet", action="store_true", help="less")
    parser.add_argument("--branch", action=argparse.BooleanOptionalAction, default=True,
                        help="dense layers")
    text = parser.format_help()
    assert "alerts per call (default: 256)" in text
    assert "(default 5)" in text and "(default 5) (default" not in text
    assert "artifact\n" in text and "less\n" in text
    assert "dense layers (default: --branch)" in text
    assert "exit status:\n  0  fine\n  2  wrong" in text


@pytest.mark.parametrize(("kind", "good", "bad"), [
    (positive_int, {"1": 1, "300": 300}, ["0", "-2", "1.5", "x"]),
    (non_negative_int, {"0": 0, "7": 7}, ["-1", "x"]),
    (positive_float, {"0.5": 0.5, "300": 300.0}, ["0", "-1", "nan", "x"]),
    (non_negative_float, {"0": 0.0, "0.3": 0.3}, ["-0.1", "nan"]),
    (fraction, {"0": 0.0, "1": 1.0, "0.5": 0.5}, ["1.01", "-0.1", "nan"]),
])
def test_number_types_accept_their_range_only(kind, good: dict, bad: list[str]) -> None:
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            kind(text)


def test_paths_are_checked_as_inputs_and_outputs(tmp_path: Path) -> None:
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    assert check_readable(a_file) == a_file
    with pytest.raises(UsageError, match="nope: no such file or directory"):
        check_readable(tmp_path / "nope")
    # Outputs: existing ones are overwritten; missing parents created unless parents=False.
    assert check_writable(a_file) == a_file
    assert check_writable(tmp_path / "new" / "deeper" / "out.npz")
    assert check_writable(tmp_path / "artifact", directory=True)
    with pytest.raises(UsageError, match="does not exist"):
        check_writable(tmp_path / "new" / "out.csv", parents=False)
    with pytest.raises(UsageError, match="a.txt is a file, not a folder"):
        check_writable(a_file / "out.npz")
    with pytest.raises(UsageError, match="is a folder; give a file name"):
        check_writable(tmp_path)
    with pytest.raises(UsageError, match="exists and is not a folder"):
        check_writable(a_file, directory=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes whatever the mode")
def test_permissions_are_checked(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.avro").write_bytes(b"x")
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="permission denied"):
            check_writable(locked / "out.csv")
        (locked / "a.avro").chmod(0o200)
        with pytest.raises(UsageError, match="permission denied"):
            check_readable(locked / "a.avro")
    finally:
        locked.chmod(0o700)
