"""Kernel-VM tier: tests marked ``kernel_vm`` (kept under tests/vm/) run inside a QEMU guest with
Debian's stock kernel, which has what this host's kernel lacks (kprobes, fentry).

On the host, the selected kernel_vm tests are replaced by stand-ins. The first stand-in to run
boots ONE guest (tests/vm/run-in-vm) that runs all of them with pytest; each stand-in then
reports its test's guest outcome: passed, failed (with the guest's traceback), skipped or
xfailed. In the guest (PROBESET_IN_VM=1) the tests run normally and this file writes each
report to $PROBESET_VM_REPORT for the host to read. Without QEMU, the guest kernel or its
initramfs, the tests are skipped with a reason saying what to install (tests/vm/setup).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

RUN_IN_VM = Path(__file__).with_name("run-in-vm")
IN_VM = os.environ.get("PROBESET_IN_VM") == "1"
# How much of the guest's own output a failure message quotes when the guest gave no result.
OUTPUT_TAIL_CHARS = 6000


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "kernel_vm: runs inside a QEMU guest with a stock Debian kernel (tests/vm/run-in-vm)")


# ---- in the guest: record every test report for the host ----

def pytest_runtest_logreport(report):
    path = os.environ.get("PROBESET_VM_REPORT") if IN_VM else None
    if not path:
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        text = report.longrepr[2].removeprefix("Skipped: ")  # (file, line, "Skipped: reason")
    else:
        text = report.longreprtext
    record = {
        "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "text": text,
        "wasxfail": getattr(report, "wasxfail", None),
        "sections": [[title, content] for title, content in report.sections],
    }
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---- on the host: run the selected kernel_vm tests in one guest ----

def vm_unavailable_reason():
    """Why no guest can be started here, or None."""
    if os.geteuid() != 0:
        return "kernel VM tests need root (QEMU exports the host root with its owners)"
    check = subprocess.run([str(RUN_IN_VM), "--check"], capture_output=True, text=True)
    if check.returncode != 0:
        return f"kernel VM unavailable: {(check.stdout + check.stderr).strip()}"
    return None


class GuestRun:
    """One guest running every selected kernel_vm test; started by the first test that needs it."""

    def __init__(self, rootpath, nodeids):
        self.rootpath = rootpath
        self.nodeids = nodeids
        self.results = None
        self.returncode = None
        self.output = ""
        self.seconds = 0.0

    def get(self, nodeid):
        if self.results is None:
            self._run()
        return self.results.get(nodeid, [])

    def _run(self):
        self.results = {}  # never a second guest, even when this one is interrupted
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="probeset-vm-out.") as out:
            env = dict(os.environ, PROBESET_VM_OUT=out, PROBESET_VM_REPORT=f"{out}/results.jsonl")
            # -m kernel_vm wins over a "-m" a project addopts might carry; the cache would only
            # be written to the guest's throw-away overlay.
            cmd = [str(RUN_IN_VM), sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                   "-m", "kernel_vm", "-rfEs", *self.nodeids]
            with subprocess.Popen(cmd, cwd=self.rootpath, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
                try:
                    self.output = proc.communicate()[0]
                except BaseException:  # Ctrl-C: let run-in-vm stop its guest, not kill it mid-way
                    proc.terminate()
                    proc.wait()
                    raise
            self.returncode = proc.returncode
            report = Path(env["PROBESET_VM_REPORT"])
            if report.exists():
                for line in report.read_text().splitlines():
                    record = json.loads(line)
                    self.results.setdefault(record["nodeid"], []).append(record)
        self.seconds = time.monotonic() - start


GUEST_RUN = pytest.StashKey[GuestRun]()


class GuestTestItem(pytest.Item):
    """Host-side stand-in for a kernel_vm test: reports the outcome the guest recorded."""

    def __init__(self, *, original, guest, **kwargs):
        super().__init__(**kwargs)
        self._original_info = original.reportinfo()
        self.guest = guest

    def reportinfo(self):
        return self._original_info

    # Each phase replays the guest's report for the same phase: a guest fixture error is an
    # error here too, and skips keep the test's own location.
    def setup(self):
        self._replay("setup")

    def runtest(self):
        self._replay("call")
        if not any(r["when"] == "call" for r in self.guest.get(self.nodeid)):
            tail = self.guest.output[-OUTPUT_TAIL_CHARS:]
            pytest.fail(f"the guest reported no result for this test (run-in-vm exit status "
                        f"{self.guest.returncode}); end of the guest's output:\n{tail}", pytrace=False)

    def teardown(self):
        self._replay("teardown")

    def _replay(self, when):
        for r in self.guest.get(self.nodeid):
            if r["when"] != when:
                continue
            if r["outcome"] == "failed":
                pytest.fail(self._describe(r), pytrace=False)
            if r["outcome"] == "skipped":
                if r["wasxfail"] is not None:
                    pytest.xfail(f"in the guest: {r['wasxfail']}")
                raise pytest.skip.Exception(f"in the guest: {r['text']}", _use_item_location=True)

    @staticmethod
    def _describe(record):
        parts = [f"[failed in the guest during {record['when']}]", record["text"]]
        for title, content in record["sections"]:
            parts.append(f"{'-' * 20} {title} (guest) {'-' * 20}\n{content}")
        return "\n".join(parts)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only selected tests go to the guest
def pytest_collection_modifyitems(session, config, items):
    if IN_VM:
        return
    positions = [i for i, item in enumerate(items) if item.get_closest_marker("kernel_vm")]
    if not positions:
        return
    reason = vm_unavailable_reason()
    if reason:
        for i in positions:
            items[i].add_marker(pytest.mark.skip(reason=reason))
        return
    guest = GuestRun(config.rootpath, [items[i].nodeid for i in positions])
    config.stash[GUEST_RUN] = guest
    for i in positions:
        original = items[i]
        items[i] = GuestTestItem.from_parent(original.parent, name=original.name,
                                             original=original, guest=guest)


def pytest_terminal_summary(terminalreporter, config):
    guest = config.stash.get(GUEST_RUN, None)
    if guest is None or guest.returncode is None:
        return
    terminalreporter.write_line(
        f"kernel_vm: {len(guest.nodeids)} test(s) ran in one QEMU guest in {guest.seconds:.1f} s "
        f"(run-in-vm exit status {guest.returncode})")
