"""Demucs on a GPU, checked on the CPU: where the model, the tracks and the workers go."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_mscl.chunks import StemChunker, worker_device
from modeling_mscl.stems import SOURCES, DemucsSeparator
from tests.test_stems import tiny_htdemucs

MODEL_SR = 44_100


@pytest.mark.parametrize(
    ("device", "rank", "gpus", "expected"),
    [
        ("cuda", 0, 4, "cuda:0"),
        ("cuda", 1, 4, "cuda:1"),
        ("cuda", 3, 4, "cuda:3"),
        ("cuda", 5, 4, "cuda:1"),  # more workers than GPUs: round robin
        ("cuda", None, 4, "cuda"),  # no worker pool: the current GPU
        ("cuda", 2, 1, "cuda"),
        ("cuda:2", 0, 4, "cuda:2"),  # an index is taken as given
        (None, 2, 4, "cuda:2"),
        (None, None, 4, "cuda:0"),
        (None, 3, 0, "cpu"),
        ("cpu", 3, 4, "cpu"),
    ],
)
def test_each_worker_takes_its_gpu(device, rank, gpus, expected):
    assert worker_device(device, rank, gpus) == torch.device(expected)


def test_the_chunker_spreads_num_proc_workers_over_the_gpus(monkeypatch):
    """`--device cuda --num-proc 4` on 4 GPUs: worker i on cuda:i, not all on cuda:0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    separator = DemucsSeparator(model_instance=tiny_htdemucs(), device="cuda")
    chunker = StemChunker(separator, device="cuda")
    assert [chunker._device(rank) for rank in range(4)] == [
        torch.device("cuda", i) for i in range(4)
    ]
    assert StemChunker(separator)._device(2) == torch.device("cuda", 2)  # the separator's


def test_the_model_moves_once_and_long_tracks_stay_on_the_cpu(monkeypatch):
    """The "meta" device stands in for a GPU: apply_model is replaced by a spy that sees
    where the model and each call's tracks are."""
    import demucs.apply

    calls = []

    def spy(model, mix, *, device, **kwargs):
        param = next(model.parameters())
        calls.append({"model": param.device, "mix": mix.device, "device": torch.device(device)})
        return torch.zeros(mix.shape[0], len(model.sources), *mix.shape[1:], device=mix.device)

    monkeypatch.setattr(demucs.apply, "apply_model", spy)
    model = tiny_htdemucs()
    separator = DemucsSeparator(model_instance=model, max_device_seconds=2.0, batch_size=1)
    rng = np.random.default_rng(0)
    short, long = (0.1 * rng.standard_normal((2, int(s * MODEL_SR))) for s in (1.0, 3.0))
    meta = torch.device("meta")
    for _ in range(2):
        out = separator.separate([short, long], [MODEL_SR, MODEL_SR], device=meta)
        assert [sorted(track) for track in out] == [sorted(SOURCES)] * 2
        assert all(stem.device == meta for track in out for stem in track.values())
    assert next(model.parameters()).device == meta  # moved once, and left there
    assert all(call["model"] == meta and call["device"] == meta for call in calls)
    # Longest first: the 3 s track is streamed from the CPU, the 1 s one is on the device.
    assert [call["mix"].type for call in calls] == ["cpu", "meta"] * 2


def test_max_device_seconds_is_checked_and_not_hashed():
    with pytest.raises(ValueError, match="max_device_seconds"):
        DemucsSeparator(max_device_seconds=0)
    a, b = DemucsSeparator(max_device_seconds=60), DemucsSeparator(max_device_seconds=None)
    assert a.fingerprint() == b.fingerprint()  # where stems are kept does not change them
