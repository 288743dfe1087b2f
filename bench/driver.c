/* Load generator for the probeset benchmarks (compiled by bench/common.py).
 *
 *   driver call N       call bench_target() N times; print ns per call
 *   driver getppid N    syscall(SYS_getppid) N times; print ns per call
 *   driver distinct K   call bench_target(0..K-1) once each (K distinct arg0 values)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

__attribute__((noinline)) long bench_target(long x)
{
    asm volatile("" ::: "memory");   /* keep the call and the function body */
    return x + 1;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s call|getppid|distinct N\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]);
    volatile long sink = 0;
    double t0 = now_ns();
    if (!strcmp(argv[1], "call") || !strcmp(argv[1], "distinct")) {
        for (long i = 0; i < n; i++)
            sink += bench_target(i);
    } else if (!strcmp(argv[1], "getppid")) {
        for (long i = 0; i < n; i++)
            sink += syscall(SYS_getppid);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    printf("%.3f\n", (now_ns() - t0) / n);
    return 0;
}
