"""Run an aggregator or a collaborator node from a plan (what `fx ... start` does).

These glue the pure cores (federation/) to the network (transport/): load the plan, build the
components, open the server or channel with the right credentials, and run to the end.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

from fedrun.federation.aggregator import Aggregator
from fedrun.plan.loader import Plan
from fedrun.transport.network import Network

log = logging.getLogger("fedrun")


def _server_credentials(plan: Plan, network: Network) -> Any:
    if network.unprotected:
        log.warning("%s", network.unprotected)
    if not network.use_tls:
        return None
    from fedrun.transport.tls import server_credentials

    return server_credentials(network.cert_folder, network.agg_addr, network.require_client_auth)


def _pipelines(plan: Plan) -> dict[str, Any]:
    from fedrun.plan.components import compression_pipeline

    pipeline = compression_pipeline(plan)
    return {pipeline.name: pipeline}


def start_aggregator(
    plan: Plan, *, task_group: str | None = None, reset_state: bool = False
) -> tuple[Aggregator, Any]:
    """Build the aggregator and start serving; returns (aggregator, server).

    The caller holds the workspace's :class:`~fedrun.storage.aggregator_lock.AggregatorLock`
    (``run_aggregator`` does), since building the aggregator reads, and may reset, its state.
    """
    from fedrun.buffers import limit_malloc_arenas
    from fedrun.plan.components import build_aggregator
    from fedrun.transport.server import AggregatorServer, check_bindable

    limit_malloc_arenas()
    note_ignored_settings(plan)
    network = Network.from_plan(plan)
    # before the state is read (and, with --reset-state, reset) and models are moved: a start
    # that cannot listen changes nothing
    check_bindable(network)
    credentials = _server_credentials(plan, network)
    if credentials is not None:
        from fedrun.transport.grpc_log import capture_handshake_failures

        capture_handshake_failures()
    aggregator = build_aggregator(
        plan,
        task_group=task_group,
        reset=reset_state,
        reconnect_interval=network.client_reconnect_interval,
        reconnect_timeout=network.client_reconnect_timeout,
    )
    server = AggregatorServer(aggregator, network, credentials, pipelines=_pipelines(plan))
    server.start()
    if aggregator.farewell_of is not None:
        log.warning(
            "experiment %s already finished, but its aggregator stopped before every "
            "collaborator heard it: telling those still waiting to stop",
            plan.federation_id,
        )
        return aggregator, server
    log.info(
        "experiment %s: %d rounds, %d collaborators (%s)",
        plan.federation_id,
        aggregator.rounds_to_train,
        len(aggregator.collaborators),
        ", ".join(aggregator.collaborators),
    )
    aggregator.announce_round()
    return aggregator, server


def run_aggregator(
    plan: Plan, *, task_group: str | None = None, reset_state: bool = False
) -> Aggregator:
    """Serve until every collaborator was told to stop (or SIGTERM/SIGINT).

    Refuses (FX-STATE-015) when another aggregator runs in the same workspace.
    """
    from fedrun.storage.aggregator_lock import AggregatorLock

    with AggregatorLock.for_workspace(plan.workspace):
        note_ignored_settings(plan)
        return _serve(plan, task_group=task_group, reset_state=reset_state)


def note_ignored_settings(plan: Plan) -> None:
    """One warning line per OpenFL setting the plan sets that fedrun does not act on."""
    for note in plan.ignored_settings():
        log.warning("%s", note)


def _let_the_round_end_finish(aggregator: Aggregator) -> None:
    """Before the server and the state close: take no more results, and wait for a round's end
    in progress (saving a model of gigabytes takes seconds). Stopped under it, its state was
    closed while it committed (a false disk error) and the collaborator whose result closed
    the round was told the aggregator failed. A second Ctrl-C stops at once: the state on disk
    is whole at any instant, and the next start finishes the round."""
    said = False
    while not aggregator.begin_stop(timeout=0.5):
        if not said:
            said = True
            log.warning(
                "saving the end of round %d before stopping (Ctrl-C again stops at once: the "
                "round is then finished when the aggregator starts again)",
                aggregator.round_num,
            )


def _serve(plan: Plan, *, task_group: str | None, reset_state: bool) -> Aggregator:
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("received %s: stopping the aggregator", signal.Signals(signum).name)
        signals.append(signum)
        stop.set()

    # before the server starts: a SIGTERM right after "listening on" killed the process
    # unhandled (exit -15, no resume hint) instead of stopping it
    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        aggregator, server = start_aggregator(plan, task_group=task_group, reset_state=reset_state)
    except BaseException:
        signal.signal(signal.SIGTERM, previous)
        raise
    try:
        server.serve_until_finished(stop)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping the aggregator")
        signals.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if signals:
            aggregator.stopped_by_signal = signals[0]
        _let_the_round_end_finish(aggregator)
        server.stop(grace=1.0)
        aggregator.discard_kept()
        if aggregator.finished_event.is_set():
            aggregator.state_store.record_ended()  # a restart need not wait for anybody
        aggregator.metrics.close()
        aggregator.state_store.close()
    if aggregator.farewell_of is not None:
        told = sorted(aggregator.quit_sent)
        log.info(
            "told %d collaborator%s to stop%s",
            len(told),
            "" if len(told) == 1 else "s",
            f" ({', '.join(told)})" if told else "",
        )
        raise aggregator.farewell_of
    if aggregator.finished_event.is_set():
        log.info("all collaborators stopped; aggregator exiting")
    return aggregator


def _client(plan: Plan, name: str) -> Any:
    from fedrun.plan.components import compression_pipeline
    from fedrun.transport.client import AggregatorClient

    network = Network.from_plan(plan)
    credentials = None
    if network.unprotected:
        log.warning("%s", network.unprotected)
    if network.use_tls:
        from fedrun.transport.grpc_log import capture_handshake_failures
        from fedrun.transport.tls import client_credentials

        credentials = client_credentials(network.cert_folder, name, network.require_client_auth)
        # gRPC's own handshake lines say less than the check that follows a failed handshake
        capture_handshake_failures(log_refusals=False)
    pipeline = compression_pipeline(plan)
    return AggregatorClient(
        network,
        name,
        plan.hash,
        plan.federation_id,
        credentials,
        pipeline=pipeline,
        pipelines={pipeline.name: pipeline},
    )


def _say_when_stopped(what: str) -> None:
    """On SIGTERM (``systemctl stop``, ``docker stop``, ``kill``) log why ``what`` stops and exit
    143, unwinding (the connection is closed) instead of vanishing without a line."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (an in-process test's node)

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("received %s: stopping %s", signal.Signals(signum).name, what)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)


