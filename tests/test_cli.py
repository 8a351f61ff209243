"""The `docpipe` CLI as a new user meets it (issue #15): folders keep their structure,
lookups find a document or an execution however it is named and however many there are,
failures say what happened and what to do, and the summary stands apart from the live
table with every message whole.

The CLI runs through click's CliRunner against the in-process stack of conftest
(`local_aws_stack`: moto executing the real ASL, the real handlers, the Ray stages run
in-process by FakeRayHead); the lookups' pagination runs on plain moto.
"""

from __future__ import annotations

import json
import re
import shutil

import boto3
import pytest
from click.testing import CliRunner
from conftest import corpus_file, history, local_aws_stack
from moto import mock_aws
from rich.console import Console

from docpipe import identity
from docpipe_local import cli, ingest, lookup
from docpipe_local import stack as stackmod

GOOD = "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf"
ENCRYPTED = "pdfplumber/tests/pdfs/password-example.pdf"
SCANNED = "py-pdf-sample-files/007-imagemagick-images/imagemagick-ASCII85Decode.pdf"
MALFORMED = "qpdf/qpdf/qtest/qpdf/issue-141a.pdf"  # 82 bytes: neither library opens it
BUCKET = "docs"


def use_stack(monkeypatch, outputs: dict, parameters: dict | None = None) -> None:
    """The CLI talks to this process's moto instead of a `docpipe stack start` server,
    and prints to a 100-column console (what a terminal of that width shows)."""
    monkeypatch.setattr(stackmod, "running_state", lambda: {"outputs": outputs, "parameters": parameters or {}})
    monkeypatch.setattr(stackmod, "client", lambda service, state=None: boto3.client(service))
    monkeypatch.setattr(cli, "console", Console(width=100))


def run_cli(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def folder(tmp_path, files: dict[str, str]):
    """tmp_path/<rel> = corpus file, for each rel."""
    for rel, corpus_rel in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_file(corpus_rel), tmp_path / rel)


# --- keys ----------------------------------------------------------------------------------
def test_a_folder_keeps_its_structure_and_its_name(tmp_path, monkeypatch):
    folder(tmp_path, {"reports/2023/q1.pdf": GOOD, "reports/2024/q1.pdf": ENCRYPTED, "loose.pdf": GOOD})
    monkeypatch.chdir(tmp_path)
    docs = ingest.plan(ingest.find_documents(["reports/", str(tmp_path / "loose.pdf")]), BUCKET, "input/")
    assert [d.key for d in docs] == ["input/reports/2023/q1.pdf", "input/reports/2024/q1.pdf", "input/loose.pdf"]
    assert [d.document_id for d in docs] == [identity.document_id(BUCKET, d.key) for d in docs]
    # `.` is the folder it names, by its own name.
    monkeypatch.chdir(tmp_path / "reports")
    assert [d.key for d in ingest.plan(ingest.find_documents(["."]), BUCKET, "input/")] == \
        ["input/reports/2023/q1.pdf", "input/reports/2024/q1.pdf"]


def test_a_folder_brings_every_type_docpipe_reads_and_an_unsupported_file_is_followed_to_skipped(tmp_path):
    folder(tmp_path, {"docs/a.pdf": GOOD})
    for name in ("docs/b.docx", "docs/c.md", "docs/d.HTML", "docs/e.txt", "docs/f.xlsx"):
        (tmp_path / name).write_bytes(b"content")
    docs = ingest.plan(ingest.find_documents([str(tmp_path / "docs")]), BUCKET, "input/")
    assert [d.key for d in docs] == ["input/docs/a.pdf", "input/docs/b.docx", "input/docs/c.md",
                                     "input/docs/d.HTML", "input/docs/e.txt"]
    # Named explicitly, an unsupported file is uploaded; RegisterDocument records it SKIPPED
    # under the version "skipped", which is the item ingest must wait for (not a content hash).
    [xlsx] = ingest.plan(ingest.find_documents([str(tmp_path / "docs/f.xlsx")]), BUCKET, "input/")
    assert xlsx.processing_version == "skipped"
    [outside] = ingest.plan(ingest.find_documents([str(tmp_path / "docs/a.pdf")]), BUCKET, "other/")
    assert outside.processing_version == "skipped"


def test_two_arguments_for_the_same_key_are_refused_naming_both(aws_env, tmp_path, monkeypatch):
    folder(tmp_path, {"a/q1.pdf": GOOD, "b/q1.pdf": ENCRYPTED})
    use_stack(monkeypatch, {"DocumentBucketName": BUCKET, "ControlTableName": "control"})
    result = run_cli("ingest", str(tmp_path / "a/q1.pdf"), str(tmp_path / "b/q1.pdf"))
    assert result.exit_code == 2
    message = "".join(result.output.split())  # wrapped to the terminal
    assert str(tmp_path / "a/q1.pdf") in message and str(tmp_path / "b/q1.pdf") in message
    assert "input/q1.pdf" in message
    # The same file twice is one upload, not a collision.
    assert len(ingest.plan(ingest.find_documents([str(tmp_path / "a/q1.pdf")] * 2), BUCKET, "input/")) == 1


