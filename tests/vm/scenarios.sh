#!/bin/sh
# The Foundation scenarios, run inside a VM kernel (cgroup v2) by `cargo xtask vm-test`.
# Each prints "RESULT <name> PASS|FAIL <detail>" on stdout (the host reads them from ttyS1).
# busybox sh; the agent and memhog are static binaries at /.

CG=/sys/fs/cgroup
result() { echo "RESULT $1 $2 $3"; }

# Waits up to $2 seconds for a line of $1 matching the extended regex $3.
wait_line() {
    i=0
    while [ $i -lt $(($2 * 10)) ]; do
        l=$(grep -E "$3" "$1" | head -n 1)
        if [ -n "$l" ]; then echo "$l"; return 0; fi
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

mkcg() { mkdir -p "$CG/$1" && echo "$2" > "$CG/$1/memory.max"; }
# Starts "$2..." in cgroup $1 in the background; the pid is the program's (sh execs it).
spawn() { cg=$1; shift; sh -c "echo \$\$ > $CG/$cg/cgroup.procs && exec $*" & }

# Value of key $2 in the flat keyed file $1 (memory.events...).
keyed() { grep "^$2 " "$1" | cut -d' ' -f2; }

# group_check GROUP DOMAIN CHOSEN "MEMBERS" COUNT NAME: each tier's record of each killed pid
# names the group, the count and the role; the counts equal the kernel's: the group's
# memory.events.local oom_group_kill is 1, and the domain's memory.events oom_kill is the
# SIGKILLs the OOM killer sent, one per record plus each record's extra_sigkills (the kernel's
# group scan kills the chosen victim once more and counts it again while it still has its mm:
# mm/oom_kill.c oom_kill_memcg_member -> __oom_kill_process).
group_check() {
    grp=$1; dom=$2; chosen=$3; members=$4; count=$5; name=$6
    bad=""
    for out in /tmp/agent.out /tmp/agentk.out; do
        for p in $chosen $members; do
            l=$(wait_line $out 30 "\"victim\":\\{\"pid\":$p,")
            role=member
            [ "$p" = "$chosen" ] && role=chosen
            exp="\"group\":{\"path\":\"$grp\",\"killed\":$count,\"role\":\"$role\",\"chosen_pid\":$chosen,\"oom_group_kill\":1,\"source\":\"kernel\"}"
            if ! echo "$l" | grep -qF "$exp" || ! echo "$l" | grep -q "\"domain\":{\"path\":\"$dom\""; then
                bad="$bad $out:$p"
            fi
        done
    done
    gk=$(keyed $CG$grp/memory.events.local oom_group_kill)
    ok=$(keyed $CG$dom/memory.events oom_kill)
    sent=0
    for p in $chosen $members; do
        x=$(grep "\"victim\":{\"pid\":$p," /tmp/agent.out | head -n 1 | grep -o '"extra_sigkills":[0-9]*' | cut -d: -f2)
        sent=$((sent + 1 + ${x:-1000}))
    done
    if [ -z "$bad" ] && [ "$gk" = "1" ] && [ "$ok" = "$sent" ]; then
        result $name PASS "group $grp in domain $dom: chosen $chosen, members $members ($count records), oom_group_kill $gk, oom_kill $ok = SIGKILLs in the records, both tiers"
    else
        result $name FAIL "bad:$bad oom_group_kill $gk oom_kill $ok sigkills $sent; tp: $(grep -E "\"pid\":($(echo $chosen $members | tr ' ' '|'))," /tmp/agent.out | head -n 3 | cut -c1-900)"
    fi
}

# domain_check NAME PID DOMAIN: the kill of PID has DOMAIN as its domain in both tiers, decided
# by memory.events.local (tracepoint tier) and the OOM control (kprobe tier).
domain_check() {
    name=$1; pid=$2; dom=$3
    l=$(wait_line /tmp/agent.out 60 "\"victim\":\\{\"pid\":$pid,")
    k=$(wait_line /tmp/agentk.out 60 "\"victim\":\\{\"pid\":$pid,")
    # The limit that fired, as the kernel's page_counter had it at the kill (memory.max).
    lim=$(cat $CG$dom/memory.max)
    at_kill="\"limit_bytes\":$lim,.*\"source\":\"page_counter\""
    if echo "$l" | grep -q "\"domain\":{\"path\":\"$dom\"" && echo "$l" | grep -q '"evidence":"memory.events.local"' \
       && echo "$k" | grep -q "\"domain\":{\"path\":\"$dom\"" && echo "$k" | grep -q '"evidence":"oom_control"' \
       && echo "$l" | grep -q "$at_kill" && echo "$k" | grep -q "$at_kill"; then
        result $name PASS "domain $dom (memory.events.local oom $(keyed $CG$dom/memory.events.local oom)), limit $lim B from page_counter, both tiers"
    else
        result $name FAIL "tracepoint: $(echo "$l" | cut -c1-900) kprobe: $(echo "$k" | cut -c1-900)"
    fi
}

