"""Checksum every file under a directory tree, on worker processes, with a summary per type.

    files(tree)  ->  checksum (executor="process", on_error="emit")  ->  summary

``files(tree)`` lists the tree on a thread of its own, a batch of paths at a time, in a
fixed order (each directory sorted by name, depth first). ``checksum`` streams each file
through SHA-256 in a worker process, so hashing never holds up the event loop; one file
is a link whose target was deleted, and ``on_error="emit"`` turns its error into a
``conveyor.Failure`` that names the path, instead of ending the run. The summary counts,
per file type, the files checked, the failures and the bytes.

``checksum`` is defined at the top level of this module, and the entry point is guarded
by ``if __name__ == "__main__":``, because worker processes import this module by name.
"""

import hashlib
import random
import tempfile
from collections import Counter
from pathlib import Path

import conveyor
from conveyor import Failure, single_task
from conveyor.sources import files


@single_task(executor="process", on_error="emit")
def checksum(path: Path) -> tuple[Path, str, int]:
    """The file's SHA-256 and size, read 1 MiB at a time (never the whole file at once)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
            size += len(block)
    return path, digest.hexdigest(), size


def build_tree(root: Path) -> dict[Path, str]:
    """A few dozen files of three types in nested folders; their expected checksums."""
    rng = random.Random(11)
    expected = {}
    for n in range(36):
        suffix = (".txt", ".csv", ".bin")[n % 3]
        folder = root / f"part-{n % 4}" / ("old" if n % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"file-{n:02}{suffix}"
        path.write_bytes(rng.randbytes(rng.randrange(0, 200_000)))
        expected[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    # A link to a file that was deleted: listed, since it is there, but it cannot be read.
    target = root / "part-0" / "deleted.csv"
    target.touch()
    (root / "part-0" / "vanished.csv").symlink_to(target)
    target.unlink()
    return expected


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        expected = build_tree(root)

        ok: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        size: Counter[str] = Counter()
        source = files(root)
        async for result in checksum(source):
            if isinstance(result, Failure):
                path = result.item
                failed[path.suffix] += 1
                print(f"failed: {path.relative_to(root)}: {type(result.exception).__name__}")
                continue
            path, digest, n_bytes = result
            assert digest == expected[path], path
            ok[path.suffix] += 1
            size[path.suffix] += n_bytes

        print(f"{'type':<6}{'ok':>4}{'failed':>8}{'bytes':>12}")
        for suffix in sorted(ok | failed):
            print(f"{suffix:<6}{ok[suffix]:>4}{failed[suffix]:>8}{size[suffix]:>12,}")
        print(f"listing: {source.figures()}")

        assert ok == {".txt": 12, ".csv": 12, ".bin": 12}
        assert failed == {".csv": 1}
        assert sum(size.values()) == sum(path.stat().st_size for path in expected)
        assert source.figures()["files_read"] == 37


if __name__ == "__main__":
    conveyor.run(main())
