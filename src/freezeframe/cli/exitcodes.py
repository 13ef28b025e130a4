"""The CLI's exit codes, shared by every command (the README's table)."""

EXIT_OK = 0            # success
EXIT_FAILED = 1        # the request failed: the server said no, or the operation failed
EXIT_USAGE = 2         # usage or configuration error (argparse uses 2 too)
EXIT_UNREACHABLE = 3   # could not reach the service
EXIT_INTERRUPTED = 130  # interrupted (Ctrl-C), as shells report SIGINT
