"""Query once deployed: the Query function (ray_jobs/query_function.py) on a real LanceDB index
and on Pinecone's wire fake, `docpipe query --stack` against moto CloudFormation and a
stand-in Function URL that checks SigV4, and the function's place in infra/ray-cluster.yaml
(its security group in infra/ray-network.yaml).

The indexes are written by the embed stage itself (ray_jobs.embed.embed_document with the
local embedder), so the function must find what the pipeline stored, where it stored it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path

import boto3
import pytest
from cfn_yaml import load
from click.testing import CliRunner
from fakes import FakeHTTPServer
from fakes.pinecone_server import FakePineconeServer
from moto import mock_aws

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "infra" / "ray-cluster.yaml"
NETWORK = REPO / "infra" / "ray-network.yaml"
BUCKET = "docpipe-query-test"
JIT, TAX = "input/tracemonkey.pdf", "input/tax-return.pdf"
# (page_start, page_end, text) per chunk.
DOCUMENTS = {
    JIT: [(1, 1, "Trace-based just-in-time compilation records the hot loops of a JavaScript "
                 "program while it runs and compiles each trace to native machine code."),
          (2, 3, "Type-specialized traces let the tracing JIT skip dynamic type checks. Side "
                 "exits return to the interpreter when a guard fails.")],
    TAX: [(1, 1, "Form 1040 U.S. Individual Income Tax Return: wages, salaries, tips and "
                 "taxable interest for the year."),
          (2, 2, "Schedule A itemized deductions: charitable contributions, mortgage interest "
                 "and state and local taxes.")],
}
QUESTION = "just-in-time compilation of JavaScript"


def document_text(key: str) -> str:
    """The document text the chunks' offsets refer to (ray_jobs.chunking: pages joined by a blank line)."""
    return "\n\n".join(t for _, _, t in DOCUMENTS[key])


def chunk_starts(key: str) -> list[int]:
    starts, at = [], 0
    for _, _, t in DOCUMENTS[key]:
        starts.append(at)
        at += len(t) + 2
    return starts
ACCESS_KEY, SECRET_KEY, TOKEN = "testing", "testing", "testing"  # conftest.aws_env's


def build_index(monkeypatch, backend_env: dict[str, str]) -> None:
    """Both documents through the embed stage into the configured store (call it inside
    mock_aws: the stage reads its chunks from S3)."""
    from docpipe import aws, identity
    from ray_jobs import jobio
    from ray_jobs.embed import embed_document

    for k, v in backend_env.items():
        monkeypatch.setenv(k, v)
    aws.reset_clients()
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    for key, chunks in DOCUMENTS.items():
        doc, ver = identity.document_id(BUCKET, key), "v1-0123456789abcdef"
        rows = [{"chunk_index": i, "page_start": a, "page_end": b, "text": t, "char_start": start, "char_end": start + len(t)}
                for i, ((a, b, t), start) in enumerate(zip(chunks, chunk_starts(key), strict=True))]
        uri = jobio.write_jsonl(BUCKET, identity.artifact_key("chunks", doc, ver, "chunks.jsonl"), rows)
        embed_document({"registration": {"document_id": doc, "processing_version": ver,
                                         "bucket": BUCKET, "s3_key": key},
                        "inputs": {"chunks_uri": uri}})
    aws.reset_clients()


@pytest.fixture(scope="module")
def query_handler():
    """The handler as the image runs it: the template's ImageConfig Command, a module on
    the image's PYTHONPATH (the folder the Dockerfile copies ray_jobs/ into)."""
    config = load(CLUSTER)["Resources"]["QueryFunction"]["Properties"]["ImageConfig"]
    (module, func) = config["Command"][0].rsplit(".", 1)
    top = module.split(".")[0]
    source = REPO / _copied_from(f"{config['WorkingDirectory']}/{top}") / (module.split(".", 1)[1] + ".py")
    spec = importlib.util.spec_from_file_location("query_function_app", source)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return getattr(app, func)


def _copied_from(image_dir: str) -> str:
    """The repository folder the Dockerfile copies to `image_dir`."""
    text = (REPO / "ray_jobs" / "Dockerfile").read_text()
    (src,) = re.findall(rf"^COPY (\S+) {re.escape(image_dir)}/?$", text, re.M)
    return src


