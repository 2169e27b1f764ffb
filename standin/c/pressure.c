/* A stand-in kubelet (built static, named kubelet) for the memory pressures a real kubelet can
 * meet without leaking. With -thrash-file PATH it reads a file through a mapping over and
 * over, one page at a time (as a kubelet faults in its own binary's text): under a memory
 * cgroup limit below the file's size, the kernel reclaims the pages it charged and the next
 * pass faults them back in (major faults), and nothing is ever OOM-killed. Otherwise it maps
 * -total-mib MiB of anonymous memory 1 MiB at a time, then calls munmap with a length of
 * SIZE_MAX -bad-munmap times (each fails with EINVAL, unmapping nothing), and prints what it
 * mapped as JSON lines. Kept apart from kubelet.c, whose code layout the arm64 attribution
 * test depends on. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int thrash(const char *path) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size == 0) {
        perror(path);
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

int main(int argc, char **argv) {
    const char *file = NULL;
    long total_mib = 16, bad_munmap = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-thrash-file")) file = argv[i + 1];
        if (!strcmp(argv[i], "-total-mib")) total_mib = atol(argv[i + 1]);
        if (!strcmp(argv[i], "-bad-munmap")) bad_munmap = atol(argv[i + 1]);
    }
    if (file) return thrash(file);
    size_t leaked = 0;
    void *first = NULL;
    printf("{\"pid\":%d,\"leaked\":0,\"done\":false}\n", getpid());
    fflush(stdout);
    for (long i = 0; i < total_mib; i++) {
        void *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) break;
        memset(p, 0xa5, 1 << 20);
        if (!first) first = p;
        leaked += 1 << 20;
        usleep(2000);
    }
    for (long i = 0; i < bad_munmap; i++) munmap(first, (size_t)-1);
    printf("{\"pid\":%d,\"leaked\":%zu,\"done\":true}\n", getpid(), leaked);
    fflush(stdout);
    for (;;) pause();
}
