"""The one base type of every error a user can fix (a flag, a file, a config, the machine's devices).

Command-line entries turn a UserError into one line and exit code 2 (utils/cli.py::run_cli); library callers can
catch it as one type. Each specific error also keeps its historical base (ValueError, RuntimeError) so existing
`except ValueError` code goes on working. This module imports nothing: it sits at the bottom of the import graph.
"""


class UserError(Exception):
    """Something the user can fix; its message is one line that names the thing and what to do."""


class TrainOptionError(UserError, ValueError):
    """A flag combination or hyperparameter file that cannot train: one line."""
