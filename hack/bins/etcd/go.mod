module consul-sd.io/bins/etcd

go 1.26.0

// v3.6.8 is the etcd that k8s.io/apiserver v0.36.3 links against.
require go.etcd.io/etcd/server/v3 v3.6.8
