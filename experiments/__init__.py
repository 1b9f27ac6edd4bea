"""Experiments on the paper's claims: each module is a script (``python3 experiments/<name>.py``
or ``python3 -m experiments.<name>``); ``study`` holds their shared machinery. What was run and
the verdicts: ``README.md``."""
