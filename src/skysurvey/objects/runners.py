"""Where the unit tasks run: this process or a local process pool (:func:`run_units_local`),
or one synchronous AWS Lambda invocation per unit (:func:`run_units_lambda`). Either returns
one reply per task; a failed unit is an error reply, never an exception."""

from __future__ import annotations

import json

from .model import UnitTask
from .unit import handle_unit_event

__all__ = ["run_units_lambda", "run_units_local"]


def _run_task(task: UnitTask) -> dict:
    return handle_unit_event(task.event())


def run_units_local(tasks: list[UnitTask], workers: int = 1) -> list[dict]:
    """Run unit tasks in this process (workers=1) or a process pool.

    Parameters
    ----------
    tasks : list of UnitTask
        The build's tasks.
    workers : int
        Processes; the biggest units go first, so the pool ends together.

    Returns
    -------
    list of dict
        One reply per task (:func:`handle_unit_event`).
    """
    if workers <= 1 or len(tasks) <= 1:
        return [_run_task(t) for t in tasks]
    from concurrent.futures import ProcessPoolExecutor

    # the units that open the most images first, so the pool ends together; among equals
    # (a deep field: every unit opens every image) the plan's order by estimated cost
    # (objects.plan._unit_costs) stays, the sort being stable
    ordered = sorted(tasks, key=lambda t: -len(t.images))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_run_task, ordered, chunksize=1))


def run_units_lambda(tasks: list[UnitTask], function: str, workers: int = 8,
                     client=None) -> list[dict]:
    """One synchronous invocation of *function* per unit (threads: the work runs in Lambda).

    A function error, a timeout or an unreadable reply becomes an error reply for that unit,
    so the build fails as a whole and the previous tables stay (see :func:`build_objects`).

    Parameters
    ----------
    tasks : list of UnitTask
        The build's tasks.
    function : str
        The Lambda function's name (its handler routes ``objects_unit`` events).
    workers : int
        Invocations in flight.
    client : optional
        A boto3 Lambda client (default: :func:`skysurvey.aws.client`).

    Returns
    -------
    list of dict
        One reply per task, in the tasks' order.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .. import aws

    client = client or aws.client("lambda")

    def invoke(task: UnitTask) -> dict:
        try:
            response = client.invoke(FunctionName=function, InvocationType="RequestResponse",
                                     Payload=json.dumps(task.event()).encode())
            payload = json.loads(response["Payload"].read() or b"null")
        except Exception as exc:  # transport or service error: this unit failed
            return {"status": "error", "unit": task.unit,
                    "error": f"unit {task.unit}: {type(exc).__name__}: {exc}"}
        if response.get("FunctionError") or not isinstance(payload, dict):
            message = payload.get("errorMessage") if isinstance(payload, dict) else payload
            return {"status": "error", "unit": task.unit,
                    "error": f"unit {task.unit}: function error: {message}"}
        return payload

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(invoke, tasks))