def url_event(body, method="POST", base64_encoded=False) -> dict:
    """A Function URL request (payload format 2.0) as Lambda hands it to the handler."""
    raw = body if isinstance(body, str) else json.dumps(body)
    if base64_encoded:
        raw = base64.b64encode(raw.encode()).decode()
    return {"version": "2.0", "rawPath": "/", "headers": {"content-type": "application/json"},
            "requestContext": {"http": {"method": method, "path": "/"}},
            "body": raw, "isBase64Encoded": base64_encoded}


def call(handler, body, **kw) -> tuple[int, dict]:
    response = handler(url_event(body, **kw), None)
    assert response["headers"]["Content-Type"] == "application/json"
    return response["statusCode"], json.loads(response["body"])


@pytest.fixture
def lancedb_index(aws_env, monkeypatch, tmp_path):
    with mock_aws():
        build_index(monkeypatch, {"EMBEDDING_BACKEND": "local", "VECTOR_STORE_BACKEND": "lancedb",
                                  "LANCEDB_URI": str(tmp_path / "vectors")})
    return tmp_path / "vectors"


# ------------------------------------------------------------------------ the handler
def test_finds_the_passage_with_document_pages_score_and_text(lancedb_index, query_handler):
    status, body = call(query_handler, {"text": QUESTION, "top_k": 3, "mode": "vector"})
    assert status == 200
    hits = body["hits"]
    assert len(hits) == 3 and [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    best = hits[0]
    assert best["s3_key"] == JIT and best["page_start"] == best["page_end"] == 1
    assert best["text"] == DOCUMENTS[JIT][0][2] and best["score"] > 0.5  # cosine
    assert best["id"].endswith("#0") and best["document_id"] in best["id"]
    assert best["mode"] == "vector" and best["ranks"] == {"vector": 1, "keyword": None}


def test_every_mode_finds_it_and_cites_the_matched_sentence_in_the_document(lancedb_index, query_handler):
    """Each mode (the default, QUERY_MODE, is keyword) finds it; each hit's match is a
    sentence of the document text at the offsets it gives; hybrid fuses both lists."""
    for mode in ("keyword", "hybrid", None):
        status, body = call(query_handler, {"text": "side exits return to the interpreter", "top_k": 2,
                                            **({"mode": mode} if mode else {})})
        assert status == 200, body
        best = body["hits"][0]
        assert (best["s3_key"], best["page_start"], best["page_end"]) == (JIT, 2, 3), (mode, best)
        assert best["mode"] == (mode or "keyword")
        match = best["match"]
        assert match["sentence"] == "Side exits return to the interpreter when a guard fails."
        assert document_text(JIT)[match["char_start"]:match["char_end"]] == match["sentence"]
    status, body = call(query_handler, {"text": QUESTION, "top_k": 1, "mode": "hybrid"})
    [best] = body["hits"]
    assert best["mode"] == "hybrid" and best["ranks"]["vector"] == 1 and best["ranks"]["keyword"] >= 1
    # HYBRID_VECTOR_WEIGHT (0.5) on the vector list's term.
    assert best["score"] == pytest.approx(0.5 / 61 + 1 / (60 + best["ranks"]["keyword"]))


def test_where_items_restrict_the_search_like_the_cli(lancedb_index, query_handler):
    # The tax return shares no word with the question: keyword (the default) finds nothing
    # there, vector still ranks its chunks.
    status, body = call(query_handler, {"text": QUESTION, "where": [f"document={TAX}"]})
    assert status == 200 and body["hits"] == []
    status, body = call(query_handler, {"text": QUESTION, "where": [f"document={TAX}"], "mode": "vector"})
    assert status == 200 and {h["s3_key"] for h in body["hits"]} == {TAX}
    status, body = call(query_handler, {"text": QUESTION, "where": ["pages=2-2"], "filter": {"s3_key": JIT},
                                        "mode": "vector"})
    assert status == 200 and [(h["s3_key"], h["page_start"]) for h in body["hits"]] == [(JIT, 2)]
    status, body = call(query_handler, {"text": "the tracing JIT", "mode": "keyword", "where": ["page=3"]})
    assert status == 200 and [(h["s3_key"], h["page_end"]) for h in body["hits"]] == [(JIT, 3)]


def test_default_top_k_and_base64_bodies(lancedb_index, query_handler):
    status, body = call(query_handler, {"text": QUESTION, "mode": "vector"}, base64_encoded=True)
    assert status == 200 and len(body["hits"]) == 4  # all chunks: fewer than the default 5


def test_filter_restricts_the_search(lancedb_index, query_handler):
    status, body = call(query_handler, {"text": QUESTION, "filter": {"s3_key": TAX}, "mode": "vector"})
    assert status == 200 and {h["s3_key"] for h in body["hits"]} == {TAX}
    status, body = call(query_handler, {"text": QUESTION, "filter": {"s3_key": [TAX, JIT], "page_start": 2},
                                        "mode": "vector"})
    assert status == 200
    assert sorted((h["s3_key"], h["page_start"]) for h in body["hits"]) == sorted([(TAX, 2), (JIT, 2)])


@pytest.mark.parametrize("body, complaint", [
    ({}, "text"),
    ({"text": "   "}, "text"),
    ({"text": 42}, "text"),
    ({"text": "x" * 10_001}, "at most"),
    ({"text": "jit", "top_k": 0}, "top_k"),
    ({"text": "jit", "top_k": 101}, "top_k"),
    ({"text": "jit", "top_k": "5"}, "top_k"),
    ({"text": "jit", "top_k": True}, "top_k"),
    ({"text": "jit", "filter": {"text": "x"}}, "cannot filter on 'text'"),
    ({"text": "jit", "filter": {"s3_key": []}}, "non-empty list"),
    ({"text": "jit", "filter": {"s3_key": {"$ne": JIT}}}, "s3_key"),
    ({"text": "jit", "filter": ["s3_key"]}, "filter"),
    ({"text": "jit", "mode": "semantic"}, "mode must be one of vector, keyword, hybrid"),
    ({"text": "jit", "where": ["pages=5-3"]}, "FIRST <= LAST"),
    ({"text": "jit", "where": "page=3"}, "list of"),
    ({"text": "jit", "where": ["author=me"]}, "not a key"),
    ({"text": "jit", "where": [f"document={JIT}"], "filter": {"s3_key": TAX}}, "both restrict s3_key"),
    ("not json", "not JSON"),
    ('["a list"]', "JSON object"),
])
def test_bad_requests_get_400_with_the_reason(lancedb_index, query_handler, body, complaint):
    status, answer = call(query_handler, body)
    assert status == 400 and complaint in answer["error"], answer


def test_only_post(lancedb_index, query_handler):
    status, answer = call(query_handler, {"text": QUESTION}, method="GET")
    assert status == 405 and "POST" in answer["error"]


def test_an_index_nothing_reached_yet_answers_no_hits_and_stays_untouched(aws_env, monkeypatch, tmp_path,
                                                                          query_handler):
    """Before the first document the access point's directory is empty, and the function
    mounts it read-only: searching must not try to create the table."""
    empty = tmp_path / "mounted"
    empty.mkdir()
    monkeypatch.setenv("LANCEDB_URI", str(empty))
    status, body = call(query_handler, {"text": QUESTION})
    assert (status, body) == (200, {"hits": []})
    assert list(empty.iterdir()) == []


def test_a_store_failure_is_a_500_without_details(lancedb_index, query_handler, monkeypatch):
    monkeypatch.setenv("EMBEDDING_DIMS", "768")  # the index holds 384-dim vectors
    status, body = call(query_handler, {"text": QUESTION})
    assert status == 500 and "Query function's log" in body["error"] and "384" not in body["error"]


def test_pinecone_route(aws_env, monkeypatch, query_handler):
    """VECTOR_STORE_BACKEND=pinecone: the same handler, through the real pinecone client,
    with the key read from Secrets Manager by its ARN; hybrid on a dotproduct index,
    whose records carry sparse vectors for the keyword side."""
    from ray_jobs.backends import secrets

    secrets.clear_cache()
    with FakePineconeServer(api_key="pc-query-key", metric="dotproduct") as server, mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="pinecone", SecretString="pc-query-key")["ARN"]
        env = {"EMBEDDING_BACKEND": "local", "VECTOR_STORE_BACKEND": "pinecone",
               "PINECONE_API_KEY_SECRET_ARN": arn, "PINECONE_INDEX_HOST": server.url,
               "PINECONE_NAMESPACE": "docs"}
        build_index(monkeypatch, env)
        assert len(server.ids("docs")) == 4
        status, body = call(query_handler, {"text": QUESTION, "top_k": 2, "mode": "hybrid"})
        assert status == 200 and body["hits"][0]["s3_key"] == JIT and body["hits"][0]["mode"] == "hybrid"
        assert body["hits"][0]["match"]["sentence"] == DOCUMENTS[JIT][0][2]
        assert body["hits"][0]["text"] == DOCUMENTS[JIT][0][2] and body["hits"][0]["page_end"] == 1
        status, body = call(query_handler, {"text": QUESTION, "filter": {"s3_key": [TAX]}, "mode": "hybrid"})
        assert status == 200 and {h["s3_key"] for h in body["hits"]} == {TAX}
        assert len(server.requests_to("/query", status=200)) == 4  # a dense and a sparse query each
    secrets.clear_cache()


