module consul-sd.io/bins/prometheus

go 1.26.0

require github.com/prometheus/prometheus v0.314.0

// Copied from prometheus v0.314.0's go.mod: excludes and replaces are not inherited by
// dependents, and without them the build list differs from upstream's.
exclude github.com/linode/linodego v1.0.0

exclude (
	github.com/grpc-ecosystem/grpc-gateway v1.14.7
	google.golang.org/api v0.30.0
)

replace cloud.google.com/go => cloud.google.com/go v0.123.0
