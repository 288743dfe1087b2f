"""Where a ProbeSet's probes act, in cluster mode: the in-kernel filter of the selected pods' cgroup
ids, and uprobes placed on each selected container's own copy of a file.

A uprobe fires for the file (device, inode) it is attached to, so a container's processes are only
seen through the copy of the file in their own root. Each copy is attached once, at its own
address of the function, and detached when no selected container has it any more.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from . import host
from .codegen import MAX_ALLOWED_CGROUPS, AttachPoint
from .pinned import Pin
from .resolve import ResolvedProbe

log = logging.getLogger(__name__)

FileKey = tuple[int, int]          # (device, inode) of one copy of a file


@dataclass(frozen=True)
class Stamp:
    """What a probed file was when a uprobe was placed on it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> "Stamp":
        return cls.of_stat(os.stat(path))

    @classmethod
    def of_stat(cls, st: os.stat_result) -> "Stamp":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def key(self) -> FileKey:
        return self.dev, self.ino

    def change(self, now: "Stamp | None") -> str | None:
        """"replaced" (the path is another file now: a rename, as install(1) does), "modified"
        (written in place), or None."""
        if now is None or now == self:
            return None
        return "replaced" if now.key != self.key else "modified"


@dataclass
class Placed:
    """One copy of a file a uprobe point is attached to."""

    path: str
    address: int
    stamp: Stamp
    events: list[bytes] = field(default_factory=list)
    pin: Pin | None = None        # the file its uprobe was attached through, open while placed

    def now(self) -> Stamp | None:
        """What the path is now, resolved as a pin is (inside a container's root)."""
        try:
            pin = Pin(self.path)
        except OSError:
            return None     # gone (a container's process ended): the sync of copies handles it
        pin.close()
        return Stamp.of_stat(pin.stat)

    def unpin(self) -> None:
        if self.pin is not None:
            self.pin.close()
            self.pin = None