def test_pages_are_integers_from_a_store_that_keeps_floats(aws_env, monkeypatch, query_handler):
    """Pinecone stores every metadata number as a 64-bit float (page 3 comes back as 3.0;
    the wire fake keeps what it was sent): hits carry integer pages whichever the store."""
    from ray_jobs import warm
    from ray_jobs.backends.base import EmbeddingResult, Match

    class FloatStore:
        def query(self, vector, top_k=5, filter=None):
            return [Match("d#v#4", 0.9, {"s3_key": JIT, "page_start": 3.0, "page_end": 4.0, "chunk_index": 4.0,
                                         "char_start": 10.0, "char_end": 11.0, "text": "t"})]

        keyword_query = query

    class Embedder:
        def embed(self, texts):
            return EmbeddingResult([[0.1] * 384])

    monkeypatch.setattr(warm, "vector_store", FloatStore)
    monkeypatch.setattr(warm, "embedder", Embedder)
    response = query_handler(url_event({"text": QUESTION}), None)
    assert '"page_start": 3, "page_end": 4, "chunk_index": 4, "char_start": 10, "char_end": 11' in response["body"]
    assert json.loads(response["body"])["hits"][0]["match"] == {"sentence": "t", "char_start": 10, "char_end": 11}


# ------------------------------------------------------------------------ docpipe query --stack
class FunctionUrl(FakeHTTPServer):
    """Stands in for the Query function's URL with AuthType AWS_IAM: a request whose SigV4
    signature (service lambda) does not verify against `secret_key` gets the URL's own
    403; a verified one reaches the handler as a Function URL event."""

    SIGV4 = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
                       r"/lambda/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})")

    def __init__(self, handler, secret_key: str = SECRET_KEY):
        super().__init__()
        self.handler, self.secret_key = handler, secret_key
        self.seen: list[dict] = []

    def handle(self, method, path, query, body, headers):
        auth = self.SIGV4.fullmatch(headers.get("Authorization", ""))
        self.seen.append({"authorization": auth and auth.groupdict(), "amz_date": headers.get("X-Amz-Date"),
                          "token": headers.get("X-Amz-Security-Token")})
        if not auth or not self._verified(auth, method, path, body, headers):
            return 403, {}, {"Message": "Forbidden"}
        response = self.handler({**url_event(body.decode(), method=method)}, None)
        return response["statusCode"], {}, response["body"].encode()

    def _verified(self, auth, method, path, body, headers) -> bool:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        signed = auth["signed"].split(";")
        assert {"host", "x-amz-date"} <= set(signed), signed
        request = AWSRequest(method=method, url=f"{self.url}{path}", data=body,
                             headers={h: headers[h] for h in signed if h != "host"})
        request.context["timestamp"] = headers["X-Amz-Date"]
        signer = SigV4Auth(Credentials(auth["key"], self.secret_key, headers.get("X-Amz-Security-Token")),
                           "lambda", auth["region"])
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        return expected == auth["sig"]


