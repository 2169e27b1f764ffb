module oomprobe/standin

go 1.19