uname -r
echo "+memory" > $CG/cgroup.subtree_control
# Two agents on the same kernel: A forced to the tracepoint tier, B to the kprobe tier.
/oomprobe run --format json --no-metrics --state-dir /tmp/state --hook-tier tracepoint --sample-interval 1 --emit-samples > /tmp/agent.out 2> /tmp/agent.err &
/oomprobe run --format json --no-metrics --state-dir /tmp/statek --metrics-addr 127.0.0.1:9465 --hook-tier kprobe --sample-interval 1 > /tmp/agentk.out 2> /tmp/agentk.err &
if ! wait_line /tmp/agent.err 120 "oomprobe ready" > /dev/null; then
    result agent_ready FAIL "$(tail -n 3 /tmp/agent.err | tr '\n' ' ')"
    exit 0
fi
result agent_ready PASS "$(grep -o 'hooks=[0-9]*' /tmp/agent.err | head -n 1)"
# An optional hook this kernel refused: named, with the kernel's reason.
if grep -q "optional hook not attached" /tmp/agent.err; then
    result optional_hooks FAIL "$(grep "optional hook not attached" /tmp/agent.err | head -n 2 | cut -c1-1200 | tr '\n' ' ')"
else
    result optional_hooks PASS "every optional hook attached"
fi
if wait_line /tmp/agentk.err 120 "oomprobe ready" > /dev/null && grep -q 'tier="kprobe"' /tmp/agentk.err; then
    result kprobe_tier PASS "oom_kill_process kprobe attached"
else
    result kprobe_tier FAIL "$(grep -E 'error|tier' /tmp/agentk.err | tail -n 2 | tr '\n' ' ')"
fi

# 1. A memcg OOM kill, exact pid, kind, cgroup, sender, domain, death.
mkcg t1 32M
spawn t1 /memhog 64 > /tmp/t1.out
pid=$!
wait $pid
l=$(wait_line /tmp/agent.out 60 "\"kind\":\"oom_memcg\",\"victim\":\\{\"pid\":$pid,")
# The record itself, for the host's cross-architecture comparison (same scenario, amd64 vs arm64).
echo "RECORD memcg_oom $l"
if echo "$l" | grep -q "\"cgroup\":\"/t1\"" && echo "$l" | grep -q "\"code\":\"SI_KERNEL\"" \
   && echo "$l" | grep -q "\"sender\":{\"pid\":$pid," && echo "$l" | grep -q "\"path\":\"/t1\"" \
   && ! echo "$l" | grep -q "\"exit_after_ns\":null"; then
    result memcg_oom PASS "pid $pid $(echo "$l" | grep -o '"anon_rss_kb":[0-9]*')"
else
    result memcg_oom FAIL "pid $pid: $l"
fi
# Both tiers, the same kill: the records agree field for field, but for what each agent measured
# itself: its probes' own timestamps of the same tracepoint hit (the two agents' programs run one
# after the other, ~1 ms apart under emulation), its receipt latency, the usage it read after
# the kill, and how the constraint was decided (`oom_control` vs `reclaim_path`).
k=$(wait_line /tmp/agentk.out 60 "\"kind\":\"oom_memcg\",\"victim\":\\{\"pid\":$pid,")
norm() { echo "$1" | sed -E 's/"time":"[^"]*"//; s/"ktime_ns":[0-9]+//; s/"exit_after_ns":[0-9]+//; s/"seen_after_ns":[0-9]+//; s/"evidence":"[a-z_.]+"//; s/"usage_bytes":[0-9]+//'; }
if [ -n "$k" ] && [ "$(norm "$l")" = "$(norm "$k")" ] && echo "$k" | grep -q '"evidence":"oom_control"'; then
    result tiers_agree PASS "kprobe (oom_control) and tracepoint records identical"
