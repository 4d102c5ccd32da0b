"""consul-sd-operator: Consul service discovery for Prometheus at fleet scale.

The package is split in layers that only depend downwards (checked by import-linter):
``handlers`` (the only kopf user) -> ``kube`` (the only Kubernetes I/O) -> the pure engine
(``spec``, ``consul``, ``targets``, ``workers``, ``render``). ``simulator`` is a stand-alone
fake Consul for tests and benchmarks and imports nothing from the engine.
"""

__version__ = "0.1.0"
