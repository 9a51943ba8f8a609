"""Cost of the checks on chunk data: opening a chunk set, and refusing bad batch values.

Writes a synthetic chunk set (256 tracks of 4 chunks), then prints, in milliseconds:
opening it with ``datasets.load_from_disk`` alone and with ``load_chunk_set`` (which also
validates the structure of its Arrow files), and for batches of crops: cutting them,
numpy's float16 ``min``/``max`` (the obvious check), the bit comparison the package uses
(``rows_in_range``), and ``ChunkStore.checked_crops`` the first time its chunks are read
(each chunk checked whole) and afterwards (a look-up of the kept verdicts). Each figure is
the mean of ``--repeats`` calls.

    python scripts/benchmark_data_checks.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np


def _ms(fn: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> None:
    """Print the figures described in the module docstring."""
    import datasets

    from modeling_mscl.chunk_set import load_chunk_set, save_chunk_set
    from modeling_mscl.data_checks import rows_in_range
    from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
    from modeling_mscl.pairs import synthetic_chunk_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp() + "/chunks"
    rows = synthetic_chunk_dataset(num_tracks=256, chunks_per_track=4)
    save_chunk_set(rows, folder, MSCLFeatureExtractor())
    plain = _ms(lambda: datasets.load_from_disk(folder), 1)
    checked = _ms(lambda: load_chunk_set(folder), 1)
    print(f"open: load_from_disk {plain:.0f} ms, load_chunk_set (validated) {checked:.0f} ms")
    chunk_set = load_chunk_set(folder)
    store = chunk_set.store()
    rng = np.random.default_rng(0)
    for n in (256, 1024):
        picked = rng.choice(len(store), n, replace=False)
        offsets = rng.integers(0, store.chunk_frames - 98 + 1, n)
        crops = store.crops("mixture", picked, offsets)
        cut = _ms(lambda: store.crops("mixture", picked, offsets), args.repeats)  # noqa: B023
        minmax = _ms(lambda: (crops.min(), crops.max()), args.repeats)  # noqa: B023
        bits = _ms(lambda: rows_in_range(crops, store.value_range), args.repeats)  # noqa: B023
        fresh = chunk_set.store()
        first = _ms(lambda: fresh.checked_crops("mixture", picked, offsets), 1)  # noqa: B023
        later = _ms(lambda: fresh.checked_crops("mixture", picked, offsets), args.repeats)  # noqa: B023
        print(
            f"batch {n}: cut {cut:.1f} ms | float16 min/max {minmax:.1f} ms, bit compare "
            f"{bits:.1f} ms | checked_crops first use {first:.1f} ms, later {later:.1f} ms"
        )


if __name__ == "__main__":
    main()
