"""consul-sd-operator: Consul service discovery for Prometheus at fleet scale.

The package is split in layers that only depend downwards (checked by import-linter):
``cli`` (the ``consul-sd`` command) -> ``handlers`` (the only kopf user) -> ``runner``,
``publisher``, ``credentials`` -> ``kube`` (the only Kubernetes I/O) -> the pure engine:
``spec``, ``discovery`` (the modes), ``render``, ``targets``, ``consul`` (the client and what it
reads). The simulator is a separate package (``consul_simulator``), a test and benchmark
dependency the product never imports.

This module holds only the version: ``consul-sd --version`` imports it, and nothing here may
load more.
"""

__version__ = "0.1.0"