else
    result tiers_agree FAIL "tracepoint: $l kprobe: $k"
fi

# 2. The OOM triggered by another process than the victim.
mkcg t2 64M
spawn t2 /memhog 40 --step-mib 4 --hold --oom-score-adj 1000 > /tmp/t2v.out
vpid=$!
wait_line /tmp/t2v.out 60 "^done" > /dev/null
spawn t2 /memhog 48 > /tmp/t2t.out
tpid=$!
wait $tpid
l=$(wait_line /tmp/agent.out 60 "\"victim\":\\{\"pid\":$vpid,")
if echo "$l" | grep -q "\"kind\":\"oom_memcg\"" && echo "$l" | grep -q "\"sender\":{\"pid\":$tpid,"; then
    result trigger_not_victim PASS "victim $vpid trigger $tpid"
else
    result trigger_not_victim FAIL "victim $vpid trigger $tpid: $l"
fi

# 3. kill -9 from another process: kind signal, exact sender.
mkcg t3 max
spawn t3 /memhog 4 --hold > /tmp/t3.out
pid=$!
wait_line /tmp/t3.out 60 "^done" > /dev/null
/bin/kill -9 $pid &
kpid=$!
wait $kpid
l=$(wait_line /tmp/agent.out 60 "\"victim\":\\{\"pid\":$pid,")
echo "RECORD kill_9 $l"
if echo "$l" | grep -q "\"kind\":\"signal\"" && echo "$l" | grep -q "\"sender\":{\"pid\":$kpid,\"tid\":$kpid,\"comm\":\"kill\",\"code\":\"SI_USER\"" \
   && echo "$l" | grep -q '"source":"rss_stat"'; then
    result kill_9 PASS "victim $pid sender $kpid $(echo "$l" | grep -o '"anon_rss_kb":[0-9]*'), source rss_stat"
else
    result kill_9 FAIL "victim $pid sender $kpid: $l"
fi

# 4. A burst of 60 OOM kills across 4 cgroups, reconciled with memory.events and /proc/vmstat.
before=$(grep '^oom_kill ' /proc/vmstat | cut -d' ' -f2)
pids=""
for c in 0 1 2 3; do
    mkcg b$c 16M
    for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
        spawn b$c /memhog 64 > /dev/null
        pids="$pids $!"
    done
done
for p in $pids; do wait $p; done
after=$(grep '^oom_kill ' /proc/vmstat | cut -d' ' -f2)
sleep 2
recorded=0; missing=""
for p in $pids; do
    if grep -q "\"kind\":\"oom_memcg\",\"victim\":{\"pid\":$p," /tmp/agent.out; then
        recorded=$((recorded + 1))
    else
        missing="$missing $p"
    fi
done
dups=$(grep -o '"victim":{"pid":[0-9]*' /tmp/agent.out | sort | uniq -d | wc -l)
events=0
for c in 0 1 2 3; do
    n=$(grep '^oom_kill ' $CG/b$c/memory.events | cut -d' ' -f2)
    events=$((events + n))
done
if [ $recorded -eq 60 ] && [ $((after - before)) -eq 60 ] && [ $events -eq 60 ] && [ $dups -eq 0 ]; then
    result burst_60 PASS "60 recorded, vmstat +$((after - before)), memory.events $events"
else
    result burst_60 FAIL "recorded $recorded vmstat +$((after - before)) memory.events $events dups $dups missing$missing"
fi

# 5. A group OOM kill (memory.oom.group): one record per killed process, the group marked.
mkcg g 48M
echo 1 > $CG/g/memory.oom.group
spawn g /memhog 8 --hold > /tmp/g1.out
g1=$!
spawn g /memhog 8 --hold > /tmp/g2.out
g2=$!
wait_line /tmp/g1.out 60 "^done" > /dev/null
wait_line /tmp/g2.out 60 "^done" > /dev/null
spawn g /memhog 64 > /dev/null
g3=$!
wait $g3
ok=0
for p in $g1 $g2 $g3; do
    l=$(wait_line /tmp/agent.out 30 "\"victim\":\\{\"pid\":$p,")
    if echo "$l" | grep -q "\"kind\":\"oom_memcg\"" && echo "$l" | grep -q "\"oom_group\":true"; then ok=$((ok + 1)); fi
done
if [ $ok -eq 3 ]; then
    result group_oom PASS "3 records, oom_group marked"
else
    result group_oom FAIL "$ok of 3 group-marked records"
