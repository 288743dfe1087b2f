"""The exposition of latency histograms, without maps or root: snapshots in, Prometheus text out
(parsed back with prometheus_client's parser) in each --histogram-buckets mode, and byte for byte
what one line per bucket would write; what a namespaced set's snapshot leaves out; and /metrics
with gzip through a real MetricsServer."""

import gzip
import http.client
import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probeset_agent.codegen import AttachPoint
from probeset_agent.exposition import MetricsCollector
from prometheus_client.utils import floatToGoString

from probeset_agent.histogram import BUCKET_MODES, bucket_index, cumulative_buckets
from probeset_agent.loader import CompileCost
from probeset_agent.readout import Series, label_text
from probeset_agent.report import ProbeStatus
from probeset_agent.resolve import ResolvedProbe, Site
from probeset_agent.rendering import GzipWriter, gzip_bytes
from probeset_agent.httpmsg import accepts_gzip
from probeset_agent.server import MetricsServer
from probeset_agent.snapshot import ProbeSeries, SetSnapshot, take_snapshot
from probeset_api.spec import parse_probeset


def series(name: str, *latencies_ns: int) -> Series:
    labels = {"probeset": "s", "probe": "lat", "function": "f", "node": "n", "arg0": name}
    buckets: dict[int, int] = {}
    for ns in latencies_ns:
        buckets[bucket_index(ns)] = buckets.get(bucket_index(ns), 0) + 1
    return Series(labels, label_text(labels), len(latencies_ns), sum(latencies_ns), buckets)


class Source:
    def __init__(self, *series_: Series, per_power: int = 1):
        self.snap = SetSnapshot({"probeset": "s"}, [], [ProbeSeries("lat", per_power, list(series_))])

    def snapshot(self) -> SetSnapshot:
        return self.snap


def histogram(text: str) -> dict[str, list[tuple[str, float]]]:
    """arg0 -> [(sample name suffix or le, value)] of probeset_latency_seconds."""
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "probeset_latency_seconds"]
    out: dict[str, list[tuple[str, float]]] = {}
    for s in fam.samples:
        key = s.labels["le"] if s.name.endswith("_bucket") else s.name.rsplit("_", 1)[1]
        out.setdefault(s.labels["arg0"], []).append((key, s.value))
    return out


LES = ("2.56e-07", "5.12e-07", "1.024e-06", "2.048e-06", "4.096e-06", "8.192e-06", "1.6384e-05", "3.2768e-05",
       "6.5536e-05", "0.000131072", "0.000262144", "0.000524288", "0.001048576", "0.002097152", "0.004194304",
       "0.008388608", "0.016777216", "0.033554432", "0.067108864", "0.134217728", "0.268435456", "0.536870912",
       "1.073741824", "2.147483648", "4.294967296", "8.589934592", "17.179869184")     # 1 per power of two


def three() -> Source:
    return Source(series("fast", 300, 300, 1000), series("none"), series("slow", 5000, 3_000_000_000))


def test_default_histograms_start_below_their_lowest_non_empty_bucket_and_keep_every_bound_above():
    got = histogram(MetricsCollector([three()], "n").render())
    assert got == histogram(MetricsCollector([three()], "n", histogram_buckets="nonzero").render())
    assert got["fast"] == [("2.56e-07", 0), ("5.12e-07", 2), *[(le, 3) for le in LES[2:]],
                           ("+Inf", 3), ("count", 3), ("sum", 1.6e-06)]
    # 5 µs is in (4.096, 8.192] µs: from 4.096 µs (0); 3 s in (2.15, 4.29] s; up to 17.2 s all the same
    assert got["slow"] == [("4.096e-06", 0), *[(le, 1) for le in LES[5:24]], *[(le, 2) for le in LES[24:]],
                           ("+Inf", 2), ("count", 2), ("sum", 3.000005)]
    assert got["none"] == [("+Inf", 0), ("count", 0), ("sum", 0)]


def test_sparse_histograms_also_stop_after_their_highest_non_empty_bucket():
    got = histogram(MetricsCollector([three()], "n", histogram_buckets="sparse").render())
    assert got == {
        "fast": [("2.56e-07", 0), ("5.12e-07", 2), ("1.024e-06", 3), ("+Inf", 3), ("count", 3), ("sum", 1.6e-06)],
        "none": [("+Inf", 0), ("count", 0), ("sum", 0)],
        "slow": [("4.096e-06", 0), *[(le, 1) for le in LES[5:24]], ("4.294967296", 2), ("+Inf", 2), ("count", 2),
                 ("sum", 3.000005)],
    }


