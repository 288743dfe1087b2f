/* The cluster tier's workload: a process that makes exactly N calls of one libc function each time
 * it is told to, and says when it has. It lives in the workload image (tests/cluster/build-images),
 * dynamically linked against that image's own copy of libc, so a uprobe on the container's libc
 * sees its calls and a uprobe on the host's libc does not.
 *
 *   workload [CALLS [FUNCTION]]     CALLS default 1000; FUNCTION one of
 *     open          open("/dev/null", O_RDONLY) + close: CALLS calls of libc's open, and CALLS
 *                   openat syscalls (tracepoint syscalls:sys_enter_openat) (default)
 *     getpid        getpid(): CALLS calls of libc's getpid and CALLS getpid syscalls
 *     getaddrinfo   getaddrinfo("127.0.0.1", AI_NUMERICHOST) + freeaddrinfo: CALLS calls, no
 *                   name service, no file, no network traffic
 *
 * It prints "ready pid P calls N function F" and then waits. Each SIGUSR1 makes one round of CALLS
 * calls, after which it prints "done R N F" (round R, counting from 1). Nothing else in the process
 * calls the function between rounds. SIGTERM or SIGINT end it (exit 0): as PID 1 of a container it
 * must handle them itself, the kernel ignores unhandled signals sent to a namespace's init.
 * Lines go to stdout unbuffered: the kubelet's container log shows them at once. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t pending, stopping;

static void on_usr1(int sig) { (void)sig; pending++; }
static void on_term(int sig) { (void)sig; stopping = 1; }

static int call_open(void) {
    int fd = open("/dev/null", O_RDONLY);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

static int call_getpid(void) { return getpid() > 0 ? 0 : -1; }

static int call_getaddrinfo(void) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST;
    hints.ai_family = AF_INET;
    if (getaddrinfo("127.0.0.1", NULL, &hints, &res) != 0) return -1;
    freeaddrinfo(res);
    return 0;
}

int main(int argc, char **argv) {
    long calls = argc > 1 ? strtol(argv[1], NULL, 10) : 1000;
    const char *function = argc > 2 ? argv[2] : "open";
    int (*call)(void);
    if (!strcmp(function, "open")) call = call_open;
    else if (!strcmp(function, "getpid")) call = call_getpid;
    else if (!strcmp(function, "getaddrinfo")) call = call_getaddrinfo;
    else {
        fprintf(stderr, "workload: unknown function %s (open, getpid, getaddrinfo)\n", function);
        return 2;
    }
    if (calls < 0) {
        fprintf(stderr, "workload: CALLS must be >= 0\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);

    /* Signals stay blocked except inside sigsuspend: none is lost between the check and the wait. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    printf("ready pid %d calls %ld function %s\n", (int)getpid(), calls, function);
    long round = 0;
    for (;;) {
        while (!pending && !stopping) sigsuspend(&waiting);
        if (stopping) break;
        pending--;
        long failed = 0;
        for (long i = 0; i < calls; i++) failed += call() != 0;
        round++;
        if (failed) printf("failed %ld %ld of %ld %s\n", round, failed, calls, function);
        printf("done %ld %ld %s\n", round, calls, function);
    }
    printf("exit after %ld rounds\n", round);
    return 0;
}
