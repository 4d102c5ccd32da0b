"""``consul-sd discover`` reads Consul's environment variables, checked against a real agent.

One Consul dev agent with ACLs (default deny) and TLS on its HTTPS port, client certificates
required, its certificate issued (by a trustme CA) to ``consul.test`` only, so a run that
succeeds over HTTPS used ``CONSUL_TLS_SERVER_NAME``. Each case runs the command as a process
with only the CONSUL_* variables set, as the consul CLI and consul-template users do, and checks
that flags win over the variables and that the token is in no line the command prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import trustme

from tests.support.components import ConsulAgent, free_port

pytestmark = pytest.mark.e2e

MASTER = "7d0c5c2e-cli-env-master-token"
READ_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")},
    "PYTHONPATH": str(Path(__file__).parents[2] / "operator"),
}


class TLSAgent:
    """The agent, its HTTPS address and the files a client needs, with a read-only token."""

    def __init__(self, agent: ConsulAgent, *, https_port: int, files: Mapping[str, Path]) -> None:
        self.agent = agent
        self.https = f"127.0.0.1:{https_port}"
        self.files = files
        self.token = ""


@pytest.fixture
def tls_agent(consul_agent_factory: Callable[..., ConsulAgent], tmp_path: Path) -> TLSAgent:
    ca = trustme.CA()
    server = ca.issue_cert("consul.test")
    client = ca.issue_cert("consul-sd.client")
    files = {
        "ca": tmp_path / "ca.pem",
        "server_cert": tmp_path / "server.pem",
        "server_key": tmp_path / "server-key.pem",
        "client_cert": tmp_path / "client.pem",
        "client_key": tmp_path / "client-key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    https_port = free_port()
    tls = (
        f'tls {{ defaults {{ ca_file = "{files["ca"]}" cert_file = "{files["server_cert"]}" '
        f'key_file = "{files["server_key"]}" }} https {{ verify_incoming = true }} }}'
    )
    agent = consul_agent_factory(
        acl_master_token=MASTER, extra_hcl=[f"ports {{ https = {https_port} }}", tls]
    )
    for name, port in (("web", 80), ("db", 5432)):
        body = {"Node": "n1", "Address": "10.1.0.1", "Service": {"Service": name, "Port": port}}
        assert agent.request("PUT", "/v1/catalog/register", body=body).status == 200
    policy = {"Name": "r", "Rules": READ_RULES}
    assert agent.request("PUT", "/v1/acl/policy", body=policy).status == 200
    answer = agent.request("PUT", "/v1/acl/token", body={"Policies": [{"Name": "r"}]})
    found = TLSAgent(agent, https_port=https_port, files=files)
    found.token = str(answer.json()["SecretID"])
    return found


def consul_sd(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "consul_sd.cli", "discover", "--once", *args],
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def services(out: str) -> set[str]:
    return {group["labels"]["__meta_consul_service"] for group in json.loads(out)}


def tls_env(found: TLSAgent) -> dict[str, str]:
    return {
        "CONSUL_CACERT": str(found.files["ca"]),
        "CONSUL_CLIENT_CERT": str(found.files["client_cert"]),
        "CONSUL_CLIENT_KEY": str(found.files["client_key"]),
        "CONSUL_TLS_SERVER_NAME": "consul.test",
    }


def test_https_address_tls_files_server_name_and_token_file_from_the_environment(
    tls_agent: TLSAgent, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(tls_agent.token + "\n")
    env = {
        **tls_env(tls_agent),
        "CONSUL_HTTP_ADDR": f"https://{tls_agent.https}",
        "CONSUL_HTTP_TOKEN_FILE": str(token_file),
    }
    code, out, err = consul_sd(env=env)
    assert code == 0, err
    assert {"web", "db"} <= services(out)
    assert tls_agent.token not in out + err


def test_a_plain_address_and_the_token_from_the_environment(tls_agent: TLSAgent) -> None:
    env = {"CONSUL_HTTP_ADDR": tls_agent.agent.address, "CONSUL_HTTP_TOKEN": tls_agent.token}
    code, out, err = consul_sd(env=env)
    assert code == 0, err
    assert {"web", "db"} <= services(out)


def test_consul_http_ssl_says_https_for_an_address_without_scheme(tls_agent: TLSAgent) -> None:
    env = {
        **tls_env(tls_agent),
        "CONSUL_HTTP_ADDR": tls_agent.https,
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_HTTP_TOKEN": tls_agent.token,
    }
    code, out, err = consul_sd(env=env)
    assert code == 0, err
    assert {"web", "db"} <= services(out)


def test_without_the_server_name_the_certificate_does_not_verify_and_ssl_verify_false_skips_it(
    tls_agent: TLSAgent,
) -> None:
    env = {
        **tls_env(tls_agent),
        "CONSUL_HTTP_ADDR": f"https://{tls_agent.https}",
        "CONSUL_HTTP_TOKEN": tls_agent.token,
    }
    del env["CONSUL_TLS_SERVER_NAME"]
    code, out, err = consul_sd(env=env)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("consul-sd: error: ")
    assert "certificate" in line.lower()
    code, out, err = consul_sd(env={**env, "CONSUL_HTTP_SSL_VERIFY": "false"})
    assert code == 0, err
    assert {"web", "db"} <= services(out)


def test_flags_win_over_the_environment(tls_agent: TLSAgent, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(tls_agent.token)
    env = {
        "CONSUL_HTTP_ADDR": f"127.0.0.1:{free_port()}",  # nothing listens there
        "CONSUL_HTTP_TOKEN": "00000000-0000-0000-0000-000000000000",  # not a token
    }
    code, out, err = consul_sd(
        "--server", tls_agent.agent.url, "--token-file", str(token_file), env=env
    )
    assert code == 0, err
    assert {"web", "db"} <= services(out)


def test_a_refused_token_from_the_environment_is_one_line_without_the_token(
    tls_agent: TLSAgent,
) -> None:
    wrong = "11111111-2222-3333-4444-555555555555"
    env = {"CONSUL_HTTP_ADDR": tls_agent.agent.url, "CONSUL_HTTP_TOKEN": wrong}
    code, _, err = consul_sd("--log-level", "debug", env=env)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("consul-sd: error:")]
    assert len(errors) == 1, err
    assert "denied the request" in errors[0]
    assert "CONSUL_HTTP_TOKEN" in errors[0]
    assert wrong not in err