def test_all_keeps_every_bound():
    text = MetricsCollector([Source(series("fast", 300), series("none"), per_power=4)], "n",
                            histogram_buckets="all").render()
    got = histogram(text)
    assert [len(v) for v in got.values()] == [105 + 1 + 2, 105 + 1 + 2]
    assert got["none"][-3:] == [("+Inf", 0), ("count", 0), ("sum", 0)]
    assert got["fast"][:3] == [("2.56e-07", 0), ("3.2e-07", 1), ("3.84e-07", 1)]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="trimmed"):
        MetricsCollector([], "n", histogram_buckets="trimmed")


def line_per_bucket(s: Series, per_power: int, mode: str) -> str:
    """What the exposition wrote before it joined runs of equal counts: one line per bucket."""
    base = "probeset_latency_seconds_bucket" + s.text[:-1] + ',le="'
    pairs = cumulative_buckets(s.buckets, per_power, mode)
    return "".join(f'{base}{floatToGoString(le)}"}} {n}\n' for le, n in pairs) + \
        f"probeset_latency_seconds_count{s.text} {pairs[-1][1]}\n" \
        f"probeset_latency_seconds_sum{s.text} {floatToGoString(s.sum_ns / 1e9)}\n"


@pytest.mark.parametrize("per_power", [1, 2, 4])
@pytest.mark.parametrize("mode", BUCKET_MODES)
def test_histogram_text_is_byte_for_byte_one_line_per_bucket(mode, per_power):
    rng = random.Random(per_power)
    all_series = [series(f"s{i}", *[max(1, int(rng.lognormvariate(rng.uniform(5, 22), rng.uniform(0.1, 2))))
                                     for _ in range(rng.randint(0, 40))]) for i in range(300)]
    all_series.append(series("huge", 1 << 40, 1 << 62))
    collector = MetricsCollector([Source(*all_series, per_power=per_power)], "n", histogram_buckets=mode)
    body = collector.render_bytes()
    assert collector.render() == body.decode()
    text = body.decode()
    start = text.index("# TYPE probeset_latency_seconds histogram\n") + len("# TYPE probeset_latency_seconds histogram\n")
    end = text.index("# HELP", start)
    assert text[start:end] == "".join(line_per_bucket(s, per_power, mode) for s in all_series)


def test_non_ascii_label_values_are_utf8():
    s = series("café ☕", 300)
    body = MetricsCollector([Source(s)], "n").render_bytes()
    assert 'arg0="café ☕",le="2.56e-07"} 0\n'.encode() in body
    assert histogram(body.decode())["café ☕"][-3:] == [("+Inf", 1), ("count", 1), ("sum", 3e-07)]


class Running:
    """What take_snapshot reads of a running ProbeSetProgram: a kretprobe of a namespaced set or not,
    its program run 3 times for 1.5 µs, and the kernel's count of returns it could not probe."""

    def __init__(self, restricted: bool):
        (probe,) = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "s"},
                                   "spec": {"probes": [{"name": "r", "kretprobe": "vfs_read", "maxActive": 1}]}}).probes
        self.restricted, self.resolved = restricted, [ResolvedProbe(probe, via="kretprobe", functions=["vfs_read"])]
        self.set_labels = {"probeset": "s", "probeset_namespace": "team-a"}
        self.point = AttachPoint("site_0", "kretprobe", Site(0, "vfs_read", "kretprobe", "count"), [0])
        self.unknown_cgroups, self.allowed_cgroups, self.map_memory = 0, 2, 4096
        self.compile_cost = CompileCost(1, 0.5)
        self.statuses = [ProbeStatus("r", 0, "kretprobe", "kretprobe", functions={"vfs_read": True})]

    def probe_statuses(self):
        return self.statuses

    def read_series(self):
        return {0: []}

    def user_points(self):
        return []

    def probe_names(self, point):
        return "r"

    def read_missed(self):
        return {(0, "kretprobe_maxactive"): 5, (0, "unpaired_return"): 1}

    def read_program_stats(self):
        return [(self.point, 1500, 3)]


class Snapshot:
    def __init__(self, snap: SetSnapshot):
        self.snap = snap

    def snapshot(self) -> SetSnapshot:
        return self.snap


