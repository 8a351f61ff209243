"""The local stack and the `docpipe` command-line tool."""
