"""What one training run is made of: precision and compile (`precision`), config checks (`checks`),
SyncBatchNorm (`syncbn`), patch whitening (`whiten`), fine-tuning's start (`finetune`), what trains
(`freeze`, the one module that sets requires_grad), the optimiser and its schedule (`optim`; Muon in
`muon`), the training step (`step`), the loop's state and meters (`state`), EMA (`ema`), Lookahead
(`lookahead`), the compile warm-up run (`warmup`), evaluation (`evaluate`), gradient norms by depth
(`gradflow`), and N seeds of one recipe (`repeats`).

The rule of this room: *training knows the maths, run knows the files*. Nothing here imports
`harness.run`, and nothing in `harness.run` imports this package; `harness/train.py` is where the two
meet (tests/test_rooms.py holds it). Shared helpers (config, tables, stats, timing, console, errors,
provenance) are imported from the top level.
"""
