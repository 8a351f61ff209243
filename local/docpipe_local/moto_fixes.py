"""Fixes to moto: the Step Functions engine's `states:startExecution` integration,
SendTaskFailure's cause, and the server's request dispatch.

AWS takes the optimized integration's parameters in PascalCase (StateMachineArn, Input,
Name) and answers in PascalCase (ExecutionArn, Status, Output). moto's vendored engine
passes them to boto3 unchanged (boto3 wants stateMachineArn: KeyError) and returns
boto3's camelCase. We translate both ways, so backfill.asl.json runs locally exactly as
written for AWS.

SendTaskFailure: moto's `StepFunctionResponse.send_task_failure` passes only `error` to
the backend and drops `cause`, so the short message a Ray stage sends with its error code
never reached the Catch (and RecordFailure recorded an empty message). We pass both, as
AWS does.

DynamoDB: moto's TransactWriteItems deep-copies every table it touches before writing (its
rollback), and a Query on a table's own key sorts every item of the table to find one
partition. Both grow with the table: over a 1,000-document burst the control and audit
tables' copies made each document slower than the one before. The transaction now keeps
the previous version of each item it writes (the same rollback), a Query on the table's
key reads that partition alone (the same items, in the same order), and a projection of
top-level names picks those attributes instead of turning the whole item into plain JSON
and back once per name. An UpdateItem parsed its UpdateExpression twice and deep-copied the
tree once per validation, and re-ran the checks that depend only on the expression, its
names and the table's key: half of an UpdateItem with the handlers' 10-20 SET actions. Each
expression string is now parsed once (the copies come from its pickle) and those checks
run once per combination that passed them (_install_update_expressions).

Step Functions engine: for every execution moto's engine parses the state machine's ASL
with ANTLR into a tree of evaluation components, for every Task state it builds a new
boto3 client (and with it a new connection) to call Lambda or DynamoDB, and for every
JSONPath it builds a new jsonpath-ng parser (PLY tables included). In a 50-document
burst those were 11%, 15% and 8% of the server's CPU (py-spy, --gil). The components
keep no execution state (that lives in the execution's Environment), clients are
thread-safe, and a parsed path is only read: each is now made once per definition,
service and path.

DynamoDB responses: moto serialises every attribute of every item through its generic,
shape-driven serializer (a value picker trying several spellings of each member): in a
full-corpus run that was half of the server's CPU, most of it `docpipe ingest`'s poll of
the control items. Attribute values are already in DynamoDB's JSON form when they reach
the serializer, so a map of them is now written directly (the same JSON: compared with
moto's own output in tests/test_moto_fixes_dynamodb.py); anything else still goes
through moto's serializer.

The server's dispatcher lists moto's package directory (os.listdir + isdir of ~150
entries) on every request, under one lock: measured as 8% of the local stack's CPU in a
200-upload burst, and a point every request queues at. The list never changes while the
process runs, so it is read once; so are the method names of each response class.
Pin moto exactly: this is private API.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
        StateTaskServiceSfn,
    )

    original = StateTaskServiceSfn._normalise_parameters

    def normalise_parameters(self, parameters, boto_service_name=None, service_action_name=None):
        original(self, parameters, boto_service_name=boto_service_name, service_action_name=service_action_name)
        for key in [k for k in parameters if k[:1].isupper()]:
            parameters[key[0].lower() + key[1:]] = parameters.pop(key)

    def normalise_response(self, response, boto_service_name=None, service_action_name=None):
        if isinstance(response, dict):
            for key in [k for k in response if k[:1].islower()]:
                response[key[0].upper() + key[1:]] = response.pop(key)

    StateTaskServiceSfn._normalise_parameters = normalise_parameters
    StateTaskServiceSfn._normalise_response = normalise_response

    from moto.core.responses import EmptyResult
    from moto.stepfunctions.responses import StepFunctionResponse

    def send_task_failure(self):
        self.stepfunction_backend.send_task_failure(
            self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause"))
        return EmptyResult()

    StepFunctionResponse.send_task_failure = send_task_failure

    _install_dynamodb()
    _install_dynamodb_serializer()
    _install_sqs()
    _install_stepfunctions_engine()
    _install_task_token_index()
    _install_early_answer_fix()

    from moto import backends
    from moto.core import responses as core_responses

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    # Every request lists its response class's methods (inspect.getmembers) to check the
    # action exists: 4% of the server's CPU in a burst. The classes do not change once
    # the fixes above are in.
    core_responses.method_names_from_class = functools.lru_cache(maxsize=None)(
        core_responses.method_names_from_class)
    _installed = True


def _install_stepfunctions_engine() -> None:
    import sys

    import boto3
    from botocore.config import Config
    from jsonpath_ng import parse as jsonpath_parse
    from jsonpath_ng.ext import parse as jsonpath_ext_parse
    from moto.core.models import botocore_stubber
    from moto.settings import moto_server_port
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (  # noqa: F401
        state_task_service_factory,  # imports every service module, so the rebinding below reaches them
    )
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.utils import boto_client, json_path
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    programs: dict[str, Any] = {}
    programs_lock = threading.Lock()

    def evaluation_entrypoint(self):
        definition = self._evaluation_details.state_machine_details.definition
        with programs_lock:  # a burst starts many executions of one definition at once
            program = programs.get(definition)
            if program is None:
                if len(programs) >= 64:
                    programs.clear()
                program = programs[definition] = AmazonStateLanguageParser.parse(definition)[0]
        return program

    ExecutionWorker._get_evaluation_entrypoint = evaluation_entrypoint

    clients: dict[tuple[str, str, str | None], Any] = {}
    clients_lock = threading.Lock()
    original_client_for = boto_client.boto_client_for

    def client_for(region: str, service: str, state_credentials: Any = None):
        # moto's own settings (no retries, the engine's timeouts); a pool as large as the
        # number of executions that call one service at once in a burst.
        endpoint = None if botocore_stubber.enabled else f"http://localhost:{moto_server_port()}"
        key = (region, service, endpoint)
        with clients_lock:
            client = clients.get(key)
            if client is None:
                kwargs = {"endpoint_url": endpoint} if endpoint else {}
                client = clients[key] = boto3.session.Session().client(
                    service, region_name=region, aws_access_key_id="ak", aws_secret_access_key="sk",
                    config=Config(parameter_validation=False, max_pool_connections=64,
                                  retries={"max_attempts": 0, "total_max_attempts": 1},
                                  connect_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
                                  read_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS),
                    **kwargs)
        return client

    # Every engine module imported the function by name: rebind it where it is.
    boto_client.boto_client_for = client_for
    for module in list(sys.modules.values()):
        if getattr(module, "boto_client_for", None) is original_client_for:
            module.boto_client_for = client_for
    json_path.parse = functools.lru_cache(maxsize=1024)(jsonpath_ext_parse)
    result_path.parse = functools.lru_cache(maxsize=1024)(jsonpath_parse)


_token_scope = threading.local()  # the one execution a SendTask* call looks in, when known


def _install_task_token_index() -> None:
    """SendTaskSuccess, SendTaskFailure and SendTaskHeartbeat look for their token in every
    execution's callback pool, one after the other: with 1,000 documents in flight each
    answer and each heartbeat walks 1,000 executions. Each token is now indexed to its
    execution when the engine creates it, and the call's own loop runs over that one
    execution, with moto's checks (a token of a finished execution is still refused as
    moto refuses it). A token not in the index (e.g. made before this ran) takes moto's
    full search."""
    import weakref

    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackPoolManager
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    pools: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
    executions: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    for name in ("add", "add_activity_task"):
        original_add = getattr(CallbackPoolManager, name)

        def add(self, callback_id, *args, _original=original_add, **kwargs):
            endpoint = _original(self, callback_id, *args, **kwargs)
            pools[callback_id] = self
            return endpoint

        setattr(CallbackPoolManager, name, add)

    original_environment = ExecutionWorker._get_evaluation_environment

    def evaluation_environment(self):
        env = original_environment(self)
        execution = getattr(self._execution_communication, "execution", None)
        if execution is not None:
            executions[env.callback_pool_manager] = execution
        return env

    ExecutionWorker._get_evaluation_environment = evaluation_environment

    original_get_executions = StepFunctionsParserBackend._get_executions

    def get_executions(self, execution_status=None):
        execution = getattr(_token_scope, "execution", None)
        if execution is None:
            return original_get_executions(self, execution_status)
        return [execution] if execution_status is None or execution.status == execution_status else []

    StepFunctionsParserBackend._get_executions = get_executions

    def scoped(original):
        def method(self, task_token, *args, **kwargs):
            pool = pools.get(task_token)
            execution = executions.get(pool) if pool is not None else None
            if execution is None or not any(execution in sm.executions for sm in self.state_machines):
                return original(self, task_token, *args, **kwargs)
            _token_scope.execution = execution
            try:
                return original(self, task_token, *args, **kwargs)
            finally:
                _token_scope.execution = None
        return method

    for name in ("send_task_success", "send_task_failure", "send_task_heartbeat"):
        setattr(StepFunctionsParserBackend, name, scoped(getattr(StepFunctionsParserBackend, name)))


def _install_early_answer_fix() -> None:
    """An answer that arrives before the Task state's own call has returned is kept.

    moto makes a waitForTaskToken task's heartbeat endpoint only after the integration's call
    (Lambda invoke, SQS send) returns, and its wait with HeartbeatSeconds listens to that
    endpoint alone. A token answered earlier (a warm stage service answering a small document
    while SubmitRayJob is still ensuring the service) set an event nobody listened to: the
    execution sat until HeartbeatSeconds ran out and was retried as a missed heartbeat. On
    AWS the answer completes the task. The heartbeat endpoint now starts signalled when the
    answer is already there.

    moto's Retry runs the next attempt with the same token and endpoint, so the previous
    attempt's answer would still be there: each attempt clears it before its call (a state
    without HeartbeatSeconds re-failed at once with it, moto's own behaviour too)."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import ResourceCondition
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
        StateTaskServiceCallback,
    )
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint

    original_execution = StateTaskServiceCallback._eval_execution

    def eval_execution(self, env):
        if self.resource.condition == ResourceCondition.WaitForTaskToken:
            token = (env.states.context_object.context_object_data.get("Task") or {}).get("Token")
            endpoint = env.callback_pool_manager.get(token) if token else None
            if endpoint is not None:
                endpoint._outcome = None
                endpoint._notify_event.clear()
        return original_execution(self, env)

    StateTaskServiceCallback._eval_execution = eval_execution

    original_setup = CallbackEndpoint.setup_heartbeat_endpoint

    def setup_heartbeat_endpoint(self, heartbeat_seconds):
        endpoint = original_setup(self, heartbeat_seconds)
        # notify() sets the event before it reads _heartbeat_endpoint, which is set above:
        # either it sees this endpoint or this check sees its event.
        if self.get_outcome() is not None:
            endpoint.notify()
        return endpoint

    CallbackEndpoint.setup_heartbeat_endpoint = setup_heartbeat_endpoint


