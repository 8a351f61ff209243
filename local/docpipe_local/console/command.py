"""`docpipe console`: serve the console for the running local stack until Ctrl-C."""

from __future__ import annotations

import signal
import sys

import click

from docpipe_local import stack as stackmod

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8585


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command("console")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="address to listen on (the console has no login: keep it on this machine)")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="port to listen on")
def console(host: str, port: int):
    """A web page over the running local stack: executions with their live graph, each
    document's control items, audit trail, error report and Ray log lines, "run again"
    for a failed document, and search. Start the stack first (`docpipe stack start`).

    Exit codes: 0 stopped (SIGTERM), 2 the stack is not running or the port is busy,
    130 stopped with Ctrl-C."""
    from werkzeug.serving import make_server

    from docpipe_local.console.app import LOOPBACK, create_app

    try:
        state = stackmod.running_state()
    except stackmod.StackError as e:
        _fail(str(e))
    try:
        server = make_server(host, port, create_app(state, bind_host=host), threaded=True)
    except (OSError, SystemExit):  # werkzeug says why (in use, no such address), then exits 1
        _fail(f"cannot listen on {host}:{port}; pick another --port (or --host)")
    if host not in LOOPBACK:
        click.echo(f"warning: listening on {host}: anyone who reaches it can read documents and start executions",
                   err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"docpipe console on http://{shown}:{server.server_port}/ (stack {state['endpoint']}); Ctrl-C stops it")
    # werkzeug's serve_forever swallows KeyboardInterrupt: our own exception carries the code.
    signal.signal(signal.SIGINT, _stop(130))
    signal.signal(signal.SIGTERM, _stop(0))
    try:
        server.serve_forever()
    except _Stopped as stopped:
        click.echo("stopped")
        sys.exit(stopped.code)
    finally:
        server.server_close()


class _Stopped(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _stop(code: int):
    def handler(signum, frame):
        raise _Stopped(code)
    return handler
