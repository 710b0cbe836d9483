"""Branches: a stage that gives each item to other pipelines and joins what they make of
it (``conveyor.parallel``, ``conveyor.route``).

**Branch runs.** Each branch of the stage is a run of its own (``Run``), started when the
stage is bound and owned by it: fed item by item through a :class:`Feed`, in the run's
mode, window and byte bound, its results read by a task of the run (:meth:`Branch.read`).
A branch's items carry origins (``_origin``) whose ``item`` is a :class:`Join`, the item's
state in the stage: each result comes back paired with its origins, and an origin that is
done (nothing derived from it left in the branch) tells its join the branch is through
with the item. A batch task in a branch that returns one result per item hands each one
on as its own item's (``Ledger.attributed``); one that returns any other number cannot
say which result is whose: in ``parallel`` that fails the run, naming the task; in
``route`` the results go on as the batch's first item's, standing for all its items
(their origins: ``with_items()`` pairs them with the batch's items, a checkpoint holds
each item until they are delivered), the others' calls ending with nothing.

**The stage's call.** An item's call puts it into its branches at once and returns an
``Answer`` settled when every branch it went to is through with it: ``parallel``'s, the
tuple of the branches' results (a branch's: its one result, ``None`` if none, the list
if several; a :class:`~conveyor.errors.Failure` of any branch is the item's result, the
first branch's first), or ``combine(item, *results)``; ``route``'s, the list of its
branch's results (each goes on as an item), or ``[item]`` for an item no branch takes.
The call holds its item's window token until then: the window bounds the branches.

**The end.** When no more items will come to the stage (``Ledger.input_ended``) its
branches' inputs are closed: their remainder rules apply. A branch run that fails fails
the run with its error; the run's end aborts every branch run (their readers end too).

**A stalled run.** A call waiting for its branches is *parked* (``Ledger.call_parked``:
counted, but not work), and a branch run's pump waiting for items is not it working;
while a branch run works the run is not stalled (``Ledger.elsewhere``); one that stops
working tells the run, soon (``branch_idle_soon``). If then nothing works in the run and
its input waits for room (the byte bound admitting fewer items than a branch's batch
holds; a batch in a branch fed out of input order, or by part of the items, with items
done behind it holding the window), the stall rule flushes a branch's partial batch
first (``Run.flush_a_batch``). Never while a branch works.

**Statistics.** A branch run's collector is the run's ``branch``: its stages are listed
after the branch stage, named ``"<stage>/<branch stage>"``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._spec import StageSpec
from .._spec_branches import BranchesSpec
from ..context import PipelineContext
from ..errors import Failure, short_repr
from ._calls import Answer, Executor, Regrouped, hand_on
from ._ledger import Ledger
from ._origin import ORIGIN, BatchOrigins, Origin, each, merged
from ._plan import StagePlan
from ._roles import Statistics, Tracing
from ._stage import SingleStage

if TYPE_CHECKING:
    from ._observe import StageObserver
    from ._roles import RunRole

__all__ = ["BranchStage", "Join"]

# (``_run.Run``, given by the run: a branch stage's runs are runs like any.)
NewRun = Callable[..., Any]


class Join:
    """One item's state in a branch stage: its branches' results, how many are not
    through with it, the ``Answer`` its call waits on (no task or Future per item), its
    origins in the run (``outer``) and their keys (``current_keys()`` in branches)."""

    __slots__ = ("adopted", "answer", "given", "item", "key", "left", "outer", "results")

    def __init__(self, item: Any, branches: int) -> None:
        self.item = item
        self.adopted: list[Origin] | None = None  # (see ``BranchStage.adopt``)
        self.given = False  # another item's result stands for this one (``adopt``)
        self.left = branches
        self.results: list[list[Any]] = [[] for _ in range(branches)]
        self.answer = Answer(item)
        # (The call is made in its own context, where its item's origins are.)
        outer = ORIGIN.get(None)
        self.outer = outer
        self.key = None if outer is None else tuple(one.key for one in each(outer))


class Outcomes:
    """A branch run's policy outcomes, on a run with a checkpoint: what a branch's
    policy gave up on is recorded failed on the run's own origins of its items."""

    __slots__ = ("ledger",)

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def on_gave_up(self, is_batch: bool) -> Callable[[Any, BaseException, str, bool], None]:
        return self.gave_up

    def gave_up(self, item: Any, exc: BaseException, outcome: str, batch: bool) -> None:
        value = ORIGIN.get(None)  # (the branch run's origins of the call: see _origin)
        if outcome == "failed" or value is None:
            return  # (the run fails with it)
        if not batch and type(value) is BatchOrigins:
            value = value.of(item)
        outer = merged([one.item.outer for one in each(value)])
        self.ledger.origin_failed(outer, exc)


