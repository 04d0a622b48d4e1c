"""aecli: train, compare and reuse the classic autoencoders from one Hydra-configured CLI."""
import os

# Before torch (and scikit-learn) load their OpenMP runtime, which reads this once: OpenMP's
# worker threads then sleep between parallel regions instead of spin-waiting for each other.
# Spinning wins a few microseconds per region on idle cores, but as soon as another process
# shares the cores every region waits for a descheduled spinner: the default digits run went
# from 26-28k to 0.6-1.9k images/s on a busy 2-core laptop. Every entry point (python -m aecli.X,
# torchrun ranks) imports this package first, and child processes (DataLoader and decode
# workers, joblib/submitit sweep jobs) inherit the environment. A user's own value is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def _stop_quietly_until_handled() -> None:
    """When aecli runs as a program (``python -m aecli.X``, the ``aecli*`` scripts), SIGINT and
    SIGTERM exit at once with 130 / 143 and no traceback, from the first instruction (the heavy
    imports that follow take a second or more) until the command installs its own handlers
    (``aecli.training.signals``). ``import aecli`` in someone else's program changes nothing."""
    import os
    import signal
    import sys

    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 != "-m" and not os.path.basename(argv0).startswith("aecli"):  # -m: while python locates the module
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signum, lambda *_: os._exit(128 + signum))  # a second one while unwinding: at once
        raise SystemExit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) in (signal.default_int_handler, signal.SIG_DFL):  # never over a caller's choice
            signal.signal(s, stop)


_stop_quietly_until_handled()
