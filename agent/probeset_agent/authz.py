"""Who may read /metrics, decided by the cluster the way kube-rbac-proxy decides it for node
exporters: the scraper's bearer token is authenticated with a TokenReview, and the user it names
must be allowed `get` on the non-resource URL /metrics (a SubjectAccessReview), i.e. a ClusterRole
rule `nonResourceURLs: ["/metrics"], verbs: ["get"]` bound to the scraper's ServiceAccount.

Answers are cached by the token's hash for `ttl` seconds, at most `max_entries` of them, so a
scraper costs the API server two requests per ttl and a client sending many tokens costs bounded
memory; the server's worker count bounds the requests in flight."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict

from probeset_api.kube import Kube, KubeError

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8192
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


class TokenAuthorizer:
    def __init__(self, kube: Kube, path: str = "/metrics", ttl: float = 60.0, max_entries: int = 1024,
                 clock=time.monotonic):
        self.kube = kube
        self.path, self.ttl, self.max_entries, self.clock = path, ttl, max_entries, clock
        self._cache: OrderedDict[bytes, tuple[float, tuple[int, str]]] = OrderedDict()
        self._lock = threading.Lock()
        self.reviews = 0                     # TokenReviews sent (for tests and logs)

    def __call__(self, token: str | None) -> tuple[int, str]:
        """(200, "") if the token's user may get the path; (401 | 403 | 500, why) otherwise."""
        if not token:
            return 401, "a bearer token is required (Authorization: Bearer ...)"
        if len(token) > MAX_TOKEN_BYTES:
            return 401, "token too long"
        key = hashlib.sha256(token.encode("latin-1")).digest()
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        answer = self._review(token)
        if answer[0] != 500:                 # an API failure is not remembered
            with self._lock:
                self._cache[key] = (now + self.ttl, answer)
                self._cache.move_to_end(key)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return answer

    def _review(self, token: str) -> tuple[int, str]:
        try:
            self.reviews += 1
            review = self.kube.post(TOKEN_REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                                    "spec": {"token": token}})
            status = review.get("status") or {}
            if not status.get("authenticated"):
                return 401, "the token is not valid"
            user = status.get("user") or {}
            sar = self.kube.post(SUBJECT_ACCESS_REVIEWS, {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user.get("username"), "groups": user.get("groups"), "uid": user.get("uid"),
                         "extra": user.get("extra"), "nonResourceAttributes": {"path": self.path, "verb": "get"}}})
            if (sar.get("status") or {}).get("allowed"):
                return 200, ""
            return 403, f"{user.get('username')} may not get {self.path}"
        except KubeError as e:   # the API away: refuse now, ask again next time
            log.warning("metrics: reviewing a token failed: %s", e)
            return 500, "cannot review the token now"
