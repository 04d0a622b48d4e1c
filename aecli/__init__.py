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
