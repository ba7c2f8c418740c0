"""The errors tfimb anticipates: each ends a `tfimb` command with one line on stderr,
`tfimb: <message>`, and an exit status (2 for usage and config errors, 1 for everything found
at run time), instead of a traceback (`tfimb --debug ...` or TFIMB_DEBUG=1 shows it).

Each module raises its own subclass (a config error, a data error, a run-directory refusal...);
they also derive from the built-in class a Python caller would expect (`ValueError` for bad
values, `RuntimeError` for states), so library code catches them as it always did."""


class TfimbError(Exception):
    """An anticipated failure, explained by its message; `tfimb` exits with `exit_code`."""

    exit_code = 1


class UsageError(TfimbError):
    """A command line or config that cannot be used as written (exit status 2)."""

    exit_code = 2
