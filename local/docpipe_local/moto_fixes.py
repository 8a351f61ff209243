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

The server's dispatcher lists moto's package directory (os.listdir + isdir of ~150
entries) on every request, under one lock: measured as 8% of the local stack's CPU in a
200-upload burst, and a point every request queues at. The list never changes while the
process runs, so it is read once. Pin moto exactly: this is private API.
"""

from __future__ import annotations

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

    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    _installed = True
