/* A C stand-in kubelet: leaks through libc malloc (chunks above the mmap threshold, so each is
 * an mmap), at a known rate, to a known total; prints what it leaked as JSON lines. With
 * -thrash-file PATH it instead reads a file through a mapping over and over, one page at a time
 * (as a kubelet faults in its own binary's text): under a memory cgroup limit below the file's
 * size, the kernel reclaims the pages it charged and the next pass faults them back in (major
 * faults), and nothing is ever OOM-killed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/stat.h>
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
    const char *thrash = NULL;
    int bad_munmap = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-chunk-kib")) chunk = (size_t)atol(argv[i + 1]) << 10;
        if (!strcmp(argv[i], "-total-mib")) total = (size_t)atol(argv[i + 1]) << 20;
        if (!strcmp(argv[i], "-interval-ms")) interval_ms = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "-delay-ms")) delay_ms = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "-mmap-loop")) mmap_loop = atol(argv[i + 1]);
        if (!strcmp(argv[i], "-thrash-file")) thrash = argv[i + 1];
        if (!strcmp(argv[i], "-bad-munmap")) bad_munmap = atoi(argv[i + 1]);
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
    if (thrash) {
        int fd = open(thrash, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || st.st_size == 0) {
            perror(thrash);
            return 1;
        }
        /* The file's pages out of the page cache: each is charged to this process's memory
         * cgroup when it first faults it in, not to whoever wrote the file. */
        fsync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        volatile unsigned char *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        /* No readahead: one major fault per page read back. */
        madvise((void *)p, st.st_size, MADV_RANDOM);
        long page = sysconf(_SC_PAGESIZE);
        printf("{\"pid\":%d,\"thrash_bytes\":%lld}\n", getpid(), (long long)st.st_size);
        fflush(stdout);
        unsigned long sum = 0;
        for (;;)
            for (off_t o = 0; o < st.st_size; o += page) sum += p[o];
    }
    printf("{\"pid\":%d,\"leaked\":0,\"done\":false}\n", getpid());
    fflush(stdout);
    while (leaked < total && n < 65536) {
        retained[n++] = leak_pod_cache(chunk);
        leaked += chunk;
        usleep(interval_ms * 1000);
    }
    /* Hostile lengths: munmap of SIZE_MAX bytes fails with EINVAL and unmaps nothing. */
    for (int i = 0; i < bad_munmap; i++) munmap(retained[0], (size_t)-1);
    printf("{\"pid\":%d,\"leaked\":%zu,\"done\":true}\n", getpid(), leaked);
    fflush(stdout);
    for (;;) pause();
}
