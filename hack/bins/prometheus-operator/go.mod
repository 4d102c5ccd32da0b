module consul-sd.io/bins/prometheus-operator

go 1.26.0

// The module's own replaces (./pkg/apis/monitoring, ./pkg/client) point at the same commit as
// the published v0.93.0 submodules, so a plain require reproduces the upstream build.
require github.com/prometheus-operator/prometheus-operator v0.93.0
