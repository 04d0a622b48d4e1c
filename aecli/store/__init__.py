"""The store wing: what aecli keeps on disk. Atomic writes (``atomic``), the checkpoint format
(``checkpoint``) and the run dir (``rundir``: lock, status, JSON)."""
