"""Cost of the batch value check: cutting crops vs the check, first use and steady state."""
import time, tempfile, os
import numpy as np
from modeling_mscl.pairs import synthetic_chunk_dataset
from modeling_mscl.chunk_set import save_chunk_set, load_chunk_set
from modeling_mscl.feature_extraction_mscl import MSCLFeatureExtractor
from modeling_mscl.data_checks import rows_in_range
import datasets
d = tempfile.mkdtemp()
save_chunk_set(synthetic_chunk_dataset(num_tracks=256, chunks_per_track=4), d + "/s", MSCLFeatureExtractor())
t = time.perf_counter(); datasets.load_from_disk(d + "/s"); plain = time.perf_counter() - t
t = time.perf_counter(); cs = load_chunk_set(d + "/s"); checked = time.perf_counter() - t
print(f"open: load_from_disk {plain*1e3:.0f} ms, load_chunk_set (validated) {checked*1e3:.0f} ms")
store = cs.store()
rng = np.random.default_rng(0)
for n in (256, 1024):
    rows = rng.choice(len(store), n, replace=False); offs = rng.integers(0, 295, n)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps): store.crops("mixture", rows, offs)
    cut = (time.perf_counter() - t) / reps
    crops = store.crops("mixture", rows, offs)
    t = time.perf_counter()
    for _ in range(reps): (crops.min(), crops.max())
    minmax = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for _ in range(reps): rows_in_range(crops, store.value_range)
    bits = (time.perf_counter() - t) / reps
    fresh = cs.store()
    t = time.perf_counter(); fresh.checked_crops("mixture", rows, offs); first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(reps): fresh.checked_crops("mixture", rows, offs)
    steady = (time.perf_counter() - t) / reps
    print(f"batch {n}: cut {cut*1e3:.1f} ms | float16 min/max {minmax*1e3:.1f} ms, bit compare "
          f"{bits*1e3:.1f} ms | checked_crops first use {first*1e3:.1f} ms, later {steady*1e3:.1f} ms")
