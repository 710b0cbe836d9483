"""The private core: one streaming engine that drives every pipeline.

Follow one item, in one direction, from input to consumer:

1. ``_input``    -- the pump reads the input lazily and admits each item (one window token)
   into the first stage (or, when every stage is a fused plain function, runs the chain
   on a slice of the input at a time and hands the results over at once: ``_fused``);
2. ``_stage``    -- a stage makes its call (the one place calls are made) through its
   executor (``_calls``); an awaitable result waits in a real asyncio task, a Future
   by callback (``_waiting``); a failing
   call goes through the error policy (``_policy``); results go downstream, generator
   results through ``_expand``; ``_batch`` accumulates items for batch tasks;
3. ``_order``    -- in ordered runs, each segment's reorder list holds results that finish
   early; ``_delivery`` feeds batch stages in order and hands results to the consumer;
4. ``_run``      -- the run: wiring, ownership of every task, the consumer's ``next()``,
   failure and clean-up.

Beside that path: ``_window`` (tokens, waiters, stalls), ``_weight`` (the input bounded
in bytes), ``_gate`` (rate limits: calls wait for their turn), ``_bind`` (side inputs and
run-scoped resources, per run), ``_observe`` (the observer seam, inserted only when a run
is observed), ``_stats`` and ``_histogram`` (the statistics it collects) and ``_log``
(what the ``conveyor`` logger is told, on the failure path and at a run's edges); the
executors: ``_executors``
(option to executor), ``_threads``, ``_pools``, ``_chunks``, ``_pickling``, ``_dask``
and ``_auto``.
"""
