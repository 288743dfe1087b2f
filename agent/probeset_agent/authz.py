"""Who may read /metrics, decided by the cluster the way kube-rbac-proxy decides it for node
exporters: the scraper's bearer token is authenticated with a TokenReview, and the user it names
must be allowed `get` on the non-resource URL /metrics (a SubjectAccessReview), i.e. a ClusterRole
rule `nonResourceURLs: ["/metrics"], verbs: ["get"]` bound to the scraper's ServiceAccount.

Answers are cached by the token's hash for `ttl` seconds, so a scraper costs the API server two
requests per ttl. A client sending many tokens costs bounded memory and bounded API requests:
allowed tokens and refused ones are kept apart (at most `max_entries` and `max_denied`), so a flood
of bad tokens cannot push a scraper's answer out; a token never allowed before is reviewed at most
`reviews_per_second` times a second (a burst of `burst`; beyond it 429), while a known scraper's
expired answer is always reviewed again. The server's worker count bounds the requests in flight."""

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
                 max_denied: int = 256, reviews_per_second: float = 5.0, burst: int = 20, clock=time.monotonic):
        self.kube = kube
        self.path, self.ttl, self.max_entries, self.max_denied, self.clock = path, ttl, max_entries, max_denied, clock
        self.reviews_per_second, self.burst = reviews_per_second, burst
        self._allowed: OrderedDict[bytes, tuple[float, tuple[int, str]]] = OrderedDict()
        self._denied: OrderedDict[bytes, tuple[float, tuple[int, str]]] = OrderedDict()
        self._budget, self._budget_at = float(burst), clock()
        self._lock = threading.Lock()
        self.reviews = 0                     # TokenReviews sent (for tests and logs)

    def __call__(self, token: str | None) -> tuple[int, str]:
        """(200, "") if the token's user may get the path; (401 | 403 | 429 | 500, why) otherwise."""
        if not token:
            return 401, "a bearer token is required (Authorization: Bearer ...)"
        if len(token) > MAX_TOKEN_BYTES:
            return 401, "token too long"
        key = hashlib.sha256(token.encode("latin-1")).digest()
        now = self.clock()
        with self._lock:
            known = self._allowed.get(key)
            for hit in (known, self._denied.get(key)):
                if hit is not None and hit[0] > now:
                    return hit[1]
            if known is None and not self._take_review(now):
                return 429, "too many unknown tokens to review now; try again later"
        answer = self._review(token)
        if answer[0] != 500:                 # an API failure is not remembered
            with self._lock:
                allowed = answer[0] == 200
                cache, limit = (self._allowed, self.max_entries) if allowed else (self._denied, self.max_denied)
                cache[key] = (now + self.ttl, answer)
                cache.move_to_end(key)
                while len(cache) > limit:
                    cache.popitem(last=False)
                if not allowed:
                    self._allowed.pop(key, None)      # allowed once, not any more
        return answer

    def _take_review(self, now: float) -> bool:
        """One review of a token never allowed before, if the budget (a token bucket) has one."""
        self._budget = min(float(self.burst), self._budget + (now - self._budget_at) * self.reviews_per_second)
        self._budget_at = now
        if self._budget < 1.0:
            return False
        self._budget -= 1.0
        return True

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
