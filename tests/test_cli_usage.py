"""Wrong usage of any command is answered in one line with exit 2, never a traceback.

The command tree is walked from the Typer app itself, so a command added later is covered
without editing this file. Usage errors are found before any command body runs, so these
tests start no database and load no model (they belong to the fast tier).
"""

from __future__ import annotations

import enum
import subprocess
import sys
import types
import typing

import pytest
import typer

from identity.cli import app, main


def _leaf_commands():
    """(argv prefix, command) for every runnable command, groups expanded."""
    root = typer.main.get_command(app)
    found = []

    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in sorted(subcommands.items()):
                walk(sub, [*path, name])
        else:
            found.append((path, command))

    walk(root, [])
    return found


LEAVES = _leaf_commands()
IDS = [" ".join(path) for path, _ in LEAVES]


def run(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def _annotation(param):
    """The Python type a parameter was declared with, Optional[...] unwrapped."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args else annotation


def _bad_value(param) -> str | None:
    """A value the parameter's type must refuse, or None when it accepts any text."""
    annotation = _annotation(param)
    if annotation in (int, float):
        return "not-a-number"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "no-such-choice"
    if typing.get_origin(annotation) is list:
        inner = typing.get_args(annotation)[0]
        if isinstance(inner, type) and issubclass(inner, enum.Enum):
            return "no-such-choice"
    return None


def _filled_required(command, skip=None) -> list[str]:
    """Valid-looking values for every required parameter (except `skip`)."""
    argv = []
    for param in command.params:
        if param is skip or not param.required:
            continue
        value = "1" if _annotation(param) in (int, float) else "x"
        if param.param_type_name == "option":
            argv += [param.opts[0], value]
        else:
            argv.append(value)
    return argv


def test_the_tree_is_walked_from_the_app():
    assert len(LEAVES) >= 25
    assert {"enroll", "search", "doctor", "persons merge", "keys create", "evaluate lfw"} <= set(IDS)


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=IDS)
def test_an_unknown_option_exits_2_in_one_line(path, command, capsys):
    code, output = run([*path, *_filled_required(command), "--no-such-option"], capsys)
    assert code == 2, output
    assert "Traceback" not in output
    assert "No such option: --no-such-option" in output
    assert len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=IDS)
def test_a_missing_argument_exits_2_naming_it(path, command, capsys):
    required = [p for p in command.params if p.required]
    if not required:
        pytest.skip("takes no required parameter")
    code, output = run(path, capsys)
    assert code == 2, output
    assert "Traceback" not in output
    assert "Missing" in output and len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=IDS)
def test_a_bad_value_exits_2_naming_the_parameter(path, command, capsys):
    typed = [(p, _bad_value(p)) for p in command.params if _bad_value(p) is not None]
    if not typed:
        pytest.skip("every parameter accepts any text")
    for param, bad in typed:
        where = [param.opts[0], bad] if param.param_type_name == "option" else [bad]
        code, output = run([*path, *_filled_required(command, skip=param), *where], capsys)
        assert code == 2, (param.name, output)
        assert "Traceback" not in output
        assert "Invalid value" in output and len(output.strip().splitlines()) == 1


def test_bare_identity_and_bare_groups_print_help_and_exit_0(capsys):
    code, output = run([], capsys)
    assert code == 0 and "enroll" in output and "Exit codes" in output
    code, output = run(["persons"], capsys)
    assert code == 0 and "merge" in output


def test_a_mistyped_command_suggests_the_right_one(capsys):
    code, output = run(["enrol", "photos/"], capsys)
    assert code == 2
    assert output.strip() == ("error (usage): No such command 'enrol'. Did you mean 'enroll'? "
                              "(see 'identity --help')")


def test_the_installed_entry_point_behaves_the_same():
    """The console script, run as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "identity.cli", "verify", "a.jpg"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Missing argument 'B'" in result.stderr or "Missing argument 'b'" in result.stderr


def test_the_cli_and_the_api_show_a_person_in_one_shape():
    """`identity persons … --json` and `/v1/persons` are built from the same model."""
    from datetime import datetime, timezone

    from identity.api.schemas import PersonOut as ApiPerson
    from identity.cli.persons import person_dict
    from identity.store.types import Person
    from identity.views import PersonOut

    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ada = Person(7, "ada", "Ada", {"team": "x"}, when, when, aliases=("a",), face_count=2)
    assert ApiPerson is PersonOut
    assert person_dict(ada) == PersonOut.model_validate(ada).model_dump(mode="json")
    assert person_dict(ada)["face_count"] == 2 and person_dict(ada)["aliases"] == ["a"]
