"""Switching backends is a template parameter and nothing else.

The template is deployed to the in-process local stack twice: with the defaults (the
embedded backends) and with EmbeddingBackend=openai + VectorStoreBackend=pinecone, whose
API keys sit in Secrets Manager and whose endpoints are wire-compatible servers on
127.0.0.1. The same upload ends COMPLETED both ways, with the vectors where the
parameters say.
"""

from __future__ import annotations

from conftest import corpus_file, executions_for, local_aws_stack, wait_for_execution
from fakes.openai_server import FakeOpenAIServer
from fakes.pinecone_server import FakePineconeServer

from docpipe import identity

GOOD = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"


def ingest(stack, clients, key, body, nth=1):
    clients["s3"].put_object(Bucket=stack.outputs["DocumentBucketName"], Key=key, Body=body)
    arn = stack.outputs["IngestDocumentStateMachineArn"]
    newest = sorted(executions_for(clients["stepfunctions"], arn, nth), key=lambda e: e["startDate"])[-1]
    return wait_for_execution(clients["stepfunctions"], newest["executionArn"])


def control_item(stack, clients, key):
    doc = identity.document_id(stack.outputs["DocumentBucketName"], key)
    [item] = clients["dynamodb"].query(TableName=stack.outputs["ControlTableName"],
                                       KeyConditionExpression="document_id = :d",
                                       ExpressionAttributeValues={":d": {"S": doc}})["Items"]
    return {k: next(iter(v.values())) for k, v in item.items()}


def test_default_parameters_use_the_embedded_backends(aws_env):
    with local_aws_stack() as (stack, clients, head):
        desc = ingest(stack, clients, "input/a.pdf", corpus_file(GOOD).read_bytes())
        assert desc["status"] == "SUCCEEDED"
        env = head.submissions[-1]["runtime_env"]["env_vars"]
        assert env["EMBEDDING_BACKEND"] == "local" and env["VECTOR_STORE_BACKEND"] == "lancedb"
        item = control_item(stack, clients, "input/a.pdf")
        assert item["embedding_model"] == "all-MiniLM-L6-v2" and item["tokens"] == "0"
        from ray_jobs.backends.lancedb_store import LanceDBStore

        assert len(LanceDBStore.from_env().list_ids(identity.vector_id_prefix(item["document_id"]))) == int(item["vectors"])


def test_openai_and_pinecone_by_parameters_only(aws_env, tmp_path):
    with FakeOpenAIServer(api_key="sk-test") as openai, FakePineconeServer(api_key="pc-test") as pinecone:
        params = {"EmbeddingBackend": "openai", "VectorStoreBackend": "pinecone",
                  "OpenAIKeySecretArn": "docpipe/openai", "PineconeKeySecretArn": "docpipe/pinecone",
                  "OpenAIBaseUrl": openai.base_url, "PineconeIndexHost": pinecone.url,
                  "PineconeNamespace": "docs"}
        secrets = {"docpipe/openai": "sk-test", "docpipe/pinecone": "pc-test"}
        with local_aws_stack(params, secrets) as (stack, clients, _head):
            body = corpus_file(GOOD).read_bytes()
            desc = ingest(stack, clients, "input/report.pdf", body)
            assert desc["status"] == "SUCCEEDED", desc
            item = control_item(stack, clients, "input/report.pdf")
            assert item["status"] == "COMPLETED"
            assert item["embedding_model"] == "text-embedding-3-small"
            assert int(item["tokens"]) > 0 and float(item["cost_usd"]) > 0
            ids = pinecone.ids("docs")
            assert len(ids) == int(item["vectors"]) > 0
            assert all(i.startswith(identity.vector_id_prefix(item["document_id"], item["processing_version"])) for i in ids)
            assert not (tmp_path / "vectors").exists(), "nothing went to the embedded store"

            # The same bytes under another key: a new document, but every chunk is in the
            # embedding cache, so OpenAI gets no new request.
            calls = len(openai.ok_requests)
            desc = ingest(stack, clients, "input/copy-of-report.pdf", body, nth=2)
            assert desc["status"] == "SUCCEEDED"
            assert len(openai.ok_requests) == calls
            copy = control_item(stack, clients, "input/copy-of-report.pdf")
            assert int(copy["tokens"]) == 0 and int(copy["vectors"]) == int(item["vectors"])
            assert len(pinecone.ids("docs")) == 2 * int(item["vectors"])
