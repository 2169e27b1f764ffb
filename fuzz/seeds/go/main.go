// A tiny Go program whose stripped binary seeds the elf_symbols fuzz target: a real go1.26
// ELF with a .gopclntab, Go module data and the runtime's mmap functions.
package main

import "os"

func main() {
	b := make([]byte, 1<<20)
	os.Stdout.Write(b[:1])
}
