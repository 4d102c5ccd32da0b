"""``consul-sd convert prometheus.yml``: the migration path off Prometheus's consul_sd_configs.

Prints one YAML stream: a header comment, one ConsulDiscovery per ``consul_sd_configs`` entry
(each preceded by the ``consul-sd discover`` command that runs it with this very file as
``--spec``, and by a comment for every field that was not converted), then a document with the
replacement ``scrape_configs`` (see :mod:`.migration`). The stream is itself a valid ``--spec``
file and passes ``consul-sd validate``. Jobs without consul_sd_configs are left out: they stay as
they are. Credentials in the Prometheus file are never printed (inline ones of the kept jobs
become placeholders, each named in a comment). Object names are unique within one run. Comments
starting ``# unsupported:`` name every field that has no counterpart (it is not converted).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

import yaml

from consul_sd.cli.arguments import UsageError
from consul_sd.cli.migration import (
    Converted,
    Target,
    convert_sd_config,
    file_sd_path,
    object_name,
    replacement_job,
    unique_name,
    without_secrets,
)
from consul_sd.cli.specfile import read_documents


def run(args: argparse.Namespace) -> int:
    (config, *rest) = read_documents(args.file) or [None]
    if not isinstance(config, dict) or rest:
        raise UsageError(f"{args.file}: not a Prometheus configuration (one YAML mapping)")
    target = Target(kind=args.target, file_sd_dir=args.file_sd_dir, http_sd=args.http_sd)
    sys.stdout.write(
        convert(config, source=str(args.file), spec_file=args.spec_file, target=target)
    )
    return 0


def convert(config: dict[str, Any], *, source: str, spec_file: str, target: Target) -> str:
    """The whole output for a parsed prometheus.yml."""
    jobs = [job for job in config.get("scrape_configs") or [] if isinstance(job, dict)]
    jobs = [job for job in jobs if job.get("consul_sd_configs")]
    if not jobs:
        raise UsageError(f"{source}: no scrape_configs job has consul_sd_configs")
    parts, replaced, port = [], [], _port(target.http_sd)
    taken: set[str] = set()  # two jobs must not give one object (nor one file_sd file)
    secrets: list[str] = []
    for job in jobs:
        name = str(job.get("job_name", "job"))
        converted = [
            convert_sd_config(
                unique_name(object_name(name, i), taken),
                sd,
                where=f"job {name}: consul_sd_configs[{i}]",
            )
            for i, sd in enumerate(job["consul_sd_configs"])
        ]
        for i, one in enumerate(converted):
            parts.append(_object_text(one, spec_file=spec_file, target=target, port=port + i))
        kept = replacement_job(job, [c.name for c in converted], target=target, first_port=port)
        notes: list[str] = []
        replaced.append(without_secrets(kept, where="", notes=notes))
        secrets += [f"job {name}: {note}" for note in notes]
        port += len(converted)
    header = (
        f"# consul-sd convert {source}: {len(parts)} consul_sd_configs in {len(jobs)} jobs.\n"
        "# Apply the ConsulDiscovery objects for the operator, or run each `consul-sd discover`\n"
        "# below with this output saved as its --spec file; then replace the jobs in\n"
        "# prometheus.yml with the last document.\n"
    )
    jobs_text = yaml.safe_dump({"scrape_configs": replaced}, sort_keys=False)
    tail = "# Replacement jobs: relabelings and scrape settings kept.\n"
    tail += "".join(f"# {note}\n" for note in secrets) + jobs_text
    return header + "".join(f"---\n{part}" for part in [*parts, tail])


def _port(http_sd: str) -> int:
    host, _, port = http_sd.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--http-sd {http_sd!r} is not HOST:PORT")
    return int(port)


def _object_text(converted: Converted, *, spec_file: str, target: Target, port: int) -> str:
    command = ["consul-sd", "discover", "--spec", spec_file, "--name", converted.name]
    if target.kind == "http_sd":
        command += ["--listen", f"{target.http_sd.rpartition(':')[0]}:{port}"]
    else:
        command += ["--output", file_sd_path(converted.name, target=target)]
    command += converted.flags
    lines = [f"# run: {shlex.join(command)}"] if target.kind != "operator" else []
    lines += [f"# {note}" for note in converted.notes]
    return "\n".join(lines) + "\n" + yaml.safe_dump(converted.document, sort_keys=False)
