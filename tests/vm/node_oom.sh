# The node-wide ending (issue 19), for real inside the VM guest (never on a host: a global OOM
# there hits whatever else runs on it; here it is the guest's memory): three workloads in pod
# cgroups holding 300 MiB each at oom_score_adj 0, and a process named kubelet at -999 (as the
# kubelet runs), without a memory limit of its own, growing until the node runs out. The agents
# and this shell sit at -1000. Sourced by scenarios.sh after the other scenarios (it uses its
# result/wait_line/spawn/norm helpers and the two agents it started: /tmp/agent.out is the
# tracepoint tier, /tmp/agentk.out the kprobe tier, both sampling every second).
#
# Asserted for each tier: the four kill records (oom_global, constraint global, oom_score_adj 0 /
# -999, the pod named, and sender = trigger = the task the kernel's own OOM report names as
# having invoked the OOM killer: mostly the kubelet, but whichever task allocated last on the
# exhausted node, the agent itself included), a pre_oom stage heading to node_memory written
# before the first kill, and the kubelet's active_oom listing the three workloads, by pod, as
# collateral it caused, each with its sender.

NODE_OOM_PODS="00000000-0000-4000-8000-00000000e001 00000000-0000-4000-8000-00000000e002 00000000-0000-4000-8000-00000000e003"

# The agents protect themselves: each must be at -1000 (it writes its own oom_score_adj at start).
node_oom_agents_protected() {
    n=0; bad=""
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = oomprobe ] || continue
        adj=$(cat "$d/oom_score_adj" 2>/dev/null)
        n=$((n + 1))
        [ "$adj" = -1000 ] || bad="$bad ${d#/proc/}:$adj"
    done
    if [ $n -eq 2 ] && [ -z "$bad" ]; then
        result node_oom_agents_protected PASS "2 agents at oom_score_adj -1000 (set by the agent itself)"
    else
        result node_oom_agents_protected FAIL "$n agents, not at -1000:$bad"
    fi
}

# Every user process left by earlier scenarios that the node OOM could pick (anything not at
# -1000 but init, this shell and the agents) is killed first, so the victims are exactly ours.
node_oom_sweep() {
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = 1 ] || [ "$p" = $$ ] && continue
        [ -n "$(tr -d '\0' < "$d/cmdline" 2>/dev/null)" ] || continue
        [ "$(cat "$d/comm" 2>/dev/null)" = oomprobe ] && continue
        [ "$(cat "$d/oom_score_adj" 2>/dev/null)" = -1000 ] && continue
        kill -9 "$p" 2>/dev/null
    done
}

# The task (thread id) and comm that invoked the OOM killer for victim $1, from the kernel's OOM
# reports in /tmp/nw-dmesg ("CPU: n [UID: u ]PID: tid Comm: comm" of the report's stack dump,
# then "Killed process pid").
node_oom_trigger() {
    awk -v v="$1" '$1 == "T" { t = $2 " " $3 } $1 == "V" && $2 == v { print t; exit }' /tmp/nw-dmesg
}

# The process (Tgid) of the trigger thread $1. A trigger that has exited since is one of this
# script's own forked subshells (seen on 6.12: the shell forking while the node had no memory
# left); a busybox subshell is single-threaded, so its tgid is its tid.
node_oom_tgid() {
    if [ -d /proc/$1 ]; then
        awk '/^Tgid:/ { print $2 }' /proc/$1/status 2>/dev/null
    else
        echo "$1"
    fi
}

