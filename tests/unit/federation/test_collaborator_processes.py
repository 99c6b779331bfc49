"""Two live processes using one collaborator name: the newer one is refused (FX-AUTH-006) once
they interleave; a restarted collaborator (old process never heard again) is not."""

from __future__ import annotations

import pytest

from fedrun.errors import ProtocolError
from fedrun.federation.collaborator_processes import (
    KEPT_PER_COLLABORATOR,
    CollaboratorProcesses,
)

A, B, C = "ipv4:127.0.0.1:5001", "ipv4:127.0.0.1:5002", "ipv6:[::1]:5003"


def test_a_restarted_collaborator_is_not_refused() -> None:
    seen = CollaboratorProcesses()
    for token, peer, t in [("old", A, 0.0), ("old", A, 1.0), ("new", B, 2.0), ("new", B, 3.0)]:
        seen.heard("alice", token, peer, t)


def test_once_two_processes_interleave_the_newer_is_refused_for_good() -> None:
    seen = CollaboratorProcesses()
    seen.heard("alice", "p1", A, 0.0)
    seen.heard("alice", "p2", B, 0.5)  # could still be a restart
    seen.heard("alice", "p1", A, 1.0)  # p1 is alive: p2 is the intruder

    with pytest.raises(ProtocolError) as err:
        seen.heard("alice", "p2", B, 3.0)
    assert err.value.code == "FX-AUTH-006"
    assert "another process is already working as collaborator 'alice'" in err.value.message
    assert "from 127.0.0.1:5001, last heard 2.0 s ago" in err.value.message
    assert "this one (from 127.0.0.1:5002) is refused" in err.value.message
    assert "ipv4:" not in err.value.message and "stop it" in err.value.fix
    for t in range(4, 8):  # the older one carries on; the newer stays refused
        seen.heard("alice", "p1", A, float(t))
        with pytest.raises(ProtocolError):
            seen.heard("alice", "p2", B, t + 0.5)


def test_a_third_process_is_refused_too() -> None:
    seen = CollaboratorProcesses()
    seen.heard("alice", "p1", A, 0.0)
    seen.heard("alice", "p2", B, 1.0)
    seen.heard("alice", "p1", A, 2.0)
    seen.heard("alice", "p3", C, 3.0)  # a third one appears ...
    seen.heard("alice", "p1", A, 4.0)  # ... and interleaves with p1, which is older
    with pytest.raises(ProtocolError, match=r"this one \(from \[::1\]:5003\)"):
        seen.heard("alice", "p3", C, 5.0)


def test_names_are_tracked_apart_and_old_clients_ignored() -> None:
    seen = CollaboratorProcesses()
    # one process speaking for two names (several collaborators in one interpreter) is fine
    for t, name in enumerate(["alice", "bob", "alice", "bob"]):
        seen.heard(name, "same", A, float(t))
    for t in range(4):  # clients from before the process token send none
        seen.heard("carol", "", A if t % 2 else B, float(t))


def test_a_process_heard_again_long_after_the_other_is_not_refused() -> None:
    seen = CollaboratorProcesses(window=60.0)
    seen.heard("alice", "p1", A, 0.0)
    seen.heard("alice", "p2", B, 1.0)
    seen.heard("alice", "p1", A, 100.0)  # p2 went silent 99 s ago: no proof both live
    seen.heard("alice", "p1", A, 101.0)


def test_memory_per_name_is_bounded() -> None:
    seen = CollaboratorProcesses()
    for i in range(100):  # 100 restarts
        seen.heard("alice", f"p{i}", A, float(i))
    assert len(seen._seen["alice"]) == KEPT_PER_COLLABORATOR


def test_one_shot_processes_never_refused_and_never_piling_up() -> None:
    """`fx collaborator ping` while the collaborator runs: each ping is a process of its own
    that makes one request; it is never refused, and what is kept about them stays bounded."""
    seen = CollaboratorProcesses()
    for i in range(200):
        seen.heard("alice", "worker", A, 2.0 * i)
        seen.heard("alice", f"ping{i}", B, 2.0 * i + 1)  # one request, then the process exits
    assert len(seen._seen["alice"]) == KEPT_PER_COLLABORATOR
    assert len(seen._refused) <= KEPT_PER_COLLABORATOR
