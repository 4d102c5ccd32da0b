"""``consul-sd convert``: what the conversion prints, offline (tests/e2e/test_cli_convert.py has a
real Prometheus check that the converted jobs give the same targets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from consul_sd.cli.migration import unique_name
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


async def convert_text(tmp_path: Path, config: str) -> tuple[str, list[Any]]:
    source = tmp_path / "prometheus.yml"
    source.write_text(config)
    code, out, err = await run("convert", str(source))
    assert code == 0, err
    return out, list(yaml.safe_load_all(out))


async def test_jobs_whose_names_sanitise_alike_get_one_object_and_one_file_each(
    tmp_path: Path,
) -> None:
    long = "x" * 50
    out, documents = await convert_text(
        tmp_path,
        "scrape_configs:\n"
        + "".join(
            f"  - {{job_name: {job}, consul_sd_configs: [{{server: 'c:8500'}}]}}\n"
            for job in ["web_a", "web-a", "Web.A", f"{long}-one", f"{long}-two"]
        ),
    )
    *discoveries, jobs = documents
    names = [d["metadata"]["name"] for d in discoveries]
    assert names == ["web-a-0", "web-a-0-2", "web-a-0-3", f"{long}-0", f"{long}-0-2"]
    files = [job["file_sd_configs"][0]["files"][0] for job in jobs["scrape_configs"]]
    assert files == [f"/etc/prometheus/consul-sd/{name}.json" for name in names]
    saved = tmp_path / "converted.yaml"
    saved.write_text(out)
    assert (await run("validate", str(saved)))[:2] == (0, "")


def test_a_taken_name_gets_a_suffix_within_the_name_length_limit() -> None:
    taken = {"a" * 63}
    assert unique_name("a" * 63, taken) == "a" * 61 + "-2"
    assert unique_name("a" * 63, taken) == "a" * 61 + "-3"
    assert unique_name("b-0", taken) == "b-0"
    assert taken == {"a" * 63, "a" * 61 + "-2", "a" * 61 + "-3", "b-0"}


SECRET_JOBS = """
scrape_configs:
  - job_name: inline
    bearer_token: BEARER-VALUE
    basic_auth: {username: scraper, password: PASSWORD-VALUE}
    authorization: {type: Bearer, credentials: CREDENTIALS-VALUE}
    oauth2:
      client_id: me
      client_secret: CLIENT-SECRET-VALUE
      token_url: https://auth.test/token
      tls_config: {key: OAUTH-KEY-VALUE}
    tls_config: {cert_file: /c.pem, key: TLS-KEY-VALUE}
    proxy_url: http://proxyuser:PROXY-PASSWORD@proxy:3128/
    proxy_connect_header: {Proxy-Authorization: [CONNECT-VALUE]}
    http_headers:
      X-Api-Key: {values: [plain], secrets: [HEADER-VALUE]}
    kubernetes_sd_configs:
      - role: pod
        basic_auth: {username: k, password: K8S-PASSWORD-VALUE}
    nomad_sd_configs: [{server: "http://n:NOMAD-PASSWORD@nomad:4646"}]
    marathon_sd_configs: [{servers: ["http://m:MARATHON-PASSWORD@m:8080", "http://m:8080"]}]
    consul_sd_configs: [{server: 'c:8500'}]
  - job_name: files
    bearer_token_file: /bearer
    basic_auth: {username: scraper, password_file: /password}
    oauth2: {client_id: me, client_secret_file: /client-secret, token_url: https://auth.test/t}
    tls_config: {cert_file: /c.pem, key_file: /k.pem}
    proxy_url: http://proxy:3128/
    http_headers:
      X-Api-Key: {files: [/header]}
    consul_sd_configs: [{server: 'c:8500'}]
"""

INLINE_SECRETS = [
    "BEARER-VALUE",
    "PASSWORD-VALUE",
    "CREDENTIALS-VALUE",
    "CLIENT-SECRET-VALUE",
    "OAUTH-KEY-VALUE",
    "TLS-KEY-VALUE",
    "PROXY-PASSWORD",
    "CONNECT-VALUE",
    "HEADER-VALUE",
    "K8S-PASSWORD-VALUE",
    "NOMAD-PASSWORD",
    "MARATHON-PASSWORD",
]


async def test_inline_secrets_of_the_kept_job_are_placeholders_named_in_comments(
    tmp_path: Path,
) -> None:
    out, documents = await convert_text(tmp_path, SECRET_JOBS)
    assert [secret for secret in INLINE_SECRETS if secret in out] == []
    assert [line for line in out.splitlines() if line.startswith("# job ")] == [
        "# job inline: bearer_token: not copied (a secret); use bearer_token_file",
        "# job inline: basic_auth.password: not copied (a secret); use password_file",
        "# job inline: authorization.credentials: not copied (a secret); use credentials_file",
        "# job inline: oauth2.client_secret: not copied (a secret); use client_secret_file",
        "# job inline: oauth2.tls_config.key: not copied (a secret); use key_file",
        "# job inline: tls_config.key: not copied (a secret); use key_file",
        "# job inline: proxy_url: its password not copied (a secret); put it back by hand",
        "# job inline: proxy_connect_header.Proxy-Authorization[0]: not copied (a secret); "
        "put it back by hand",
        "# job inline: http_headers.X-Api-Key.secrets[0]: not copied (a secret); use files",
        "# job inline: kubernetes_sd_configs[0].basic_auth.password: not copied (a secret); "
        "use password_file",
        "# job inline: nomad_sd_configs[0].server: its password not copied (a secret); "
        "put it back by hand",
        "# job inline: marathon_sd_configs[0].servers[0]: its password not copied (a secret); "
        "put it back by hand",
    ]
    inline, files = documents[-1]["scrape_configs"]
    assert inline["basic_auth"] == {
        "username": "scraper",
        "password": "<secret not copied: use password_file>",
    }
    assert inline["proxy_url"] == "http://proxyuser:xxxxx@proxy:3128/"
    source = yaml.safe_load(SECRET_JOBS)["scrape_configs"][1]
    del source["consul_sd_configs"]
    assert {k: v for k, v in files.items() if k != "file_sd_configs"} == source


async def test_a_non_bearer_authorization_is_named_and_never_sent_as_a_token(
    tmp_path: Path,
) -> None:
    out, _ = await convert_text(
        tmp_path,
        """
scrape_configs:
  - job_name: basic
    consul_sd_configs:
      - server: 'c:8500'
        authorization: {type: Basic, credentials_file: /etc/consul/tok, colour: red}
  - job_name: bearer
    consul_sd_configs:
      - server: 'c:8500'
        authorization: {type: bearer, credentials_file: /etc/consul/bearer}
""",
    )
    runs = [line for line in out.splitlines() if line.startswith("# run: ")]
    assert [run.partition(".json")[2] for run in runs] == ["", " --token-file /etc/consul/bearer"]
    notes = [line for line in out.splitlines() if line.startswith("# unsupported: ")]
    assert notes == [
        "# unsupported: job basic: consul_sd_configs[0].authorization.type 'Basic' "
        "(only Bearer credentials are a Consul token)",
        "# unsupported: job basic: consul_sd_configs[0].authorization.colour",
    ]


async def test_a_line_break_in_a_name_cannot_end_a_comment_and_inject_yaml(
    tmp_path: Path,
) -> None:
    out, documents = await convert_text(
        tmp_path,
        'scrape_configs:\n  - job_name: "a\\nkind: Injected\\u2028x"\n'
        "    consul_sd_configs: [{server: 'c:8500', proxy_url: 'http://p:1'}]\n",
    )
    assert "# unsupported: job a\\nkind: Injected\\u2028x: consul_sd_configs[0].proxy_url" in out
    assert documents[0]["kind"] == "ConsulDiscovery"
    saved = tmp_path / "converted.yaml"
    saved.write_text(out)
    assert (await run("validate", str(saved)))[:2] == (0, "")


async def test_what_prometheus_accepts_converts_to_a_valid_consul_discovery(
    tmp_path: Path,
) -> None:
    out, documents = await convert_text(
        tmp_path,
        """
scrape_configs:
  - job_name: odd
    consul_sd_configs:
      - server: https://consul.test:8501
        scheme: http
        refresh_interval: 500ms
        tags: null
        services: [web, 8080]
        node_meta: {rack: 1, ssd: true}
        allow_stale: null
      - server: http://consul.test:8500
        path_prefix: consul
        tls_config: null
        token: ""
""",
    )
    first, second = (d["spec"] for d in documents[:2])
    assert first["consul"] == {"server": "consul.test:8501", "scheme": "https", "allowStale": False}
    assert first["refreshInterval"] == "1s"
    assert first["selector"] == {
        "services": ["web", "8080"],
        "nodeMeta": {"rack": "1", "ssd": "true"},
    }
    assert second["consul"] == {"server": "consul.test:8500", "pathPrefix": "/consul"}
    assert "# job odd: consul_sd_configs[0].refresh_interval: 500ms raised to 1s" in out
    assert "consul_sd_configs[1]" not in out  # a null or empty credential is none
    saved = tmp_path / "converted.yaml"
    saved.write_text(out)
    assert (await run("validate", str(saved)))[:2] == (0, "")


async def test_a_config_prometheus_would_refuse_is_one_error_line(tmp_path: Path) -> None:
    source = tmp_path / "prometheus.yml"
    cases = {
        "scrape_configs: 5": "scrape_configs: not a list",
        "scrape_configs: [{job_name: j, consul_sd_configs: {server: 'c:1'}}]": (
            "job j: consul_sd_configs: not a list"
        ),
        "scrape_configs: [{job_name: j, consul_sd_configs: [null, x]}]": (
            "job j: consul_sd_configs[0]: not a mapping"
        ),
        "scrape_configs: [{job_name: j, consul_sd_configs: [{services: web}]}]": (
            "job j: consul_sd_configs[0]: spec.selector.services: input should be a valid list"
        ),
        "scrape_configs: [{job_name: j, consul_sd_configs: [{tls_config: {ca_file: [a]}}]}]": (
            "job j: consul_sd_configs[0].tls_config.ca_file: not a string"
        ),
        "scrape_configs: [{job_name: j, consul_sd_configs: [{server: 'a:1', server: 'b:1'}]}]": (
            "invalid YAML at line 1 column 68: key 'server' given twice (first at line 1)"
        ),
        "scrape_config_files: [more/*.yml]": (
            "no scrape_configs job has consul_sd_configs "
            "(scrape_config_files are not read: convert each)"
        ),
    }
    for config, problem in cases.items():
        source.write_text(config + "\n")
        code, out, err = await run("convert", str(source))
        assert (code, out) == (2, ""), config
        assert err.splitlines()[0] == f"consul-sd: error: {source}: {problem}", config


async def test_scrape_config_files_are_named_as_not_read(tmp_path: Path) -> None:
    out, _ = await convert_text(
        tmp_path, "scrape_config_files: [more/*.yml]\n" + PROMETHEUS.replace("global:", "g0:")
    )
    assert "# unsupported: scrape_config_files (more/*.yml): not read;" in out


async def test_http_sd_ports_past_65535_are_an_error(tmp_path: Path) -> None:
    source = tmp_path / "prometheus.yml"
    source.write_text(PROMETHEUS)
    code, out, err = await run(
        "convert", str(source), "--for", "http_sd", "--http-sd", "127.0.0.1:65535"
    )
    assert (code, out) == (2, "")
    assert "2 ports do not fit below 65536" in err


async def test_nested_yaml_aliases_are_kept_shared_not_copied_out(tmp_path: Path) -> None:
    levels = [f"a0: &a0 [{', '.join(['x'] * 10)}]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 5)
    ]
    out, documents = await convert_text(
        tmp_path,
        "scrape_configs:\n  - job_name: j\n    consul_sd_configs: [{server: 'c:8500'}]\n"
        "    params:\n" + "".join(f"      {line}\n" for line in levels),
    )
    assert len(out) < 5000  # 10^4 copies of x otherwise
    assert len(documents[-1]["scrape_configs"][0]["params"]["a4"][9][9][9][9]) == 10


async def test_a_unicode_job_name_is_kept_readable(tmp_path: Path) -> None:
    out, documents = await convert_text(
        tmp_path, "scrape_configs: [{job_name: 日本, consul_sd_configs: [{server: 'c:1'}]}]\n"
    )
    assert "- job_name: 日本\n" in out
    assert documents[-1]["scrape_configs"][0]["job_name"] == "日本"


async def test_an_alias_shared_across_kinds_of_setting_keeps_no_secret(tmp_path: Path) -> None:
    out, documents = await convert_text(
        tmp_path,
        "scrape_configs:\n  - job_name: j\n    consul_sd_configs: [{server: 'c:8500'}]\n"
        "    x: &t {key: SHARED-KEY-VALUE}\n    tls_config: *t\n",
    )
    (job,) = documents[-1]["scrape_configs"]
    assert job["x"] == {"key": "SHARED-KEY-VALUE"}  # not a secret there: found by field names
    assert job["tls_config"] == {"key": "<secret not copied: use key_file>"}
    assert "# job j: tls_config.key: not copied (a secret); use key_file" in out