@pytest.fixture
def cloudformation(aws_env, monkeypatch):
    """moto's CloudFormation as a server that the CLI finds through
    AWS_ENDPOINT_URL_CLOUDFORMATION, as it would a real endpoint: the CLI then signs with
    the caller's own credentials (mock_aws would swap in fake keys of its own)."""
    import urllib.request

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", endpoint)
    try:
        yield endpoint
    finally:
        server.stop()


def stack_with_outputs(name: str, outputs: dict[str, str]) -> None:
    template = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
                "Outputs": {k: {"Value": v} for k, v in outputs.items()}}
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


def docpipe(*args):
    from docpipe_local import cli

    result = CliRunner(mix_stderr=False).invoke(cli.main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


@pytest.fixture
def deployed(lancedb_index, query_handler, cloudformation, monkeypatch, tmp_path):
    """A stack whose QueryFunctionUrl output is the stand-in URL, in moto CloudFormation;
    the local index of `docpipe query` is the same one."""
    monkeypatch.setenv("DOCPIPE_HOME", str(tmp_path))  # vectors_dir() = tmp_path/vectors = LANCEDB_URI
    with FunctionUrl(query_handler) as url:
        stack_with_outputs("docpipe-prod", {"QueryFunctionUrl": url.url + "/"})
        yield url


def test_stack_query_is_signed_and_prints_what_the_local_query_prints(deployed):
    code, remote, err = docpipe("query", QUESTION, "--stack", "docpipe-prod", "--json", "-k", "3")
    assert code == 0, err
    [seen] = deployed.seen
    assert seen["authorization"]["key"] == ACCESS_KEY and seen["authorization"]["region"] == "us-east-1"
    assert seen["token"] == TOKEN and re.fullmatch(r"\d{8}T\d{6}Z", seen["amz_date"])
    code, local, _ = docpipe("query", QUESTION, "--json", "-k", "3")
    assert code == 0 and json.loads(remote) == json.loads(local)
    assert json.loads(remote)[0]["s3_key"] == JIT
    code, table, _ = docpipe("query", QUESTION, "--stack", "docpipe-prod", "-k", "1")
    assert code == 0 and "tracemonkey.pdf" in table and "stack docpipe-prod" in table


def test_stack_query_passes_filters_and_no_hits_exits_1(deployed):
    code, out, _ = docpipe("query", QUESTION, "--stack", "docpipe-prod", "--json", "--mode", "vector",
                           "--filter", f"s3_key={TAX}", "--filter", "page_start=2")
    assert code == 0 and [(h["s3_key"], h["page_start"]) for h in json.loads(out)] == [(TAX, 2)]
    code, out, _ = docpipe("query", QUESTION, "--stack", "docpipe-prod", "--json", "--filter", "s3_key=input/none.pdf")
    assert code == 1 and json.loads(out) == []


def test_stack_query_forwards_mode_and_where_and_the_table_shows_the_matched_sentence(deployed, monkeypatch):
    from rich.console import Console

    from docpipe_local import cli

    code, out, err = docpipe("query", "taxes and interest", "--stack", "docpipe-prod", "--json", "--mode", "keyword",
                             "--where", f"document={TAX}", "--where", "page=2")
    assert code == 0, err
    [hit] = json.loads(out)
    assert (hit["mode"], hit["s3_key"], hit["page_start"]) == ("keyword", TAX, 2)
    code, local, _ = docpipe("query", "taxes and interest", "--json", "--mode", "keyword", "--where", f"document={TAX}",
                             "--where", "page=2")
    assert code == 0 and json.loads(local) == [hit]
    monkeypatch.setattr(cli, "console", Console(width=200))
    code, table, _ = docpipe("query", "when does a side exit return to the interpreter", "--stack", "docpipe-prod",
                             "-k", "1", "--mode", "hybrid")
    start = document_text(JIT).index("Side exits")
    assert code == 0 and "stack docpipe-prod, hybrid" in table
    assert f"pages 2–3, chars {start}–{len(document_text(JIT))}" in table
    assert "Side exits return to the interpreter when a guard fails." in table
    assert "Type-specialized" not in table  # the matched sentence, not the chunk's start


def test_wrong_credentials_are_a_403_with_what_to_grant(lancedb_index, query_handler, cloudformation):
    with FunctionUrl(query_handler, secret_key="another-secret") as url:
        stack_with_outputs("docpipe-prod", {"QueryFunctionUrl": url.url + "/"})
        code, out, err = docpipe("query", QUESTION, "--stack", "docpipe-prod")
    assert code == 2 and out == ""
    assert "403" in err and "lambda:InvokeFunctionUrl" in err and "lambda:InvokeFunction" in err
    assert len(url.seen) == 1 and url.seen[0]["authorization"]  # signed, just not by the right key


@pytest.mark.parametrize("outputs, stack, complaint", [
    ({"QueryFunctionUrl": "https://x.lambda-url.us-east-1.on.aws/"}, "absent", "no stack 'absent'"),
    ({"DocumentBucketName": "b"}, "docpipe-prod", "has no output QueryFunctionUrl"),
    ({"QueryFunctionUrl": "not-deployed"}, "docpipe-prod", "no Query function yet"),
])
def test_stack_problems_exit_2_and_say_which(cloudformation, outputs, stack, complaint):
    stack_with_outputs("docpipe-prod", outputs)
    code, out, err = docpipe("query", QUESTION, "--stack", stack)
    assert code == 2 and out == "" and complaint in err, err


def test_no_region_says_how_to_give_one(aws_env, monkeypatch, tmp_path):
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    code, out, err = docpipe("query", QUESTION, "--stack", "docpipe-prod")
    assert code == 2 and out == "" and "--region" in err, err


def test_bad_arguments_exit_2_before_any_call(cloudformation):
    # No stack at all: the checks come first.
    for args, complaint in ((["--filter", "page_start=one"], "integer"), (["--filter", "nofield"], "FIELD=VALUE"),
                            (["-k", "0"], "top_k"), (["--filter", "text=x"], "cannot filter"),
                            (["--where", "pages=4-2"], "FIRST <= LAST"), (["--where", "document=report"], "S3 key"),
                            (["--where", "size=3"], "not a key"), (["--mode", "semantic"], "'semantic' is not one of"),
                            (["--filter", f"s3_key={JIT}", "--where", f"document={TAX}"], "both restrict s3_key")):
        code, _, err = docpipe("query", QUESTION, "--stack", "docpipe-prod", *args)
        assert code == 2 and complaint in err, (args, err)
    code, _, err = docpipe("query", QUESTION, "--region", "eu-west-1")
    assert code == 2 and "--stack" in err


def test_requests_are_signed_for_the_urls_region():
    from docpipe_local.remote_query import signing_region

    assert signing_region("https://abc123xyz.lambda-url.eu-central-1.on.aws/", "us-east-1") == "eu-central-1"
    assert signing_region("http://127.0.0.1:8080/", "us-east-1") == "us-east-1"


def test_help_tells_how():
    code, out, _ = docpipe("query", "--help")
    text = " ".join(out.split())
    assert code == 0
    for words in ("--stack NAME", "QueryFunctionUrl", "--filter FIELD=VALUE", "lambda:InvokeFunctionUrl", "--region",
                  "--mode [vector|keyword|hybrid]", "BM25", "reciprocal rank", "--where KEY=VALUE", "document=",
                  "entity=", "phrase=", "pages=A-B", "page=N", "matched sentence", "character span"):
        assert words in text, words


# ------------------------------------------------------------------------ the template
@pytest.fixture(scope="module")
def cluster():
    return load(CLUSTER)


def test_function_runs_the_ray_image_through_the_runtime_client(cluster):
    fn = cluster["Resources"]["QueryFunction"]
    p = fn["Properties"]
    assert fn["Type"] == "AWS::Lambda::Function" and p["PackageType"] == "Image"
    # The image the Ray services run from this repository (their Image's non-custom branch).
    worker = cluster["Resources"]["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert p["Code"]["ImageUri"] == worker["Image"]["Fn::If"][2] == {
        "Fn::Sub": "${RayRepository.RepositoryUri}:${RayImageTag}"}
    assert p["ImageConfig"]["EntryPoint"] == ["python", "-m", "awslambdaric"]
    pins = (REPO / "ray_jobs" / "requirements.txt").read_text().split()
    assert any(re.fullmatch(r"awslambdaric==[\d.]+", pin) for pin in pins)
    module = p["ImageConfig"]["Command"][0].rsplit(".", 1)[0]  # ray_jobs.query_function
    assert _copied_from(f'{p["ImageConfig"]["WorkingDirectory"]}/{module.split(".")[0]}') == "ray_jobs"
    assert (REPO / (module.replace(".", "/") + ".py")).is_file()
    dockerfile = (REPO / "ray_jobs" / "Dockerfile").read_text()
    assert re.search(rf"^ENV PYTHONPATH={re.escape(p['ImageConfig']['WorkingDirectory'])}$", dockerfile, re.M)
    assert p["Architectures"] == ["x86_64"]  # the image is built for linux/amd64 (docs/deploy.md)


def test_function_exists_only_when_the_services_run_this_repositorys_image(cluster):
    conditions = cluster["Conditions"]
    for lid in ("QueryFunction", "QueryUrl", "QueryRole", "QueryLogGroup"):
        assert cluster["Resources"][lid]["Condition"] == "RunQueryFunction", lid
    assert conditions["RunQueryFunction"] == {
        "Fn::And": [{"Condition": "HasImageTag"}, {"Fn::Not": [{"Condition": "UseCustomImage"}]}]}
    assert conditions["HasImageTag"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "RayImageTag"}, ""]}]}
    # ... which the Ray services need too (RunCluster = a tag or a custom image).
    assert {"Condition": "HasImageTag"} in conditions["RunCluster"]["Fn::Or"]


