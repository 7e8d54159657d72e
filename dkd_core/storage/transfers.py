"""`parallel_transfers`: many uploads or downloads at once, with one progress bar.

Dataset sync (S3 -> cache) and `data push` (folder -> S3) move thousands of small
files; a round trip each, one after another, is what makes them slow. Both hand
their transfers here: a thread pool runs them, the bar counts them, and the first
failure cancels those not yet started and is raised (what finished stays finished:
each caller records or can find it, so the next run resumes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from tqdm import tqdm

Item = TypeVar("Item")


def parallel_transfers(
    transfers: Sequence[tuple[Item, Callable[[], object]]],
    *,
    workers: int,
    desc: str,
    progress: bool,
) -> Iterator[Item]:
    """Run each `(item, transfer)`'s `transfer()` in a pool of `workers` threads; yield
    each `item` as its transfer finishes, in the order they finish."""
    if not transfers:
        return
    name = desc.split()[0]
    with (
        tqdm(total=len(transfers), unit="file", desc=desc, disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"dkd-{name}") as pool,
    ):
        futures = {pool.submit(transfer): item for item, transfer in transfers}
        try:
            for future in as_completed(futures):
                future.result()
                bar.update(1)
                yield futures[future]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
