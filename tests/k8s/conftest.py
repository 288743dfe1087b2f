"""API-server tier: tests marked ``k8s`` run against a real kube-apiserver v1.20.2 + etcd +
kube-controller-manager + kube-scheduler started once per session (tests/k8s/cluster.py; the
``kube`` fixture is in tests/conftest.py, shared with tests/helm). Without the binaries, etcd or the
kubernetes client they are skipped with a reason saying what to do (usually: run
tests/k8s/build-kube as root, once; the binaries are cached outside the repo).
"""
