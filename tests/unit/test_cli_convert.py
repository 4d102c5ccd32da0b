"""``consul-sd convert``: what the conversion prints, offline (tests/e2e/test_cli_convert.py has a
real Prometheus check that the converted jobs give the same targets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_cli import run

PROMETHEUS = """
global: {scrape_interval: 15s}
scrape_configs:
  - job_name: static
    static_configs: [{targets: ["localhost:9090"]}]
  - job_name: Web App
    scrape_interval: 30s
    metrics_path: /stats
    consul_sd_configs:
      - server: consul.service:8500
        services: [web, api]
        tags: [prod]
        token: sup3r-secret-token
        tls_config: {ca_file: /etc/ca.pem, server_name: consul.test, min_version: TLS12}
        proxy_url: http://proxy:3128
      - server: other:8500
        datacenter: dc2
        authorization: {credentials_file: /etc/consul-token}
        basic_auth: {username: prom, password: hunter2-password}
    relabel_configs:
      - source_labels: [__meta_consul_service]
        target_label: service
"""


async def convert(tmp_path: Path, *flags: str) -> tuple[str, list[Any]]:
    source = tmp_path / "prometheus.yml"
    source.write_text(PROMETHEUS)
    code, out, err = await run("convert", str(source), *flags)
    assert code == 0, err
    return out, list(yaml.safe_load_all(out))


async def test_each_consul_sd_config_becomes_a_valid_consul_discovery(tmp_path: Path) -> None:
    out, documents = await convert(tmp_path)
    *discoveries, _ = documents
    assert [d["metadata"]["name"] for d in discoveries] == ["web-app-0", "web-app-1"]
    assert discoveries[0]["spec"]["selector"] == {"services": ["web", "api"], "tags": ["prod"]}
    assert discoveries[1]["spec"]["consul"] == {"server": "other:8500", "datacenter": "dc2"}
    saved = tmp_path / "converted.yaml"
    saved.write_text(out)
    code, problems, _ = await run("validate", str(saved))
    assert (code, problems) == (0, "")


async def test_the_job_keeps_its_settings_with_file_sd_in_place_of_consul_sd(
    tmp_path: Path,
) -> None:
    _, documents = await convert(tmp_path, "--file-sd-dir", "/sd/")
    (job,) = documents[-1]["scrape_configs"]
    assert list(job) == [
        "job_name",
        "scrape_interval",
        "metrics_path",
        "file_sd_configs",
        "relabel_configs",
    ]
    assert job["file_sd_configs"] == [
        {"files": ["/sd/web-app-0.json"]},
        {"files": ["/sd/web-app-1.json"]},
    ]
    assert job["relabel_configs"] == [
        {"source_labels": ["__meta_consul_service"], "target_label": "service"}
    ]


async def test_operator_and_http_sd_targets(tmp_path: Path) -> None:
    _, documents = await convert(tmp_path, "--for", "operator")
    (job,) = documents[-1]["scrape_configs"]
    assert job["file_sd_configs"][0] == {
        "files": ["/etc/prometheus/consul-sd/web-app-0-targets-*.json"]
    }
    out, documents = await convert(tmp_path, "--for", "http_sd", "--http-sd", "127.0.0.1:9200")
    (job,) = documents[-1]["scrape_configs"]
    assert job["http_sd_configs"] == [
        {"url": "http://127.0.0.1:9200/targets"},
        {"url": "http://127.0.0.1:9201/targets"},
    ]
    assert "--name web-app-1 --listen 127.0.0.1:9201" in out


async def test_credential_files_become_flags_and_secrets_are_never_printed(
    tmp_path: Path,
) -> None:
    out, _ = await convert(tmp_path, "--spec-file", "cds.yaml")
    runs = [line for line in out.splitlines() if line.startswith("# run: ")]
    assert runs == [
        "# run: consul-sd discover --spec cds.yaml --name web-app-0 --output "
        "/etc/prometheus/consul-sd/web-app-0.json --ca-file /etc/ca.pem --server-name consul.test",
        "# run: consul-sd discover --spec cds.yaml --name web-app-1 --output "
        "/etc/prometheus/consul-sd/web-app-1.json --token-file /etc/consul-token "
        "--basic-auth-user prom",
    ]
    assert "sup3r-secret-token" not in out
    assert "hunter2-password" not in out
    assert "# job Web App: consul_sd_configs[0].token: not copied (a secret)" in out
    assert "# job Web App: consul_sd_configs[1].basic_auth.password: not copied (a secret)" in out


async def test_every_unconverted_field_is_named_in_a_comment(tmp_path: Path) -> None:
    out, _ = await convert(tmp_path)
    notes = [line for line in out.splitlines() if line.startswith("# unsupported: ")]
    assert notes == [
        "# unsupported: job Web App: consul_sd_configs[0].tls_config.min_version",
        "# unsupported: job Web App: consul_sd_configs[0].proxy_url",
    ]


async def test_a_file_without_consul_sd_configs_is_one_error(tmp_path: Path) -> None:
    source = tmp_path / "prometheus.yml"
    source.write_text("scrape_configs: [{job_name: x, static_configs: [{targets: [a:1]}]}]\n")
    code, out, err = await run("convert", str(source))
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == (
        f"consul-sd: error: {source}: no scrape_configs job has consul_sd_configs"
    )
