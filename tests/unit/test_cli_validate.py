"""``consul-sd validate FILE...``: ConsulDiscovery YAML checked offline, one line per problem.

Real processes on files written here and on examples/; no cluster, no Consul.
"""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_cli import run

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

GOOD = """apiVersion: consul-sd.io/v1alpha1
kind: ConsulDiscovery
metadata: {name: web}
spec:
  consul: {server: consul:8500}
  output: {configMap: {name: web-targets}}
"""
SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {token: x}\n"


async def test_the_examples_are_valid() -> None:
    code, out, err = await run("validate", *map(str, EXAMPLES))
    assert (code, out) == (0, ""), err
    assert f"{len(EXAMPLES)} ConsulDiscovery checked, 0 problems" in err


async def test_each_problem_is_one_line_with_file_and_document_index(tmp_path: Path) -> None:
    path = tmp_path / "cds.yaml"
    bad = (
        GOOD.replace("name: web}", "name: Web_Site}")
        .replace("consul:8500", "http://consul:8500")
        .replace("  output: {configMap: {name: web-targets}}\n", "  maxConcurent: 5\n")
    )
    other = GOOD.replace("consul-sd.io/v1alpha1", "consul-sd.io/v1").replace("web}", "other}")
    path.write_text("---\n".join([SECRET, GOOD, bad, other]))
    code, out, _ = await run("validate", str(path))
    assert code == 1
    assert out.splitlines() == [
        f"{path}[2]: metadata.name: 'Web_Site' is not a Kubernetes object name",
        f"{path}[2]: spec.output: required (configMap, scrapeConfig or httpSD)",
        f"{path}[2]: spec.consul.server: 'http://consul:8500' is not host:port "
        "(the scheme goes in spec.consul.scheme, a path in pathPrefix)",
        f"{path}[2]: spec.maxConcurent: unknown field",
        f"{path}[3]: apiVersion: 'consul-sd.io/v1', expected consul-sd.io/v1alpha1",
    ]


async def test_a_file_that_is_not_yaml_or_holds_no_discovery_is_a_problem(tmp_path: Path) -> None:
    broken, secret, good = tmp_path / "broken.yaml", tmp_path / "secret.yaml", tmp_path / "ok.yaml"
    broken.write_text("kind: [\n")
    secret.write_text(SECRET)
    good.write_text(GOOD)
    code, out, _ = await run("validate", str(good), str(broken), str(secret), str(tmp_path / "no"))
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert lines[0].startswith(f"{broken}[0]: invalid YAML at line 2 column 1")
    assert lines[1] == f"{secret}: no ConsulDiscovery in the file"
    assert lines[2] == f"{tmp_path / 'no'}: No such file or directory"


async def test_a_yaml_error_is_one_line_at_its_document_after_the_problems_before_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cds.yaml"
    path.write_text("---\n".join([GOOD.replace("name: web}", "name: Web}"), "kind: [\n", GOOD]))
    code, out, _ = await run("validate", str(path))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{path}[0]: metadata.name: 'Web' is not a Kubernetes object name"
    # The wording after the position is libyaml's (or PyYAML's where libyaml is missing).
    assert lines[1].startswith(f"{path}[1]: invalid YAML at line 9 column 1: ")
    assert len(lines) == 2


async def test_two_discoveries_of_one_name_in_one_namespace_are_a_problem(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    elsewhere = GOOD.replace("{name: web}", "{name: web, namespace: other}")
    first.write_text("---\n".join([GOOD, SECRET, elsewhere]))
    second.write_text("---\n".join([elsewhere, GOOD.replace("{name: web}", "{name: api}"), GOOD]))
    code, out, _ = await run("validate", str(first), str(second))
    assert code == 1
    assert out.splitlines() == [
        f"{second}[0]: metadata.name: 'web' in namespace other is already the name of {first}[2]",
        f"{second}[2]: metadata.name: 'web' is already the name of {first}[0]",
    ]


async def test_the_items_of_a_list_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    item = GOOD.replace("\n", "\n    ").strip()
    path.write_text(
        f"apiVersion: v1\nkind: List\nitems:\n  - {item}\n  - {item.replace('web}', 'Web}')}\n"
        f"  - {item}\n"
    )
    code, out, _ = await run("validate", str(path))
    assert code == 1
    assert out.splitlines() == [
        f"{path}[0]: items[1].metadata.name: 'Web' is not a Kubernetes object name",
        f"{path}[0]: items[2].metadata.name: 'web' is already the name of {path}[0] items[0]",
    ]


async def test_what_the_apiserver_refuses_in_metadata_and_at_the_top_is_a_problem(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cds.yaml"
    path.write_text(
        "---\n".join(
            [
                GOOD.replace("{name: web}", "{name: a, namespace: Bad_NS}") + "specs: {}\n",
                GOOD.replace("{name: web}", "{name: b, namespace: 5}") + "status: {}\n",
                GOOD.replace("{name: web}", "{name: c, name: d}"),
            ]
        )
    )
    code, out, _ = await run("validate", str(path))
    assert code == 1
    assert out.splitlines() == [
        f"{path}[0]: specs: unknown field",
        f"{path}[0]: metadata.namespace: 'Bad_NS' is not a namespace name",
        f"{path}[1]: metadata.namespace: '5' is not a namespace name",
        f"{path}[2]: invalid YAML at line 19 column 21: key 'name' given twice (first at line 19)",
    ]


async def test_a_path_prefix_with_a_query_is_named_without_its_value(tmp_path: Path) -> None:
    path = tmp_path / "cds.yaml"
    path.write_text(GOOD.replace("consul:8500}", "consul:8500, pathPrefix: '/c?token=SECRET-Q'}"))
    code, out, _ = await run("validate", str(path))
    assert code == 1
    prefix = "spec.consul.pathPrefix: not a path like /consul"
    assert out == f"{path}[0]: {prefix} (no query, fragment or space)\n"
