"""A minute of pod churn while the agent scrapes and keeps house: no crash, the series and every
cache stay bounded, the pods that live throughout keep exact counts."""

import os
import threading
import time

from probeset_agent.attribution import Attribution, CgroupTree
from probeset_agent.housekeeping import Housekeeper
from probeset_agent.exposition import MetricsCollector
from probeset_agent.pods import PodIndex, PodSelection
from tests.bpf.test_attribution import WORKLOAD, by_labels
from tests.support import wait_for

CHURN_SECONDS = int(os.environ.get("PROBESET_CHURN_SECONDS", "60"))
RETENTION = 2.0
INTERVAL = 0.5


def test_a_minute_of_pod_churn(fake_pods, targets, target_binary, run_probeset):
    pods = PodIndex(retention=RETENTION)
    survivors = [fake_pods.add("team-a", f"survivor-{i}") for i in range(2)]
    for pod in survivors:
        pods.update(pod.info())
    # The survivors run before the set starts (their copy of the binary is found at start).
    live = [targets(target_binary, pod.cgroup()) for pod in survivors]
    attribution = Attribution(CgroupTree(fake_pods.root, retention=RETENTION), pods, rescan_interval=INTERVAL)
    prog = run_probeset([{"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}],
                        namespace="team-a", labels=WORKLOAD,
                        program={"attribution": attribution, "selection": PodSelection(pods, "team-a", None)})
    collector = MetricsCollector([prog], "testnode")
    housekeeper = Housekeeper([prog], attribution, pods, interval=INTERVAL).start()

    recent: list[float] = []        # when each churn pod was removed (inf while it exists)
    errors, worst = [], []          # scrape failures; (series, allowed by the bound) per scrape
    done = threading.Event()

    def scrape():
        while not done.is_set():
            try:
                text = collector.render()
                series = sum(1 for line in text.splitlines() if line.startswith("probeset_events_total{"))
                now = time.monotonic()
                window = sum(1 for t in list(recent) if now - t < RETENTION + 3 * INTERVAL + 1)
                worst.append((series, len(survivors) + window + 2))    # + unknown + overflow series
            except Exception as e:   # noqa: BLE001 - the point is to see any failure
                errors.append(repr(e))
            time.sleep(0.2)
    scraper = threading.Thread(target=scrape)
    scraper.start()

    expected = {pod.name: 0 for pod in survivors}
    churned = 0
    try:
        end = time.monotonic() + CHURN_SECONDS
        while time.monotonic() < end:
            namespace = "team-a" if churned % 2 == 0 else "team-b"
            pod = fake_pods.add(namespace)
            pods.update(pod.info())
            housekeeper.wake.set()                    # as the pod watch does on every event
            slot = len(recent)
            recent.append(float("inf"))
            t = targets(target_binary, pod.cgroup())
            t.run("work 3")
            t.close()
            pods.delete(pod.uid)
            fake_pods.remove(pod)
            recent[slot] = time.monotonic()
            churned += 1
            for survivor, target in zip(survivors, live):
                target.run("work 2")
                expected[survivor.name] += 2
    finally:
        done.set()
        scraper.join()
    assert not errors, errors[:3]
    assert churned > 100, f"only {churned} pods churned"
    assert all(series <= bound for series, bound in worst), max(worst, key=lambda w: w[0] - w[1])

    # Once the retention has passed, only the survivors remain: in the maps, the filter, every cache.
    # The housekeeper (every INTERVAL) ages the churned pods out: wait until its rounds have done so.
    def only_survivors_left():
        return (len(pods) == len(survivors) and not attribution.tree.gone
                and prog.allowed_cgroups == 2 * len(survivors)
                and len(list(prog.bpf["counts_p0"].items())) == len(survivors) + 1)
    housekeeper.wake.set()
    wait_for(only_survivors_left, RETENTION + 4 * INTERVAL + 30, "the churned pods to age out", INTERVAL / 2)
    housekeeper.stop()
    prog.refresh()
    counts = by_labels(prog)
    assert counts == {("team-a", name, "app"): n for name, n in expected.items()}
    assert len(list(prog.bpf["counts_p0"].items())) == len(survivors) + 1      # + the overflow slot
    assert prog.allowed_cgroups == 2 * len(survivors)                          # pod + container cgroups
    assert len(pods) == len(survivors)
    assert not attribution.tree.gone
    assert prog.readout.cached_keys(0) <= len(survivors)
