"""The ProbeSet operator: validates ProbeSets and runs one DaemonSet of node agents per set."""
