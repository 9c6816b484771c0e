#!/usr/bin/env bash
# A cvt-nas search on a Ray cluster: start the head, join the workers, run the search on the
# head. Each step is one command on one machine:
#
#   examples/ray/cluster.sh head                          # on the head machine
#   examples/ray/cluster.sh worker HEAD_IP:6379           # on every worker machine
#   examples/ray/cluster.sh search HEAD_IP:6379 search_spaces/cvt_micro.yaml --trials 64
#   examples/ray/cluster.sh stop                          # on every machine, at the end
#
# `search` runs `cvt-nas search --backend ray --address ...` with the rest of its arguments: the
# driver samples and records (SQLite in --out unless --storage/$CVT_NAS_STORAGE says otherwise),
# Ray places the trials (--cpus-per-trial, --gpus-per-trial). A trial on a node that dies runs
# again on another; a killed driver resumes when the same command is run again.
#
# Settings (environment): PORT (head, 6379), CPUS / GPUS (what this node offers Ray; default:
# what Ray detects), NODE_IP (the address to advertise; default: Ray's choice), HEAD_CPUS (0
# keeps trials off the head), RAY_TEMP_DIR (Ray's temp dir), OBJECT_STORE_MB, RAY (the ray
# command), CVT_NAS (how to run cvt-nas). Ray's ports must be open between the machines; keep
# the cluster on a private network (RAY_AUTH_MODE as your Ray version documents).
# Tested: tests/distributed/test_recipes.py runs head, worker and search on two network-namespace
# hosts of one machine.
set -euo pipefail

ray_cmd="${RAY:-ray}"
read -ra cvt_nas <<< "${CVT_NAS:-cvt-nas}"
node=()
[[ -n "${NODE_IP:-}" ]] && node+=(--node-ip-address "$NODE_IP")
[[ -n "${RAY_TEMP_DIR:-}" ]] && node+=(--temp-dir "$RAY_TEMP_DIR")
[[ -n "${OBJECT_STORE_MB:-}" ]] && node+=(--object-store-memory "$((OBJECT_STORE_MB * 1048576))")
[[ -n "${GPUS:-}" ]] && node+=(--num-gpus "$GPUS")

usage() {
    echo "cluster.sh: give head | worker HEAD:PORT | search HEAD:PORT SPACE [options] | stop" >&2
    exit 2
}

case "${1:-}" in
    head)
        cpus="${HEAD_CPUS:-${CPUS:-}}"
        [[ -n "$cpus" ]] && node+=(--num-cpus "$cpus")
        exec "$ray_cmd" start --head --port "${PORT:-6379}" --include-dashboard false "${node[@]}"
        ;;
    worker)
        [[ $# -ge 2 ]] || usage
        [[ -n "${CPUS:-}" ]] && node+=(--num-cpus "$CPUS")
        exec "$ray_cmd" start --address "$2" "${node[@]}"
        ;;
    search)
        [[ $# -ge 3 ]] || usage
        address="$2"
        shift 2
        exec "${cvt_nas[@]}" search "$@" --backend ray --address "$address"
        ;;
    stop)
        exec "$ray_cmd" stop
        ;;
    *)
        usage
        ;;
esac
