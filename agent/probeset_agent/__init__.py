"""The node agent: a ProbeSet becomes one BPF program on this host, its maps become Prometheus metrics."""