# --- lookups: more than one page of everything ----------------------------------------------
@pytest.fixture
def listed(aws_env):
    """105 executions of a Pass state machine (ListExecutions pages hold 100) and a
    control table, as the lookups see a busy stack."""
    with mock_aws():
        sfn, ddb = boto3.client("stepfunctions"), boto3.client("dynamodb")
        pass_machine = json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}})
        arns = {name: sfn.create_state_machine(name=name, definition=pass_machine,
                                               roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
                for name in ("ingest", "backfill")}
        runs = [sfn.start_execution(stateMachineArn=arns["ingest"], name=f"run-{i:03d}")["executionArn"]
                for i in range(105)]
        ddb.create_table(TableName="control", BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "document_id", "KeyType": "HASH"},
                                    {"AttributeName": "processing_version", "KeyType": "RANGE"}],
                         AttributeDefinitions=[{"AttributeName": "document_id", "AttributeType": "S"},
                                               {"AttributeName": "processing_version", "AttributeType": "S"}])
        outputs = {"IngestDocumentStateMachineArn": arns["ingest"], "BackfillStateMachineArn": arns["backfill"],
                   "ControlTableName": "control", "AuditTableName": "control", "DocumentBucketName": BUCKET}
        yield {"outputs": outputs}, sfn, ddb, runs


def put_control(ddb, key: str, version: str, run: str, updated_at: str, **extra) -> str:
    doc = identity.document_id(BUCKET, key)
    ddb.put_item(TableName="control", Item={
        "document_id": {"S": doc}, "processing_version": {"S": version}, "s3_key": {"S": key},
        "status": {"S": "COMPLETED"}, "execution_arn": {"S": run}, "updated_at": {"S": updated_at},
        **{k: {"S": v} for k, v in extra.items()}})
    return doc


def test_execution_found_by_name_beyond_the_first_page(listed):
    state, sfn, ddb, runs = listed
    assert len(sfn.list_executions(stateMachineArn=state["outputs"]["IngestDocumentStateMachineArn"])
               ["executions"]) == 100, "one page holds 100: the oldest is not on it"
    assert lookup.execution_arn_for("run-000", state, sfn, ddb) == runs[0]
    assert lookup.execution_arn_for(runs[7], state, sfn, ddb) == runs[7]


def test_execution_found_by_file_through_the_latest_control_item(listed):
    state, sfn, ddb, runs = listed
    doc = put_control(ddb, "input/reports/2023/q1.pdf", "v1#old", runs[1], "2026-01-01T00:00:00Z")
    put_control(ddb, "input/reports/2023/q1.pdf", "v1#new", runs[3], "2026-02-01T00:00:00Z")
    for target in ("reports/2023/q1.pdf", "input/reports/2023/q1.pdf", f"s3://{BUCKET}/input/reports/2023/q1.pdf",
                   "/home/someone/reports/2023/q1.pdf", "q1.pdf", doc):
        assert lookup.document_id_for(target, state, ddb) == doc, target
        assert lookup.execution_arn_for(target, state, sfn, ddb) == runs[3], target
    # Another folder's file of the same name is not what a path means ...
    assert lookup.execution_arn_for("reports/2024/q1.pdf", state, sfn, ddb) is None
    put_control(ddb, "input/reports/2024/q1.pdf", "v1#x", runs[4], "2026-03-01T00:00:00Z")
    # ... and a bare name that several keys end with is a question back, not a guess.
    with pytest.raises(lookup.AmbiguousDocument, match=re.escape("input/reports/2023/q1.pdf, input/reports/2024/q1.pdf")):
        lookup.document_id_for("q1.pdf", state, ddb)


def test_status_lists_every_document_past_one_scan_page(listed, monkeypatch):
    state, _, ddb, runs = listed
    padding = "x" * 10_000  # 120 items of ~10 KB: more than DynamoDB's 1 MB scan page
    for i in range(120):
        put_control(ddb, f"input/many/{i:03d}.pdf", "v1#a", runs[0], f"2026-01-01T00:00:{i % 60:02d}Z", pad=padding)
    assert "LastEvaluatedKey" in ddb.scan(TableName="control"), "a single scan does not see them all"
    use_stack(monkeypatch, state["outputs"])
    result = run_cli("status")
    assert result.exit_code == 0, result.output
    assert len(set(re.findall(r"input/many/(\d{3})\.pdf", result.output))) == 120


