"""Weight-sync checks shared by the main suite and the vLLM suite (imports in both environments)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from raytrain.weight_sync import BucketReceiver, WeightGroup, bucket_meta, buckets, tensor_spec


def check_unannounced_bucket_refused_without_stalling(engine: BucketReceiver, group: WeightGroup,
                                                      state: dict[str, torch.Tensor], bucket_bytes: int) -> None:
    """A broadcast bucket the plan did not announce: the engine still takes part in the broadcast
    (the sender returns instead of stalling), then refuses it; the served version stays."""
    served = engine.version
    engine.begin_update(served + 1, tensor_spec(state), group.address)
    bucket = next(iter(buckets(state, bucket_bytes)))
    first = next(iter(bucket))
    renamed = {("not_a." + k if k == first else k): v for k, v in bucket.items()}
    with ThreadPoolExecutor(1) as pool:
        refused = pool.submit(engine.receive_bucket, bucket_meta(renamed))
        group.send(bucket)
        with pytest.raises(ValueError, match="not announced"):
            refused.result()
    assert engine.version == served