_partition = threading.local()  # the hash key a Query on this thread reads, if on the table's key
_transaction = threading.local()  # set while this thread runs moto's TransactWriteItems


def _install_sqs() -> None:
    """ReceiveMessage checked each message it returned against the queue's retention
    period through get_queue_attributes, which computes every attribute of the queue three
    times over, each count of messages by a walk over all of them: per message received,
    nine walks over the queue (1,000 documents held in a stage's queue: ~9,000 checks for
    each one received). The retention period is read from the queue instead; the rule is
    moto's own (a message is kept until sent + MessageRetentionPeriod)."""
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    def is_message_valid_based_on_retention_period(self, queue_name, message):
        retention_s = int(self.get_queue(queue_name).message_retention_period)
        return retention_s + message.sent_timestamp / 1000 > unix_time()

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period

    # Every SendMessage reads queue.attributes (for ContentBasedDeduplication), which counts
    # the queue's messages three ways; each count asked the clock twice per message (a
    # datetime round trip each): 2.8 ms per send with 200 messages queued, 24 ms with 2,000,
    # so a 1,000-document burst slowed as its stage queues filled. The counts now read the
    # clock once per walk; the rules are moto's (Message.visible, Message.delayed).
    from moto.sqs import models as sqs_models

    def messages(self):
        now = sqs_models.unix_time_millis()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    def delayed(self):
        now = sqs_models.unix_time_millis()
        return sum(1 for m in self._messages if now < m.delayed_until)

    def not_visible(self):
        now = sqs_models.unix_time_millis()
        return sum(1 for m in self._messages if not now > m.visible_at)

    Queue = sqs_models.Queue
    for name, fget in (("messages", messages), ("approximate_number_of_messages_delayed", delayed),
                       ("approximate_number_of_messages_not_visible", not_visible)):
        fget.moto_original = getattr(Queue, name)  # type: ignore[attr-defined]
        setattr(Queue, name, property(fget))


