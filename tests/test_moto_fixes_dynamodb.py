"""The local stack's DynamoDB fixes (docpipe_local.moto_fixes) keep DynamoDB's behaviour:
a cancelled transaction leaves every item as it was, a Query on the table's key returns
that partition in key order (pages and reverse included), an index Query is unchanged,
items are written, projected and updated (or refused) as moto itself does - while no
transaction copies a whole table any more and an UpdateExpression is parsed once."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from docpipe_local import moto_fixes


@pytest.fixture
def ddb(aws_env):
    with mock_aws():
        moto_fixes.install()
        client = boto3.client("dynamodb")
        client.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"},
                                  {"AttributeName": "status", "AttributeType": "S"}],
            GlobalSecondaryIndexes=[{"IndexName": "by-status",
                                     "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}],
                                     "Projection": {"ProjectionType": "ALL"}}],
            BillingMode="PAY_PER_REQUEST")
        yield client


def put(ddb, pk: str, sk: str, status: str = "RUNNING", n: int = 0) -> None:
    ddb.put_item(TableName="t", Item={"pk": {"S": pk}, "sk": {"S": sk}, "status": {"S": status}, "n": {"N": str(n)}})


def items(ddb) -> list[tuple[str, str, str, str]]:
    return sorted((i["pk"]["S"], i["sk"]["S"], i["status"]["S"], i["n"]["N"])
                  for i in ddb.scan(TableName="t")["Items"])


def test_a_cancelled_transaction_leaves_every_item_as_it_was(ddb):
    put(ddb, "a", "1", n=1)
    put(ddb, "b", "1", n=2)
    put(ddb, "z", "1", n=7)
    before = items(ddb)
    with pytest.raises(ClientError) as err:
        ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "c"}, "sk": {"S": "1"}, "status": {"S": "NEW"},
                                                "n": {"N": "3"}}}},
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "a"}, "sk": {"S": "1"}},
                        "UpdateExpression": "SET n = :n", "ExpressionAttributeValues": {":n": {"N": "9"}}}},
            {"Delete": {"TableName": "t", "Key": {"pk": {"S": "b"}, "sk": {"S": "1"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "z"}, "sk": {"S": "1"}},
                                "ConditionExpression": "n = :x", "ExpressionAttributeValues": {":x": {"N": "5"}}}},
        ])
    assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert items(ddb) == before
    # And one that holds is applied whole.
    ddb.transact_write_items(TransactItems=[
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "a"}, "sk": {"S": "1"}},
                    "UpdateExpression": "SET n = :n", "ExpressionAttributeValues": {":n": {"N": "9"}}}},
        {"Delete": {"TableName": "t", "Key": {"pk": {"S": "b"}, "sk": {"S": "1"}}}}])
    assert items(ddb) == [("a", "1", "RUNNING", "9"), ("z", "1", "RUNNING", "7")]


def test_no_transaction_copies_a_whole_table(ddb, monkeypatch):
    from moto.dynamodb.models.table import Table

    for i in range(50):
        put(ddb, f"doc-{i}", "v1")

    def no_copy(self, memo):
        raise AssertionError("a whole table was deep-copied")

    monkeypatch.setattr(Table, "__deepcopy__", no_copy, raising=False)
    ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "doc-x"}, "sk": {"S": "v1"}, "status": {"S": "NEW"},
                                            "n": {"N": "1"}}}}])
    assert len(items(ddb)) == 51


def test_a_query_on_the_key_reads_its_partition_in_order_with_pages(ddb):
    for sk in ("3", "1", "2", "5", "4"):
        put(ddb, "doc", sk, status="DONE" if sk in "24" else "RUNNING")
        put(ddb, "other", sk)
    query = {"TableName": "t", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": "doc"}}}
    assert [i["sk"]["S"] for i in ddb.query(**query)["Items"]] == ["1", "2", "3", "4", "5"]
    assert [i["sk"]["S"] for i in ddb.query(**query, ScanIndexForward=False)["Items"]] == ["5", "4", "3", "2", "1"]
    first = ddb.query(**query, Limit=2)
    rest = ddb.query(**query, ExclusiveStartKey=first["LastEvaluatedKey"])
    assert [i["sk"]["S"] for i in first["Items"] + rest["Items"]] == ["1", "2", "3", "4", "5"]
    ranged = ddb.query(TableName="t", KeyConditionExpression="pk = :p AND sk BETWEEN :a AND :b",
                       ExpressionAttributeValues={":p": {"S": "doc"}, ":a": {"S": "2"}, ":b": {"S": "4"}})
    assert [i["sk"]["S"] for i in ranged["Items"]] == ["2", "3", "4"]
    assert ddb.query(TableName="t", KeyConditionExpression="pk = :p",
                     ExpressionAttributeValues={":p": {"S": "nobody"}})["Items"] == []
    # An index still sees every partition.
    done = ddb.query(TableName="t", IndexName="by-status", KeyConditionExpression="#s = :s",
                     ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":s": {"S": "DONE"}})
    assert sorted((i["pk"]["S"], i["sk"]["S"]) for i in done["Items"]) == [("doc", "2"), ("doc", "4")]
    # And a scan, every item.
    assert len(items(ddb)) == 10


ALL_TYPES = {"pk": {"S": "a"}, "sk": {"S": "1"}, "status": {"S": "RUNNING"}, "n": {"N": "1.50"},
             "b": {"B": b"\x00\xffhi"}, "bs": {"BS": [b"x", b"y"]}, "ss": {"SS": ["p", "q"]}, "ns": {"NS": ["1", "2"]},
             "m": {"M": {"x": {"L": [{"S": "é \u2028 \"q\""}, {"NULL": True}, {"BOOL": False}, {"N": "-0"}]}}},
             "empty": {"M": {}}, "s": {"S": ""}}


def test_items_are_written_as_moto_itself_writes_them(ddb, monkeypatch):
    """Every response that carries items, written by the fast path and by moto's own
    serializer: the same JSON; and the fast path was taken."""
    from moto.core.serialize import JSONSerializer
    from moto.dynamodb.responses import DynamoResult

    fast_calls = []
    attribute_value = moto_fixes._attribute_value
    monkeypatch.setattr(moto_fixes, "_attribute_value", lambda v, b64: fast_calls.append(1) or attribute_value(v, b64))
    compared: list[str] = []
    execute = DynamoResult.execute_result

    def both(self, context):
        fast = execute(self, context)
        with monkeypatch.context() as m:
            m.setattr(JSONSerializer, "_serialize_type_map", JSONSerializer._serialize_type_map.moto_original)
            slow = execute(self, context)
        assert (fast[0], json.loads(fast[2])) == (slow[0], json.loads(slow[2])), context.operation_model.name
        compared.append(context.operation_model.name)
        return fast

    monkeypatch.setattr(DynamoResult, "execute_result", both)
    key = {"pk": {"S": "a"}, "sk": {"S": "1"}}
    ddb.put_item(TableName="t", Item=ALL_TYPES, ReturnConsumedCapacity="TOTAL")
    ddb.put_item(TableName="t", Item={**ALL_TYPES, "sk": {"S": "2"}}, ReturnValues="ALL_OLD")
    ddb.put_item(TableName="t", Item={**ALL_TYPES, "sk": {"S": "2"}}, ReturnValues="ALL_OLD")
    got = ddb.get_item(TableName="t", Key=key)["Item"]
    assert got == ALL_TYPES
    assert ddb.get_item(TableName="t", Key={"pk": {"S": "zz"}, "sk": {"S": "1"}}).get("Item") is None
    batch = ddb.batch_get_item(RequestItems={"t": {
        "Keys": [key, {"pk": {"S": "a"}, "sk": {"S": "9"}}],
        "ProjectionExpression": "#m, n", "ExpressionAttributeNames": {"#m": "m"}}})
    assert batch["Responses"]["t"] == [{"m": ALL_TYPES["m"], "n": ALL_TYPES["n"]}]
    page = ddb.query(TableName="t", KeyConditionExpression="pk = :k", ExpressionAttributeValues={":k": {"S": "a"}}, Limit=1)
    assert page["LastEvaluatedKey"] == key and page["Items"] == [ALL_TYPES]
    assert ddb.query(TableName="t", KeyConditionExpression="pk = :k", ExpressionAttributeValues={":k": {"S": "a"}},
                     Select="COUNT")["Count"] == 2
    assert ddb.query(TableName="t", IndexName="by-status", KeyConditionExpression="#s = :s",
                     ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":s": {"S": "RUNNING"}})["Count"] == 2
    assert len(ddb.scan(TableName="t")["Items"]) == 2
    new = ddb.update_item(TableName="t", Key=key, UpdateExpression="SET n = :v", ExpressionAttributeValues={":v": {"N": "3"}},
                          ReturnValues="ALL_NEW")["Attributes"]
    assert new == {**ALL_TYPES, "n": {"N": "3"}}
    old = ddb.delete_item(TableName="t", Key=key, ReturnValues="ALL_OLD")["Attributes"]
    assert old == new
    assert {"PutItem", "GetItem", "BatchGetItem", "Query", "Scan", "UpdateItem", "DeleteItem"} <= set(compared)
    assert fast_calls  # the items went through the fast path, not moto's serializer


def _sets_sorted(item: dict) -> dict:
    """DynamoDB sets have no order (moto's own projection may reorder them)."""
    out = {}
    for name, value in item.items():
        kind, x = next(iter(value.items()))
        out[name] = {kind: sorted(x) if kind in ("SS", "NS", "BS") else x}
    return out


@pytest.mark.parametrize("projection", ["n", "#m, n, ss, bs, nothing", "pk, sk, b, s, #e", "m.x[1], n", "m.x"])
def test_a_projection_returns_what_moto_itself_returns(ddb, monkeypatch, projection):
    from moto.dynamodb.models.dynamo_type import Item

    ddb.put_item(TableName="t", Item=ALL_TYPES)
    key = {"pk": {"S": "a"}, "sk": {"S": "1"}}
    names = {k: v for k, v in (("#m", "m"), ("#e", "empty")) if k in projection}

    def read() -> list[dict]:
        extra = {"ExpressionAttributeNames": names} if names else {}
        got = [ddb.get_item(TableName="t", Key=key, ProjectionExpression=projection, **extra)["Item"],
               *ddb.batch_get_item(RequestItems={"t": {"Keys": [key], "ProjectionExpression": projection, **extra}})
               ["Responses"]["t"],
               *ddb.query(TableName="t", KeyConditionExpression="pk = :k", ExpressionAttributeValues={":k": {"S": "a"}},
                          ProjectionExpression=projection, **extra)["Items"]]
        return [_sets_sorted(i) for i in got]

    fast = read()
    monkeypatch.setattr(Item, "project", Item.project.moto_original)
    assert fast == read()


# Each is run twice (the second meets the parsed expression and the passed checks);
# the failing ones must fail every time, also after the same expression passed before.
UPDATES = [
    ("SET n = :v, #s = :s", {"#s": "status"}, {":v": {"N": "4"}, ":s": {"S": "DONE"}}),
    ("SET n = n + :v REMOVE ss", None, {":v": {"N": "2"}}),
    ("ADD ns :ns DELETE bs :bs", None, {":ns": {"NS": ["5"]}, ":bs": {"BS": [b"x"]}}),
    ("SET #k = :v", {"#k": "n"}, {":v": {"N": "1"}}),
    ("SET #k = :v", {"#k": "sk"}, {":v": {"S": "9"}}),  # the same expression on the key: refused
    ("SET n = :v", {"#k": "sk"}, {":v": {"N": "1"}}),  # a name it does not use: refused
    ("SET n = :v SET m = :v", None, {":v": {"N": "1"}}),  # two SET clauses: refused
    ("SET m = :v, m.x = :v", None, {":v": {"N": "1"}}),  # overlapping paths: refused
    ("SET n = :missing", None, {":v": {"N": "1"}}),  # an undefined value: refused
    ("SET n = :v, #s = :s", {"#s": "status"}, {":v": {"N": "8"}, ":s": {"S": "RUNNING"}}),
]


def _run_updates(ddb, pk: str) -> list[tuple]:
    ddb.put_item(TableName="t", Item={**ALL_TYPES, "pk": {"S": pk}})
    key = {"pk": {"S": pk}, "sk": {"S": "1"}}
    outcomes: list[tuple] = []
    for expression, names, values in UPDATES * 2:
        extra = {"ExpressionAttributeNames": names} if names else {}
        try:
            new = ddb.update_item(TableName="t", Key=key, UpdateExpression=expression, ExpressionAttributeValues=values,
                                  ReturnValues="ALL_NEW", **extra)["Attributes"]
            outcomes.append(("ok", _sets_sorted({k: v for k, v in new.items() if k != "pk"})))
        except ClientError as err:
            outcomes.append(("refused", err.response["Error"]["Code"], err.response["Error"]["Message"]))
    return outcomes


def test_an_update_expression_parsed_once_updates_and_refuses_as_moto_itself(ddb, monkeypatch):
    from moto.dynamodb.parsing import expressions, validators

    parses = []
    tokenize = expressions.ExpressionTokenizer.make_list
    monkeypatch.setattr(expressions.ExpressionTokenizer, "make_list",
                        staticmethod(lambda s: parses.append(s) or tokenize(s)))
    fast = _run_updates(ddb, "fast")
    fast_parses = len(parses)
    monkeypatch.setattr(expressions.UpdateExpressionParser, "make",
                        classmethod(expressions.UpdateExpressionParser.make.__func__.moto_original))
    monkeypatch.setattr(validators.Validator, "__init__", validators.Validator.__init__.moto_original)
    monkeypatch.setattr(validators.Validator, "validate", validators.Validator.validate.moto_original)
    parses.clear()
    assert _run_updates(ddb, "moto") == fast
    assert [o[0] for o in fast].count("refused") == 10  # 5 refused expressions, twice each run
    # moto parses each expression twice per call (handler, backend); cached: once per string.
    assert fast_parses < len(parses) / 4
