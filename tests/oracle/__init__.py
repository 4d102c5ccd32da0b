"""Conformance oracle: real Consul and Prometheus consul_sd against consul-sd discover."""
