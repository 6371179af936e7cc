"""User-facing errors of the analysis.

Independent of :mod:`study` (the analysis runs where no training stack is installed). The CLI catches
any exception with an ``exit_code`` attribute and prints it as ``litmus: error: <message>``.
"""

from __future__ import annotations


class AnalysisError(Exception):
    """A user error in ``litmus analyze``: no study at the path, an absent reference method, a bad option.

    The message is one line naming the problem and the fix; the CLI exits with status 2.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