def test_url_uses_iam_auth_and_is_an_output_of_both_stacks(cluster):
    url = cluster["Resources"]["QueryUrl"]
    assert url["Type"] == "AWS::Lambda::Url"
    assert url["Properties"] == {"TargetFunctionArn": {"Fn::GetAtt": ["QueryFunction", "Arn"]}, "AuthType": "AWS_IAM"}
    assert not [r for r in cluster["Resources"].values() if r["Type"] == "AWS::Lambda::Permission"]
    nested = cluster["Outputs"]["QueryFunctionUrl"]
    assert "Condition" not in nested  # the parent always reads it
    assert nested["Value"] == {"Fn::If": ["RunQueryFunction", {"Fn::GetAtt": ["QueryUrl", "FunctionUrl"]}, "not-deployed"]}
    main = load(REPO / "template.yaml")["Outputs"]["QueryFunctionUrl"]
    assert main["Value"] == {"Fn::GetAtt": ["RayCluster", "Outputs.QueryFunctionUrl"]}
    assert main["Condition"] == "CreateRayCluster"


def test_function_mounts_the_workers_access_point_read_only(cluster):
    res = cluster["Resources"]
    p = res["QueryFunction"]["Properties"]
    workers = res["WorkerTaskDefinition"]["Properties"]["Volumes"]["Fn::If"]
    assert workers[0] == "UseLanceDb" and workers[1][0]["EFSVolumeConfiguration"]["AuthorizationConfig"][
        "AccessPointId"] == {"Ref": "VectorAccessPoint"}
    cond, [mount], no = p["FileSystemConfigs"]["Fn::If"]
    assert (cond, no) == ("UseLanceDb", {"Ref": "AWS::NoValue"})
    assert mount["Arn"] == {"Fn::GetAtt": ["VectorAccessPoint", "Arn"]}
    assert mount["LocalMountPath"].startswith("/mnt/")
    env = p["Environment"]["Variables"]
    assert env["LANCEDB_URI"] == {"Fn::If": ["UseLanceDb", mount["LocalMountPath"], {"Ref": "AWS::NoValue"}]}
    statements = res["QueryRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    efs = [s["Fn::If"][1] for s in statements if "Fn::If" in s and s["Fn::If"][0] == "UseLanceDb"]
    assert efs == [{"Sid": "MountVectorStoreReadOnly", "Effect": "Allow", "Action": "elasticfilesystem:ClientMount",
                    "Resource": {"Fn::GetAtt": ["VectorFileSystem", "Arn"]},
                    "Condition": {"StringEquals": {"elasticfilesystem:AccessPointArn": {
                        "Fn::GetAtt": ["VectorAccessPoint", "Arn"]}}}}]
    assert "ClientWrite" not in json.dumps(res["QueryRole"])
    # Mount targets first: Lambda refuses an access point without one in its zones.
    deps = json.dumps(p["Tags"])
    assert '"Ref": "VectorMountTargetA"' in deps and '"Ref": "VectorMountTargetB"' in deps


def test_function_sits_in_the_private_subnets_and_reaches_only_its_backends(cluster):
    res = cluster["Resources"]
    vpc = res["QueryFunction"]["Properties"]["VpcConfig"]
    worker_net = res["WorkerService"]["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert vpc["SubnetIds"] == worker_net["Subnets"]
    assert vpc["SecurityGroupIds"] == [{"Fn::GetAtt": ["Network", "Outputs.QuerySecurityGroupId"]}]
    network = load(NETWORK)  # the group and its rules, with every other group's
    assert network["Outputs"]["QuerySecurityGroupId"]["Value"] == {"Ref": "QuerySecurityGroup"}
    granted = json.dumps(res["QueryRole"]["Properties"]["Policies"])
    res = network["Resources"]
    rules = {lid: r for lid, r in res.items() if r["Type"] in ("AWS::EC2::SecurityGroupEgress",
                                                                 "AWS::EC2::SecurityGroupIngress")
             and {"Ref": "QuerySecurityGroup"} in (r["Properties"].get("GroupId"),
                                                   r["Properties"].get("SourceSecurityGroupId"))}
    summary = {lid: (r.get("Condition"), r["Properties"]["FromPort"]) for lid, r in rules.items()}
    assert summary == {"QueryEgressNfs": ("UseLanceDb", 2049), "VectorFileSystemIngressFromQuery": ("UseLanceDb", 2049),
                       "QueryEgressHttps": ("NeedsInternet", 443), "EndpointIngressFromQuery": ("CreateVpc", 443)}
    inline = res["QuerySecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert [r["IpProtocol"] for r in inline] == ["icmp"]  # the no-op rule: no default allow-all
    for absent in ("s3:", "dynamodb:", "sqs:", "states:"):
        assert absent not in granted, absent
    assert '"Ref": "OpenAIKeySecretArn"' in granted and '"Ref": "PineconeKeySecretArn"' in granted


def test_function_environment_matches_the_workers_backends(cluster):
    env = cluster["Resources"]["QueryFunction"]["Properties"]["Environment"]["Variables"]
    worker = cluster["Resources"]["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    worker_env = {e["Name"]: e["Value"] for e in worker["Environment"] if "Name" in e}
    for name in ("EMBEDDING_BACKEND", "VECTOR_STORE_BACKEND", "OPENAI_API_KEY_SECRET_ARN",
                 "PINECONE_API_KEY_SECRET_ARN", "PINECONE_INDEX_HOST", "PINECONE_NAMESPACE"):
        assert env[name] == worker_env[name], name
    assert env["EMBEDDING_CACHE"] == "off"  # the role has no S3
    assert not {"AWS_REGION", "AWS_DEFAULT_REGION"} & set(env)  # reserved by Lambda


def test_repository_lets_lambda_pull_for_the_query_function_only(cluster):
    policy = cluster["Resources"]["RayRepository"]["Properties"]["RepositoryPolicyText"]
    [stmt] = policy["Statement"]
    assert stmt["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert sorted(stmt["Action"]) == ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    name = cluster["Resources"]["QueryFunction"]["Properties"]["FunctionName"]["Fn::Sub"]
    assert stmt["Condition"]["StringEquals"]["aws:SourceArn"]["Fn::Sub"].endswith(f":function:{name}")
