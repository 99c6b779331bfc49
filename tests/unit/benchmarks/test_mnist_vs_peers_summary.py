"""mnist_vs_peers' per-run summary: ``fx simulate`` runs as one process tree, so its aggregator
and collaborators are found among the tree's members; its set-up is inside its wall time."""

from __future__ import annotations

import dataclasses

from benchmarks.common import ProcResult
from benchmarks.fedrun_runner import _simulate_roles
from benchmarks.mnist_vs_peers import summarize

FX = "/venv/bin/python -m fedrun.cli.main"


def proc(role, cpu, rss, idle):
    """One launched process as the benchmark's launcher records it."""
    result = ProcResult(
        name=role, role=role, argv=[], pid=1, returncode=0, start_s=0.0, exit_s=1.0,
        wall_s=1.0, cpu_user_s=cpu, cpu_sys_s=0.0, cpu_s=cpu, peak_rss_mib=rss,
        tree_peak_rss_mib=rss, tree_max_member_rss_mib=rss, tree_pids=1, idle_s=idle,
        busy_window_s=1.0, idle_periods=[], killed=False, log=None, descendants=[],
    )  # fmt: skip
    return dataclasses.asdict(result)


def member(pid, cmd, rss, cpu):
    return {"pid": pid, "cmd": cmd, "peak_rss_mib": rss, "cpu_s": cpu}


def simulate_result():
    members = [
        member(1, "/venv/bin/python /venv/bin/fx simulate --template torch/mnist", 246.0, 1.9),
        member(2, f"{FX} aggregator start", 84.0, 0.4),
        member(3, f"{FX} collaborator start -n collaborator1", 494.0, 22.7),
        member(4, f"{FX} collaborator start -n collaborator2", 500.0, 22.8),
    ]
    return {
        "ok": True,
        "wall_s": 26.7,
        "group": {"procs": [proc("driver", 47.9, 246.0, 0.0)]},
        "processes_by_role": _simulate_roles(members),
        "rounds": [
            {"round": 0, "s": 13.1},
            {"round": 1, "s": 10.4},
            {"round": "final validation", "s": 0.5},
        ],
        "final_accuracy_full_test": {"accuracy": 0.9757},
    }


def test_tree_members_are_sorted_by_their_command():
    roles = simulate_result()["processes_by_role"]
    assert [d["pid"] for d in roles["aggregator"]] == [2]
    assert [d["pid"] for d in roles["collaborator"]] == [3, 4]
    assert [d["pid"] for d in roles["driver"]] == [1]


def test_simulate_summary_takes_peaks_from_the_members_and_cpu_from_the_whole_tree():
    sm = summarize(simulate_result())
    assert sm["aggregator_peak_rss_mib"] == 84.0
    assert sm["collaborator_peak_rss_mib"] == 500.0
    assert sm["cpu_s_total"] == 47.9  # the driver's figure already holds its children's
    assert sm["rounds_s"] == [13.1, 10.4]
    assert sm["final_accuracy"] == 0.9757
    assert sm["collaborator_idle_s"] is None  # not sampled per member: not reported as 0


def test_fx_flow_summary_still_reads_roles_from_the_launched_processes():
    procs = [proc("aggregator", 0.4, 90.0, 20.0), proc("collaborator", 23.0, 580.0, 0.4)]
    sm = summarize({"ok": True, "wall_s": 25.0, "group": {"procs": procs}})
    assert sm["aggregator_peak_rss_mib"] == 90.0
    assert sm["collaborator_peak_rss_mib"] == 580.0
    assert sm["collaborator_idle_s"] == 0.4
