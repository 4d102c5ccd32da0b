"""The ConsulDiscovery API: what users write (``spec``) and read (``status``), and its names.

- :mod:`.spec`: the spec models and their validation (the CRD's schema comes from them).
- :mod:`.status`: the status models, the reasons and what each asks the user to do.
- :mod:`.names`: the group, version, kind, labels and finalizer, defined once.
- :mod:`.durations`: Prometheus's duration syntax, as the spec reads and the status writes it.

Pure models and constants: no I/O, nothing of Consul or Kubernetes clients.
"""
