#!/bin/sh
# caps.sh AGENT GO_KUBELET CAPS...: which of the agent's features work with only the given
# capabilities (uid 0, every other capability dropped from the bounding set with setpriv, as a
# container with `capabilities: {drop: [ALL], add: [...]}` runs). CAPS: comma lists such as
# `bpf,perfmon,sys_ptrace`, `none` or `all`; one result line per list.
# Features: load (eBPF programs loaded and tracepoints attached: "oomprobe ready"), kill (a real
# kill -9 of a process in a scratch pod cgroup recorded, with its memory), adopt (a Go stand-in
# kubelet running as root with all capabilities found, its binary read through /proc/PID/exe),
# uprobes (its allocator uprobes attached and hit: kubelet_memory in mode uprobes), memcg
# (v1 oom_control and pressure_level notifications registered on the scratch cgroups), fifo
# (ring readers at SCHED_FIFO).
# Root; run under `flock /tmp/oomprobe-priv.lock`. Removes its cgroups and processes.
set -u
agent=$(readlink -f "$1"); kubelet=$(readlink -f "$2"); shift 2
work=$(mktemp -d /tmp/oomprobe-caps-XXXXXX)
cg=/sys/fs/cgroup/memory/oomprobe-caps-$$
pids=""
cleanup() {
    for p in $pids; do kill -9 "$p" 2>/dev/null; done
    sleep 0.3
    for d in "$cg/pods/pod1" "$cg/pods" "$cg/kubelet" "$cg"; do rmdir "$d" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$cg/pods/pod1" "$cg/kubelet"
echo $((256 << 20)) > "$cg/memory.limit_in_bytes"
mkdir -p "$work/bin"; cp "$kubelet" "$work/bin/kubelet"
# The stand-in kubelet: root, all capabilities, leaking 256 KiB every 100 ms.
sh -c "echo \$\$ > $cg/kubelet/cgroup.procs; exec $work/bin/kubelet -interval-ms 100 -stats-ms 100000 -total-mib 64" > /dev/null &
kpid=$!; pids="$pids $kpid"

wait_for() { # FILE PATTERN SECONDS
    i=0; while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i+1)); [ $i -le $(($3 * 10)) ] || return 1; sleep 0.1
        kill -0 "$apid" 2>/dev/null || { grep -q "$2" "$1" 2>/dev/null; return $?; }
    done
}
yn() { if "$@"; then printf ' yes'; else printf ' NO '; fi; }

printf '%-45s load kill adopt uprobes memcg fifo\n' caps
for caps in "$@"; do
    case $caps in
        all) bset=+all ;;
        none) bset=-all ;;
        *) bset="-all,$(echo "$caps" | sed 's/\([a-z_]*\)/+\1/g')" ;;
    esac
    out=$work/out.$caps; err=$work/err.$caps; mkdir -p "$work/state.$caps"
    setpriv --bounding-set "$bset" --inh-caps -all -- "$agent" run --format json --no-metrics \
        --state-dir "$work/state.$caps" --kubepods-root "/oomprobe-caps-$$/pods" \
        --attribution-interval 1 --sample-interval 1 > "$out" 2> "$err" &
    apid=$!
    printf '%-45s' "$caps"
    if wait_for "$err" "oomprobe ready" 30; then
        printf ' yes '
        sh -c "echo \$\$ > $cg/pods/pod1/cgroup.procs; exec sleep 60" & vpid=$!
        sleep 1; kill -9 $vpid
        yn wait_for "$out" "\"event\":\"kill\".*\"pid\":$vpid.*anon_rss_kb" 10
        yn wait_for "$out" "\"event\":\"kubelet_start\".*\"pid\":$kpid" 10
        yn wait_for "$out" "\"event\":\"kubelet_memory\".*\"pid\":$kpid.*\"mode\":\"uprobes\".*runtime.sysMap" 10
        yn sh -c "sleep 2; ! grep -q 'notification refused' '$err'"
        yn sh -c "! grep -q 'SCHED_FIFO refused' '$err'"
        echo
    else
        echo " NO   -    -     -       -     -    ($(grep -m1 -i 'error' "$err" | cut -c1-150))"
    fi
    kill "$apid" 2>/dev/null; wait "$apid" 2>/dev/null
    [ -n "${KEEP_LOGS:-}" ] && cp "$err" "$out" "$KEEP_LOGS"/ 2>/dev/null
done
