"""`docpipe query --stack NAME`: the deployed index, through the stack's Query function.

The function URL comes from the stack's `QueryFunctionUrl` output (CloudFormation
DescribeStacks); the URL's auth type is AWS_IAM, so every request is signed with the
caller's AWS credentials (SigV4, service `lambda`, the URL's region). The answer has the
hits of ray_jobs/search.py, the same as a local query.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

OUTPUT = "QueryFunctionUrl"
# https://<url-id>.lambda-url.<region>.on.aws/
_URL_REGION = re.compile(r"^https://[a-z0-9]+\.lambda-url\.([a-z0-9-]+)\.on\.aws(?::\d+)?/?", re.I)


class QueryError(Exception):
    """What went wrong, said for the user; `exit_code` as the CLI's (2: stack or usage)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def function_url(session, stack_name: str) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

    try:
        stacks = session.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except NoRegionError as e:
        raise QueryError(f"which region is stack {stack_name!r} in? Pass --region or set AWS_REGION") from e
    except NoCredentialsError as e:
        raise QueryError(f"no AWS credentials to read stack {stack_name!r}: {e}") from e
    except ClientError as e:
        if "does not exist" in str(e):
            raise QueryError(f"no stack {stack_name!r} in {session.region_name} "
                             "(--region, or AWS_REGION, picks another region)") from e
        raise QueryError(f"cannot read stack {stack_name!r}: {e}") from e
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    url = outputs.get(OUTPUT)
    if url is None:
        raise QueryError(f"stack {stack_name!r} has no output {OUTPUT}: it was deployed before the "
                         "Query function existed, or with UseExistingRayCluster=true (no cluster of "
                         "its own, so no index beside it)")
    if not url.startswith(("https://", "http://")):
        raise QueryError(f"stack {stack_name!r} has no Query function yet ({OUTPUT} = {url!r}): it "
                         "is created with the Ray services, once RayImageTag is set (docs/deploy.md)")
    return url


def query(session, url: str, text: str, top_k: int, filter: dict | None = None,
          timeout: float = 60.0, mode: str | None = None, where: list[str] | None = None) -> list[dict[str, Any]]:
    """The hits the Query function answers for one signed request (`mode` None: the
    function's QUERY_MODE; `where`: --where items, which the function parses)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials = session.get_credentials()
    if credentials is None:
        raise QueryError("no AWS credentials to sign the request with (aws configure, AWS_PROFILE, ...)")
    region = signing_region(url, session.region_name)
    body = json.dumps({"text": text, "top_k": top_k, **({"filter": filter} if filter else {}),
                       **({"mode": mode} if mode else {}), **({"where": where} if where else {})}).encode()
    signed = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(credentials.get_frozen_credentials(), "lambda", region).add_auth(signed)
    request = urllib.request.Request(url, data=body, headers=dict(signed.headers.items()), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["hits"]
    except urllib.error.HTTPError as e:
        detail = _detail(e)
        if e.code == 403:
            raise QueryError(
                f"403 from the Query function ({detail}): your identity needs lambda:InvokeFunctionUrl "
                f"and lambda:InvokeFunction on it (docs/deploy.md), with credentials of the stack's "
                f"account, signed for {region}") from e
        if e.code == 400:
            raise QueryError(f"the Query function refused the request: {detail}") from e
        raise QueryError(f"the Query function answered {e.code}: {detail}") from e
    except urllib.error.URLError as e:
        raise QueryError(f"cannot reach the Query function at {url}: {e.reason}") from e


def signing_region(url: str, default: str) -> str:
    """The region in a function URL's host (the signature must name it), else `default`."""
    match = _URL_REGION.match(url)
    return match.group(1) if match else default


def _detail(error: urllib.error.HTTPError) -> str:
    raw = error.read().decode("utf-8", "replace")
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.strip()[:300] or error.reason
    # Ours: {"error"}; the Function URL's own refusals (403): {"Message"}.
    return str(doc.get("error") or doc.get("Message") or doc) if isinstance(doc, dict) else raw[:300]
