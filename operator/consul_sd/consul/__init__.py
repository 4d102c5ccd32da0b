"""Consul: what the engine knows of it, and nothing of Kubernetes, Prometheus or the spec.

- :mod:`.errors`: one exception per status reason a Consul call can end in.
- :mod:`.records`: the parsed answers (:class:`~.records.Instance` and friends) and the health
  rule, pure.
- :mod:`.endpoint`: how to reach Consul and with which credentials, checked before use.
- :mod:`.client`: the HTTP reads, named by what they read; :mod:`.limiter` paces them on 429s.
- :mod:`.tls`: the TLS context from PEM files or bytes.

This ``__init__`` imports nothing, so the pure modules load without aiohttp.
"""
