"""aecli: train, compare and reuse the classic autoencoders from one Hydra-configured CLI."""
from aecli.threads import set_wait_policy

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

# OpenMP's wait policy, decided before torch (and scikit-learn) load their OpenMP runtime, which
# reads it once, and after the handlers above (sampling the machine's load takes 50 ms): on a quiet
# machine torch's default (idle threads spin-wait, the fastest there), on a busy one PASSIVE (they
# sleep: spinners descheduled by other processes make each parallel region wait; docs/benchmarks.md).
# A user's own OMP_WAIT_POLICY is kept; aecli.threads.set_wait_policy says how it is decided. Every
# entry point (python -m aecli.X, torchrun ranks) imports this package first, and child processes
# (DataLoader and decode workers, joblib/submitit sweep jobs) inherit the decision through the
# environment (AECLI_WAIT_POLICY).
set_wait_policy()
