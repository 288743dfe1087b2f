"""The figures of docs/scale.md from simulate.py's JSON results: one column per run.

  .venv/bin/python bench/scale/report.py bench/scale/results/*.json
"""

from __future__ import annotations

import json
import statistics
import sys


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float):
        x = round(x, 2) if abs(x) < 10 else round(x, 1) if abs(x) < 100 else int(round(x))
    if isinstance(x, int) and abs(x) >= 10000:
        return f"{x:,}{unit}"
    return f"{x}{unit}"


def kb(x):
    return None if x is None else round(x / 1024, 1)


def per_min(rest: dict, who: str):
    usage = rest.get("usage") or {}
    cpu = (usage.get(who) or {}).get("cpu_s")
    return None if cpu is None or not usage.get("seconds") else cpu * 60 / usage["seconds"]


def row_values(run: dict) -> dict:
    n = run["nodes"]
    changes = run.get("changes") or []
    conv = [c for c in changes if not c.get("not_converged")]
    label = f"{run.get('design', 'current')} N={n}"
    if run.get("mode") == "threads":
        label += " (threads)"
    elif run.get("workers"):
        label += f" (w={run['workers']})"
    if "sample" in run.get("label", "") or run.get("object_after_prefill"):
        label += " prefill"

    def per_change(path):
        vals = []
        for c in changes:
            v = c
            for p in path:
                v = (v or {}).get(p) if isinstance(v, dict) else None
            vals.append(v)
        return med(vals)
    rest = run.get("rest") or {}
    rest_req = rest.get("requests_per_min") or {}
    lists = run.get("list_costs") or {}
    lp = lists.get("LIST probesets (all namespaces)") or {}
    lpod = lists.get("LIST pods fieldSelector=spec.nodeName") or {}
    obj = run.get("object_all") or {}
    watch_bytes = per_change(["agent_client_bytes", "WATCH probesets"])
    lat = [c.get("agent_patch_latency_s") for c in changes if c.get("agent_patch_latency_s")]
    p50 = med([x[0] for x in lat]) if lat else None
    return {
        "run": label,
        "ProbeSet `all` (bytes)": fmt(obj.get("bytes")),
        "… status.agents / managedFields (bytes)": f"{fmt(obj.get('status_agents_bytes'))} / {fmt(obj.get('managed_fields_bytes'))}",
        "spec change → observedGeneration (s)": fmt(per_change(["observed_s"])),
        "spec change → summary correct on the CR (s)": fmt(med([c.get("converge_s") for c in conv]))
        if conv else "never (reports lost)" if changes else "–",
        "agent status writes per change": fmt(med([sum(v for k, v in (c.get("agent_client_requests") or {}).items()
                                                       if k.startswith("PATCH")) for c in changes]) if changes else None),
        "agent patch latency p50 (s)": fmt(p50),
        "operator requests per change": fmt(per_change(["requests", "operator", "total"])),
        "API server CPU per change (s)": fmt(per_change(["usage", "apiserver", "cpu_s"])),
        "operator CPU per change (s)": fmt(per_change(["usage", "operator", "cpu_s"])),
        "watch events per agent per change": fmt(per_change(["watch_events_per_agent"])),
        # Runs before the fix of CountingKube counted watch bytes twice (readline reads through read).
        "watch bytes per agent per change": fmt(kb(watch_bytes / (1 if run.get("watch_bytes_counted_once") else 2))
                                                if run.get("mode") == "shared" and watch_bytes else None, " KB"),
        "etcd DB growth per change (MB)": fmt(None if per_change(["etcd_db_growth_bytes"]) is None
                                              else per_change(["etcd_db_growth_bytes"]) / 2**20),
        "operator requests/min at rest": fmt((rest_req.get("operator") or {}).get("total", 0) if rest else None),
        "agent requests/min at rest (N × 6 re-list + re-watch)": fmt(6 * n),
        "operator CPU at rest (s per min)": fmt(per_min(rest, "operator")),
        "API server CPU at rest (s per min)": fmt(per_min(rest, "apiserver")),
        "operator RSS (MB)": fmt((rest.get("usage") or {}).get("operator", {}).get("rss_mb")),
        "API server RSS (MB)": fmt((rest.get("usage") or {}).get("apiserver", {}).get("rss_mb")),
        "one agent's LIST of ProbeSets: bytes, API CPU (s)": f"{fmt(lp.get('bytes'))}, {fmt(lp.get('apiserver_cpu_s'))}",
        "N agents' re-lists of ProbeSets: API CPU (s per min)": fmt(lp.get("n_agents_per_min_apiserver_cpu_s")),
        "N agents' re-lists of pods: API CPU (s per min)": fmt(lpod.get("n_agents_per_min_apiserver_cpu_s")),
        "`kubectl get probesets -A` (s)": fmt((run.get("kubectl_get") or {}).get("seconds")),
        "stopped": run.get("stopped", "")[:120],
    }


def main() -> int:
    runs = []
    for path in sys.argv[1:]:
        for run in json.load(open(path))["runs"]:
            runs.append(row_values(run))
    if not runs:
        raise SystemExit(__doc__)
    keys = list(runs[0])
    print("| | " + " | ".join(r["run"] for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for k in keys[1:]:
        if any(r[k] not in ("", "–", "– KB") for r in runs):
            print(f"| {k} | " + " | ".join(str(r[k]) for r in runs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
