"""Run the probeset benchmarks (root, on the host whose kernel is measured).

  chrt -f 50 .venv/bin/python bench/run.py overhead [ARGS]  per-event cost vs hand-written BCC (overhead.py)
  chrt -f 50 .venv/bin/python bench/run.py scrape [ARGS]    /metrics cost at 1,000 and 10,000 series (scrape.py)
  chrt -f 50 .venv/bin/python bench/run.py startup [ARGS]   time to first /metrics response, RSS (startup.py)
  chrt -f 50 .venv/bin/python bench/run.py all              all of them, JSON results under bench/results/

ARGS go to the benchmark (see its --help). `chrt -f 50` (SCHED_FIFO, inherited by the agent and the
driver) keeps other work on a shared machine from preempting what is measured; with 2 CPUs a busy
neighbour otherwise inflates wall times 2-4x. Best still: run nothing else meanwhile.
"""

import sys

import overhead
import scrape
import startup
from common import BENCH

BENCHMARKS = {"overhead": overhead.main, "scrape": scrape.main, "startup": startup.main}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in (*BENCHMARKS, "all"):
        print(__doc__)
        return 2
    if sys.argv[1] != "all":
        BENCHMARKS[sys.argv[1]](sys.argv[2:])
        return 0
    results = BENCH / "results"
    for name, fn in BENCHMARKS.items():
        print(f"\n== {name}")
        fn(["--json", str(results / f"{name}.json")])
    print("\n== scrape, latency: true")
    scrape.main(["--latency", "--scrapes", "5", "--json", str(results / "scrape-latency.json")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
