"""worker.cli: the inspect command on built alerts, help texts and exit statuses of both
command lines (stamp-worker and stamp-train)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from training.cli import main as train_main
from worker.cli import main
from worker.decode.packets import synthetic_alert


def test_inspect_reports_alerts_and_reasons(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.avro").write_bytes(synthetic_alert(1))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.avro").write_bytes(synthetic_alert(2)[:-40])
    (tmp_path / "sub" / "c.avro").write_bytes(synthetic_alert(3, size=51, ypos=None))
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 files, 3 alert records" in out
    assert "truncated_container" in out and "stamp_shape" in out
    assert out.count(f"ok      {tmp_path}") == 1


def test_inspect_refuses_missing_paths_and_bad_options(tmp_path: Path, capsys) -> None:
    """Exit status 2 and one line on stderr: nothing was inspected."""
    (tmp_path / "a.avro").write_bytes(synthetic_alert(1))
    assert main(["inspect", str(tmp_path / "nope"), str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"stamp-worker inspect: {tmp_path / 'nope'}: no such file or directory\n"
    assert captured.out == ""
    assert main(["inspect", "--crop-size", "99", str(tmp_path)]) == 2
    assert "crop_size must be in [1, stamp_size=63]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse: malformed command line
        main(["inspect", "--crop-size", "0", str(tmp_path)])
    assert stop.value.code == 2
    assert "--crop-size: expected an integer ≥ 1, got '0'" in capsys.readouterr().err


def test_inspect_exit_status_1_when_an_input_is_not_an_alert(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.avro").write_bytes(synthetic_alert(1))
    (tmp_path / "b.avro").write_bytes(synthetic_alert(2)[:-40])  # damaged: still status 0
    assert main(["inspect", "-q", str(tmp_path)]) == 0
    (tmp_path / "notes.avro").write_text("observing log, not an alert\n")
    (tmp_path / "empty.avro").write_bytes(b"")
    assert main(["inspect", "-q", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    # Listed even with --quiet: they are why the status is 1.
    assert [line.split()[3] for line in out if line.startswith("NOT AN ALERT")] == [
        str(tmp_path / "empty.avro"), str(tmp_path / "notes.avro")]
    assert not any(line.startswith("REFUSED") for line in out)


def _parser(entry: Callable[[list[str]], int], monkeypatch) -> argparse.ArgumentParser:
    """The parser a command line builds, caught where it would parse the arguments."""
    caught: list[argparse.ArgumentParser] = []

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        caught.append(self)
        raise _Caught

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(_Caught):
        entry([])
    return caught[0]


class _Caught(Exception):
    pass


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("entry", [main, train_main], ids=["stamp-worker", "stamp-train"])
def test_every_command_and_option_is_described(entry, monkeypatch) -> None:
    parser = _parser(entry, monkeypatch)
    assert parser.description and "``" not in parser.format_help()
    commands = _subcommands(parser)
    assert len(commands) >= 5
    for name, sub in commands.items():
        text = sub.format_help()
        assert sub.description, f"{name}: no description"
        assert "``" not in text, f"{name}: reStructuredText in its help"
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, \
                f"{name} {action.option_strings or action.dest}: no help"
            shown = sub._get_formatter()._expand_help(action)
            if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
                assert "default" in shown.lower(), f"{name} {action.option_strings}: no default"


def test_help_shows_defaults_and_exit_statuses(monkeypatch) -> None:
    commands = _subcommands(_parser(main, monkeypatch))
    classify = commands["classify"].format_help()
    assert "alerts per model call (default: 256)" in classify
    assert "exit status:\n  0  every input was read" in classify
    assert "exit status:" in commands["inspect"].format_help()
    demo = commands["demo"].format_help()
    assert "--data DIR" in demo and "--timeout S" in demo and "(default: 300.0)" in demo


def test_demo_takes_its_data_folder_and_timeout(tmp_path: Path, monkeypatch, capsys) -> None:
    import worker.tools.demo

    calls: list[tuple] = []
    monkeypatch.setattr(worker.tools.demo, "run_demo", lambda *a: calls.append(a) or 0)
    assert main(["demo", "--data", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"stamp-worker demo: {tmp_path / 'nope'}: no such folder\n"
    assert main(["demo", "--data", str(tmp_path)]) == 2
    assert "holds no ztf-alerts* folder" in capsys.readouterr().err
    (tmp_path / "ztf-alerts-mine").mkdir()
    assert main(["demo", "--data", str(tmp_path), "--timeout", "60"]) == 0
    assert main(["demo"]) == 0
    assert calls == [(60.0, tmp_path), (300.0, None)]
    with pytest.raises(SystemExit):
        main(["demo", "--timeout", "0"])
