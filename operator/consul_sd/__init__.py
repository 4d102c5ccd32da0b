"""consul-sd-operator: Consul service discovery for Prometheus at fleet scale.

The package is split in layers that only depend downwards (checked by import-linter):
``cli`` (the ``consul-sd`` command) -> ``controller`` (kopf's handlers, the runner, status) ->
``outputs`` (rendering and writing targets) -> ``kube`` (the only Kubernetes I/O) -> the pure
engine: ``discovery`` (the modes) -> ``targets`` -> ``consul`` (the client and what it reads)
and ``api`` (the spec and status models) -> ``loops`` (the shared loop idioms). The simulator
is a separate package (``consul_simulator``), a test and benchmark dependency the product never
imports.

This module holds only the version: ``consul-sd --version`` imports it, and nothing here may
load more.
"""

__version__ = "0.1.0"
