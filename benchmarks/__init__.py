"""conveyor's benchmark suite: ``python -m benchmarks`` (see ``--help``).

Every scenario runs conveyor and its baselines interleaved in the same process, on the
plain asyncio loop and on uvloop, and reports medians; the table is printed and written
to ``benchmarks/RESULTS.md`` (or ``--output PATH``). ``python -m benchmarks.merge`` combines
the files of runs on several interpreters into one, a table per interpreter.
"""
