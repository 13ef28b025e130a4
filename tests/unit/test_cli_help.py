"""``freezeframe --help`` and every subcommand's ``--help`` read as plain text: no markup
(rich's ``[bold]``/``[/]``, reStructuredText's double backquotes) and nothing promised for "later"."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from freezeframe.cli.main import build_parser, main

# rich markup ([bold], [/], [red]...[/red]), RST/Markdown emphasis, and promises.
MARKUP = re.compile(r"\[/?(?:bold|dim|italic|underline|red|green|yellow|blue|cyan|magenta|b|i|link)\b[^\]]*\]"
                    r"|\[/\]|``|\*\*")
LATER = re.compile(r"\((?:later|todo|not yet)[^)]*\)", re.IGNORECASE)


def command_paths() -> list[tuple[str, ...]]:
    """Every command line that has its own --help: (), ("image",), ("image", "create"), ..."""
    paths = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        paths.append(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + (name,))
    walk(build_parser(), ())
    return paths


def check(text: str, where: str) -> None:
    assert text.startswith("usage: freezeframe"), f"{where}: {text[:200]}"
    found = MARKUP.search(text)
    assert found is None, f"{where} shows markup {found.group()!r}: ...{text[max(found.start() - 80, 0):found.end() + 40]}"
    found = LATER.search(text)
    assert found is None, f"{where} promises something for later: ...{text[max(found.start() - 80, 0):found.end() + 40]}"


def test_every_command_is_walked():
    paths = command_paths()
    # the walk reaches the leaves, e.g. the nested server/volume/baremetal actions
    assert {(), ("serve",), ("image", "create"), ("server", "image", "create"), ("workflow", "cancel"),
            ("server", "volume", "attach"), ("baremetal", "node", "snapshot")} <= set(paths)
    assert len(paths) > 40


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "freezeframe")
def test_help_is_plain_text(path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    check(out, "freezeframe " + " ".join((*path, "--help")))


def test_installed_command_help_is_plain_text():
    """The real entry point, in a terminal-less subprocess as a new user's shell runs it."""
    done = subprocess.run([sys.executable, "-m", "freezeframe", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    check(done.stdout, "freezeframe --help")
    assert "serve" in done.stdout and "workflow" in done.stdout


def test_the_checks_catch_what_they_look_for():
    for bad in ("usage: freezeframe\n[bold]x[/]", "usage: freezeframe\n``freezeframe``: x",
                "usage: freezeframe\nrun the conductor (later)"):
        with pytest.raises(AssertionError):
            check(bad, "sample")
