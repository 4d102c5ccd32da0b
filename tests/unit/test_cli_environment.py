"""Consul's conventions in ``consul-sd discover``: addresses as URLs, CONSUL_* variables, flags.

Offline: the spec and endpoint the command would run with, built from a command line and an
environment given to the functions (tests/e2e/test_cli_consul_env.py runs them against a real
agent with ACLs and TLS).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from consul_sd.cli import UsageError, build_parser
from consul_sd.cli.config import load_spec, resolve_endpoint
from consul_sd.cli.environment import Address, apply_credential_environment, split_address


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["discover", "--once", *argv])


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("consul:8500", Address("consul:8500")),
        ("http://consul:8500", Address("consul:8500", "http")),
        ("HTTPS://consul:8501/", Address("consul:8501", "https")),
        ("https://consul:8501/behind/proxy", Address("consul:8501", "https", "/behind/proxy")),
        ("[::1]:8500", Address("[::1]:8500")),
    ],
)
def test_an_address_may_be_host_port_or_a_url(text: str, address: Address) -> None:
    assert split_address(text, source="--server") == address


@pytest.mark.parametrize("text", ["unix:///tmp/consul.sock", "consul:http", "http://", "a b:1"])
def test_what_is_not_an_address_is_a_usage_error_naming_its_source(text: str) -> None:
    with pytest.raises(UsageError, match=r"^CONSUL_HTTP_ADDR "):
        split_address(text, source="CONSUL_HTTP_ADDR")


def test_a_url_in_server_sets_the_scheme_and_prefix() -> None:
    consul = load_spec(parse("--server", "https://consul.example:8501/c"), {}).consul
    assert (consul.server, consul.scheme, consul.path_prefix) == (
        "consul.example:8501",
        "https",
        "/c",
    )


def test_server_and_scheme_that_disagree_are_refused() -> None:
    with pytest.raises(UsageError, match="says https, --scheme http"):
        load_spec(parse("--server", "https://c:8501", "--scheme", "http"), {})


def test_the_address_comes_from_the_flag_then_the_spec_then_the_environment(
    tmp_path: Path,
) -> None:
    env = {"CONSUL_HTTP_ADDR": "https://from-env:8501"}
    assert load_spec(parse(), {}).consul.server == "127.0.0.1:8500"  # the consul CLI's default
    from_env = load_spec(parse(), env).consul
    assert (from_env.server, from_env.scheme) == ("from-env:8501", "https")
    spec = tmp_path / "spec.yaml"
    spec.write_text("consul: {server: from-spec:8500}\n")
    assert load_spec(parse("--spec", str(spec)), env).consul.server == "from-spec:8500"
    flagged = load_spec(parse("--spec", str(spec), "--server", "flag:1"), env).consul
    assert (flagged.server, flagged.scheme) == ("flag:1", "http")


@pytest.mark.parametrize("address", ["c:1", "http://c:1", "https://c:1"])
def test_consul_http_ssl_means_https_whatever_the_address_says(address: str) -> None:
    # The consul CLI never reverts to http when TLS was asked for (api.DefaultConfig).
    env = {"CONSUL_HTTP_ADDR": address, "CONSUL_HTTP_SSL": "true"}
    assert load_spec(parse(), env).consul.scheme == "https"
    assert load_spec(parse(), {**env, "CONSUL_HTTP_SSL": "false"}).consul.scheme == (
        "https" if address.startswith("https") else "http"
    )


def test_consul_http_ssl_alone_means_https_to_the_default_address() -> None:
    consul = load_spec(parse(), {"CONSUL_HTTP_SSL": "true"}).consul
    assert (consul.server, consul.scheme) == ("127.0.0.1:8500", "https")
    with pytest.raises(UsageError, match=r"CONSUL_HTTP_SSL='yes': not a boolean"):
        load_spec(parse(), {"CONSUL_HTTP_SSL": "yes"})


def test_consul_http_ssl_must_be_a_boolean() -> None:
    with pytest.raises(UsageError, match=r"CONSUL_HTTP_SSL='yes please': not a boolean"):
        load_spec(parse(), {"CONSUL_HTTP_ADDR": "c:1", "CONSUL_HTTP_SSL": "yes please"})


def test_credential_variables_fill_only_the_flags_not_given(tmp_path: Path) -> None:
    env = {
        "CONSUL_HTTP_TOKEN": "env-token",
        "CONSUL_CACERT": "/env/ca.pem",
        "CONSUL_TLS_SERVER_NAME": "env.name",
        "CONSUL_HTTP_SSL_VERIFY": "false",
    }
    args = parse("--server-name", "flag.name")
    sources = apply_credential_environment(args, env)
    assert (args.token, args.ca_file, args.server_name) == (
        "env-token",
        Path("/env/ca.pem"),
        "flag.name",
    )
    assert args.insecure_skip_verify is True
    assert sources == {
        "token": "CONSUL_HTTP_TOKEN",
        "ca_file": "CONSUL_CACERT",
        "insecure_skip_verify": "CONSUL_HTTP_SSL_VERIFY",
    }
    flagged = parse("--token-file", "/flag/token")
    apply_credential_environment(flagged, {**env, "CONSUL_HTTP_TOKEN_FILE": "/env/token"})
    assert (flagged.token, flagged.token_file) == (None, Path("/flag/token"))


def test_a_missing_token_file_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    args = parse()
    missing = tmp_path / "nope"
    sources = apply_credential_environment(args, {"CONSUL_HTTP_TOKEN_FILE": str(missing)})
    with pytest.raises(UsageError, match=rf"^CONSUL_HTTP_TOKEN_FILE {missing}: No such file"):
        resolve_endpoint(load_spec(args, {}), args, sources=sources)


def test_basic_auth_reads_the_password_from_a_file_and_never_shows_it(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("pa55-word-value\n")
    args = parse("--basic-auth-user", "prom", "--basic-auth-password-file", str(password))
    endpoint = resolve_endpoint(load_spec(args, {}), args, sources={})
    assert endpoint.basic_auth == ("prom", "pa55-word-value")
    assert "pa55" not in repr(endpoint)


def test_basic_auth_needs_both_flags_and_excludes_a_token(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("pa55-word-value")
    alone = parse("--basic-auth-user", "prom")
    with pytest.raises(UsageError, match="go together"):
        resolve_endpoint(load_spec(alone, {}), alone, sources={})
    both = parse(
        "--basic-auth-user", "prom", "--basic-auth-password-file", str(password), "--token", "t0k3n"
    )
    with pytest.raises(UsageError, match="not both"):
        resolve_endpoint(load_spec(both, {}), both, sources={})


def test_a_spec_naming_a_basic_auth_secret_asks_for_the_flags(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("consul: {server: c:1, basicAuthSecretRef: {name: s}}\n")
    args = parse("--spec", str(spec))
    with pytest.raises(UsageError, match="--basic-auth-user and --basic-auth-password-file"):
        resolve_endpoint(load_spec(args, {}), args, sources={})


def test_a_spec_mode_is_read_in_any_case(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("consul: {server: c:1}\nmode: polling\n")
    assert load_spec(parse("--spec", str(spec)), {}).mode == "Polling"


@pytest.mark.parametrize("source", ["--server", "CONSUL_HTTP_ADDR"])
def test_credentials_in_an_address_are_refused_without_being_shown(source: str) -> None:
    with pytest.raises(UsageError) as refused:
        split_address("https://prom:pa55-word-value@consul:8501", source=source)
    assert str(refused.value).startswith(f"{source}: credentials in the address")
    assert "pa55-word-value" not in str(refused.value)
