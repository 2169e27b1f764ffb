// Command etcd is the lab's etcd server: upstream's etcdmain at the version pinned in go.mod
// (`cargo xtask lab up` builds it; Debian's etcd-server is 3.4, older than Kubernetes 1.34 supports).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
