"""The agent in a cluster: runs the ProbeSet named by its environment, follows spec changes (hot
reload: a new BPF program replaces the old one; counters restart, which Prometheus' rate() handles),
and reports its node's result into the ProbeSet's status.

Each agent writes only status.agents.<its node> with a JSON merge patch, so agents never conflict;
full per-probe details are written only while something fails, to keep the object small.
"""

from __future__ import annotations

import datetime
import logging
import threading

from probeset_api import API_GROUP, API_VERSION, KIND, PLURAL
from probeset_api.spec import SpecError, parse_probeset, restrict_values, scope_error, value_policy
from probeset_api.status import NodeReport

from .pods import PodSelection
from .report import node_report, spec_failure

log = logging.getLogger(__name__)


class ClusterAgent:
    def __init__(self, api_client, namespace: str, name: str, node: str, programs: list, features,
                 lock: threading.Lock, attribution=None, pods=None, node_wide: frozenset[str] = frozenset(),
                 host_root: str = "/", tenant_values: frozenset[str] = frozenset()):
        from kubernetes import client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace, self.name, self.node = namespace, name, node
        self.programs = programs        # shared with the collector; swapped under lock
        self.lock = lock
        self.features = features
        self.attribution = attribution
        self.pods = pods                    # pods.PodIndex of this node (names, podSelector)
        self.node_wide = node_wide          # namespaces whose ProbeSets may have scope Node
        self.host_root = host_root          # the node's file system, for node-wide uprobes
        self.tenant_values = tenant_values  # values the admin allows namespaced sets (KIND:TARGET:FIELD)
        self.generation: int | None = None
        self._reported: list | None = None   # the probe statuses last reported
        self.stopping = threading.Event()

    # --- applying a ProbeSet object ---------------------------------------------------------

    def apply(self, obj: dict) -> None:
        """Run the object's spec if its generation is new; report the result."""
        from .program import ProbeSetProgram
        generation = obj["metadata"].get("generation")
        if generation == self.generation:
            return
        self.generation = generation
        self._stop_programs()
        try:
            pset = parse_probeset(obj)
            # Enforced here too: an edited spec reaches the agent before the operator rejects it.
            denied = scope_error(pset, self.node_wide)
            if denied:
                raise SpecError([denied])
        except SpecError as e:
            log.error("ProbeSet %s/%s is invalid: %s", self.namespace, self.name, e)
            self._report(spec_failure(generation, len(obj["spec"].get("probes") or []), str(e)))
            return
        selection = None
        if self.pods is not None:
            selection = PodSelection(self.pods, None if pset.scope == "Node" else pset.namespace, pset.pod_selector)
        policy = value_policy(pset, self.tenant_values)
        prog = ProbeSetProgram(restrict_values(pset, policy), self.node, self.features, self.attribution, selection,
                               self.host_root, policy)
        prog.start()
        with self.lock:
            if self.stopping.is_set():   # stop() ran while this program was starting
                prog.stop()
                return
            self.programs.append(prog)
        self._reported = None
        self.report_if_changed()

    def report_if_changed(self) -> None:
        """Report the running program's probe statuses when they differ from the last report (at
        start, and after housekeeping: e.g. a uprobe that found its first container copy)."""
        with self.lock:
            prog = self.programs[0] if self.programs else None
        if prog is None:
            return
        statuses = prog.probe_statuses()
        snapshot = [(st.name, st.error, sorted(st.functions.items())) for st in statuses]
        if snapshot == self._reported:
            return
        before = {name: error for name, error, _ in self._reported or []}
        self._reported = snapshot
        for st in statuses:
            if st.error and before.get(st.name) != st.error:
                log.warning("probe %s: %s", st.name, st.error)
        self._report(node_report(statuses, self.generation, len(statuses)))
        failed = [st for st in statuses if st.error and before.get(st.name) != st.error]
        if failed:
            self._event("Warning", "ProbeFailed",
                        f"node {self.node}: " + "; ".join(f"{st.name}: {st.error}" for st in failed)[:1000])

    def _stop_programs(self) -> None:
        with self.lock:
            old, self.programs[:] = list(self.programs), []
        for prog in old:
            prog.stop()

    def _report(self, report: NodeReport) -> None:
        body = {"status": {"agents": {self.node: report.to_status()}}}
        try:
            self.custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, self.namespace, PLURAL, self.name, body)
        except Exception as e:  # the API being away must not stop the probes
            log.warning("cannot report status: %s", e)

    def _event(self, kind: str, reason: str, message: str) -> None:
        from kubernetes import client
        now = datetime.datetime.now(datetime.timezone.utc)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{self.name}.", namespace=self.namespace),
            involved_object=client.V1ObjectReference(
                api_version=f"{API_GROUP}/{API_VERSION}", kind=KIND, name=self.name,
                namespace=self.namespace),
            reason=reason, message=message, type=kind, first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component="probeset-agent", host=self.node))
        try:
            self.core.create_namespaced_event(self.namespace, event)
        except Exception as e:
            log.warning("cannot post event: %s", e)

    # --- following the object ---------------------------------------------------------------

    def run(self) -> None:
        """Watch the ProbeSet until stop(); reconnect when the watch ends."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        while not self.stopping.is_set():
            try:
                listing = self.custom.list_namespaced_custom_object(
                    API_GROUP, API_VERSION, self.namespace, PLURAL, field_selector=f"metadata.name={self.name}")
                items = listing.get("items", [])
                if items:
                    self.apply(items[0])
                elif self.generation is not None:
                    log.info("ProbeSet %s/%s is gone: detaching", self.namespace, self.name)
                    self._stop_programs()
                    self.generation = None
                w = watch.Watch()
                for event in w.stream(self.custom.list_namespaced_custom_object, API_GROUP, API_VERSION,
                                      self.namespace, PLURAL, field_selector=f"metadata.name={self.name}",
                                      resource_version=listing["metadata"]["resourceVersion"],
                                      timeout_seconds=60):
                    if self.stopping.is_set():
                        w.stop()
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.apply(event["object"])
                    elif event["type"] == "DELETED":
                        log.info("ProbeSet %s/%s deleted: detaching", self.namespace, self.name)
                        self._stop_programs()
                        self.generation = None
            except ApiException as e:
                log.warning("watching ProbeSet %s/%s: %s", self.namespace, self.name, e.reason)
                self.stopping.wait(5)
            except Exception as e:   # network errors: retry, the probes keep running
                log.warning("watching ProbeSet %s/%s: %s", self.namespace, self.name, e)
                self.stopping.wait(5)

    def stop(self) -> None:
        self.stopping.set()
        self._stop_programs()
