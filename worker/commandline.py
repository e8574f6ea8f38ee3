"""What ``stamp-worker`` and ``stamp-train`` share: help layout, early checks, quiet imports.

* :class:`HelpFormatter` shows each option's default and keeps the layout of indented
  blocks (lists of exit statuses) in descriptions and epilogs.
* :func:`check_readable` and :func:`check_writable` look at the paths of a command line
  before anything slow is imported or loaded, so a typo costs a fraction of a second and
  one line, not a five-second model load and a traceback.
* :func:`import_keras` imports Keras and its backend without the notices TensorFlow
  prints on start-up (oneDNN, CPU features): they are not for operators, and TensorFlow
  writes some of them before its own ``TF_CPP_MIN_LOG_LEVEL`` filter is in place.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LOG_LEVEL = "2"
"""TensorFlow's C++ log threshold for the commands: 2 keeps errors, drops info and warnings."""

# absl's log line: severity letter, MMDD, time, thread id, file:line, then "] ".
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} +\d\d:\d\d:\d+\.\d+ +\d+ +[^ \]]+:\d+\] ")
_ABSL_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
_Number = TypeVar("_Number", int, float)
_ABSL_PREAMBLE = (b"WARNING: All log messages before absl::InitializeLog() is called are "
                  b"written to STDERR")


class UsageError(Exception):
    """A command line that cannot run as given; the message says what to fix."""


class HelpFormatter(argparse.HelpFormatter):
    """Help text with defaults shown and indented blocks kept as written.

    An option's default is appended as ``(default: X)`` unless its help already speaks
    of a default, or there is none to show (None, a flag that is off).  Descriptions
    and epilogs are wrapped paragraph by paragraph (blank lines separate them); a
    paragraph with indented lines is kept as written.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = re.split(r"\n[ \t]*\n", text.strip("\n"))
        return "\n\n".join(
            "\n".join(indent + line for line in p.splitlines()) if "\n " in p
            else super(HelpFormatter, self)._fill_text(p, width, indent)
            for p in paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or not action.option_strings or default is None
                or default is False or default == [] or default is argparse.SUPPRESS):
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            # "(default: True)" says less than the spelling of the option that is on.
            name = next(o for o in action.option_strings if o.startswith("--"))
            on = name if default else "--no-" + name[2:]
            return f"{text} (default: {on})"
        return f"{text} (default: %(default)s)"


def use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """Give a parser and all its subcommands' parsers :class:`HelpFormatter`.

    ``add_parser`` does not pass the parent's formatter on, and some subcommands are
    added by the modules that implement them: this reaches them all.
    """
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                use_help_formatter(child)


def positive_int(text: str) -> int:
    """``type=`` of an option that counts something: an integer ≥ 1."""
    return _bounded(text, int, 1, "an integer ≥ 1")


def non_negative_int(text: str) -> int:
    """``type=`` of an option that may be zero: an integer ≥ 0."""
    return _bounded(text, int, 0, "an integer ≥ 0")


def positive_float(text: str) -> float:
    """``type=`` of a duration or a rate: a number > 0."""
    value = _bounded(text, float, None, "a number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """``type=`` of a weight: a number ≥ 0."""
    return _bounded(text, float, 0.0, "a number ≥ 0")


def fraction(text: str) -> float:
    """``type=`` of a share: a number in [0, 1]."""
    value = _bounded(text, float, 0.0, "a number in [0, 1]")
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _bounded(text: str, kind: Callable[[str], _Number], low: float | None,
             expected: str) -> _Number:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value != value or (low is not None and value < low):  # NaN fails every bound
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def check_readable(path: str | Path) -> Path:
    """The path of an input that exists and can be read.

    Raises
    ------
    UsageError
        It does not exist, or it (or, for a folder, its listing) cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file or directory")
    needed = os.R_OK | (os.X_OK if p.is_dir() else 0)
    if not os.access(p, needed):
        raise UsageError(f"{p}: permission denied (cannot be read)")
    return p


