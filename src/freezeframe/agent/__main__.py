"""freezeframe-agent: serve the command API, look the node up, heartbeat; stop politely on SIGTERM.

Prints one line "freezeframe-agent listening http://HOST:PORT callback <callback_url>" on stdout
once the command API is up (tests read the port from it when listening on port 0).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from . import AGENT_VERSION, api_client, config, extensions, server

LOG = logging.getLogger("freezeframe.agent")


def callback_url(cfg: config.AgentConfig, bound_host: str, bound_port: int) -> str:
    if cfg.advertise_url:
        return cfg.advertise_url
    host = cfg.advertise_host
    if not host:
        host = bound_host
        if host in ("0.0.0.0", "::", ""):
            host = (cfg.api_url and api_client.route_source(cfg.api_url)) or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.advertise_port or bound_port}"


def main(argv: list[str] | None = None) -> int:
    cfg = config.load(argv)
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx = extensions.Context(disks=cfg.disks, insecure=cfg.insecure, retry_backoff=cfg.retry_backoff)
    state = server.AgentState(ctx)
    stopping = threading.Event()
    reason = {"text": "the agent is stopping"}

    def on_signal(signum, _frame):
        reason["text"] = f"the agent was stopped ({signal.Signals(signum).name})"
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    httpd = server.make_server(state, cfg.listen_host, cfg.listen_port)
    host, port = httpd.server_address[:2]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="command-api", daemon=True).start()
    url = callback_url(cfg, host, port)
    LOG.info("%s: command API on %s:%s, callback_url %s", AGENT_VERSION, host, port, url)
    shown = f"[{host}]" if ":" in host else host
    print(f"freezeframe-agent listening http://{shown}:{port} callback {url}", flush=True)

    heartbeater = None
    code = 0
    try:
        if cfg.agent_token:
            LOG.warning("standalone mode: no lookup, no heartbeats")
            state.token = cfg.agent_token
        else:
            client = api_client.ApiClient(cfg.api_url, insecure=cfg.insecure)
            macs = api_client.local_macs()
            LOG.info("looking up node %s by %s", cfg.node_uuid or "(by MAC)", ", ".join(macs) or "no MACs")
            data = client.lookup(macs, cfg.node_uuid, timeout=cfg.lookup_timeout, wait=stopping.wait)
            node = data.get("node") or {}
            conf = data.get("config") or {}
            ctx.node = node
            state.token = conf["agent_token"]
            node_id = node.get("uuid") or cfg.node_uuid
            hb_timeout = cfg.heartbeat_timeout or float(conf.get("heartbeat_timeout") or 300)
            LOG.info("node %s found; heartbeat every %.0f-%.0f s", node_id, 0.3 * hb_timeout, 0.6 * hb_timeout)
            heartbeater = api_client.Heartbeater(client, node_id, state.token, url, hb_timeout, state.heartbeat_fields)
            state.on_command_end.append(heartbeater.poke)
            heartbeater.start()
        while not stopping.wait(1.0):
            pass
    except api_client.LookupFailed as exc:
        LOG.error("%s", exc)
        code = 0 if stopping.is_set() else 1
    finally:
        stopped = state.stop(reason["text"])
        if stopped is not None:
            LOG.info("stopped command %s: %s", stopped.name, stopped.status)
        if heartbeater is not None:
            heartbeater.stop(final=True)
        httpd.shutdown()
        httpd.server_close()
    return code


if __name__ == "__main__":
    sys.exit(main())
