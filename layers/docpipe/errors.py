"""Named errors. The class name is the error name Step Functions sees.

A Lambda that raises one reports it as `errorType`; a Ray job that raises one sends it
as the `error` of SendTaskFailure. The ASL's Retry and Catch match on these names, and
tests/test_error_names.py provokes every one of those names on moto's engine. What a
user should do about each code is docpipe.failures.HINTS, added to every recorded message.
"""


class DocpipeError(Exception):
    """Base class: `code` is the stable error code recorded in the control table."""

    retryable = False

    @property
    def code(self) -> str:
        # The first class of ours in the MRO: wrappers (e.g. Ray's RayTaskError(X)
        # subclasses) still report X.
        for cls in type(self).__mro__:
            if cls.__module__ == __name__ and cls is not DocpipeError:
                return cls.__name__
        return type(self).__name__


# --- bad input (recorded as FAILED, never retried) -----------------------------------
class EmptyDocument(DocpipeError):
    """The uploaded object has zero bytes."""


class TooLarge(DocpipeError):
    """The object (or what it decompresses to) is over the configured limit."""


class DocumentNotFound(DocpipeError):
    """The object named by the event is gone (deleted before we read it)."""


class PdfEncrypted(DocpipeError):
    """The PDF needs a password we do not have."""


class PdfMalformed(DocpipeError):
    """Neither PDF library can read the file."""


class PdfNoText(DocpipeError):
    """No page has a text layer (a scan with no OCR)."""


class PdfTimeout(DocpipeError):
    """Parsing did not finish within the per-document time limit."""


class DocumentMalformed(DocpipeError):
    """A DOCX, HTML, Markdown or text upload that its parser cannot read."""


# --- transient (retried by the ASL with backoff) --------------------------------------
class RayHeadUnavailable(DocpipeError):
    """The Ray Jobs API refused the connection, timed out or answered 5xx."""

    retryable = True


class StoreThrottled(DocpipeError):
    """DynamoDB or S3 throttled us or answered 5xx."""

    retryable = True


class EmbeddingRateLimited(DocpipeError):
    """The embedding service kept answering 429 after the client's own retries."""

    retryable = True


class EnrichmentThrottled(DocpipeError):
    """The enrichment service (Comprehend) kept throttling after the client's retries."""

    retryable = True


class OcrThrottled(DocpipeError):
    """The OCR service (Textract) kept throttling after the client's retries."""

    retryable = True


class VectorStoreUnavailable(DocpipeError):
    """The vector store refused writes or was unreachable."""

    retryable = True


# --- configuration / protocol (not retried) -------------------------------------------
class RayJobRejected(DocpipeError):
    """The Ray Jobs API rejected the submission (4xx other than 'already exists')."""


class JobInterrupted(DocpipeError):
    """The Ray job got SIGTERM (stopped, preempted or scaled in) before it finished."""


class StageFailed(DocpipeError):
    """An unexpected error inside a stage; the message says what."""


ALL_CODES = {cls.__name__ for cls in DocpipeError.__subclasses__()}


def error_code_of(exc: BaseException) -> str:
    """The stable code for any exception: our own names pass through."""
    if isinstance(exc, DocpipeError):
        return exc.code
    return StageFailed.__name__