class Feed:
    """A branch run's input: ``(item, join)`` pairs, read by its pump, which waiting for
    items is not the branch run (``ledger``) working; it ends once closed and empty."""

    __slots__ = ("closed", "items", "ledger", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[Any, Join]] = deque()
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None
        self.ledger: Ledger | None = None

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> tuple[Any, Join]:
        while not self.items:
            if self.closed:
                raise StopAsyncIteration
            waiter = self.waiter = self.loop.create_future()
            ledger = self.ledger
            assert ledger is not None
            ledger.work_stopped()  # (waiting is not working: is the branch idle?)
            try:
                await waiter
            finally:
                self.waiter = None
                ledger.resumed(waiter)
        return self.items.popleft()

    def put(self, item: Any, join: Join) -> None:
        self.items.append((item, join))
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            assert self.ledger is not None
            self.ledger.wake(waiter, None)  # (busy from now: see Ledger.wake)


class Branch:
    """One branch of a branch stage in one run: its run, its input, and the joins it is
    through with since the last :meth:`settle`."""

    __slots__ = ("feed", "label", "reading", "run", "slot", "specs", "stage", "through")

    def __init__(self, stage: BranchStage, slot: int, label: str, specs: Sequence[StageSpec]):
        self.stage = stage
        self.slot = slot  # (the index of its results in a join: parallel's branch index)
        self.label = label
        self.specs = tuple(specs)
        self.feed = Feed(stage.loop)
        self.run: Any = None
        self.through: list[Join] = []
        self.reading = False  # (its reader is under way: see ``BranchStage.working``)

    def start(self, new_run: NewRun, settings: PipelineContext) -> None:
        """Build and start the branch run (from the run's supervisor, in its context)."""
        outer = self.stage.run
        stats = getattr(outer, "stats", None)
        settings = settings.copy()  # (its log records say whose branch they are from)
        settings.pipeline_id = f"{settings.pipeline_id}/{self.stage.name}/{self.label}"
        run = self.run = new_run(
            self.specs,
            self.feed,
            settings,
            None,
            None if stats is None else stats.branch(self.stage, self.label),
            paired=lambda origins: origins,  # (each result with its origins)
            branch=True,
            outcomes=None if outer.outcomes is None else Outcomes(outer.ledger),
        )
        run.ledger.on_done = self.done
        run.ledger.on_idle = self.stage.branch_idle_soon
        self.feed.ledger = run.ledger
        run.start()
        self.reading = True  # (from now: its task may start a loop turn later, on 3.11)
        outer.spawn(self.read(), outer.context)

    async def read(self) -> None:
        """Give the branch run's results to their joins until it ends (or fails the run)."""
        stage = self.stage
        ledger = stage.ledger
        ledger.work_stopped()  # (waiting for a branch is not working: its calls are)
        try:
            while True:
                try:
                    origins, result = await self.run.next()
                except StopAsyncIteration:
                    return
                except Exception as exc:  # (the run fails with it now, not a step later)
                    stage.run.fail(exc)
                    return
                stage.output(self, origins, result)
                # (The branch run may have nothing left to do now, its last result taken
                # by an item that still waits for another branch: is the run stalled?)
                stage.branch_idle()
        finally:
            self.reading = False
            ledger.work_started()
            await self.run.shutdown()

    def done(self, origin: Origin) -> None:
        """(The branch run's ``Ledger.on_done``.) The branch is through with an item: its
        join is told once the result just taken is given to it (``settle``, soon). An
        item every branch is through with has its call working again from now (its
        result is about to go on: the run must not look stalled meanwhile)."""
        join = origin.item
        join.left -= 1
        if not join.left:
            self.stage.ledger.call_unparked()
        if not self.through:
            self.stage.loop.call_soon(self.settle)
        self.through.append(join)
        if origin.error is not None and join.outer is not None:
            # (a branch run inside a branch: what its policies gave up on, told on)
            self.stage.ledger.origin_failed(each(join.outer), origin.error)

    def settle(self) -> None:
        through, self.through = self.through, []
        stage = self.stage
        answers = []
        for join in through:
            if not join.left and not join.answer.done():
                stage.joined(join)
                answers.append(join.answer)
        hand_on(stage.loop, answers)


