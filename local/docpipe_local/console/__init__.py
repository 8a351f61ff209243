"""`docpipe console`: a local web page over the running local stack, showing executions
and documents the way the Step Functions console does (docs/console.md).

app: the Flask app (`create_app(state)`); data: what it reads and does; command: the
click command the CLI registers."""
