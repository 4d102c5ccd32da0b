#!/usr/bin/env bash
# Builds real components (kube-apiserver, etcd, consul, prometheus, promtool, prometheus-operator,
# dashboard-lint) from their Go modules, once per version, into a cache outside the repo, and
# prints each binary's path on stdout (one line per name, in order).
#
#   hack/bins/build.sh NAME [NAME...]   build what is missing, print the paths
#   hack/bins/build.sh all              build every component
#
# Progress goes to stderr: one line when a build starts (version, rough duration), a heartbeat
# with the elapsed time every CONSUL_SD_BUILD_HEARTBEAT seconds (default 30), one line when it
# is done. Go's own output goes to $cache/logs/NAME.log; a failed build prints that log's tail
# and the command to rerun. GOPROXY and the checksum database settings are the machine's
# (Go's defaults unless set): nothing here names a module proxy.
#
# The cache key is the wrapper's go.mod hash (with its .go files for a local main package such
# as dashboard-lint), so editing a pin, or that program, rebuilds. A lock per component
# lets parallel callers (tests, make demo) share one build; a caller that waits says so. Nothing
# is written to the repo but go.sum when a pin changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${CONSUL_SD_CACHE:-$HOME/.cache/consul-sd-operator}
heartbeat=${CONSUL_SD_BUILD_HEARTBEAT:-30}
export CGO_ENABLED=0 GOFLAGS="-modcacherw -buildvcs=false -trimpath -mod=mod"

# Rough cold-build durations on 2 cores (module downloads included), for the progress line.
declare -A about=(
  [etcd]="2 minutes" [kube-apiserver]="6 minutes" [consul]="5 minutes"
  [prometheus]="4 minutes" [promtool]="2 minutes" [prometheus-operator]="4 minutes"
  [dashboard-lint]="1 minute"
)

elapsed() {
  local s=$(($(date +%s) - $1))
  printf '%dm%02ds' $((s / 60)) $((s % 60))
}

# Runs "$@" with its output in $log, printing a heartbeat to stderr while it runs.
run_with_heartbeat() {
  local what=$1 log=$2 started; shift 2
  started=$(date +%s)
  ("$@") >"$log" 2>&1 &
  local pid=$! rc=0
  while kill -0 "$pid" 2>/dev/null; do
    local slept=0
    while [ "$slept" -lt "$heartbeat" ] && kill -0 "$pid" 2>/dev/null; do
      sleep 1; slept=$((slept + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "  ... still building $what: $(elapsed "$started") elapsed" >&2
    fi
  done
  wait "$pid" || rc=$?
  return "$rc"
}

build_one() {
  local name=$1 pkg ldflags="-s -w" tags="" nosumdb="" version dir=$1 sources=()
  case $name in
    kube-apiserver)
      pkg=k8s.io/kubernetes/cmd/kube-apiserver version=$KUBE_VERSION
      local minor=${KUBE_VERSION#1.}; minor=${minor%%.*}
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
      done ;;
    etcd) pkg=go.etcd.io/etcd/server/v3 version=$ETCD_VERSION ;;
    consul)
      pkg=github.com/hashicorp/consul version=$CONSUL_VERSION
      # The checksum database as reached here answers 404 for these two module versions; their
      # hashes are pinned in consul/go.sum, so this only matters when go.sum is regenerated.
      nosumdb=github.com/hashicorp/consul/envoyextensions,github.com/hashicorp/hcp-sdk-go ;;
    prometheus)
      pkg=github.com/prometheus/prometheus/cmd/prometheus version=$PROMETHEUS_VERSION
      # Only the discovery mechanisms the tests use: consul_sd (the oracle), file_sd, http_sd.
      tags="netgo,remove_all_sd,enable_consul_sd"
      ldflags+=" -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" ;;
    promtool)
      # Prometheus's own module pin (hack/bins/prometheus): the rule checker of the same release.
      pkg=github.com/prometheus/prometheus/cmd/promtool version=$PROMETHEUS_VERSION dir=prometheus
      tags="netgo,remove_all_sd,enable_consul_sd"
      ldflags+=" -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" ;;
    prometheus-operator)
      pkg=github.com/prometheus-operator/prometheus-operator/cmd/operator
      version=$PROMETHEUS_OPERATOR_VERSION
      ldflags+=" -X github.com/prometheus/common/version.Version=$PROMETHEUS_OPERATOR_VERSION" ;;
    dashboard-lint)
      # Our own main package (hack/bins/dashboard-lint), built in its directory; the version shown
      # is that of grafana-foundation-sdk, the Grafana schema types it checks against.
      pkg=. sources=("$here/$dir"/*.go)
      version=$(sed -n 's|^require github.com/grafana/grafana-foundation-sdk/go v||p' \
        "$here/$dir/go.mod") ;;
    *) echo "build.sh: unknown component '$name'" >&2; return 2 ;;
  esac
  # With no sources this is go.mod's own sha256, as before: existing caches stay valid.
  local key; key=$(cat "$here/$dir/go.mod" "${sources[@]}" | sha256sum | cut -c1-12)
  local out="$cache/bin/$name-$key/$name"
  if [ ! -x "$out" ]; then
    mkdir -p "$cache/locks" "$cache/logs" "$(dirname "$out")"
    exec 9>"$cache/locks/$name.lock"
    if ! flock -n 9; then
      local waiting; waiting=$(date +%s)
      echo "waiting for another build of $name to finish (lock $cache/locks/$name.lock)" >&2
      until flock -w "$heartbeat" 9; do
        echo "  ... still waiting for the build of $name: $(elapsed "$waiting") elapsed" >&2
      done
    fi
    if [ ! -x "$out" ]; then
      local log="$cache/logs/$name.log" started; started=$(date +%s)
      echo "building $name v$version from Go modules: first time only, about ${about[$name]} (log: $log)" >&2
      if ! run_with_heartbeat "$name" "$log" \
        env -C "$here/$dir" GONOSUMDB="${nosumdb:-${GONOSUMDB:-}}" \
        go build ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$out.tmp" "$pkg"; then
        echo "build of $name failed after $(elapsed "$started"); last 40 lines of $log:" >&2
        tail -n 40 "$log" >&2 || true
        echo "fix the cause, then rerun: hack/bins/build.sh $name" >&2
        exec 9>&-
        return 1
      fi
      mv "$out.tmp" "$out"
      echo "built $name v$version in $(elapsed "$started")" >&2
    fi
    exec 9>&-
  fi
  echo "$out"
}

[ $# -gt 0 ] || { echo "usage: build.sh NAME [NAME...] | all" >&2; exit 2; }
if [ "$1" = all ]; then
  set -- etcd kube-apiserver consul prometheus promtool prometheus-operator dashboard-lint
fi
for n in "$@"; do build_one "$n"; done