class BranchStage(SingleStage):
    """A ``parallel`` or ``route`` stage (see the module's docstring): a single stage
    whose call gives its item to branch runs and waits for them."""

    __slots__ = ("branches", "closing", "idle_soon", "new_run", "routes", "shape", "unfed")

    def __init__(
        self,
        run: RunRole,
        plan: StagePlan,
        executor: Executor,
        stats: Statistics | None = None,
        observer: StageObserver | None = None,
        tracing: Tracing | None = None,
        *,
        new_run: NewRun,
    ) -> None:
        super().__init__(run, plan, executor, stats, observer, tracing)
        shape = plan.spec.branches
        assert shape is not None
        self.shape: BranchesSpec = shape
        self.new_run = new_run
        parallel = shape.kind == "parallel"
        self.branches = [
            Branch(self, index if parallel else 0, label, specs)
            for index, (label, specs) in enumerate(shape.branches)
        ]
        self.routes = dict(shape.routes)
        # Items pushed whose call has not put them into their branches yet (a call may
        # start after its push: in a task, on 3.11; behind a limit), and whether the
        # branches' inputs end once it is 0 (see ``close_input``).
        self.unfed = 0
        self.closing = False
        self.idle_soon = False  # (see ``branch_idle_soon``)

    def push(self, item: Any, node: Any, origin: Any) -> None:
        if type(item) is not Failure:
            self.unfed += 1
        super().push(item, node, origin)

    def fed(self) -> None:
        """An item's call put it into its branches (or into none: passed on, failed)."""
        self.unfed -= 1
        if self.closing and not self.unfed:
            self.close_input()

    def bind(self, invoke: Callable[[Any], Any]) -> None:
        """Start the branch runs; the stage's calls are :meth:`parallel` or
        :meth:`route` (``invoke``, the placeholder function, is not called)."""
        settings = self.run.settings  # type: ignore[attr-defined]
        for branch in self.branches:
            branch.start(self.new_run, settings)
        super().bind(self.parallel if self.shape.kind == "parallel" else self.route)

    def time_next_call(self, timed: Callable[[Any], Any]) -> None:
        """Not timed (its branches' stages are): a timed call, made in a coroutine, put
        its item into its branches a loop turn late on 3.11."""

    def parallel(self, item: Any) -> Any:
        join = Join(item, len(self.branches))
        self.ledger.call_parked()  # (waiting for the branches is not work: see _ledger)
        for branch in self.branches:
            branch.feed.put(item, join)
        self.fed()
        return join.answer

    def route(self, item: Any) -> Any:
        shape = self.shape
        try:
            key = shape.key(item)  # type: ignore[misc]
        except Exception as exc:  # (the item goes to no branch: the stage's policy's)
            exc.add_note(
                f"conveyor: route's key= function raised on {short_repr(item)} (in "
                f"{self.name!r}): it must return the value that picks the item's branch"
            )
            raise
        finally:
            self.fed()
        try:
            index = self.routes.get(key, shape.default)
        except TypeError as exc:  # (unhashable: the item fails under the stage's policy)
            message = f"route's key function returned {key!r} for the item {item!r}: not"
            raise TypeError(f"{message} hashable; key= must return a str, int, tuple...") from exc
        if index is None:
            return [item]  # (one item, as it came)
        join = Join(item, 1)
        self.ledger.call_parked()
        self.branches[index].feed.put(item, join)
        return join.answer

    def joined(self, join: Join) -> None:
        """Every branch is through with ``join``'s item: its call's result (see the
        module's docstring), or what ``combine`` raised, settles its answer."""
        answer = join.answer
        if self.shape.kind == "route":
            made = join.results[0]
            adopted = join.adopted
            if adopted is not None:
                answer.set_result(Regrouped(made, tuple(adopted)))
            elif join.given and not made:
                answer.set_result(Regrouped(made, ()))  # (see ``emit_list``)
            else:
                answer.set_result(made)
            return
        results = []
        for made in join.results:
            for value in made:
                if type(value) is Failure:
                    answer.set_result(value)
                    return
            results.append(None if not made else made[0] if len(made) == 1 else made)
        combine = self.shape.combine
        if combine is None:
            answer.set_result(tuple(results))
            return
        try:
            answer.set_result(combine(join.item, *results))
        except Exception as exc:  # (the stage's policy: ``on_error`` of parallel())
            exc.add_note(
                f"conveyor: parallel's combine= raised on {short_repr(join.item)} (in "
                f"{self.name!r}): it is called as combine(item, *results), with one "
                f"result per branch ({len(results)} branches here)"
            )
            answer.set_exception(exc)

    def output(self, branch: Branch, origins: Any, result: Any) -> None:
        """A result of ``branch``, with its origins (see the module's docstring)."""
        if type(origins) is Origin:
            join = origins.item
        elif origins and (len(origins) == 1 or self.shape.kind == "route"):
            join = origins[0].item  # (a batch's result of no one item: its first item's)
            if len(origins) > 1 and join.outer is not None:
                self.adopt(join, origins)
        else:
            raise ValueError(
                f"in {self.name!r}, branch {branch.label!r} gave {result!r} for the items "
                f"{[one.item.item for one in origins]!r} at once: a batch task inside "
                f"parallel() must return a list of one result per item of its batch, in "
                f"the batch's order, so that each item gets its own"
            )
        join.results[branch.slot].append(result)

    def adopt(self, join: Join, origins: Any) -> None:
        """A route branch's result for several items goes on as the first's (``join``):
        it holds each of their origins in the run from now (their calls end with
        nothing) and carries them all (:meth:`emit_list`)."""
        held = join.adopted if join.adopted is not None else list(each(join.outer))
        new: list[Origin] = []
        for other in origins[1:]:
            other.item.given = True
            new.extend(one for one in each(other.item.outer) if one not in held + new)
        if new:
            self.ledger.adopted(new)
            join.adopted = held + new

    def emit_list(self, results: list[Any], node: Any, origin: Any) -> None:
        if type(results) is Regrouped:  # (see ``adopt``)
            if not results:
                # An item whose part is in another's result, which holds its origins
                # (``adopt``): its own count goes now, not when the reader passes its
                # empty place (in an ordered run, behind items not taken yet: it would
                # hold the item after its result was taken, and a resumed run would do
                # it again). The place's token still comes back through its reader.
                self.ledger.left(origin)
                self.drop(node, None)
                return
            origin = results.origins
        super().emit_list(results, node, origin)

    def close_input(self) -> None:
        """No more items will come: the branches' inputs end (their remainder rules),
        once every item pushed is in its branches. Before the run's input is read (a
        ``Feedback`` whose feed is empty, with nothing working: its items' results may
        put more), the branches stay open and their remainder rules apply now, as the
        run's own batch stages' do (``Ledger.input_ended``)."""
        if not self.ledger.source_done:
            if not self.unfed:
                for branch in self.branches:
                    if branch.run is not None and not branch.run.closed:
                        branch.run.ledger.input_ended()
            return
        self.closing = True
        if not self.unfed:
            for branch in self.branches:
                branch.feed.close()

    def abort(self) -> None:
        """The run is over: every branch run is aborted (their readers end with it)."""
        for branch in self.branches:
            branch.feed.close()
            if branch.run is not None:
                branch.run.abort()

    def working(self) -> bool:
        """Whether a branch run works, has a result its reader is about to take, or is
        closed with its reader under way (failed: its error, once its calls have ended,
        fails the run) — the run is not stalled then: see ``Ledger.elsewhere``."""
        for branch in self.branches:
            run = branch.run
            if run is not None and branch.reading and (run.closed or run.working()):
                return True
        return False

    def branch_idle_soon(self) -> None:
        """(A branch run's ``Ledger.on_idle``.) Nothing works in that branch run: is this
        run stalled? Looked at soon, not now: the branch run may be in the middle of a
        transition (its reader taking a result whose item is not yet told it is
        through: this run would flush a partial batch a moment before that item's
        result reaches it)."""
        if not self.idle_soon:
            self.idle_soon = True
            self.loop.call_soon(self.branch_idle)

    def branch_idle(self) -> None:
        """A branch run may have nothing left to do: is this run stalled?"""
        self.idle_soon = False
        if not self.run.closed:
            self.ledger.idle()

    def flush_one(self) -> bool:
        """A branch's partial batch is sent off, if one has any (a stalled run)."""
        return any(
            branch.run is not None and branch.run.flush_a_batch() for branch in self.branches
        )