# Checks one agent's stream: $1 file, $2 tier name, $3 kubelet pid, $4... workload pids.
node_oom_check() {
    f=$1; tier=$2; kp=$3; shift 3
    ok=1; why=""; by_kubelet=0; senders=""
    for wp in "$@"; do
        l=$(wait_line "$f" 60 "\"kind\":\"oom_global\",\"victim\":\\{\"pid\":$wp,")
        kt=$(node_oom_trigger $wp)
        ktid=${kt%% *}
        [ "$ktid" = "$kp" ] && by_kubelet=$((by_kubelet + 1))
        sp=$(echo "$l" | sed -E 's/.*"sender":\{"pid":([0-9]+),.*/\1/')
        senders="$senders $sp"
        # The trigger thread's process: the kubelet (single-threaded) or a live one's Tgid.
        if [ "$ktid" = "$kp" ]; then tg=$kp; else tg=$(node_oom_tgid "$ktid"); fi
        if [ -z "$kt" ] || [ -z "$tg" ] || [ "$sp" != "$tg" ] \
           || ! echo "$l" | grep -q "\"sender\":{\"pid\":$sp,\"tid\":$ktid,\"comm\":\"[^\"]*\",\"code\":\"SI_KERNEL\"" \
           || ! echo "$l" | grep -q "\"constraint\":\"global\",\"domain\":null,\"trigger_pid\":$sp,\"trigger_tid\":$ktid," \
           || ! echo "$l" | grep -q "\"oom_score_adj\":0," \
           || ! echo "$l" | grep -q "\"pod_uid\":\"00000000-0000-4000-8000-00000000e00"; then
            ok=0; why="$why workload $wp (kernel: trigger $kt, process $tg): $(echo "$l" | cut -c1-600)"
        fi
    done
    l=$(wait_line "$f" 60 "\"kind\":\"oom_global\",\"victim\":\\{\"pid\":$kp,")
    kt=$(node_oom_trigger $kp)
    ktid=${kt%% *}
    [ "$ktid" = "$kp" ] && by_kubelet=$((by_kubelet + 1))
    if [ "$ktid" = "$kp" ]; then tg=$kp; else tg=$(node_oom_tgid "$ktid"); fi
    if [ -z "$kt" ] || [ -z "$tg" ] || ! echo "$l" | grep -q "\"comm\":\"kubelet\",\"cgroup\":\"/kubelet.slice\"" \
       || ! echo "$l" | grep -q "\"sender\":{\"pid\":$tg,\"tid\":$ktid," \
       || ! echo "$l" | grep -q "\"constraint\":\"global\",\"domain\":null,\"trigger_pid\":$tg,\"trigger_tid\":$ktid," \
       || ! echo "$l" | grep -q "\"oom_score_adj\":-999,"; then
        ok=0; why="$why kubelet $kp (kernel: trigger $kt): $(echo "$l" | cut -c1-600)"
    fi
    if [ $ok -eq 1 ]; then
        result "node_oom_records_$tier" PASS "3 workloads then the kubelet: oom_global, oom_score_adj 0 and -999, sender = trigger = the kernel's ($by_kubelet of 4 invoked by the kubelet $kp, senders$senders)"
    else
        result "node_oom_records_$tier" FAIL "$why"
    fi

    # pre_oom (node_memory) written before the first kill.
    first_kill=$(grep -n "\"event\":\"kill\",.*\"kind\":\"oom_global\"" "$f" | head -n 1 | cut -d: -f1)
    pre=$(grep -n "\"event\":\"stage\",.*\"stage\":\"pre_oom\"" "$f" | head -n 1)
    pre_line=${pre%%:*}
    if [ -n "$pre" ] && [ -n "$first_kill" ] && [ "$pre_line" -lt "$first_kill" ] \
       && echo "$pre" | grep -q "\"previous\":\"steady\"" \
       && echo "$pre" | grep -q "\"ending\":\"node_memory\",\"seconds_left\":[0-9]"; then
        result "node_oom_pre_oom_$tier" PASS "line $pre_line before the first kill (line $first_kill): $(echo "$pre" | grep -o '"seconds_left":[0-9.]*'), $(echo "$pre" | grep -o '"detail":"node MemAvailable [0-9]* MiB')"
    else
        result "node_oom_pre_oom_$tier" FAIL "first kill line $first_kill; pre_oom: $(echo "$pre" | cut -c1-900)"
    fi

    # The kubelet's active_oom: the three workloads, by pod, as collateral it caused.
    a=$(wait_line "$f" 30 "\"event\":\"stage\",.*\"stage\":\"active_oom\"")
    caused=$(echo "$a" | sed -E 's/.*"collateral_caused":(\{.*\}),"collateral_caused_omitted".*/\1/')
    n=$(echo "$caused" | grep -o '"pid":[0-9]*' | wc -l)
    ok=1
    i=0
    for wp in "$@"; do
        i=$((i + 1))
        uid=$(echo $NODE_OOM_PODS | cut -d' ' -f$i)
        sp=$(echo $senders | cut -d' ' -f$i)
        echo "$caused" | grep -q "\"$uid\":\\[{\"pid\":$wp,\"comm\":\"memhog\",\"kind\":\"oom_global\",\"reason\":\"oom_killed\",[^]]*\"sender_pid\":$sp," || ok=0
    done
    if [ $ok -eq 1 ] && [ "$n" -eq 3 ] && echo "$a" | grep -q "\"ending\":\"node_memory\"" \
       && echo "$a" | grep -q "\"collateral\":{}"; then
        result "node_oom_collateral_$tier" PASS "active_oom ending node_memory, collateral_caused: 3 pods, their pids and senders"
    else
        result "node_oom_collateral_$tier" FAIL "$n caused: $(echo "$a" | cut -c1-1500)"
    fi
}

