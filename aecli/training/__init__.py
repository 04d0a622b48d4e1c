"""The training wing, in pipeline order: the Hydra app (``app``, ``guard``) -> the plan of a run
(``plan``: checks, resume) -> its parts (``build``) -> the recipe (``run``) -> the epochs
(``loop``) -> one step (``step``, ``graph_step``) on a ``state`` -> the hooks around it
(``hooks``, ``callbacks``, ``tensorboard``). ``distributed``, ``signals`` and ``placement``
say where and how long it runs; ``bench`` times it against the classic loop."""