fi
# The group's records (issue 16), both tiers: the group named, 3 killed, the allocating g3 the
# kernel's chosen victim, g1 and g2 members; the kernel's counters agree.
group_check /g /g "$g3" "$g1 $g2" 3 group_is_domain
# 6. cgroup v2 sampling and memory.events: a process named kubelet in a limited cgroup is
#    sampled from memory.current/memory.max; an OOM kill in a kubepods-layout pod cgroup shows up
#    as memory.events deltas.
mkcg k 64M
spawn k /kubelet 8 --hold > /tmp/k.out
kpid=$!
wait_line /tmp/k.out 60 "^done" > /dev/null
l=$(wait_line /tmp/agent.out 30 "\"event\":\"sample\".*\"pid\":$kpid,.*\"kubelet_cgroup\":\"/k\"")
if echo "$l" | grep -q '"kubelet_limit_bytes":67108864' && echo "$l" | grep -qE '"kubelet_cgroup_bytes":[1-9]'; then
    result v2_sampling PASS "kubelet $kpid in /k: memory.max and memory.current read"
else
    result v2_sampling FAIL "kubelet $kpid: $l"
fi
mkdir -p $CG/kubepods
echo "+memory" > $CG/kubepods/cgroup.subtree_control
mkdir -p $CG/kubepods/pod1234-abcd
echo 16M > $CG/kubepods/pod1234-abcd/memory.max
sleep 2
spawn kubepods/pod1234-abcd /memhog 64 > /dev/null
ppid=$!
wait $ppid
l=$(wait_line /tmp/agent.out 30 "\"event\":\"memcg\",\"time\":\"[^\"]*\",\"cgroup\":\"/kubepods/pod1234-abcd\",\"kind\":\"oom_kill\"")
r=$(grep "\"victim\":{\"pid\":$ppid," /tmp/agent.out | head -n 1)
if [ -n "$l" ] && echo "$r" | grep -q '"pod_uid":"1234-abcd"'; then
    result v2_memory_events PASS "oom_kill delta for the pod cgroup, kill record names the pod"
else
    result v2_memory_events FAIL "event: $l record: $r"
fi

# 7. The OOM domain of the kubelet's pod layouts (issue 11) on v2, by memory.events.local:
#    a one-container pod (container and pod with the same limit, a pause process holding 1 MiB
#    in a sibling): the pod's limit fires; a container with its own lower limit: it fires.
mkdir -p $CG/dp && echo 64M > $CG/dp/memory.max && echo "+memory" > $CG/dp/cgroup.subtree_control
mkcg dp/pause max
mkcg dp/ctr 64M
spawn dp/pause /memhog 1 --hold > /tmp/dpp.out
pause1=$!
wait_line /tmp/dpp.out 60 "^done" > /dev/null
spawn dp/ctr /memhog 128 > /dev/null
pid=$!
wait $pid
domain_check v2_domain_pod $pid /dp
mkdir -p $CG/dc && echo 64M > $CG/dc/memory.max && echo "+memory" > $CG/dc/cgroup.subtree_control
mkcg dc/ctr 32M
spawn dc/ctr /memhog 128 > /dev/null
pid=$!
wait $pid
domain_check v2_domain_container $pid /dc/ctr
kill $pause1

# 8. A group OOM kill with memory.oom.group set below the domain (issue 16): pod 192 MiB, a
#    pause process holding 1 MiB, a container (192 MiB, memory.oom.group 1) with an allocating
#    process and an idle one. The pod's limit fires; the kernel kills the container.
mkdir -p $CG/gp && echo 192M > $CG/gp/memory.max && echo "+memory" > $CG/gp/cgroup.subtree_control
mkcg gp/pause max
mkcg gp/ctr 192M
echo 1 > $CG/gp/ctr/memory.oom.group
spawn gp/pause /memhog 1 --hold > /tmp/gpp.out
pause2=$!
wait_line /tmp/gpp.out 60 "^done" > /dev/null
spawn gp/ctr /memhog 8 --hold > /tmp/gpi.out
idle=$!
wait_line /tmp/gpi.out 60 "^done" > /dev/null
spawn gp/ctr /memhog 256 > /dev/null
alloc=$!
wait $alloc
wait $idle
group_check /gp/ctr /gp "$alloc" "$idle" 2 group_below_domain
kill $pause2

