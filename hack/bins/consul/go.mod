module consul-sd.io/bins/consul

go 1.26.0

// v1.16.3: the newest MPL-2.0 Consul the Go module proxy serves here (v1.16.4, the last MPL
// release, answers 403 "not available", and so do pseudo-versions of its submodules).
// v1.16.3 builds as is with the submodule versions it requires (api v1.25.1,
// envoyextensions v0.4.1, proto-public v0.4.1, sdk v0.14.1, troubleshoot v0.3.1): no replaces.
require github.com/hashicorp/consul v1.16.3

// Copied from consul's go.mod (excludes are not inherited by dependents).
exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
