"""The command line's copies of spec values equal the spec's, so the two cannot drift.

:mod:`consul_sd.cli.arguments` must not import the spec (that would load pydantic for
``--help``), so it spells the modes and schemes out; these tests hold them to the spec.
"""

from __future__ import annotations

from typing import get_args

import pytest

from consul_sd.api.spec import ConsulConfig, Mode
from consul_sd.cli import build_parser
from consul_sd.cli.arguments import MODES, SCHEMES
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
