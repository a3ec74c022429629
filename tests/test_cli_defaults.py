"""Every command that trims takes its defaults from the library's TrimmerOptions."""

from __future__ import annotations

from dataclasses import fields

import click
import pytest

from context_trimmer import TrimmerOptions
from context_trimmer.cli import main

LIBRARY = {f.name: f.default for f in fields(TrimmerOptions)}
SHARED = ("keep_last", "fold_every", "summary_tokens", "summary_share")


@pytest.mark.parametrize("name", ["replay", "compact", "worker", "serve"])
def test_each_command_defaults_to_the_library(name: str) -> None:
    command = main.commands[name]
    defaults = {
        param.name: param.default
        for param in command.params
        if isinstance(param, click.Option) and param.name in LIBRARY
    }
    assert set(SHARED) <= set(defaults), f"{name} lacks {set(SHARED) - set(defaults)}"
    for option, value in defaults.items():
        assert value == LIBRARY[option], f"{name} --{option} defaults to {value!r}"


def test_the_measured_defaults() -> None:
    """The figures the README names (measured on LoCoMo), so a change is deliberate."""
    options = TrimmerOptions()
    assert (options.keep_last, options.summary_tokens, options.summary_share) == (6, 4000, 0.04)
