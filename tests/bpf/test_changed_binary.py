"""A probed file that changes is never probed blind: replaced by rename (install), the uprobe
follows the path and counts the new file's processes; written in place, the uprobe is placed again
(the kernel would otherwise replay the instruction it saved from the old content) and the hazard is
reported. Exact counts and results before and after."""

import os
import shutil
import subprocess

import pytest

from tests.support import counts, status

# f's first instruction holds ADD (lea ADD(%rdi),%eax): two builds differ in that instruction only.
SOURCE = r"""
#include <stdio.h>
__attribute__((noinline)) int probeset_file_f(int x) { asm volatile(""); return x + ADD; }
int main(void) {
    long n, sum;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (scanf("%ld", &n) == 1) {
        sum = 0;
        for (long i = 0; i < n; i++) sum += probeset_file_f(1);
        printf("%ld\n", sum);
    }
    return 0;
}
"""


class Runner:
    def __init__(self, path):
        self.proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def call(self, n: int) -> int:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def builds(build_c):
    one, two = build_c("file_add1", SOURCE, "-DADD=1"), build_c("file_add2", SOURCE, "-DADD=2")
    nm = {p: subprocess.run(["nm", p], capture_output=True, text=True, check=True).stdout for p in (one, two)}
    address = {p: next(line.split()[0] for line in nm[p].splitlines() if line.endswith(" probeset_file_f"))
               for p in (one, two)}
    if address[one] != address[two]:
        pytest.skip("the two builds place probeset_file_f differently; the in-place case needs equal layouts")
    return one, two


def test_replaced_file_is_followed(builds, tmp_path, run_probeset):
    one, two = builds
    path = str(tmp_path / "app")
    shutil.copy(one, path)
    prog = run_probeset([{"name": "f", "uprobe": f"{path}:probeset_file_f"}])
    old = Runner(path)
    assert old.call(5) == 10
    subprocess.run(["install", "-m", "755", two, path], check=True)      # a new file, renamed over the old
    new = Runner(path)
    assert new.call(7) == 21
    assert counts(prog, "f") == {"probeset_file_f": 5}                  # blind: the new file is not probed
    prog.refresh()
    (point,) = prog.user_points()
    assert prog.copies(point) == 2                                      # the new file, and the old one still running
    assert new.call(7) == 21 and old.call(3) == 6
    assert counts(prog, "f") == {"probeset_file_f": 5 + 7 + 3}
    text = prog.snapshot()
    reattached = {s.labels["reason"]: s.value for s in text.reattached}
    assert reattached == {"replaced": 1, "modified": 0}
    assert status(prog, "f").error is None
    # The new file is then written in place (no process runs it: Linux refuses writes to a running
    # executable): probed afresh, and the old file, still run, keeps its uprobe.
    new.close()
    with open(one, "rb") as src, open(path, "r+b") as dst:
        dst.write(src.read())
        dst.truncate()
    prog.refresh()
    assert prog.copies(point) == 2
    assert old.call(2) == 4
    assert counts(prog, "f") == {"probeset_file_f": 5 + 7 + 3 + 2}
    old.close()


def test_file_written_in_place_is_probed_again_and_reported(builds, tmp_path, run_probeset):
    one, two = builds
    path = str(tmp_path / "app")
    shutil.copy(one, path)
    inode = os.stat(path).st_ino
    prog = run_probeset([{"name": "f", "uprobe": f"{path}:probeset_file_f"}])
    first = Runner(path)
    assert first.call(100) == 200
    first.close()
    with open(two, "rb") as src, open(path, "r+b") as dst:              # cp onto the same inode
        dst.write(src.read())
        dst.truncate()
    assert os.stat(path).st_ino == inode
    blind = Runner(path)
    wrong = blind.call(100)
    blind.close()
    prog.refresh()
    fixed = Runner(path)
    assert fixed.call(100) == 300                                       # the new code, probed right
    fixed.close()
    assert counts(prog, "f") == {"probeset_file_f": 300}
    # Without the re-placement the kernel replayed the old instruction: the reported hazard.
    assert wrong == 200, "the kernel replays the instruction saved from the old file (x + 1)"
    error = status(prog, "f").error
    assert error.startswith(f"{path} was written in place while probed") and "replace probed files by rename" in error
    reattached = {s.labels["reason"]: s.value for s in prog.snapshot().reattached}
    assert reattached == {"replaced": 0, "modified": 1}
