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

Beside that path: ``_ledger`` (the one owner of the accounting: window tokens, waiters,
stalls, each stage's counts, where every item went, the end of the run), ``_weight`` (the
input bounded in bytes), ``_gate`` (rate limits: calls wait for their turn), ``_bind``
(side inputs and run-scoped resources, per run), ``_observe`` (what a user's observer is
told, composed into the stages when the run builds them), ``_stats`` and ``_histogram``
(the statistics) and ``_log`` (what the ``conveyor`` logger is told, on the failure path
and at a run's edges); ``_roles`` (what the parts below the run and its stages need of
them, as protocols); the executors: ``_registry`` (one row per kind of option:
validation, construction, name, flags), ``_threads``, ``_pools``, ``_chunks``,
``_pickling``, ``_dask``, ``_ray`` and ``_auto``.
"""
