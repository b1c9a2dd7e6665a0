"""The batcher on its own: how gathered requests become model calls."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ensrm.serve.batcher import DynamicBatcher


@pytest.mark.parametrize(("concurrency", "calls"), [(1, [4]), (2, [2, 2])])
def test_waiting_requests_are_shared_between_free_streams(held, concurrency, calls):
    held.concurrency = concurrency  # OpenVINO's streams with hint="throughput"

    async def main():
        batcher = DynamicBatcher(held, max_batch=64, max_wait_ms=0, max_queue=64)
        await batcher.start()
        try:  # four requests queued before the first gathering: one batch, or one per free stream
            return await asyncio.gather(*(batcher.submit(["Same prompt?"], ["Same answer."]) for _ in range(4)))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert sorted(held.calls) == calls
    expected = held.scorer.score_texts(["Same prompt?"], ["Same answer."]).heads  # [1, K]
    np.testing.assert_allclose(np.concatenate([r.heads for r in results]), np.repeat(expected, 4, 0), atol=1e-5)
