"""What a test needs to start a child process the way a user's terminal would."""

from __future__ import annotations

import signal


def ctrl_c_default() -> None:
    """``preexec_fn`` for a child that a test will send Ctrl-C (SIGINT). A job started in the background by a
    non-interactive shell (``make test &``, nohup, some CI runners) has SIGINT ignored, its children inherit that,
    and Python then installs no KeyboardInterrupt handler: the signal would be lost and the run go on to the end.
    The child gets the default, as from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
