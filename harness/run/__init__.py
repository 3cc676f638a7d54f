"""What a run leaves on disk and what makes it safe to kill: the run directory, its lock and its one
teardown (`directory`), checkpoints and resume (`checkpoints`), stopping on a signal (`stop`), tracking
(`tracker`: metrics.jsonl and W&B) and the metrics schema (`metrics`: every row and summary key, its W&B
name, the one median).

The rule of this room: *run knows the files, training knows the maths*. Nothing here imports
`harness.training`, and nothing in `harness.training` imports this package; `harness/train.py` is where the
two meet (tests/test_rooms.py holds it). Shared helpers (tables, provenance, console, errors) are imported
from the top level.
"""
