#!/bin/sh
# adopt-rss.sh AGENT BINARY: the agent's peak memory while it adopts a kubelet running BINARY.
# The agent runs in a memory cgroup of its own (v1, 1 GiB limit); BINARY is copied to a file
# named `kubelet` and exec'd held at its first instruction (held_exec), so the agent adopts it
# (reads its symbols, attaches the allocator uprobes). Prints the agent's VmHWM and VmRSS and
# the cgroup's memory.max_usage_in_bytes (what counts against a container's limit).
# Root; run under `flock /tmp/oomprobe-priv.lock`.
set -eu
agent=$(readlink -f "$1"); big=$(readlink -f "$2")
here=$(dirname "$(readlink -f "$0")")
work=$(mktemp -d /tmp/oomprobe-adopt-XXXXXX)
cg=/sys/fs/cgroup/memory/oomprobe-measure-$$
cleanup() {
    [ -n "${holder:-}" ] && exec 3>&- 2>/dev/null || true
    [ -n "${apid:-}" ] && kill "$apid" 2>/dev/null && wait "$apid" 2>/dev/null || true
    rmdir "$cg" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -o "$work/held_exec" "$here/held_exec.c"
mkdir -p "$work/bin" "$work/state"
cp "$big" "$work/bin/kubelet"
mkdir "$cg"
echo $((1 << 30)) > "$cg/memory.limit_in_bytes"
sh -c "echo \$\$ > $cg/cgroup.procs; exec $agent run --format json --no-metrics --state-dir $work/state --attribution-interval 1" \
    > "$work/out" 2> "$work/err" &
apid=$!
i=0; until grep -q "oomprobe ready" "$work/err"; do i=$((i+1)); [ $i -lt 600 ] || { cat "$work/err"; exit 1; }; sleep 0.1; done
echo $((0)) > /dev/null
before=$(awk '/VmHWM/{print $2}' /proc/$apid/status)
mkfifo "$work/ctl"
"$work/held_exec" "$work/bin/kubelet" < "$work/ctl" > "$work/kpid" &
holder=$!
exec 3> "$work/ctl"
i=0; until [ -s "$work/kpid" ]; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done
kpid=$(cat "$work/kpid")
i=0; until grep -q "\"event\":\"kubelet_start\".*\"pid\":$kpid" "$work/out"; do i=$((i+1)); [ $i -lt 600 ] || { tail "$work/err"; exit 1; }; sleep 0.1; done
grep -q "allocator uprobes attached" "$work/err" || { tail "$work/err"; echo "no uprobes attached"; exit 1; }
echo "binary: $big ($(stat -c %s "$big") bytes)"
echo "agent: $agent"
echo "VmHWM before adoption: ${before} kB"
grep -E "VmHWM|VmRSS|RssAnon|RssFile" /proc/$apid/status | tr -s ' \t' ' '
echo "cgroup memory.max_usage_in_bytes: $(cat $cg/memory.max_usage_in_bytes)"
exec 3>&-
wait "$holder"
