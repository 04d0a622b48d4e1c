"""The use wing: commands on a trained run. ``trained`` opens one, ``inference`` runs its model
over many images, ``probes`` and ``report`` measure and tabulate; each command (``evaluate``,
``encode``, ``map``, ``search``, ``denoise``, ``sample``, ``score``, ``finetune``) is one
module with one ``recipe(args)``, which ``aecli.cli`` calls with the parsed and checked options;
``commandline`` holds what they share. Never imports the training wing."""