def figures(text: str, *families: str) -> dict[str, list[tuple[dict, float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)
            if f.name in families}


@pytest.mark.parametrize("restricted", [False, True])
def test_a_namespaced_set_shows_no_figure_the_whole_node_counts(restricted):
    """The kernel counts a program's runs, and a kretprobe's missed returns, for every task on the
    node, before the program's pod filter: a namespaced set does not show them (docs/metrics.md)."""
    text = MetricsCollector([Snapshot(take_snapshot(Running(restricted)))], "n").render()
    point = {"probeset": "s", "probeset_namespace": "team-a", "probe": "r", "function": "vfs_read", "via": "kretprobe"}
    missed = {"probeset": "s", "probeset_namespace": "team-a", "probe": "r"}
    got = figures(text, "probeset_bpf_runs", "probeset_bpf_run_seconds", "probeset_missed_events")
    own = [({**missed, "reason": "unpaired_return"}, 1.0)]     # counted in the program, after the pod filter
    if restricted:
        assert got == {"probeset_bpf_runs": [], "probeset_bpf_run_seconds": [], "probeset_missed_events": own}
    else:
        assert got == {"probeset_bpf_runs": [(point, 3.0)], "probeset_bpf_run_seconds": [(point, 1.5e-06)],
                       "probeset_missed_events": [({**missed, "reason": "kretprobe_maxactive"}, 5.0)] + own}


@pytest.mark.parametrize("header, expected", [
    (None, False),
    (b"gzip", True),
    (b"gzip, deflate, br", True),
    (b"deflate, GZIP;q=0.5", True),
    (b"x-gzip", True),
    (b"*", True),
    (b"gzip;q=0", False),
    (b"gzip;q=0.000", False),
    (b"*;q=0.1, gzip;q=0", False),       # a named coding before *
    (b"gzip;q=abc", False),              # unreadable: identity, always acceptable
    (b"identity", False),
    (b"br", False),
    (b"", False),
])
def test_accept_encoding(header, expected):
    request = b"GET /metrics HTTP/1.1\r\nHost: x"
    if header is not None:
        request += b"\r\nAccept-Encoding: " + header
    assert accepts_gzip(request) is expected


@pytest.fixture
def served():
    sources = [Source(*[series(f"a{i}", *range(300, 300 + 1000 * (i % 7), 997)) for i in range(200)])]
    collector = MetricsCollector(sources, "n")
    renders = []

    def render(out=None):
        renders.append(1)
        return collector.render_bytes(out)
    server = MetricsServer("127.0.0.1", 0, request_timeout=2.0).start(render)
    yield server, renders
    server.shutdown()


def fetch(server, method="GET", **headers):
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.request(method, "/metrics", headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def samples(text: str) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def test_gzip_only_when_asked_and_it_decodes_to_the_same_samples(served):
    server, renders = served
    plain, plain_body = fetch(server)
    assert plain.getheader("Content-Encoding") is None and plain.getheader("Vary") == "Accept-Encoding"
    assert int(plain.getheader("Content-Length")) == len(plain_body)
    zipped, zipped_body = fetch(server, **{"Accept-Encoding": "gzip"})
    assert zipped.getheader("Content-Encoding") == "gzip" and zipped.getheader("Vary") == "Accept-Encoding"
    assert int(zipped.getheader("Content-Length")) == len(zipped_body) < len(plain_body) // 5
    text = gzip.decompress(zipped_body).decode()
    assert samples(text) == samples(plain_body.decode())
    assert len(samples(text)) > 200 * 4
    refused, refused_body = fetch(server, **{"Accept-Encoding": "gzip;q=0"})
    assert refused.getheader("Content-Encoding") is None and refused_body.startswith(b"# HELP")
    head, head_body = fetch(server, "HEAD", **{"Accept-Encoding": "gzip"})
    assert head.getheader("Content-Encoding") == "gzip" and head_body == b""
    assert len(renders) == 4                      # one rendering per scrape, gzip written as it is rendered


def test_gzip_written_as_rendered_equals_the_plain_body_compressed():
    """The streamed gzip (GzipWriter, chunks of 256 kB) decodes to exactly the plain body, over
    bodies that cross several chunks, and gzip_bytes() of a whole body decodes to it too."""
    sources = [Source(*[series(f"a{i}", *range(300, 300 + 1000 * (i % 7), 997)) for i in range(3000)])]
    collector = MetricsCollector(sources, "n")
    plain = bytes(collector.render_bytes())
    assert len(plain) > 3 * GzipWriter.CHUNK
    streamed = collector.render_bytes(GzipWriter()).finish()
    assert gzip.decompress(streamed) == plain
    assert gzip.decompress(gzip_bytes(plain)) == plain
    assert len(streamed) < len(plain) // 5
