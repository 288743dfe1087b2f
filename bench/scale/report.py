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
    # "current" and "proposed": runs at 9f36aa0 (status.agents.<node> in the ProbeSet; a bench-only
    # prototype of ProbeSetNodes); "probesetnode": the product since ProbeSetNodes.
    design = {"current": "status.agents", "proposed": "prototype", "probesetnode": "ProbeSetNode"}.get(
        run.get("design", "current"), run.get("design"))
    label = f"{design} N={n}"
    if run.get("mode") == "threads":
        label += " (threads)"
    elif run.get("workers"):
        label += f" (w={run['workers']})"
    if run.get("prefill_s") or run.get("object_after_prefill"):
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
        "… status / managedFields (bytes)": f"{fmt(obj.get('status_bytes', obj.get('status_agents_bytes')))} / "
                                            f"{fmt(obj.get('managed_fields_bytes'))}",
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
        # Not measured (a minute at rest is shorter than a watch): from the code. Before ProbeSetNodes,
        # each agent listed and watched again every minute (ProbeSets, its Node, its pods: 6 requests);
        # since, it watches again every 4-6 minutes from the last version (3 watches / 5 min) and lists
        # only after a 410.
        "agent requests/min at rest (from the code)": fmt(round(0.6 * n) if run.get("design") == "probesetnode"
                                                          else 6 * n),
        "operator CPU at rest (s per min)": fmt(per_min(rest, "operator")),
        "API server CPU at rest (s per min)": fmt(per_min(rest, "apiserver")),
        "operator RSS (MB)": fmt((rest.get("usage") or {}).get("operator", {}).get("rss_mb")),
        "API server RSS (MB)": fmt((rest.get("usage") or {}).get("apiserver", {}).get("rss_mb")),
        "one agent's LIST of ProbeSets: bytes, API CPU (s)": f"{fmt(lp.get('bytes'))}, {fmt(lp.get('apiserver_cpu_s'))}",
        # Every minute before ProbeSetNodes; now only when the API server answers 410 (after a restart).
        "N agents' re-lists of ProbeSets: API CPU (s)": fmt(lp.get("n_agents_per_min_apiserver_cpu_s")),
        "N agents' re-lists of pods: API CPU (s)": fmt(lpod.get("n_agents_per_min_apiserver_cpu_s")),
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
