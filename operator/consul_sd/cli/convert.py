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
from consul_sd.cli.validate import document_problems

_MAX_PORT = 65535
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's when installed: faster


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
    jobs = _consul_jobs(config, source=source)
    parts, replaced, port = [], [], _port(target.http_sd)
    taken: set[str] = set()  # two jobs must not give one object (nor one file_sd file)
    secrets: list[str] = []
    for job in jobs:
        name = str(job.get("job_name", "job"))
        converted = [
            _converted(sd, name=unique_name(object_name(name, i), taken), where=(source, name, i))
            for i, sd in enumerate(job["consul_sd_configs"])
        ]
        for i, one in enumerate(converted):
            parts.append(_object_text(one, spec_file=spec_file, target=target, port=port + i))
        kept = replacement_job(job, [c.name for c in converted], target=target, first_port=port)
        notes: list[str] = []
        replaced.append(without_secrets(kept, where="", notes=notes, memo={}))
        secrets += [f"job {name}: {note}" for note in notes]
        port += len(converted)
    if target.kind == "http_sd" and port - 1 > _MAX_PORT:
        raise UsageError(f"--http-sd {target.http_sd}: {len(parts)} ports do not fit below 65536")
    header = [
        f"consul-sd convert {source}: {len(parts)} consul_sd_configs in {len(jobs)} jobs.",
        "Apply the ConsulDiscovery objects for the operator, or run each `consul-sd discover`",
        "below with this output saved as its --spec file; then replace the jobs in",
        "prometheus.yml with the last document.",
        *_files_note(config),
    ]
    jobs_text = yaml.dump(
        {"scrape_configs": replaced}, Dumper=_Dumper, sort_keys=False, allow_unicode=True
    )
    tail = _comments(["Replacement jobs: relabelings and scrape settings kept.", *secrets])
    return _comments(header) + "".join(f"---\n{part}" for part in [*parts, tail + jobs_text])


def _consul_jobs(config: dict[str, Any], *, source: str) -> list[dict[str, Any]]:
    """The jobs with consul_sd_configs; :class:`UsageError` where Prometheus would refuse the
    shape (a traceback otherwise)."""
    scrape_configs = config.get("scrape_configs") or []
    if not isinstance(scrape_configs, list):
        raise UsageError(f"{source}: scrape_configs: not a list")
    jobs = [job for job in scrape_configs if isinstance(job, dict)]
    jobs = [job for job in jobs if job.get("consul_sd_configs")]
    if not jobs:
        files = " (scrape_config_files are not read: convert each)" if _files_note(config) else ""
        raise UsageError(f"{source}: no scrape_configs job has consul_sd_configs{files}")
    for job in jobs:
        if not isinstance(job["consul_sd_configs"], list):
            raise UsageError(f"{source}: job {job.get('job_name')}: consul_sd_configs: not a list")
    return jobs


def _converted(sd: Any, *, name: str, where: tuple[str, str, int]) -> Converted:
    """One entry converted; :class:`UsageError` naming it when the result would not be a valid
    ConsulDiscovery (the entry is one Prometheus refuses, e.g. ``services: web``)."""
    source, job, index = where
    at = f"{source}: job {job}: consul_sd_configs[{index}]"
    if not isinstance(sd, dict):
        raise UsageError(f"{at}: not a mapping")
    try:
        converted = convert_sd_config(name, sd, where=f"job {job}: consul_sd_configs[{index}]")
    except UsageError as exc:  # a setting that is no string
        raise UsageError(f"{source}: {exc}") from None
    if problems := document_problems(converted.document):
        raise UsageError(f"{at}: " + "; ".join(problems))
    return converted


def _files_note(config: dict[str, Any]) -> list[str]:
    files = config.get("scrape_config_files")
    if not files:
        return []
    globs = ", ".join(g for g in files if isinstance(g, str)) if isinstance(files, list) else ""
    return [
        f"unsupported: scrape_config_files ({globs}): not read; run consul-sd convert on each "
        "(object names are unique within one run only)"
    ]


def _comments(lines: list[str]) -> str:
    """``lines`` as YAML comments, a line break or other unprintable character escaped (a job
    name with a newline would otherwise end the comment and inject YAML)."""
    return "".join(
        "# "
        + "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)
        + "\n"
        for line in lines
    )


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
    lines = [f"run: {shlex.join(command)}"] if target.kind != "operator" else []
    text = yaml.dump(converted.document, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    return _comments(lines + converted.notes) + text
