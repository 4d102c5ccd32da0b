"""The Kubernetes side: one ConsulDiscovery in, outputs, status and events out.

- :mod:`.handlers`: kopf's handlers and settings, the only module that imports kopf.
- :mod:`.runner`: one generation of a CR at run time, inside one failure boundary.
- :mod:`.credentials`: Consul credentials from Secrets, read once and validated.
- :mod:`.conditions`: the condition rule (pure); :mod:`.reporting`: status patches and events.
- :mod:`.progress`: whether each loop still moves (liveness); :mod:`.metrics`: Prometheus series.

Kubernetes I/O itself lives in :mod:`consul_sd.kube`, one level down, so the outputs can use it.
"""