node_oom() {
    echo -1000 > /proc/$$/oom_score_adj
    node_oom_agents_protected
    node_oom_sweep
    mkdir -p $CG/kubepods/besteffort $CG/kubelet.slice
    echo "+memory" > $CG/kubepods/cgroup.subtree_control
    echo "+memory" > $CG/kubepods/besteffort/cgroup.subtree_control
    wpids=""
    for uid in $NODE_OOM_PODS; do
        mkdir -p $CG/kubepods/besteffort/pod$uid
        spawn kubepods/besteffort/pod$uid /memhog 300 --step-mib 16 --hold --oom-score-adj 0 > /tmp/nw-$uid.out
        wpids="$wpids $!"
    done
    for uid in $NODE_OOM_PODS; do
        if ! wait_line /tmp/nw-$uid.out 120 "^done" > /dev/null; then
            result node_oom_setup FAIL "workload in pod $uid did not reach 300 MiB: $(tail -n 1 /tmp/nw-$uid.out)"
            return
        fi
    done
    avail=$(grep MemAvailable /proc/meminfo | tr -s ' ' | cut -d' ' -f2)
    from=$(wc -l < /tmp/agent.out)
    # The kubelet: 40 MiB/s, no limit of its own (kubelet.slice has memory.max = max).
    spawn kubelet.slice /kubelet 4000 --step-mib 4 --interval-ms 100 --oom-score-adj -999 > /tmp/nw-kubelet.out
    kp=$!
    i=0
    while [ -d /proc/$kp ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
    if [ -d /proc/$kp ]; then
        kill -9 $kp
        result node_oom_setup FAIL "the kubelet was not OOM-killed within 180 s: $(tail -n 1 /tmp/nw-kubelet.out)"
        return
    fi
    dmesg | sed -nE 's/.*CPU: [0-9]+ (UID: [0-9]+ )?PID: ([0-9]+) Comm: ([^ ]+).*/T \2 \3/p; s/.*Killed process ([0-9]+) .*/V \1/p' > /tmp/nw-dmesg
    result node_oom_setup PASS "MemAvailable $((avail / 1024)) MiB with 3x300 MiB held; the kubelet reached $(($(grep -o '^held [0-9]*' /tmp/nw-kubelet.out | tail -n 1 | cut -d' ' -f2) / 1024)) MiB"
    # shellcheck disable=SC2086
    node_oom_check /tmp/agent.out tp $kp $wpids
    # shellcheck disable=SC2086
    node_oom_check /tmp/agentk.out kprobe $kp $wpids
    # The same four records from both tiers, field for field (but for each agent's own
    # measurements, as in tiers_agree).
    same=0
    for p in $wpids $kp; do
        a=$(grep "\"victim\":{\"pid\":$p," /tmp/agent.out | head -n 1)
        b=$(grep "\"victim\":{\"pid\":$p," /tmp/agentk.out | head -n 1)
        [ -n "$a" ] && [ "$(norm "$a")" = "$(norm "$b")" ] && same=$((same + 1))
    done
    if [ $same -eq 4 ]; then
        result node_oom_tiers_agree PASS "4 records identical across tiers"
    else
        result node_oom_tiers_agree FAIL "$same of 4 records identical"
    fi
    # The tracepoint agent's samples, kill records and stages from the kubelet's start on, for
    # the host to keep (target/vm/run-KERNEL/results.log): the stage machine's unit test replays
    # them (agent/src/cycle/testdata/).
    tail -n +$((from + 1)) /tmp/agent.out | grep -E '^\{"event":"(sample|kill|stage)"' | sed 's/^/RECORD /'
    for uid in $NODE_OOM_PODS; do rmdir $CG/kubepods/besteffort/pod$uid 2>/dev/null; done
}