class Placement:
    """`selection` (pods.PodSelection) names the pods; `attribution` finds their cgroups and
    processes. `attach(point, path, address)` attaches a uprobe point to one copy and returns the
    BCC event names made; `detach(event)` removes one."""

    def __init__(self, set_name: str, selection, attribution, filtering: bool, budget=None):
        self.set_name, self.selection, self.attribution = set_name, selection, attribution
        self.budget = budget                        # budget.ProbeBudget: containers' copies count too
        self._held = 0                              # attachments this placement reserved in it
        self.filtering = filtering                  # the set counts only the selected pods' events
        self._allowed: set[int] = set()             # cgroup ids in the allowed_cgroups map
        self._copies: dict[str, dict[FileKey, Placed]] = {}        # point -> containers' copies
        self._node: dict[str, list[Placed]] = {}                   # point -> the node's copy (and the
        #                                                            one it replaced, still run by processes)
        self.reattached: dict[tuple[str, str], int] = {}           # (point, reason) -> times
        self.hazards: dict[str, str] = {}                          # point -> a modified-in-place warning
        self._lacking: dict[str, dict[FileKey, str]] = {}          # point -> copies without the function
        self._addresses: dict[tuple[FileKey, str], int | None] = {}

    # --- the cgroup filter ----------------------------------------------------------------------

    @property
    def allowed_cgroups(self) -> int | None:
        """Cgroups in the in-kernel filter, or None without one."""
        return len(self._allowed) if self.filtering else None

    def sync_filter(self, table) -> None:
        """Make the allowed_cgroups map hold the selected pods' cgroups."""
        wanted = self.attribution.cgroups_of_pods(self.selection.uids())
        if len(wanted) > MAX_ALLOWED_CGROUPS:
            log.warning("probeset %s: %d selected cgroups, more than the filter's %d; the rest are not counted",
                        self.set_name, len(wanted), MAX_ALLOWED_CGROUPS)
            wanted = set(sorted(wanted)[:MAX_ALLOWED_CGROUPS])
        for cgroup in wanted - self._allowed:
            table[table.Key(cgroup)] = table.Leaf(1)
        for cgroup in self._allowed - wanted:
            try:
                del table[table.Key(cgroup)]
            except KeyError:
                pass
        self._allowed = wanted

    # --- containers' copies of probed files ----------------------------------------------------

    def _container_roots(self) -> list[tuple[str, list[int]]]:
        """The selected pods' processes grouped by root file system (one group per container
        image, in effect), with a pod UID each group belongs to: any live process of a group shows
        that container's files."""
        groups: dict[FileKey, tuple[str, list[int]]] = {}
        for uid in self.selection.uids():
            for pid in self.attribution.pids_of_pod(uid):
                try:
                    st = os.stat(f"/proc/{pid}/root")
                except OSError:
                    continue   # ended
                groups.setdefault((st.st_dev, st.st_ino), (uid, []))[1].append(pid)
        return list(groups.values())

    @staticmethod
    def _copy_in(binary: str, pids: list[int]) -> tuple[str, os.stat_result] | None:
        """BINARY in the root these processes share, through the first of them that shows it (a few
        are tried: one may have just ended)."""
        for pid in pids[:3]:
            try:
                path = host.find_binary(binary, f"/proc/{pid}/root", pid)
                return path, os.stat(path)
            except (host.HostError, OSError):
                continue
        return None

    def copies_now(self, binary: str) -> list[str]:
        """Paths of BINARY in the selected containers now (to expand a glob symbol)."""
        if self.selection is None or self.attribution is None:
            return []
        return [found[0] for _, pids in self._container_roots() if (found := self._copy_in(binary, pids))]

    def _address_in(self, pin: Pin, shown: str, file_key: FileKey, function: str, location: int = -1,
                    usdt: tuple = ()) -> int | None:
        """Where `function` is in this copy (read through its pin; `shown`: its path, for the log);
        for a USDT probe (`location` >= 0), its place number `location`, if the copy has it with the
        same argument locations and semaphore (`usdt`: the node's or first copy's), since the
        program reads the arguments as that copy has them."""
        path = pin.path
        key = (file_key, function, location)
        if key not in self._addresses and location >= 0:
            from .usdtsites import usdt_place
            self._addresses[key] = usdt_place(path, function, location, usdt)
            if self._addresses[key] is None:
                log.warning("probeset %s: %s has no USDT probe %s built as the probe expects: that copy is not "
                            "probed", self.set_name, shown, function)
        if key not in self._addresses:
            try:
                found = dict(host.elf_functions(path, function))
            except host.HostError as e:
                log.warning("probeset %s: %s: %s", self.set_name, shown, e)
                found = {}
            self._addresses[key] = found.get(function)
            if function not in found:
                log.warning("probeset %s: %s has no function %s: that copy is not probed (see the probe's status)",
                            self.set_name, shown, function)
        return self._addresses[key]

    def place_node_copy(self, point: AttachPoint, attach: Callable) -> None:
        """Attach a point to the node's copy of its file (resolved at start)."""
        stamp = Stamp.of(point.site.path)
        events = attach(point, point.site.path, point.site.address)
        self._node[point.fn_name] = [Placed(point.site.path, point.site.address, stamp, events)]

    def check_files(self, points: list[AttachPoint], attach: Callable, detach: Callable,
                    set_aside: Callable) -> list[tuple[AttachPoint, str]]:
        """Re-place the uprobes of files that changed since they were placed; (point, reason) of
        each. A replaced node file gets the uprobe on the new file, and the old one keeps it while
        processes may still run it (one generation back: older ones are detached). A file written
        in place is probed afresh: the kernel keeps the instruction it saved at attach time and
        would replay it into the new code; processes that ran it meanwhile may have computed wrong
        results, which `hazards` reports. `set_aside(events)` renames a copy's events so that
        placing the same path again does not overwrite them (BCC names events by path and address)."""
        changed = []
        for point in {p.fn_name: p for p in points}.values():
            copies = self._node.get(point.fn_name, [])[:1] + list(self._copies.get(point.fn_name, {}).values())
            for placed in copies:
                now = placed.now()
                reason = placed.stamp.change(now)
                if reason is None:
                    continue
                try:
                    pin = Pin(placed.path)
                except OSError:
                    continue                 # gone meanwhile: the next round or the sync of copies sees it
                if pin.key != now.key:       # changed again since: the next round
                    pin.close()
                    continue
                self._addresses.pop((now.key, point.site.function, point.site.usdt_location), None)   # content changed
                address = self._address_in(pin, placed.path, now.key, point.site.function, *_usdt_of(point))
                log.warning("probeset %s: %s %s: %s %s; placing the uprobe again", self.set_name, point.mechanism,
                            point.site.function, placed.path, "was replaced" if reason == "replaced" else
                            "was written in place")
                if reason == "replaced" and self._reserve(len(placed.events)):
                    placed.events = set_aside(placed.events)   # kept: processes may still run the old file
                else:
                    self._detach(placed, detach)
                    self.hazards[point.fn_name] = (
                        f"{placed.path} was written in place while probed: processes that ran it since may have "
                        "executed the old instruction at the probe and computed wrong results; replace probed "
                        "files by rename (install, mv) instead")
                fresh = Placed(placed.path, address or 0, Stamp.of_stat(pin.stat), [], pin)
                if address is not None:
                    try:
                        fresh.events = attach(point, pin.path, address)
                    except Exception as e:   # the kernel refused: the next round retries
                        log.warning("probeset %s: %s %s: %s", self.set_name, point.mechanism, placed.path, e)
                self._replace(point.fn_name, placed, fresh, reason, detach)
                self.reattached[(point.fn_name, reason)] = self.reattached.get((point.fn_name, reason), 0) + 1
                changed.append((point, reason))
        return changed

    def _replace(self, fn_name: str, old: Placed, new: Placed, reason: str, detach: Callable) -> None:
        node = self._node.get(fn_name, [])
        if node and node[0] is old:
            if reason == "modified":      # the same file probed afresh; an older one keeps running
                self._node[fn_name] = [new] + node[1:]
                return
            for older in node[1:]:        # one generation back is kept, not more
                self._detach(older, detach)
            self._node[fn_name] = [new, old]
            return
        copies = self._copies[fn_name]
        del copies[old.stamp.key]
        copies[new.stamp.key] = new       # a replaced container copy: the old one goes with its sync

    def _detach(self, placed: Placed, detach: Callable, release: bool = True) -> None:
        for event in placed.events:
            try:
                detach(event)
            except Exception as e:
                log.warning("probeset %s: detaching %s: %s", self.set_name, event.decode(), e)
        if release:
            self._release(len(placed.events))
        placed.events = []
        placed.unpin()

    def forget(self, fn_name: str, detach: Callable) -> None:
        """Detach a uprobe point from every copy it is on (its probe was retired by an edit). The
        node's current copy is the program's to release from the budget; the others this placement's."""
        node = self._node.pop(fn_name, [])
        for placed in node[:1]:
            self._detach(placed, detach, release=False)
        for placed in node[1:] + list(self._copies.pop(fn_name, {}).values()):
            self._detach(placed, detach)
        self._lacking.pop(fn_name, None)
        self.hazards.pop(fn_name, None)

    def _reserve(self, n: int) -> bool:
        if self.budget is not None and not self.budget.reserve(n):
            return False
        self._held += n
        return True

    def _release(self, n: int) -> None:
        n = min(n, self._held)
        self._held -= n
        if self.budget is not None:
            self.budget.release(n)

    def release_budget(self) -> int:
        """Give back everything this placement reserved, and close the files it holds (the program
        stops: its uprobes go with it); how much it was."""
        for placed in [p for ps in self._node.values() for p in ps] + [
                p for copies in self._copies.values() for p in copies.values()]:
            placed.unpin()
        held, self._held = self._held, 0
        return held

    def sync_copies(self, points: list[AttachPoint], attach: Callable, detach: Callable) -> None:
        """Attach each uprobe point to every selected container's copy of its file that lacks it;
        detach it from copies no selected container has any more."""
        files: dict[str, dict[FileKey, tuple[str, str]]] = {}   # binary -> file -> (path, where)
        groups = self._container_roots()
        for binary in {p.site.binary for p in points}:
            found = files[binary] = {}
            for uid, pids in groups:
                copy = self._copy_in(binary, pids)
                if copy:
                    path, st = copy
                    inside = "/" + path.split("/root/", 1)[1] if path.startswith("/proc/") else path
                    found.setdefault((st.st_dev, st.st_ino), (path, f"{inside} in pod {self._pod_name(uid)}"))
        for point in {p.fn_name: p for p in points}.values():
            have = self._copies.setdefault(point.fn_name, {})
            lacking = self._lacking.setdefault(point.fn_name, {})
            wanted = files[point.site.binary]
            for file_key, (path, where) in wanted.items():
                if file_key in have or file_key in lacking or file_key in self._node_keys(point):
                    continue
                try:
                    pin = Pin(path)      # read and attached through this one open file from here on
                except OSError as e:     # gone, or no longer inside the container's root: next sync
                    log.info("probeset %s: %s: %s", self.set_name, where, e)
                    continue
                if pin.key != file_key:  # the path leads to another file than the one found
                    pin.close()
                    continue
                address = self._address_in(pin, where, file_key, point.site.function, *_usdt_of(point))
                if address is None:
                    pin.close()
                    lacking[file_key] = f"no function {point.site.function} in {where}"
                    continue
                if not self._reserve(1):
                    pin.close()
                    lacking[file_key] = (f"{where}: not probed, the agent holds the {self.budget.limit} kprobe/"
                                         "uprobe attachments one process may have (BCC_PROBE_LIMIT)")
                    continue
                try:
                    have[file_key] = Placed(path, address, Stamp.of_stat(pin.stat), attach(point, pin.path, address),
                                            pin)
                    log.info("probeset %s: %s %s attached to %s (file %d:%d)", self.set_name, point.mechanism,
                             point.site.function, where, *file_key)
                except Exception as e:  # the copy vanished, or the kernel refused: next sync retries
                    pin.close()
                    self._release(1)
                    log.warning("probeset %s: %s %s: %s", self.set_name, point.mechanism, where, e)
            for file_key in [k for k in have if k not in wanted]:
                log.info("probeset %s: %s %s detached from file %d:%d (no selected container has it)",
                         self.set_name, point.mechanism, point.site.function, *file_key)
                self._detach(have.pop(file_key), detach)
            for file_key in [k for k in lacking if k not in wanted]:
                del lacking[file_key]
        present = {k for found in files.values() for k in found}
        self._addresses = {k: v for k, v in self._addresses.items() if k[0] in present}

    def _pod_name(self, uid: str) -> str:
        named = self.selection.pods.names(uid, None)
        return f"{named[0]['namespace']}/{named[0]['pod']}" if named else uid

    def _node_keys(self, point: AttachPoint) -> set[FileKey]:
        return {p.stamp.key for p in self._node.get(point.fn_name, [])}

    def copies(self, point: AttachPoint) -> int:
        """How many files this uprobe point is attached to (the node's copies and containers')."""
        return sum(1 for p in self._node.get(point.fn_name, []) + list(self._copies.get(point.fn_name, {}).values())
                   if p.events)

    def attached_files(self, point: AttachPoint) -> list[FileKey]:
        """The containers' copies (device, inode) this point is attached to now."""
        return [k for k, p in self._copies.get(point.fn_name, {}).items() if p.events]

    def probe_status(self, rp: ResolvedProbe, points: list[AttachPoint],
                     attach_error: str | None) -> tuple[dict[str, bool], str | None]:
        """(function -> attached, error) of a uprobe probe with these attach points: a function is
        attached when each of its points is on some copy; a selected container's copy without the
        function is an error (while that copy exists), and so is a container-only probe no selected
        pod has the file for."""
        functions: dict[str, bool] = {}
        lacking: list[str] = []
        for function in rp.functions:
            mine = [p for p in points if p.site.function == function]
            functions[function] = bool(mine) and all(self.copies(p) > 0 for p in mine)
            for p in mine:
                lacking += [w for w in self._lacking.get(p.fn_name, {}).values() if w not in lacking]
        error = attach_error
        if not error and lacking:
            error = "; ".join(lacking[:3]) + (f"; ... {len(lacking) - 3} more" if len(lacking) > 3 else "")
        elif not error and not any(functions.values()) and not any(p.site.path for p in points):
            error = (f"no selected pod has {rp.probe.binary} (yet): the probe attaches to each selected "
                     "container's copy as its pods run")
        return functions, error


def _usdt_of(point: AttachPoint) -> tuple:
    """(location, (args, semaphore)) of a USDT point; () for a function's."""
    site = point.site
    return (site.usdt_location, (site.usdt_args, site.semaphore)) if site.usdt_location >= 0 else ()
