"""The command line's copies of spec values equal the spec's, so the two cannot drift.

:mod:`consul_sd.cli.arguments` must not import the spec (that would load pydantic for
``--help``), so it spells the modes and schemes out; these tests hold them to the spec.
"""

from __future__ import annotations

import argparse
from typing import get_args

import pytest

from consul_sd.api.spec import ConsulConfig, ConsulDiscoverySpec, Mode
from consul_sd.cli import build_parser
from consul_sd.cli.arguments import MODES, SCHEMES, SPEC_DEFAULTS
from consul_sd.cli.discover import load_spec


def test_the_modes_are_the_specs_in_lower_case() -> None:
    assert tuple(mode.lower() for mode in get_args(Mode)) == MODES


def test_the_schemes_are_the_specs() -> None:
    assert get_args(ConsulConfig.model_fields["scheme"].annotation) == SCHEMES


@pytest.mark.parametrize("mode", get_args(Mode))
def test_every_mode_of_the_spec_is_accepted_by_mode_and_reaches_the_spec(mode: str) -> None:
    args = build_parser().parse_args(["discover", "--server", "c:8500", "--mode", mode.lower()])
    assert load_spec(args).mode == mode


@pytest.mark.parametrize("scheme", get_args(ConsulConfig.model_fields["scheme"].annotation))
def test_every_scheme_of_the_spec_is_accepted_by_scheme(scheme: str) -> None:
    args = build_parser().parse_args(["discover", "--server", "c:8500", "--scheme", scheme])
    assert load_spec(args).consul.scheme == scheme


def test_the_defaults_help_shows_are_the_specs() -> None:
    spec = ConsulDiscoverySpec.model_validate({"consul": {"server": "c:1"}})
    by_flag = {
        "mode": spec.mode.lower(),
        "max_concurrent": spec.max_concurrent,
        "refresh_interval": spec.refresh_interval,
        "watch_timeout": spec.watch_timeout,
        "resync_interval": spec.resync_interval,
        "tag_separator": spec.tag_separator,
        "wake_on_change": spec.wake_on_change,
    }
    assert by_flag == SPEC_DEFAULTS


@pytest.mark.parametrize(("flag", "wake"), [([], True), (["--no-wake-on-change"], False)])
def test_wake_on_change_is_on_unless_the_flag_turns_it_off(flag: list[str], wake: bool) -> None:
    args = build_parser().parse_args(["discover", "--server", "c:8500", *flag])
    assert load_spec(args).wake_on_change is wake


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


@pytest.mark.parametrize("command", ["discover", "operator", "validate"])
def test_every_flag_has_a_line_of_help(command: str) -> None:
    parser = subcommand_parsers()[command]
    bare = [a.option_strings for a in parser._actions if not a.help]
    assert bare == []


def test_help_shows_the_defaults() -> None:
    text = " ".join(subcommand_parsers()["discover"].format_help().split())
    for shown in (
        "(default: auto)",
        "(default: 100)",
        "(default: 30s)",
        "(default: 127.0.0.1:8500)",
    ):
        assert shown in text
    assert "(default: None)" not in text


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_flags_are_accepted_before_and_after_the_command(where: str) -> None:
    flags = ["--log-level", "DEBUG", "--log-format", "json"]
    argv = [*flags, "discover"] if where == "before" else ["discover", *flags]
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.log_format) == ("debug", "json")


def test_log_flags_default_when_given_nowhere() -> None:
    args = build_parser().parse_args(["discover"])
    assert (args.log_level, args.log_format) == ("info", "text")
