"""The names the operator shares with Kubernetes and its users, defined once.

The API group, version and kind of ConsulDiscovery, the labels and field manager on what it
writes, kopf's annotation prefix and finalizer, and the prometheus-operator resource it writes
ScrapeConfigs as. The CRD generator, the Kubernetes I/O, the handlers and the publisher all read
them here, so a rename cannot leave one of them behind. Pure constants: no imports.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "consul-sd.io"
VERSION: Final = "v1alpha1"
KIND: Final = "ConsulDiscovery"
PLURAL: Final = "consuldiscoveries"
SINGULAR: Final = "consuldiscovery"
SHORT_NAMES: Final = ("csd",)
CATEGORIES: Final = ("consul-sd",)

# The field manager of every write and the managed-by label value of every output.
OPERATOR_NAME: Final = "consul-sd-operator"
# Every output carries these two labels; an output counts as a CR's own only by its controlling
# ownerReference, the labels only help find it.
DISCOVERY_LABEL: Final = f"{GROUP}/discovery"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
# kopf's annotations and finalizer live under the group, never kopf's defaults.
FINALIZER: Final = f"{GROUP}/finalizer"

SCRAPE_CONFIG_GROUP: Final = "monitoring.coreos.com"
SCRAPE_CONFIG_VERSION: Final = "v1alpha1"
SCRAPE_CONFIG_PLURAL: Final = "scrapeconfigs"