# --- failures, the Fail state, the summary: one ingest of a folder ----------------------------
def summary_cells(output: str, column: int) -> str:
    """The text of one column of the failures table, its wrapped lines joined."""
    part = output[output.index("failed documents"):]
    cells = [line.split("│")[column] for line in part.splitlines() if line.count("│") >= 4]
    return "".join("".join(cells).split())


def test_ingest_of_a_folder_end_to_end(aws_env, tmp_path, monkeypatch):
    folder(tmp_path, {"reports/2023/q1.pdf": GOOD, "reports/2024/q1.pdf": ENCRYPTED,
                      "reports/scans/scan.pdf": SCANNED, "reports/broken/bad.pdf": MALFORMED})
    with local_aws_stack() as (stack, clients, _):
        use_stack(monkeypatch, stack.outputs, stack.parameters)
        result = run_cli("ingest", str(tmp_path / "reports") + "/", "--timeout", "240")
        assert result.exit_code == 1, result.output  # some documents failed
        bucket = stack.outputs["DocumentBucketName"]
        ddb, sfn = clients["dynamodb"], clients["stepfunctions"]
        items = {key: lookup.control_items(ddb, stack.outputs["ControlTableName"], identity.document_id(bucket, key))
                 for key in ("input/reports/2023/q1.pdf", "input/reports/2024/q1.pdf",
                             "input/reports/scans/scan.pdf", "input/reports/broken/bad.pdf")}
        assert [i["status"] for i in items["input/reports/2023/q1.pdf"]] == ["COMPLETED"]

        expected = {"input/reports/2024/q1.pdf": ("PdfEncrypted", "without the password"),
                    "input/reports/scans/scan.pdf": ("PdfNoText", "OCR"),
                    "input/reports/broken/bad.pdf": ("PdfMalformed", "re-export")}
        for key, (code, hint) in expected.items():
            [item] = items[key]
            assert (item["status"], item["error_code"]) == ("FAILED", code), key
            events = history(sfn, item["execution_arn"])
            # What the Ray stage said (SendTaskFailure's cause) reaches the message, then what to do.
            [stage_failure] = [e["taskFailedEventDetails"] for e in events if e["type"] == "TaskFailed"
                               and e["taskFailedEventDetails"]["error"] == code]
            cause = stage_failure.get("cause", "")
            assert cause, f"{key}: the stage's cause was lost on the way to the Catch"
            message = item["error_message"]
            assert message.startswith(cause.rstrip(".;") + " — ") and hint in message, message
            report = json.loads(clients["s3"].get_object(
                Bucket=bucket, Key=f"errors/{item['document_id']}/{item['processing_version']}/error.json")["Body"].read())
            assert report["error_message"] == message
            # The execution fails with the document's code and message, not a generic name.
            desc = sfn.describe_execution(executionArn=item["execution_arn"])
            assert (desc["status"], desc.get("error"), desc.get("cause")) == ("FAILED", code, message)
            [failed] = [e["executionFailedEventDetails"] for e in events if e["type"] == "ExecutionFailed"]
            assert (failed["error"], failed["cause"]) == (code, message)

        # The summary stands apart from the live table, and shows every message whole.
        # (The in-process functions log JSON lines to the same stdout.)
        lines = [line for line in result.output.splitlines() if not line.startswith("{")]
        rule = next(i for i, line in enumerate(lines) if "summary" in line and "─" in line)
        assert lines[rule - 1].strip() == "" and lines[rule - 2].lstrip().startswith("└"), lines[rule - 3:rule + 1]
        assert "docpipe ingest" in "\n".join(lines[:rule]), "the live table comes first"
        assert max(len(line) for line in lines) <= 100, "tables fit the terminal"
        for key in expected:
            [item] = items[key]
            assert "".join(item["error_message"].split()) in summary_cells(result.output, 3), key
        assert set(re.findall(r"│\s*(Pdf\w+)\s*│", result.output[result.output.index("failed documents"):])) == \
            {code for code, _ in expected.values()}

        # The lookups find what the folder ingest uploaded, by the path the user has.
        monkeypatch.chdir(tmp_path)
        found = run_cli("status", "reports/2024/q1.pdf")
        assert found.exit_code == 0, found.output
        assert "input/reports/2024/q1.pdf—v1-" in "".join(found.output.split()), found.output
        assert run_cli("status", "scan.pdf").exit_code == 0, "a bare name that one key ends with"
        ambiguous = run_cli("status", "q1.pdf")
        assert ambiguous.exit_code == 2 and "input/reports/2023/q1.pdf" in "".join(ambiguous.output.split())
        drawn = run_cli("graph", "reports/2024/q1.pdf", "--out", str(tmp_path / "graphs"))
        assert drawn.exit_code == 0 and drawn.output.startswith("FAILED"), drawn.output
