"""The local stack's AWS side, in one process: `python -m docpipe_local.server`.

A moto server on 127.0.0.1 with Step Functions execution on, our handlers running
in-process behind moto's Lambda seam, S3 'Object Created' events delivered to
StartExecution, and every resource of template.yaml created through the AWS APIs.
Started and stopped by `docpipe stack start|stop`; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m docpipe_local.server", description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stack-name", default="docpipe")
    ap.add_argument("--parameters", default="{}", help="template parameter overrides (JSON)")
    ap.add_argument("--ray-token", required=True, help="file holding the Ray auth token")
    ap.add_argument("--ready-file", required=True, help="written with the stack outputs when ready")
    args = ap.parse_args(argv)

    endpoint = f"http://127.0.0.1:{args.port}"
    os.environ.update({
        "MOTO_PORT": str(args.port),  # moto's Step Functions engine calls its own services here
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
    })
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    from docpipe_local import eventbridge, lambda_seam, moto_fixes, resources, template

    lambda_seam.install()
    moto_fixes.install()
    # No endpoint: once dispatch_in_process is on, the deliveries' StartExecution stays in
    # this process too (until then AWS_ENDPOINT_URL names this server).
    eventbridge.install(region_name="us-east-1")
    # werkzeug logs every request at INFO: a line per AWS call into aws.log, measured as
    # 7% of this process's CPU in a burst. Warnings and errors still reach the log.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    requests.post(f"{endpoint}/moto-api/config",
                  json={"stepfunctions": {"execute_state_machine": True}}, timeout=10).raise_for_status()

    session = boto3.session.Session(region_name="us-east-1")
    token = Path(args.ray_token).read_text().strip()
    secret_arn = session.client("secretsmanager", endpoint_url=endpoint).create_secret(
        Name=f"{args.stack_name}/ray-token", SecretString=token)["ARN"]
    # The local Ray head stands in for the ECS cluster: an "existing cluster".
    params = {"RayTokenSecretArn": secret_arn, "UseExistingRayCluster": "true", **json.loads(args.parameters),
              "AwsEndpointUrl": endpoint}  # the functions call this server, whatever else changes
    stack = template.load(args.stack_name, params)
    created = resources.create_stack(stack, session, endpoint)
    lambda_seam.dispatch_in_process()
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump({"endpoint": endpoint, "pid": os.getpid(), "outputs": stack.outputs,
                   "parameters": stack.parameters, "resources": created,
                   "definitions": stack.definitions}, f, indent=2, default=str)
    os.replace(args.ready_file + ".tmp", args.ready_file)
    print(f"docpipe local AWS ready on {endpoint}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=_schedule, name="schedule", daemon=True,
                     args=(session.client("lambda", endpoint_url=endpoint), created, stop)).start()
    while not stop.wait(1):
        pass
    server.stop()
    return 0


def _schedule(lam, created: dict, stop: threading.Event) -> None:
    """What EventBridge Scheduler does in AWS: PublishBacklog every minute (template.yaml,
    `rate(1 minute)`), through the Lambda API like any other invocation."""
    name = created.get("PublishBacklogFunction")
    interval = float(os.environ.get("DOCPIPE_SCHEDULE_SECONDS", "60"))
    while name and not stop.wait(interval):
        try:
            resp = lam.invoke(FunctionName=name, Payload=b"{}")
            if resp.get("FunctionError"):
                print(f"PublishBacklog failed: {resp['Payload'].read()[:500]!r}", flush=True)
        except Exception as err:
            print(f"PublishBacklog not invoked: {err}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
