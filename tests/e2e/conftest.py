"""End-to-end tests: a real Prometheus scraping a real `probeset run` agent on this host."""


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: starts a real Prometheus scraping a real agent (root, BCC)")
