"""FinalizeDocument: COMPLETED or PARTIAL, counts, cost, daily metrics, superseded versions.

Event: {"state": {"registration", "extract", "embed"}, "execution_arn": str}
"""

from docpipe.config import Settings
from docpipe.finalize import finalize
from aws_lambda_powertools.metrics import single_metric

from docpipe.observability import MetricUnit, lambda_entry, logger, metrics
from docpipe.records import Records

settings = Settings.from_env()


@lambda_entry
def lambda_handler(event, context):
    result = finalize(event["state"], settings, Records(settings, actor="FinalizeDocument"),
                      event.get("execution_arn", ""))
    logger.info("finalized", extra=result)
    metrics.add_metric(name=f"Documents{result['status'].title()}", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="VectorsWritten", unit=MetricUnit.Count, value=result["vectors"])
    # One metric per stage step (extract, chunk, enrich, embed, load) for the dashboard.
    for step, seconds in (event["state"].get("extract", {}).get("durations", {}) |
                          event["state"].get("embed", {}).get("durations", {})).items():
        with single_metric(name="StageDurationSeconds", unit=MetricUnit.Seconds, value=float(seconds)) as m:
            m.add_dimension(name="Stage", value=step.removesuffix("_s"))
    return result
