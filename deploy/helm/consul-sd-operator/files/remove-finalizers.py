"""Remove the operator's finalizer from every ConsulDiscovery it watched (post-delete hook).

Run by the chart's cleanup Job after `helm uninstall` removed the operator: the ConsulDiscovery
objects stay (by design), and without this a later `kubectl delete` would wait for an operator
that is gone. Their outputs are deleted by the garbage collector through ownerReferences.
WATCH_NAMESPACES: comma-separated namespaces (empty: every namespace). A few rounds, in case
the exiting operator put a finalizer back before it stopped; bounded in count and time.
"""

import os
import time

from kubernetes import client, config

FINALIZER = "consul-sd.io/finalizer"
GROUP, VERSION, PLURAL = "consul-sd.io", "v1alpha1", "consuldiscoveries"
ROUNDS = 3
PAUSE_SECONDS = float(os.environ.get("PAUSE_SECONDS", "10"))


def listed(api, namespaces):
    if not namespaces:
        return api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    items = []
    for namespace in namespaces:
        items += api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return items


def release(api, item):
    meta = item["metadata"]
    finalizers = meta.get("finalizers") or []
    if FINALIZER not in finalizers:
        return False
    index = finalizers.index(FINALIZER)
    path = f"/metadata/finalizers/{index}"
    # The test makes the patch fail instead of removing another finalizer, should they move.
    patch = [{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}]
    api.patch_namespaced_custom_object(
        GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], patch,
        _content_type="application/json-patch+json",
    )
    print(f"released {meta['namespace']}/{meta['name']}", flush=True)
    return True


def main():
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    namespaces = [n for n in os.environ.get("WATCH_NAMESPACES", "").split(",") if n]
    for round_ in range(ROUNDS):
        released = sum(release(api, item) for item in listed(api, namespaces))
        if not released and round_ > 0:
            return
        time.sleep(PAUSE_SECONDS)


main()
