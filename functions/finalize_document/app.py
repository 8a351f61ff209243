"""FinalizeDocument: COMPLETED or PARTIAL, counts, cost, daily metrics, superseded versions.

Event: {"state": {"registration", "extract", "embed"}, "execution_arn": str}
"""

from docpipe.config import Settings
from docpipe.finalize import finalize
from docpipe.observability import MetricUnit, breakdown, lambda_entry, logger, metrics
from docpipe.records import Records

settings = Settings.from_env()


@lambda_entry
def lambda_handler(event, context):
    result = finalize(event["state"], settings, Records(settings, actor="FinalizeDocument"),
                      event.get("execution_arn", ""))
    logger.info("finalized", extra=result)
    metrics.add_metric(name=f"Documents{result['status'].title()}", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="VectorsWritten", unit=MetricUnit.Count, value=result["vectors"])
    # One metric per stage step (extract, chunk, enrich, embed, load): the dashboard
    # reads {service, Stage}.
    for step, seconds in (event["state"].get("extract", {}).get("durations", {}) |
                          event["state"].get("embed", {}).get("durations", {})).items():
        breakdown("StageDurationSeconds", MetricUnit.Seconds, float(seconds), Stage=step.removesuffix("_s"))
    return result
