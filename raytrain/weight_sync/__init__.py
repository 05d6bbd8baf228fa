"""Versioned weight sync from the trainer's rank 0 to the rollout engines, in size-bounded buckets.

- `protocol`: pure code. The plan a sync announces (`tensor_spec`), checked by the receiver
  against what its model serves before anything is applied; the buckets (`buckets`), flat
  for a broadcast or a byte string; the receiving side (`BucketReceiver`, `WeightUpdate`),
  whose version only advances once every announced tensor arrived.
- `group`: `WeightGroup`, a process group of its own (torch.distributed) between rank 0 and
  the engines' processes, where each bucket is one flat broadcast (NCCL on GPUs, gloo on CPU).
- `sender`: the one sender (`open_weight_group`, `push_weights`), whatever reaches the engines
  (`Engines`): Ray actors (`actors.rollout.RolloutActors`) or engines in this process
  (`LocalEngines`). A bucket reaches them as tensors (through the Ray object store) or by
  broadcast over the weight group.

Nothing here imports Ray: the Ray side is the `Engines` adapter in `actors.rollout`.
"""
