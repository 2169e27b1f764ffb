// A Go stand-in kubelet: grows its heap by a known amount at a known rate through one call
// site (main.leakPodCache), the way a leaking kubelet grows, and prints what its runtime
// obtained from the OS so tests can compare.
//
// usage: kubelet [-chunk-kib N] [-interval-ms N] [-total-mib N] [-stats-ms N] [-loop N]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"
)

var retained [][]byte

//go:noinline
func leakPodCache(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

type stats struct {
	Pid          int    `json:"pid"`
	Leaked       uint64 `json:"leaked"`
	Sys          uint64 `json:"sys"`
	HeapSys      uint64 `json:"heap_sys"`
	HeapReleased uint64 `json:"heap_released"`
	StackSys     uint64 `json:"stack_sys"`
	Done         bool   `json:"done"`
}

func report(leaked uint64, done bool) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	b, _ := json.Marshal(stats{os.Getpid(), leaked, m.Sys, m.HeapSys, m.HeapReleased, m.StackSys, done})
	fmt.Println(string(b))
}

func main() {
	chunk := flag.Int("chunk-kib", 256, "bytes leaked per step, KiB")
	interval := flag.Int("interval-ms", 10, "pause between steps")
	total := flag.Int("total-mib", 0, "stop leaking after this much (0: never), then idle")
	statsMs := flag.Int("stats-ms", 1000, "print runtime stats this often")
	loop := flag.Int("loop", 0, "benchmark: allocate and drop this many 64 KiB buffers, print ns/op, exit")
	flag.Parse()

	if *loop > 0 {
		start := time.Now()
		var keep []byte
		for i := 0; i < *loop; i++ {
			keep = make([]byte, 64<<10)
			keep[0] = byte(i)
		}
		_ = keep
		fmt.Printf("{\"ns_per_op\":%d}\n", time.Since(start).Nanoseconds()/int64(*loop))
		return
	}

	var leaked uint64
	last := time.Now()
	report(0, false)
	for {
		if *total == 0 || leaked < uint64(*total)<<20 {
			retained = append(retained, leakPodCache(*chunk<<10))
			leaked += uint64(*chunk) << 10
			if *total != 0 && leaked >= uint64(*total)<<20 {
				report(leaked, true)
			}
		}
		if time.Since(last) >= time.Duration(*statsMs)*time.Millisecond {
			report(leaked, false)
			last = time.Now()
		}
		time.Sleep(time.Duration(*interval) * time.Millisecond)
	}
}
