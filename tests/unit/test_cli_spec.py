"""``consul-sd discover --spec FILE``: a bare spec, one CR, or a kubectl-style multi-document file.

Offline: only the loading of the spec (``load_spec``) and the usage errors ``main`` prints; no
Consul is contacted (a spec that fails to load stops before any request).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from consul_sd.api.spec import ConsulDiscoverySpec
from consul_sd.cli import UsageError, build_parser, main
from consul_sd.cli.discover import load_spec

SECRET = """apiVersion: v1
kind: Secret
metadata:
  name: consul-acl-token
stringData:
  token: not-a-real-token
"""


def discovery(name: str, server: str) -> str:
    return f"""apiVersion: consul-sd.io/v1alpha1
kind: ConsulDiscovery
metadata:
  name: {name}
spec:
  consul:
    server: {server}
  mode: Polling
"""


def load(path: Path, *extra: str) -> ConsulDiscoverySpec:
    return load_spec(build_parser().parse_args(["discover", "--spec", str(path), *extra, "--once"]))


def test_a_multi_document_file_gives_its_consul_discovery(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(SECRET + "---\n" + discovery("web", "consul.example:8500"))
    spec = load(path)
    assert spec.consul.server == "consul.example:8500"
    assert spec.mode == "Polling"


def test_several_consul_discoveries_need_name_and_the_error_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(discovery("web", "a:8500") + "---\n" + discovery("db", "b:8500"))
    with pytest.raises(UsageError, match=r"2 ConsulDiscovery objects \(web, db\): .*--name"):
        load(path)
    spec = load(path, "--name", "db")
    assert spec.consul.server == "b:8500"


def test_an_unknown_name_says_which_names_the_file_has(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(discovery("web", "a:8500") + "---\n" + discovery("db", "b:8500"))
    with pytest.raises(
        UsageError, match=r"no ConsulDiscovery named 'api' \(found: \['web', 'db'\]\)"
    ):
        load(path, "--name", "api")


def test_a_file_without_a_consul_discovery_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(SECRET)
    with pytest.raises(UsageError, match="no ConsulDiscovery in the file"):
        load(path)


def test_a_bare_spec_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("consul:\n  server: c:8500\nmode: Blocking\n")
    spec = load(path)
    assert spec.consul.server == "c:8500"
    assert spec.mode == "Blocking"


def test_name_without_spec_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--name goes with --spec"):
        load_spec(build_parser().parse_args(["discover", "--server", "c:8500", "--name", "x"]))


def test_the_command_prints_one_usage_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(discovery("web", "a:8500") + "---\n" + discovery("db", "b:8500"))
    assert main(["discover", "--spec", str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"consul-sd: error: --spec {path}: 2 ConsulDiscovery objects")
    assert err.count("\n") == 2  # the error, then one line of usage
    assert err.endswith("usage: consul-sd discover [OPTIONS] (see consul-sd discover --help)\n")
