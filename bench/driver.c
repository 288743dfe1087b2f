/* Load generator for the probeset benchmarks (built by bench/common.py with gcc -O2).
 *
 *   driver call N      call bench_target(i) for i = 0..N-1; print wall ns per call
 *   driver call_xol N  the same with bench_target_xol
 *   driver call_cet N  the same with bench_target_cet (as built with -fcf-protection: endbr64 first)
 *   driver call_sub N  the same with bench_target_sub (`sub $8,%rsp` first, then a call)
 *   driver call_nop5 N the same with bench_target_nop5 (a 5-byte NOP first, then bench_target's body)
 *   driver getppid N   syscall(SYS_getppid) N times; print wall ns per call
 *   driver rename N    prctl(PR_SET_NAME) N times (tracepoint task:task_rename, also a raw tracepoint)
 *   driver call8 N     call bench_glob_<i % 8>(i): 8 functions with bench_target's body (a glob's uprobes)
 *   driver paced N R   call bench_target N times at R calls per second (sleeping when ahead)
 *   driver values N K  call bench_value(i, v) K times for each i = 0..N-1, v spread from 1,000 to
 *                      ~2,000,000 (10 powers of two, every sub-bucket): spread histograms
 *
 * `driver call K` is also the series generator of the scrape benchmark: K distinct arg0 values.
 *
 * bench_target is written in assembly so its first instruction is fixed: `push %rbp`, the usual
 * frame-pointer prologue, which x86 uprobes emulate. gcc -O2 would emit `lea 1(%rdi),%rax` first,
 * which the kernel must single-step out of line (XOL): several times the cost per hit, which would
 * bury the BPF program's cost in trap cost. bench_target_xol is that case, for comparison
 * (bench/overhead.py --xol; numbers in docs/benchmarks.md). bench_target_cet is bench_target as
 * gcc -fcf-protection (Ubuntu's, Fedora's, RHEL's default) builds it: `endbr64` first, which the
 * kernel single-steps; the agent probes it past that (bench/overhead.py --cet). bench_target_sub is
 * how gcc -O2 without frame pointers begins a function that calls another: `sub $8,%rsp`
 * (single-stepped), then the call (emulated), where the agent counts (bench/overhead.py --sub).
 * bench_target_nop5 starts with the 5-byte NOP that Linux >= 6.18 turns a uprobe on into a call of
 * a trampoline and a `uprobe` syscall instead of the int3 trap (bench/uprobe_classes.py).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

long bench_target(long x);
long bench_target_xol(long x);
long bench_target_cet(long x);
long bench_target_sub(long x);
long bench_target_nop5(long x);
asm(".text\n"
    ".globl bench_target\n"
    ".type bench_target, @function\n"
    "bench_target:\n"
    "    push %rbp\n"
    "    mov %rsp, %rbp\n"
    "    lea 1(%rdi), %rax\n"
    "    pop %rbp\n"
    "    ret\n"
    ".size bench_target, .-bench_target\n"
    ".globl bench_target_cet\n"
    ".type bench_target_cet, @function\n"
    "bench_target_cet:\n"
    "    endbr64\n"
    "    push %rbp\n"
    "    mov %rsp, %rbp\n"
    "    lea 1(%rdi), %rax\n"
    "    pop %rbp\n"
    "    ret\n"
    ".size bench_target_cet, .-bench_target_cet\n"
    ".globl bench_leaf\n"
    ".type bench_leaf, @function\n"
    "bench_leaf:\n"
    "    lea 1(%rdi), %rax\n"
    "    ret\n"
    ".size bench_leaf, .-bench_leaf\n"
    ".globl bench_target_sub\n"
    ".type bench_target_sub, @function\n"
    "bench_target_sub:\n"
    "    sub $8, %rsp\n"
    "    call bench_leaf\n"
    "    add $8, %rsp\n"
    "    ret\n"
    ".size bench_target_sub, .-bench_target_sub\n"
    ".globl bench_target_nop5\n"
    ".type bench_target_nop5, @function\n"
    "bench_target_nop5:\n"
    "    .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n"
    "    push %rbp\n"
    "    mov %rsp, %rbp\n"
    "    lea 1(%rdi), %rax\n"
    "    pop %rbp\n"
    "    ret\n"
    ".size bench_target_nop5, .-bench_target_nop5\n"
    ".globl bench_target_xol\n"
    ".type bench_target_xol, @function\n"
    "bench_target_xol:\n"
    "    lea 1(%rdi), %rax\n"
    "    ret\n"
    ".size bench_target_xol, .-bench_target_xol\n"
#define GLOB(i) ".globl bench_glob_" #i "\n.type bench_glob_" #i ", @function\nbench_glob_" #i ":\n" \
    "    push %rbp\n    mov %rsp, %rbp\n    lea 1(%rdi), %rax\n    pop %rbp\n    ret\n" \
    ".size bench_glob_" #i ", .-bench_glob_" #i "\n"
    GLOB(0) GLOB(1) GLOB(2) GLOB(3) GLOB(4) GLOB(5) GLOB(6) GLOB(7));
long bench_glob_0(long), bench_glob_1(long), bench_glob_2(long), bench_glob_3(long),
     bench_glob_4(long), bench_glob_5(long), bench_glob_6(long), bench_glob_7(long);
static long (*const globs[8])(long) = {bench_glob_0, bench_glob_1, bench_glob_2, bench_glob_3,
                                       bench_glob_4, bench_glob_5, bench_glob_6, bench_glob_7};

__attribute__((noinline)) long bench_value(long series, long value)
{
    __asm__ volatile("" ::: "memory");
    return series + value;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && (!strcmp(argv[1], "paced") || !strcmp(argv[1], "values")))) {
        fprintf(stderr, "usage: %s call|call_xol|call_cet|call_sub|call_nop5|getppid|rename|call8 N | paced N RATE"
                        " | values N K\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]);
    volatile long sink = 0;
    double t0 = now_ns();
    if (!strcmp(argv[1], "call")) {
        for (long i = 0; i < n; i++)
            sink += bench_target(i);
    } else if (!strcmp(argv[1], "call_xol")) {
        for (long i = 0; i < n; i++)
            sink += bench_target_xol(i);
    } else if (!strcmp(argv[1], "call_cet")) {
        for (long i = 0; i < n; i++)
            sink += bench_target_cet(i);
    } else if (!strcmp(argv[1], "call_sub")) {
        for (long i = 0; i < n; i++)
            sink += bench_target_sub(i);
    } else if (!strcmp(argv[1], "call_nop5")) {
        for (long i = 0; i < n; i++)
            sink += bench_target_nop5(i);
    } else if (!strcmp(argv[1], "getppid")) {
        for (long i = 0; i < n; i++)
            sink += syscall(SYS_getppid);
    } else if (!strcmp(argv[1], "rename")) {
        for (long i = 0; i < n; i++)
            sink += prctl(PR_SET_NAME, "bench-driver");
    } else if (!strcmp(argv[1], "call8")) {
        for (long i = 0; i < n; i++)
            sink += globs[i & 7](i);
    } else if (!strcmp(argv[1], "paced")) {
        double rate = atof(argv[3]);
        for (long i = 0; i < n; i++) {
            sink += bench_target(i);
            if ((i & 63) == 0) {
                double ahead = t0 + i * 1e9 / rate - now_ns();
                if (ahead > 1e5) {
                    struct timespec ts = {(time_t)(ahead / 1e9), (long)((long long)ahead % 1000000000LL)};
                    nanosleep(&ts, NULL);
                }
            }
        }
    } else if (!strcmp(argv[1], "values")) {
        long k = atol(argv[3]);
        for (long i = 0; i < n; i++)
            for (long j = 0; j < k; j++)
                sink += bench_value(i, (1000 + (j * 7919) % 1000) << (j % 10));
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    printf("%.3f\n", (now_ns() - t0) / n);
    return 0;
}
