module oomprobe.invalid/fuzzseed

go 1.19
