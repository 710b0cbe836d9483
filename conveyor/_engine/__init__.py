"""The private core: one streaming executor that drives every pipeline.

Modules, bottom up:

* ``_eager``  -- start a coroutine synchronously, hand it to an asyncio task only if it
  suspends (Python 3.12's eager tasks, done by hand for 3.11).
* ``_order``  -- the reorder list that keeps ordered runs in input order.
* ``_stages`` -- the runtime of one task in one run: concurrency, batching, error policy.
* ``_run``    -- one run: the window, the input pump, the consumer side, cancellation.
"""
