#!/usr/bin/env bash
# Builds one real component (kube-apiserver, etcd, consul, prometheus, prometheus-operator) from
# its Go module, once per version, into a cache outside the repo, and prints the binary's path.
#
#   hack/bins/build.sh NAME        build if missing, print the path
#   hack/bins/build.sh all         build every component
#
# The cache key is the wrapper's go.mod hash, so editing a pin rebuilds. A lock per component
# lets parallel callers (tests, make demo) share one build. Nothing is written to the repo but
# go.sum when a pin changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${CONSUL_SD_CACHE:-$HOME/.cache/consul-sd-operator}
export CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false -trimpath -mod=mod"
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}

build_one() {
  local name=$1 pkg ldflags="-s -w" tags="" nosumdb=""
  case $name in
    kube-apiserver)
      pkg=k8s.io/kubernetes/cmd/kube-apiserver
      local minor=${KUBE_VERSION#1.}; minor=${minor%%.*}
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
      done ;;
    etcd) pkg=go.etcd.io/etcd/server/v3 ;;
    consul)
      pkg=github.com/hashicorp/consul
      # The checksum database as reached here answers 404 for these two module versions; their
      # hashes are pinned in consul/go.sum, so this only matters when go.sum is regenerated.
      nosumdb=github.com/hashicorp/consul/envoyextensions,github.com/hashicorp/hcp-sdk-go ;;
    prometheus)
      pkg=github.com/prometheus/prometheus/cmd/prometheus
      # Only the discovery mechanisms the tests use: consul_sd (the oracle), file_sd, http_sd.
      tags="netgo,remove_all_sd,enable_consul_sd"
      ldflags+=" -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" ;;
    prometheus-operator)
      pkg=github.com/prometheus-operator/prometheus-operator/cmd/operator
      ldflags+=" -X github.com/prometheus/common/version.Version=$PROMETHEUS_OPERATOR_VERSION" ;;
    *) echo "build.sh: unknown component '$name'" >&2; return 2 ;;
  esac
  local key; key=$(sha256sum "$here/$name/go.mod" | cut -c1-12)
  local out="$cache/bin/$name-$key/$name"
  if [ ! -x "$out" ]; then
    mkdir -p "$cache/locks" "$(dirname "$out")"
    exec 9>"$cache/locks/$name.lock"
    flock 9
    if [ ! -x "$out" ]; then
      echo "building $name (first time: several minutes) ..." >&2
      local start=$SECONDS
      (cd "$here/$name" && GONOSUMDB=${nosumdb:-${GONOSUMDB:-}} \
        go build ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$out.tmp" "$pkg")
      mv "$out.tmp" "$out"
      echo "built $name in $((SECONDS - start))s" >&2
    fi
    exec 9>&-
  fi
  echo "$out"
}

if [ "${1:-}" = all ]; then
  for n in etcd kube-apiserver consul prometheus prometheus-operator; do build_one "$n"; done
else
  build_one "${1:?usage: build.sh NAME|all}"
fi
