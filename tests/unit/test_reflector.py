"""follow() (probeset_api.reflector): list once, then watch from the last version seen; list
again only after a 410. Against a scripted API, no server."""

import threading

from probeset_api import reflector
from probeset_api.kube import KubeError


def pod(name, rv):
    return {"kind": "Pod", "metadata": {"name": name, "resourceVersion": rv}}


class ScriptedKube:
    """follow()'s view of the API: each get() answers the next listing, each watch() the next
    list of events (or raises); the calls are recorded. `stop` is set when the script runs out."""

    def __init__(self, stop, listings, watches):
        self.stop, self.listings, self.watches, self.calls = stop, list(listings), list(watches), []

    def get(self, path, params):
        self.calls.append(("list", params.get("resourceVersion")))
        return self.listings.pop(0)

    def watch(self, path, version, params, timeout_seconds, stop, bookmarks):
        self.calls.append(("watch", version))
        assert bookmarks and 240 <= timeout_seconds <= 360
        if not self.watches:
            self.stop.set()
            return
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        yield from step


def test_follow_watches_again_from_the_last_version_and_lists_only_after_a_410(monkeypatch):
    """The reflector of agents and operator: a watch that ends resumes from the last version seen
    (an event's or a bookmark's), without a list; a 410 (that version is gone) lists again."""
    monkeypatch.setattr(reflector, "FOLLOW_RETRY_SECONDS", 0)
    stop = threading.Event()
    listing = {"metadata": {"resourceVersion": "5"}, "items": [pod("a", "4")]}
    fake = ScriptedKube(stop, [listing, {"metadata": {"resourceVersion": "30"}, "items": []}], [
        [("ADDED", pod("b", "6")), ("BOOKMARK", {"metadata": {"resourceVersion": "9"}})],   # ends: resume at 9
        [("MODIFIED", pod("b", "11"))],                                                    # ends: resume at 11
        KubeError(410, "too old resource version: 11 (20)"),                              # gone: list again
    ])
    seen = []
    reflector.follow(fake, "/api/v1/pods", {}, lambda items: seen.append(("listed", len(items))),
                lambda kind, obj: seen.append((kind, obj["metadata"]["name"])), stop, "pods")
    assert fake.calls == [("list", "0"), ("watch", "5"), ("watch", "9"), ("watch", "11"), ("list", "0"),
                          ("watch", "30")]
    assert seen == [("listed", 1), ("ADDED", "b"), ("MODIFIED", "b"), ("listed", 0)]    # no bookmark delivered
