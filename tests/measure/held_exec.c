/* held_exec PROGRAM [ARGS...]: execs PROGRAM stopped at its first instruction (PTRACE_TRACEME,
 * so the kernel stops it with SIGTRAP right after execve) and holds it there until stdin closes
 * or a line is read, then kills it. The agent sees a kubelet exec and adopts it while it is
 * stopped, which is all the adoption measurement needs from a binary that would otherwise exit
 * at once. */
#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: held_exec PROGRAM [ARGS...]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        execv(argv[1], argv + 1);
        perror("execv");
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFSTOPPED(status)) {
        fprintf(stderr, "held_exec: %s did not stop after exec\n", argv[1]);
        return 1;
    }
    printf("%d\n", pid);
    fflush(stdout);
    char line[16];
    (void)!fgets(line, sizeof line, stdin);
    kill(pid, SIGKILL);
    ptrace(PTRACE_DETACH, pid, 0, 0);
    waitpid(pid, &status, 0);
    return 0;
}