#: a collaborator pings this often while it works: it is not taken for gone, and a second
#: process started under its name is refused within about two of these
HEARTBEAT_SECONDS = 5.0


def _stop_when_refused(client: Any) -> None:
    """Have the aggregator's refusal heard by the heartbeat (another process works under this
    collaborator's name...) raised in the main thread at once, interrupting the task it runs:
    the work would be refused, and it takes a core from the process whose work counts."""
    if threading.current_thread() is not threading.main_thread():
        return  # an in-process test's node: the refusal comes with its next call
    refusals: list[Exception] = []

    def on_signal(_signum: int, _frame: Any) -> None:
        if refusals:
            raise refusals[0]

    signal.signal(signal.SIGUSR1, on_signal)
    main = threading.main_thread().ident

    def refused(error: Exception) -> None:
        refusals.append(error)
        if main is not None:
            signal.pthread_kill(main, signal.SIGUSR1)

    client.on_refused = refused


def run_collaborator(plan: Plan, name: str) -> Any:
    """Build the task runner, connect, and run tasks until the experiment ends."""
    from fedrun.buffers import limit_malloc_arenas
    from fedrun.plan.components import build_collaborator, build_task_runner, collaborator_timeout

    limit_malloc_arenas()

    if name not in plan.data_paths:
        from fedrun.plan.components import no_data_entry

        raise no_data_entry(plan, name)
    _say_when_stopped(f"collaborator {name}")
    runner = build_task_runner(plan, name)
    torch = sys.modules.get("torch")
    if torch is not None:
        threads = torch.get_num_threads()
        log.info(
            "collaborator %s trains with %d thread%s", name, threads, "" if threads == 1 else "s"
        )
    client = _client(plan, name)  # its credentials check this node's key and certificate
    if client.network.use_tls and client.network.require_client_auth:
        from fedrun.transport.diagnose import expiry_warning

        warning = expiry_warning(client.network, name)
        if warning:
            log.warning("%s: renew it before it does", warning)
    try:
        reply = client.wait_for_aggregator()
        log.info(
            "connected to %s (round %d of %d, plan %s)",
            client.target,
            reply.round,
            reply.rounds_to_train,
            plan.hash[:12],
        )
        timeout = collaborator_timeout(plan)
        _stop_when_refused(client)
        client.start_heartbeat(min(HEARTBEAT_SECONDS, timeout / 3))
        collaborator = build_collaborator(plan, name, client, runner)
        collaborator.work()
        log.info(
            "collaborator %s done: %d rounds%s, %.1f MiB sent",
            name,
            len(collaborator.rounds_done),
            " and the final validation" if collaborator.final_validation_done else "",
            client.bytes_sent / 2**20,
        )
        return collaborator
    finally:
        client.close()


def ping(plan: Plan, name: str) -> dict[str, Any]:
    """One Ping: connectivity, certificates, name authorisation and plan hash."""
    from fedrun.plan.loader import did_you_mean

    if name not in plan.data_paths and did_you_mean(name, plan.data_paths):
        # a typo: its missing key would be the error, and its fix to make a new identity
        from fedrun.plan.components import no_data_entry

        raise no_data_entry(plan, name)
    client = _client(plan, name)
    started = time.monotonic()
    try:
        reply = client.ping()
    finally:
        client.close()
    return {
        "target": client.target,
        "round": reply.round,
        "rounds_to_train": reply.rounds_to_train,
        "plan_hash": reply.plan_hash,
        "seconds": time.monotonic() - started,
    }
