"""The two shortcuts around oslo.policy change no decision: rule signatures remembered per check
class, the policy file looked at at most once a second (a change still takes effect)."""

import time

from oslo_policy import _checks

from freezeframe.common.context import RequestContext
from freezeframe.common.policy import Policy, list_rules

CONTEXTS = [RequestContext("alice", "admin-project", frozenset({"admin", "member", "reader"})),
            RequestContext("bob", "project-a", frozenset({"member", "reader"})),
            RequestContext("dave", "project-a", frozenset({"reader"})),
            RequestContext("svc", "service", frozenset({"service"})),
            RequestContext("bob", "project-a", frozenset({"member", "reader"}), service_roles=frozenset({"service"}))]
TARGETS = [{"project_id": "project-a"}, {"project_id": "project-b", "member_id": "project-a"}]


def test_every_decision_is_the_one_oslo_policy_makes_without_the_shortcut(monkeypatch):
    policy = Policy(None)
    names = [rule.name for rule in list_rules()]
    fast = [policy.check(c, n, t) for n in names for c in CONTEXTS for t in TARGETS]
    assert getattr(_checks._check, "original", None) is not None, "the shortcut is not installed"
    monkeypatch.setattr(_checks, "_check", _checks._check.original)
    slow = [policy.check(c, n, t) for n in names for c in CONTEXTS for t in TARGETS]
    assert fast == slow and True in fast and False in fast


def test_a_changed_policy_file_takes_effect_within_a_second(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text('"add_image": "role:admin"\n')
    policy = Policy(path)
    member = CONTEXTS[1]
    assert not policy.check(member, "add_image")
    path.write_text('"add_image": "role:member"\n')
    deadline = time.monotonic() + 3
    while not policy.check(member, "add_image"):
        assert time.monotonic() < deadline, "the change was not seen"
        time.sleep(0.05)
