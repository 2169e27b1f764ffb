/* A C stand-in kubelet: leaks through libc malloc (chunks above the mmap threshold, so each is
 * an mmap), at a known rate, to a known total; prints what it leaked as JSON lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void *retained[65536];

__attribute__((noinline)) static void *leak_pod_cache(size_t n) {
    char *p = malloc(n);
    if (p) memset(p, 0xa5, n);
    return p;
}

int main(int argc, char **argv) {
    size_t chunk = 256 << 10, total = 32u << 20, leaked = 0;
    int interval_ms = 10, n = 0, delay_ms = 0;
    long mmap_loop = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-chunk-kib")) chunk = (size_t)atol(argv[i + 1]) << 10;
        if (!strcmp(argv[i], "-total-mib")) total = (size_t)atol(argv[i + 1]) << 20;
        if (!strcmp(argv[i], "-interval-ms")) interval_ms = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "-delay-ms")) delay_ms = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "-mmap-loop")) mmap_loop = atol(argv[i + 1]);
    }
    /* Start-up before the leak, as a kubelet initializes before it grows. */
    usleep(delay_ms * 1000);
    if (mmap_loop > 0) {
        /* Benchmark: every iteration is one mmap and one munmap through libc (two probe hits). */
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < mmap_loop; i++) {
            void *p = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p != MAP_FAILED) munmap(p, 65536);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        long ns = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
        printf("{\"ns_per_op\":%ld}\n", ns / mmap_loop);
        return 0;
    }
    printf("{\"pid\":%d,\"leaked\":0,\"done\":false}\n", getpid());
    fflush(stdout);
    while (leaked < total && n < 65536) {
        retained[n++] = leak_pod_cache(chunk);
        leaked += chunk;
        usleep(interval_ms * 1000);
    }
    printf("{\"pid\":%d,\"leaked\":%zu,\"done\":true}\n", getpid(), leaked);
    fflush(stdout);
    for (;;) pause();
}