class _NotWireForm(Exception):
    """An attribute value the fast path does not know: moto's serializer writes it."""


def _attribute_value(value: Any, b64: Any) -> dict[str, Any]:
    """One DynamoDB AttributeValue as moto's JSON serializer writes it."""
    if not isinstance(value, dict):
        raise _NotWireForm(type(value).__name__)
    out: dict[str, Any] = {}
    for kind, x in value.items():
        if kind in ("S", "N"):
            out[kind] = str(x)
        elif kind in ("SS", "NS"):
            out[kind] = [str(i) for i in x]
        elif kind == "B":
            out[kind] = b64(x)
        elif kind == "BS":
            out[kind] = [b64(i) for i in x]
        elif kind == "M":
            out[kind] = {k: _attribute_value(i, b64) for k, i in x.items()}
        elif kind == "L":
            out[kind] = [_attribute_value(i, b64) for i in x]
        elif kind in ("NULL", "BOOL") and isinstance(x, bool):
            out[kind] = x
        else:
            raise _NotWireForm(kind)
    return out


def _install_dynamodb_serializer() -> None:
    from moto.core.serialize import JSONSerializer

    serialize_map = JSONSerializer._serialize_type_map

    def _serialize_type_map(self, serialized, value, shape, key):
        # AttributeMap, Key, ExpressionAttributeValueMap...: maps whose values are AttributeValues.
        if getattr(shape.value, "name", "") == "AttributeValue" and isinstance(value, dict):
            try:
                written = {k: _attribute_value(v, self._base64) for k, v in value.items()}
            except _NotWireForm:
                pass
            else:
                serialized[self.get_serialized_name(shape, key)] = written
                return
        serialize_map(self, serialized, value, shape, key)

    _serialize_type_map.moto_original = serialize_map  # type: ignore[attr-defined]  # tests compare with it
    JSONSerializer._serialize_type_map = _serialize_type_map