# Every scenario above, seen by both tiers: the same set of kill records, field for field (but
# for each agent's own measurements, as in tiers_agree; a signal kill's memory is the kernel's
# rss_stat at the signal, read by both agents' raw tracepoints in the same signal_generate).
sleep 1
norm_all() {
    grep '"event":"kill"' "$1" | sed -E 's/"time":"[^"]*"//; s/"ktime_ns":[0-9]+//; s/"exit_after_ns":[0-9]+//; s/"seen_after_ns":[0-9]+//; s/"evidence":"[a-z_.]+"//; s/"usage_bytes":[0-9]+//' \
        | sort
}
norm_all /tmp/agent.out > /tmp/tp.norm
norm_all /tmp/agentk.out > /tmp/kp.norm
n=$(wc -l < /tmp/tp.norm)
if cmp -s /tmp/tp.norm /tmp/kp.norm && [ "$n" -ge 70 ]; then
    result all_scenarios_both_tiers PASS "$n kill records identical across tiers"
else
    result all_scenarios_both_tiers FAIL "tracepoint $n vs kprobe $(wc -l < /tmp/kp.norm) records; first difference: $(diff /tmp/tp.norm /tmp/kp.norm | grep "^[-+][^-+]" | head -n 2 | tr '\n' ' ' | cut -c1-1500)"
fi
# 9. Allocator attribution through uprobes, built for this guest's architecture: the Go
#    stand-in kubelet (runtime.sysMapOS..., Go's register ABI) and the C one (libc mmap, the C
#    ABI; its call site from the link register on arm64, the stack scan on x86-64). A third
#    agent watches them; the bytes its uprobes saw must be within 5% of the leak.
# kubelet_memory of pid $2 in $1 whose top call site holds at least $3 bytes (60 s), else the
# last one seen.
attribution() {
    i=0; l=""
    while [ $i -lt 600 ]; do
        l=$(grep "\"event\":\"kubelet_memory\",\"pid\":$2," $1 | tail -n 1)
        b=$(echo "$l" | grep -o '"top_call_sites":\[{"function":"[^"]*","bytes":[0-9]*' | grep -o '[0-9]*$')
        if [ -n "$b" ] && [ "$b" -ge "$3" ]; then break; fi
        sleep 0.1; i=$((i + 1))
    done
    echo "$l"
}
# |a - b| < 5% of b
within5() { d=$(($1 - $2)); [ $d -lt 0 ] && d=$((0 - d)); [ $((d * 100)) -lt $(($2 * 5)) ]; }
/oomprobe run --format json --no-metrics --state-dir /tmp/statea --kubelet-bin /go/kubelet --attribution-interval 1 > /tmp/agenta.out 2> /tmp/agenta.err &
apid=$!
if ! wait_line /tmp/agenta.err 120 "oomprobe ready" > /dev/null; then
    result alloc_agent_ready FAIL "$(tail -n 3 /tmp/agenta.err | tr '\n' ' ')"
fi
mkcg ka 512M
spawn ka /go/kubelet -total-mib 64 -interval-ms 2 -stats-ms 100000 > /tmp/ka.out
gpid=$!
d=$(wait_line /tmp/ka.out 120 '"done":true')
leaked=$(echo "$d" | grep -o '"leaked":[0-9]*' | cut -d: -f2)
l=$(attribution /tmp/agenta.out $gpid ${leaked:-1})
fn=$(echo "$l" | grep -o '"top_call_sites":\[{"function":"[^"]*"' | cut -d'"' -f6)
b=$(echo "$l" | grep -o '"top_call_sites":\[{"function":"[^"]*","bytes":[0-9]*' | grep -o '[0-9]*$')
hits=$(echo "$l" | grep -o '"by_entry_point":{[^}]*}')
# The bytes the heap-map uprobe read from Go's register ABI (runtime.sysMapOS's 2nd argument):
# what the runtime says it mapped for its heap (HeapSys), within -5%/+15% (as tests/kubelet.rs).
heap_sys=$(echo "$d" | grep -o '"heap_sys":[0-9]*' | cut -d: -f2)
hm=$(echo "$hits" | grep -o '"runtime.sysMapOS":[0-9]*' | cut -d: -f2)
if [ -n "$hm" ] && [ -n "$heap_sys" ] && [ "$heap_sys" -ge "${leaked:-0}" ] \
   && [ $((hm * 100)) -ge $((heap_sys * 95)) ] && [ $((hm * 100)) -le $((heap_sys * 115)) ]; then
    result alloc_go_bytes PASS "pid $gpid: runtime.sysMapOS uprobe $hm bytes, runtime HeapSys $heap_sys, leaked $leaked"
