"""What a run leaves on disk and what makes it safe to kill: the run directory and its lock
(`directory`), checkpoints and resume (`checkpoints`), stopping on a signal (`stop`), and tracking
(`tracker`: metrics.jsonl and W&B).

The rule of this room: *run knows the files, training knows the maths*. Nothing here imports
`harness.training`, and nothing in `harness.training` imports this package; `harness/train.py` is where the
two meet. Shared helpers (tables, provenance, console, errors) are imported from the top level.
"""
