"""Outputs: where discovered targets go, and how they are written without ever losing one.

- :mod:`.render`: the file_sd JSON of a set of target groups, byte-stable.
- :mod:`.shards`: ConfigMap and ScrapeConfig contents, split into shards under the size limits.
- :mod:`.filesd`: the standalone command's file, replaced atomically.
- :mod:`.publisher`: the Kubernetes objects of a CR, written superset-first, owned objects only.
- :mod:`.http_sd`: the HTTP SD endpoint: each discovery's latest complete targets, from memory.

``render`` and ``shards`` are pure; ``publisher`` writes through :mod:`consul_sd.kube`,
``filesd`` to a file and ``http_sd`` serves over HTTP (aiohttp).
"""