else
    result alloc_go_bytes FAIL "pid $gpid: runtime.sysMapOS $hm HeapSys $heap_sys leaked $leaked: $(echo "$l" | cut -c1-600)"
fi
# The call site: the user stack's first frame outside the runtime, the leak's bytes within 5%
# (on arm64 from the stack the eBPF program walks itself: probe_common::WalkedStack).
if [ "$(uname -m)" = aarch64 ] && grep 'feature unsupported on this architecture' /tmp/agenta.err | grep -q 'kubelet_go_call_sites'; then
    result alloc_go_call_site FAIL "pid $gpid: Go call sites said unsupported on aarch64: $(grep -i 'unsupported' /tmp/agenta.err | head -n 2 | cut -c1-300)"
elif [ "$leaked" = "67108864" ] && echo "$l" | grep -q '"mode":"uprobes"' && [ "$fn" = "main.leakPodCache" ] && within5 "${b:-0}" "$leaked"; then
    result alloc_go_call_site PASS "pid $gpid leaked $leaked, main.leakPodCache $b bytes, $hits"
else
    result alloc_go_call_site FAIL "pid $gpid leaked $leaked top $fn $b: $(echo "$l" | cut -c1-900) $(grep -iE 'warn|error' /tmp/agenta.err | head -n 3 | cut -c1-600)"
fi
kill $gpid 2> /dev/null
# The C stand-in is another file: an agent with --kubelet-bin follows only that file's
# processes, so the C part has its own agent, told the C stand-in's path.
kill $apid 2> /dev/null
wait $apid 2> /dev/null
/oomprobe run --format json --no-metrics --state-dir /tmp/statec --kubelet-bin /c/kubelet --attribution-interval 1 > /tmp/agentc.out 2> /tmp/agentc.err &
apid=$!
if ! wait_line /tmp/agentc.err 120 "oomprobe ready" > /dev/null; then
    result alloc_agent_ready FAIL "$(tail -n 3 /tmp/agentc.err | tr '\n' ' ')"
fi
mkcg kc 512M
spawn kc /c/kubelet -total-mib 32 -interval-ms 2 -delay-ms 0 > /tmp/kc.out
cpid=$!
d=$(wait_line /tmp/kc.out 120 '"done":true')
leaked=$(echo "$d" | grep -o '"leaked":[0-9]*' | cut -d: -f2)
# The C stand-in's whole leak is mapped_bytes (the gap before its libc uprobes attach is counted
# from the syscall tracepoints); the top call site holds what the mmap uprobe saw.
i=0
while [ $i -lt 600 ]; do
    l=$(grep "\"event\":\"kubelet_memory\",\"pid\":$cpid," /tmp/agentc.out | tail -n 1)
    m=$(echo "$l" | grep -o '"mapped_bytes":[0-9]*' | cut -d: -f2)
    if [ -n "$m" ] && [ -n "$leaked" ] && [ $((m * 100)) -ge $((leaked * 95)) ]; then break; fi
    sleep 0.1; i=$((i + 1))
done
fn=$(echo "$l" | grep -o '"top_call_sites":\[{"function":"[^"]*"' | cut -d'"' -f6)
mm=$(echo "$l" | grep -o '"by_entry_point":{[^}]*}' | grep -o '"mmap":[0-9]*' | cut -d: -f2)
if [ -n "$leaked" ] && echo "$l" | grep -q '"mode":"uprobes"' && [ "$fn" = "leak_pod_cache" ] && [ -n "$mm" ] && within5 "${m:-0}" "$leaked"; then
    result alloc_c PASS "pid $cpid leaked $leaked, mapped $m, libc mmap uprobe $mm, top leak_pod_cache"
else
    result alloc_c FAIL "pid $cpid leaked $leaked mapped $m top $fn mmap $mm: $(echo "$l" | cut -c1-900) $(grep -iE 'warn|error' /tmp/agentc.err | head -n 3 | cut -c1-600)"
fi
kill $cpid 2> /dev/null
kill $apid 2> /dev/null
wait $apid 2> /dev/null

# The node-wide ending: a real global OOM of the guest (tests/vm/node_oom.sh).
. /node_oom.sh
node_oom
echo "RESULT done PASS -"
