"""The checkpoint stores conveyor has, one module per backend (see ``conveyor.abc``'s
``CheckpointStore``): ``sqlite`` (a file path) and ``postgres`` (a ``postgresql://`` or
``postgres://`` URL, with ``conveyor[postgres]``). ``conveyor.checkpoint.Checkpoint``
picks one by its argument; the PostgreSQL module (and asyncpg) is imported only then.
"""
