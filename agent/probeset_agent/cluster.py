"""The agent in a cluster: one per node, running every ProbeSet that selects its node.

It lists and watches all ProbeSets and its own Node (labels, for nodeSelector); choice.py decides
which sets run here, each as its own BPF program(s) (running.py), so that one set that fails to
compile or attach never stops another. An edited set is updated make-before-break; a deleted or
deselected one is detached at once. All of them are served by one /metrics endpoint.

The agent reports into its own ProbeSetNode (nodestatus.py), never into the ProbeSets: one merge
patch per change for all its sets, so agents never conflict and a ProbeSet stays small at any
number of nodes; the operator summarizes the reports into each set's status and Events. A set this
node does not select loses the node's entry.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from probeset_api import API_GROUP, API_VERSION, PLURAL
from probeset_api.admission import Admission
from probeset_api.spec import ProbeSet, SpecError
from probeset_api.status import NodeReport, set_key

from .choice import Choice, Key, Limits, Refusal, choose, key_of
from probeset_api.kube import Kube
from probeset_api.reflector import follow
from .nodestatus import NodeStatus
from .report import node_report, spec_failure
from .running import RunningSet

log = logging.getLogger(__name__)

PROBESETS = f"/apis/{API_GROUP}/{API_VERSION}/{PLURAL}"
RETRY_SECONDS = 5.0


class NodeAgent:
    """`make(pset)` builds a ProbeSetProgram on this node; `sources` is the list the metrics
    collector and the housekeeper read (RunningSets), changed only under `lock`."""

    def __init__(self, kube: Kube, node: str, make: Callable[[ProbeSet], object], admission: Admission,
                 limits: Limits, sources: list, lock: threading.Lock):
        self.kube, self.node, self.make = kube, node, make
        self.admission, self.limits = admission, limits
        self.sources, self.lock = sources, lock
        self.objects: dict[Key, dict] = {}              # every ProbeSet, as last seen
        self.node_labels: dict[str, str] | None = None  # None until the Node is read
        self.running: dict[Key, RunningSet] = {}
        self._admitted: dict[tuple[str, int | None], ProbeSet | SpecError] = {}   # (uid, generation) -> admit()
        self._reported: dict[Key, object] = {}          # what was last reported per set
        self.status = NodeStatus(kube, node, admission.operator_namespace)
        self._state_lock = threading.Lock()             # objects and node_labels (watch threads write)
        self._work_lock = threading.Lock()              # one reconcile or report at a time
        self.wake = threading.Event()
        self.stopping = threading.Event()

    # --- what the watches see -----------------------------------------------------------------

    def on_probesets(self, items: list[dict]) -> None:
        with self._state_lock:
            self.objects = {key_of(o): o for o in items}
        self.wake.set()

    def on_probeset(self, kind: str, obj: dict) -> None:
        with self._state_lock:
            if kind == "DELETED":
                self.objects.pop(key_of(obj), None)
            else:
                self.objects[key_of(obj)] = obj
        self.wake.set()

    def on_nodes(self, items: list[dict]) -> None:
        for obj in items:
            self.on_node("ADDED", obj)

    def on_node(self, kind: str, obj: dict) -> None:
        labels = None if kind == "DELETED" else dict((obj.get("metadata") or {}).get("labels") or {})
        self.status.node_uid = None if kind == "DELETED" else (obj.get("metadata") or {}).get("uid")
        with self._state_lock:
            if labels == self.node_labels:
                return
            self.node_labels = labels
        log.info("node %s labels: %s", self.node, labels)
        self.wake.set()

    # --- deciding and doing -------------------------------------------------------------------

    def _admit(self, obj: dict) -> ProbeSet:
        meta = obj.get("metadata") or {}
        cache_key = (meta.get("uid", ""), meta.get("generation"))
        found = self._admitted.get(cache_key)
        if found is None:
            try:
                found = self.admission.admit(obj)
            except SpecError as e:
                found = e
            if len(self._admitted) > 4 * len(self.objects) + 64:   # drop the entries of old generations
                self._admitted.clear()
            self._admitted[cache_key] = found
        if isinstance(found, SpecError):
            raise found
        return found

    def reconcile(self) -> None:
        """Make what runs match the objects: stop what must go first (it frees budget), then start
        or update in age order; report what changed."""
        with self._state_lock:
            objects, labels = dict(self.objects), self.node_labels
        with self._work_lock:
            choice = choose(list(objects.values()), labels, self.admission, self.limits, self._admit)
            for key in [k for k in self.running if k not in choice.run]:
                why = "deleted" if key not in objects else "not selected by this node any more" \
                    if key in choice.unselected else f"{choice.refused[key].reason}"
                log.info("ProbeSet %s/%s: %s: detaching", *key, why)
                self._stop(key)
            for key, pset in choice.run.items():
                if self.stopping.is_set():
                    return
                self._run(key, pset)
            self._report_all(choice, objects)
            self.status.flush()

    def _run(self, key: Key, pset: ProbeSet) -> None:
        running = self.running.get(key)
        if running is not None and running.generation == pset.generation:
            return
        try:
            if running is None:
                running = RunningSet(self.make)
                running.start(pset)
                with self.lock:
                    self.sources.append(running)
                self.running[key] = running
                log.info("ProbeSet %s/%s generation %s started", *key, pset.generation)
            else:
                running.update(pset)
        except Exception:    # one set's failure must not stop another: reported, retried on its next change
            log.exception("ProbeSet %s/%s: cannot run generation %s", *key, pset.generation)

    def _stop(self, key: Key) -> None:
        running = self.running.pop(key)
        with self.lock:
            self.sources[:] = [s for s in self.sources if s is not running]
        running.stop()

    # --- reporting ----------------------------------------------------------------------------

    def report_changes(self) -> None:
        """After housekeeping: report the sets whose probe statuses changed (a uprobe that found
        its first container copy, a file replaced)."""
        with self._work_lock:
            for key, running in list(self.running.items()):
                self._report_running(key, running)
            if self.status.pending:
                self.status.flush()

    def _report_all(self, choice: Choice, objects: dict[Key, dict]) -> None:
        for key, running in self.running.items():
            self._report_running(key, running)
        for key, refusal in choice.refused.items():
            self._report_refusal(key, refusal)
        for key in choice.unselected:
            self._put(key, None)
            self._reported[key] = None
        for key in [k for k in self._reported if k not in objects]:
            self._put(key, None)
            del self._reported[key]

    def _report_running(self, key: Key, running: RunningSet) -> None:
        statuses = running.probe_statuses()
        seen = (running.generation, [(st.name, st.error, sorted(st.functions.items())) for st in statuses])
        before = self._reported.get(key)
        if seen == before:
            return
        self._reported[key] = seen
        old_errors = {name: error for name, error, _ in before[1]} if isinstance(before, tuple) else {}
        failed = [st for st in statuses if st.error and old_errors.get(st.name) != st.error]
        for st in failed:
            log.warning("ProbeSet %s/%s probe %s: %s", *key, st.name, st.error)
        self._put(key, node_report(statuses, running.generation, len(statuses)))

    def _report_refusal(self, key: Key, refusal: Refusal) -> None:
        if self._reported.get(key) == refusal:
            return
        self._reported[key] = refusal
        log.warning("ProbeSet %s/%s not run here: %s: %s", *key, refusal.reason, refusal.message)
        self._put(key, spec_failure(refusal.generation, refusal.total, refusal.message, refusal.reason))

    def _put(self, key: Key, report: NodeReport | None) -> None:
        """Report on a set (None: no entry), written by the next status.flush()."""
        self.status.put(set_key(*key), report)

    # --- running ------------------------------------------------------------------------------

    def run(self) -> None:
        """Watch ProbeSets and the Node in their own threads; reconcile on every change until stop()."""
        watches = [
            (PROBESETS, {}, self.on_probesets, self.on_probeset, "ProbeSets"),
            ("/api/v1/nodes", {"fieldSelector": f"metadata.name={self.node}"}, self.on_nodes, self.on_node,
             f"node {self.node}"),
        ]
        for path, params, on_list, on_event, what in watches:
            threading.Thread(target=follow, args=(self.kube, path, params, on_list, on_event, self.stopping, what),
                             name=f"probeset-watch-{what.split()[0].lower()}", daemon=True).start()
        while not self.stopping.is_set():
            # A report the API did not take is written again after RETRY_SECONDS.
            woke = self.wake.wait(RETRY_SECONDS if self.status.pending else None)
            self.wake.clear()
            if self.stopping.is_set():
                break
            try:
                if woke:
                    self.reconcile()
                else:
                    with self._work_lock:
                        self.status.flush()
            except Exception:   # keep the agent alive; the next change tries again
                log.exception("reconciling the ProbeSets of node %s", self.node)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        with self._work_lock:
            for key in list(self.running):
                self._stop(key)
