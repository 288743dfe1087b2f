"""The language tests' own program (LANG_C) and helpers: its functions are what value, filter,
nesting, two-point and runqlat tests probe, driven line by line (tests.support.Target). The
fixtures `lang_binary` and `lang` are in conftest.py."""

from tests.support import status

LANG_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Functions the tests probe: noinline + an asm barrier keep each a real call. */
__attribute__((noinline)) long lang_value(long a, long b, long c) { asm volatile(""); return b; }
__attribute__((noinline)) int lang_int(int a) { asm volatile(""); return a; }
__attribute__((noinline)) void lang_begin(long id) { asm volatile(""); }
__attribute__((noinline)) void lang_end(long id) { asm volatile(""); }
/* Calls itself `depth` times: depth + 1 nested calls; the barrier after the call keeps it a real
 * (non-tail) recursion. */
__attribute__((noinline, noipa)) long lang_nest(long depth) {
    long r = 0;
    if (depth > 0) r = lang_nest(depth - 1) + 1;
    asm volatile("" : "+r"(r));
    return r;
}

/* Commands on stdin, one per line, answered "done":
 *   value N START STEP   lang_value(i, START + i * STEP, i % 3) for i < N (returns its second argument)
 *   int N START          lang_int(START + i) for i < N
 *   read N SIZE          N reads of SIZE bytes from /dev/zero
 *   nest N DEPTH         N calls of lang_nest(DEPTH): DEPTH + 1 nested calls each
 *   begin N BASE / end N BASE   lang_begin(BASE + i) / lang_end(BASE + i) for i < N
 *   pair N US            lang_begin(i), usleep(US), lang_end(i) for i < N
 *   wait N               N one-byte reads of stdin (the test wakes it N times)
 *   open N NOTDIR        N opens that fail: ENOENT, or ENOTDIR if NOTDIR is not 0 */
int main(void) {
    char line[128], cmd[16];
    long n, a, b;
    static char buf[1 << 16];
    int zero = open("/dev/zero", O_RDONLY);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof(line), stdin)) {
        a = b = 0;
        if (sscanf(line, "%15s %ld %ld %ld", cmd, &n, &a, &b) < 2) break;
        for (long i = 0; i < n; i++) {
            if (!strcmp(cmd, "value")) lang_value(i, a + i * b, i % 3);
            else if (!strcmp(cmd, "int")) lang_int((int)(a + i));
            else if (!strcmp(cmd, "nest")) lang_nest(a);
            else if (!strcmp(cmd, "begin")) lang_begin(a + i);
            else if (!strcmp(cmd, "end")) lang_end(a + i);
            else if (!strcmp(cmd, "pair")) { lang_begin(i); usleep(a); lang_end(i); }
            else if (!strcmp(cmd, "wait")) { char c; if (read(0, &c, 1) != 1) break; }
            else if (!strcmp(cmd, "read")) read(zero, buf, a);
            else if (!strcmp(cmd, "open")) open(a ? "/etc/passwd/x" : "/nonexistent-probeset", O_RDONLY);
        }
        printf("done\n");
    }
    return 0;
}
"""


def one_series(prog, probe):
    rp = next(r for r in prog.resolved if r.probe.name == probe)
    assert status(prog, probe).error is None, status(prog, probe).error
    (series,) = prog.read_series()[rp.id]
    return series


def missed(prog, probe, reason):
    rp = next(r for r in prog.resolved if r.probe.name == probe)
    return prog.read_missed()[(rp.id, reason)]


def example_for(path: str, pid: int):
    """The one ProbeSet of an example file, every probe limited to process `pid`."""
    import dataclasses

    import yaml

    from probeset_api.spec import parse_probeset
    with open(path) as f:
        pset = parse_probeset(yaml.safe_load(f))
    pset.probes[:] = [dataclasses.replace(p, pid=pid) for p in pset.probes]
    return pset
