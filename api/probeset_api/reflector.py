"""The agents' and the operator's reflector: `follow` lists once, then watches from the last
version seen (bookmarks included), and lists again only when the server says that version is gone
(410) or a call fails: at thousands of nodes, a re-list per agent per minute would cost the API
server more than everything else the agents do (docs/scale.md)."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from .kube import Kube, KubeError

WATCH_SECONDS = (240, 360)         # each watch lasts a random time in this range, then resumes
FOLLOW_RETRY_SECONDS = 5.0

log = logging.getLogger(__name__)


def follow(kube: Kube, path: str, params: dict, on_list: Callable[[list[dict]], None],
           on_event: Callable[[str, dict], None], stopping: threading.Event, what: str) -> None:
    """List (from the API server's cache: resourceVersion 0), then watch from the listing's
    version; when a watch ends, watch again from the last version seen. List again only after a
    410 (that version is gone), a failed call or a consumer's failure. Runs until `stopping`;
    the probes keep running meanwhile."""
    version: str | None = None
    while not stopping.is_set():
        try:
            if version is None:
                listing = kube.get(path, {**params, "resourceVersion": "0"})
                on_list(listing.get("items") or [])
                version = (listing.get("metadata") or {}).get("resourceVersion", "")
            for kind, obj in kube.watch(path, version, params, timeout_seconds=random.randint(*WATCH_SECONDS),
                                        stop=stopping, bookmarks=True):
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind != "BOOKMARK":
                    on_event(kind, obj)
        except KubeError as e:
            version = None
            if e.status != 410:
                log.warning("watching %s: %s", what, e)
                stopping.wait(FOLLOW_RETRY_SECONDS)
        except Exception:   # a consumer's failure must not end the watch: list again
            version = None
            log.exception("watching %s", what)
            stopping.wait(FOLLOW_RETRY_SECONDS)