def _install_dynamodb() -> None:
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import Item, LimitedSizeDict
    from moto.dynamodb.models.table import Table

    all_items = Table.all_items
    query = Table.query

    def partition_items(self):
        key = getattr(_partition, "key", None)
        if key is None or getattr(_partition, "table", None) is not self:
            return all_items(self)
        found = self.items.get(key)
        if found is None:
            return []
        return sorted(found.values(), key=lambda x: x.range_key) if self.range_key_attr else [found]

    def table_query(self, hash_key, *args, **kwargs):
        # Without an index, Table.query reads all_items() for the items of `hash_key` only.
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        if index_name or hash_key is None:
            return query(self, hash_key, *args, **kwargs)
        _partition.key, _partition.table = hash_key, self
        try:
            return query(self, hash_key, *args, **kwargs)
        finally:
            _partition.key = _partition.table = None

    Table.all_items = partition_items
    Table.query = table_query

    original = DynamoDBBackend.transact_write_items

    def transact_write_items(self, transact_items):
        # Back up each item the transaction writes; moto's own version, which would
        # deep-copy each table, then runs with those copies made free (_CopyInTransaction).
        backups: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        for item in transact_items:
            if not isinstance(item, dict) or len(item) != 1:
                continue
            op_type, op = next(iter(item.items()))
            table_name = op.get("TableName") if isinstance(op, dict) else None
            if table_name not in self.tables:
                continue
            table = self.tables[table_name]
            try:
                if op_type == "Put":
                    attrs = op["Item"]
                    keys = {table.hash_key_attr: attrs[table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        keys[table.range_key_attr] = attrs[table.range_key_attr]
                else:
                    keys = op["Key"]
                hash_value, range_value = self.get_keys_value(table, keys)
            except Exception:  # moto's own call reports the malformed item
                continue
            marker = (table_name, repr((hash_value, range_value)))
            if marker not in backups:
                current = table.get_item(hash_value, range_value)
                backups[marker] = (hash_value, range_value, copy.deepcopy(current))
        _transaction.active = True
        try:
            return original(self, transact_items)
        except Exception:
            for (table_name, _), (hash_value, range_value, previous) in backups.items():
                table = self.tables[table_name]
                table.delete_item(hash_value, range_value)
                if previous is not None:
                    if range_value:
                        table.items[hash_value][range_value] = previous
                    else:
                        table.items[hash_value] = previous
            raise
        finally:
            _transaction.active = False

    DynamoDBBackend.transact_write_items = transact_write_items
    models.copy = _CopyInTransaction()

    project = Item.project

    def project_names(self, expressions):
        # moto turns the whole item into plain JSON once per projected name, then back:
        # a poll of 8 attributes of a ~35-attribute item paid for 280. Top-level names
        # (what `docpipe ingest` and the handlers ask for) are picked and copied instead.
        names = [expr[0] for expr in expressions if len(expr) == 1 and "[" not in expr[0]]
        if len(names) != len(expressions):
            return project(self, expressions)
        item = Item.__new__(Item)
        item.hash_key, item.range_key = self.hash_key, self.range_key
        item.attrs = LimitedSizeDict.__new__(LimitedSizeDict)  # already within the size limit
        dict.__init__(item.attrs)
        for name in names:
            if name in self.attrs:
                dict.__setitem__(item.attrs, name, copy.deepcopy(self.attrs[name]))
        return item

    project_names.moto_original = project  # type: ignore[attr-defined]
    Item.project = project_names

    _install_update_expressions()


def _install_update_expressions() -> None:
    """UpdateItem parsed its UpdateExpression twice (handler and backend) and each of its
    validators deep-copied the tree: with the docpipe handlers' 10-20 SET actions that was
    most of an UpdateItem's time. The tree `make` returns is only read (find_clauses) or
    copied (Validator.__init__), so one per expression string is kept, with its pickle:
    unpickling makes the same copy as deepcopy at a fraction of the cost."""
    import pickle

    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    make = UpdateExpressionParser.make.__func__  # type: ignore[attr-defined]
    parsed: dict[str, Any] = {}  # expression string -> its tree (kept, so its id stays its own)
    copies: dict[int, bytes] = {}  # id of a kept tree -> its pickle

    def cached_make(cls, expression_str):
        tree = parsed.get(expression_str)
        if tree is None:
            tree = make(cls, expression_str)  # a syntax error raises here, each time
            if len(parsed) < 10_000:  # expressions are templates; values come separately
                parsed[expression_str] = tree
                copies[id(tree)] = pickle.dumps(tree, protocol=pickle.HIGHEST_PROTOCOL)
        return tree

    validator_init = validators.Validator.__init__
    validate = validators.Validator.validate
    # Checks that read only the expression, its attribute names and the table's key (not
    # the item nor the values): each combination that passed them once passes again.
    static = (validators.ActionCountValidator, validators.OverlappingPathsValidator,
              validators.UpdateHashRangeKeyValidator)
    passed: set[tuple[Any, ...]] = set()

    def init(self, expression, *args, **kwargs):
        pickled = copies.get(id(expression))
        validator_init(self, None if pickled else expression, *args, **kwargs)
        self.docpipe_static_key = None
        if pickled:
            self.node_to_validate = pickle.loads(pickled)
            names = self.expression_attribute_names or {}
            key = (id(expression), tuple(sorted(names.items())), tuple(getattr(self.table, "table_key_attrs", ())))
            if key in passed:
                self.processors = [p for p in self.processors if not isinstance(p, static)]
            else:
                self.docpipe_static_key = key

    def validate_and_remember(self):
        node = validate(self)
        key = getattr(self, "docpipe_static_key", None)
        if key is not None and len(passed) < 100_000:
            passed.add(key)
        return node

    cached_make.moto_original = make  # type: ignore[attr-defined]
    UpdateExpressionParser.make = classmethod(cached_make)  # type: ignore[method-assign]
    init.moto_original = validator_init  # type: ignore[attr-defined]
    validate_and_remember.moto_original = validate  # type: ignore[attr-defined]
    validators.Validator.__init__ = init
    validators.Validator.validate = validate_and_remember


class _CopyInTransaction:
    """`copy` as moto's DynamoDB backend module sees it: inside transact_write_items (this
    thread), deepcopy(table) is the table itself, as the items are backed up one by one."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(x: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        if getattr(_transaction, "active", False) and isinstance(x, Table):
            return x
        return copy.deepcopy(x, memo)