def check_writable(path: str | Path, directory: bool = False, parents: bool = True) -> Path:
    """The path of an output that can be written (an existing one is overwritten).

    Parameters
    ----------
    path : str or Path
        The file or folder to write.
    directory : bool
        Whether the output is a folder (an artifact) rather than a file.
    parents : bool
        Whether missing parent folders will be created (else the parent must exist).

    Raises
    ------
    UsageError
        It is a folder where a file is wanted (or the reverse), a parent is a file, or
        the nearest existing folder is not writable.
    """
    p = Path(path)
    if p.exists():
        if directory and not p.is_dir():
            raise UsageError(f"{p}: exists and is not a folder")
        if not directory and p.is_dir():
            raise UsageError(f"{p}: is a folder; give a file name")
        if not os.access(p, os.W_OK | (os.X_OK if directory else 0)):
            raise UsageError(f"{p}: permission denied (cannot be written)")
        return p
    parent = p.absolute().parent
    if not parents and not parent.exists():
        raise UsageError(f"{p}: folder {parent} does not exist")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{p}: permission denied (cannot create it in {parent})")
    return p


def quiet_tensorflow() -> None:
    """Set TensorFlow's log threshold for the commands, unless the environment sets one.

    Must run before TensorFlow is imported; ``TF_CPP_MIN_LOG_LEVEL=0`` in the
    environment shows everything again.
    """
    os.environ.setdefault(LOG_LEVEL_VARIABLE, DEFAULT_LOG_LEVEL)


def _min_level() -> int:
    try:
        return int(os.environ.get(LOG_LEVEL_VARIABLE, "0"))
    except ValueError:
        return 0


def is_notice(line: bytes, min_level: int) -> bool:
    """Whether a line on stderr is a TensorFlow/absl log line below ``min_level``.

    Parameters
    ----------
    line : bytes
        One line as written to file descriptor 2.
    min_level : int
        ``TF_CPP_MIN_LOG_LEVEL``: 0 info, 1 warning, 2 error, 3 fatal.

    Returns
    -------
    bool
        True for absl-formatted lines of a lower severity, and for absl's notice that
        logging is not initialized yet when warnings are filtered; False for anything
        else (errors, Python output, tracebacks), which is never dropped.
    """
    if line.rstrip(b"\r\n") == _ABSL_PREAMBLE:
        return min_level >= 1
    match = _ABSL_LINE.match(line)
    return match is not None and _ABSL_SEVERITY[match.group(1)] < min_level


@contextlib.contextmanager
def _filtered_stderr(min_level: int) -> Iterator[None]:
    """Pass file descriptor 2 through :func:`is_notice` for the duration of the block.

    A pipe and a thread rather than a buffer: everything else written meanwhile
    (a crash report included) reaches the real stderr as it comes.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if is_notice(line, min_level):
                    continue
                view = memoryview(line)
                while view:
                    view = view[os.write(saved, view):]

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # drops the pipe's last write end: the pump reads to the end
        thread.join(timeout=10)
        os.close(saved)


@contextlib.contextmanager
def native_notices_dropped() -> Iterator[None]:
    """Drop absl-formatted notices below ``TF_CPP_MIN_LOG_LEVEL`` from stderr meanwhile.

    For native libraries that log through absl before its threshold applies (JAX's CUDA
    plugin looking for a driver, TensorFlow's start-up); everything else passes.
    """
    level = _min_level()
    if level < 1:
        yield
        return
    with _filtered_stderr(level):
        yield


def import_keras() -> None:
    """Import Keras and its backend, without TensorFlow's start-up notices.

    TensorFlow 2.21 writes "oneDNN custom operations are on" (twice: once per shared
    library) and absl's "All log messages before absl::InitializeLog()" while it is
    imported, before ``TF_CPP_MIN_LOG_LEVEL`` applies; this drops the absl-formatted
    lines below that level (see :func:`is_notice`) during the import and passes
    everything else through.  Later imports of ``keras`` find it loaded.
    """
    if "keras" in sys.modules:
        return
    level = _min_level()
    if level < 1:
        import keras  # noqa: F401
        return
    with _filtered_stderr(level):
        import keras  # noqa: F401
