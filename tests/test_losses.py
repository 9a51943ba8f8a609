"""Tests of the contrastive losses: against naive per-row loops, and under 2 gloo processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from modeling_mscl.losses import (
    gather_no_grad,
    gather_with_grad,
    info_nce_loss,
    null_source_contrastive_loss,
    process_gather,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def bilinear(weight: torch.Tensor):
    return lambda anchors, columns: anchors @ weight @ columns.T


def cosine(temperature: float):
    return lambda anchors, columns: (
        F.normalize(anchors, dim=-1) @ F.normalize(columns, dim=-1).T / temperature
    )


def naive_null_source(anchors, positives, present, similarity):
    """The null-source loss written row by row: (loss, logits, targets).

    The null column is the mean of the absent rows' positive embeddings."""
    present = [bool(p) for p in present]
    columns = [positives[j] for j in range(len(present)) if present[j]]
    num_present = len(columns)
    if not all(present):
        absent = [positives[j] for j in range(len(present)) if not present[j]]
        columns.append(sum(absent) / len(absent))
    rows, losses, targets = [], [], []
    for i in range(len(present)):
        target = sum(present[:i]) if present[i] else num_present
        row = torch.stack([similarity(anchors[i][None], c[None])[0, 0] for c in columns])
        losses.append(-torch.log_softmax(row, dim=0)[target])
        rows.append(row)
        targets.append(target)
    return torch.stack(losses).mean(), torch.stack(rows), torch.tensor(targets)


def counted(out):
    """(logits, targets) over the columns that count, as the reference compacts them: the
    loss keeps one column per row (and the null column) at ``-inf`` where it does not count."""
    keep = torch.isfinite(out.logits).all(dim=0)
    column = torch.cumsum(keep.long(), dim=0) - 1  # compacted index of each kept column
    return out.logits[:, keep], column[out.targets]


def random_case(seed: int, batch: int = 7, dim: int = 5):
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(batch, dim, generator=gen)
    positives = torch.randn(batch, dim, generator=gen)
    weight = torch.randn(dim, dim, generator=gen) * 0.5
    present = torch.rand(batch, generator=gen) < 0.6
    present[0], present[1], present[2] = True, False, False  # a mix, and 2+ absent rows
    return anchors, positives, present, weight


SIMILARITIES = {
    "bilinear": lambda weight: bilinear(weight),
    "cosine": lambda weight: cosine(0.2),
}


@pytest.mark.parametrize("kind", sorted(SIMILARITIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_source_matches_naive_loop(kind, seed):
    anchors, positives, present, weight = random_case(seed)
    similarity = SIMILARITIES[kind](weight)
    out = null_source_contrastive_loss(anchors, positives, present, similarity)
    loss, logits, targets = naive_null_source(anchors, positives, present, similarity)
    torch.testing.assert_close(out.loss, loss)
    # Fixed shape: one column per row and the null column, -inf where absent.
    assert out.logits.shape == (anchors.shape[0], anchors.shape[0] + 1)
    assert torch.isinf(out.logits[:, :-1][:, ~present]).all()
    compact_logits, compact_targets = counted(out)
    torch.testing.assert_close(compact_logits, logits)
    assert out.targets.dtype == torch.int64
    assert compact_targets.tolist() == targets.tolist()
    expected_accuracy = (logits.argmax(dim=1) == targets).float().mean()
    torch.testing.assert_close(out.accuracy, expected_accuracy)


@pytest.mark.parametrize("kind", sorted(SIMILARITIES))
def test_null_source_gradients_match_naive_loop(kind):
    def grads(loss_fn):
        anchors, positives, present, weight = random_case(3)
        leaves = [t.requires_grad_() for t in (anchors, positives, weight)]
        loss = loss_fn(anchors, positives, present, SIMILARITIES[kind](weight))
        loss.backward()
        return [t.grad for t in leaves]

    got = grads(lambda *args: null_source_contrastive_loss(*args).loss)
    expected = grads(lambda *args: naive_null_source(*args)[0])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    # Every absent row feeds the null column (the mean), so each one gets a gradient, and
    # the same one: d mean / d row is 1 / (number of absent rows) for every row.
    _, _, present, _ = random_case(3)
    absent_grads = got[1][~present]
    assert absent_grads.shape[0] >= 2 and torch.any(absent_grads != 0)
    torch.testing.assert_close(absent_grads, absent_grads[:1].expand_as(absent_grads))
    assert torch.any(got[1][present] != 0)


@pytest.mark.parametrize("kind", sorted(SIMILARITIES))
def test_all_present_equals_info_nce(kind):
    anchors, positives, _, weight = random_case(4)
    similarity = SIMILARITIES[kind](weight)
    present = torch.ones(anchors.shape[0], dtype=torch.bool)
    out = null_source_contrastive_loss(anchors, positives, present, similarity)
    ref = info_nce_loss(anchors, positives, similarity)
    # The null column is there, at -inf: it adds exactly 0 to the softmax's sum (the
    # matmul over one more column may round differently).
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(out.logits[:, :-1], ref.logits)
    assert torch.isinf(out.logits[:, -1]).all()
    assert torch.equal(out.targets, ref.targets)
    assert torch.equal(out.accuracy, ref.accuracy)


def test_info_nce_matches_cross_entropy_of_full_logits():
    anchors, positives, _, weight = random_case(5)
    out = info_nce_loss(anchors, positives, bilinear(weight))
    logits = anchors @ weight @ positives.T
    assert out.targets.tolist() == list(range(anchors.shape[0]))
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, -torch.log_softmax(logits, dim=1).diagonal().mean())


def test_info_nce_accuracy_counts_rows_that_pick_their_own_positive():
    anchors = torch.eye(4) * 5
    positives = torch.eye(4)[[0, 1, 3, 2]]  # rows 2 and 3 swapped: they pick each other
    out = info_nce_loss(anchors, positives, bilinear(torch.eye(4)))
    assert out.accuracy.item() == pytest.approx(0.5)
    assert not out.accuracy.requires_grad


def test_all_absent_rows_pick_the_null_column():
    anchors, positives, _, weight = random_case(6)
    present = torch.zeros(anchors.shape[0], dtype=torch.bool)
    out = null_source_contrastive_loss(anchors, positives, present, bilinear(weight))
    logits, targets = counted(out)
    assert logits.shape == (anchors.shape[0], 1)
    assert targets.tolist() == [0] * anchors.shape[0]
    assert out.targets.tolist() == [anchors.shape[0]] * anchors.shape[0]
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)  # softmax over a single column
    assert out.accuracy.item() == 1.0
    torch.testing.assert_close(logits[:, 0], anchors @ weight @ positives.mean(0))


def test_bad_shapes_raise():
    anchors, positives, present, weight = random_case(8)
    sim = bilinear(weight)
    with pytest.raises(ValueError, match="source_present"):
        null_source_contrastive_loss(anchors, positives, present[:-1], sim)
    with pytest.raises(ValueError, match="positive_embeds"):
        info_nce_loss(anchors, positives[:-1], sim)
    with pytest.raises(ValueError, match="logits of shape"):
        info_nce_loss(anchors, positives, lambda a, c: a @ c.T[:, :2])


def test_source_present_may_be_integers():
    anchors, positives, present, weight = random_case(9)
    sim = bilinear(weight)
    as_bool = null_source_contrastive_loss(anchors, positives, present, sim)
    as_int = null_source_contrastive_loss(anchors, positives, present.long(), sim)
    assert torch.equal(as_bool.loss, as_int.loss)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_embeds_give_float32_logits(dtype):
    anchors, positives, present, weight = random_case(10)
    anchors, positives = anchors.to(dtype), positives.to(dtype)
    sim = bilinear(weight)
    out = null_source_contrastive_loss(anchors, positives, present, sim)
    ref, logits, _ = naive_null_source(anchors.float(), positives.float(), present, sim)
    assert out.logits.dtype == torch.float32 and out.loss.dtype == torch.float32
    torch.testing.assert_close(counted(out)[0], logits)
    torch.testing.assert_close(out.loss, ref)


def test_autocast_does_not_lower_the_logits_precision():
    anchors, positives, _, weight = random_case(11)
    sim = bilinear(weight)
    ref = info_nce_loss(anchors, positives, sim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = info_nce_loss(anchors, positives, sim)
    assert out.logits.dtype == torch.float32
    # bfloat16 matmuls would be off by ~1e-2 here; float32 matches to rounding.
    torch.testing.assert_close(out.logits, ref.logits)


def test_empty_batch_gives_a_zero_loss_that_backpropagates():
    anchors = torch.zeros(0, 5, requires_grad=True)
    positives = torch.zeros(0, 5, requires_grad=True)
    out = null_source_contrastive_loss(
        anchors, positives, torch.zeros(0, dtype=torch.bool), bilinear(torch.eye(5))
    )
    assert out.loss.item() == 0.0 and out.logits.shape == (0, 1)  # the null column only
    out.loss.backward()
    assert anchors.grad is not None and anchors.grad.shape == (0, 5)


def test_gathers_are_identity_without_distributed():
    assert not (dist.is_available() and dist.is_initialized())
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x
    assert gather_no_grad(x) is x
    assert process_gather() is None


# --------------------------------------------------------------------------------------
# Two processes on gloo versus one process on the whole batch.

WORLD = 2
GLOBAL_BATCH = 8
# Global presence masks (process 0 takes rows 0-3, process 1 rows 4-7); None = InfoNCE.
DIST_CASES = {
    "info_nce": None,
    "absent_on_both": [1, 0, 1, 1, 0, 1, 1, 0],
    "process0_all_present": [1, 1, 1, 1, 1, 0, 0, 1],  # process 0 has no absent row
    "process1_all_absent": [0, 1, 1, 1, 0, 0, 0, 0],
    "all_present_masked": [1] * 8,
}


class TinyContrastiveModel(nn.Module):
    """Linear "encoder" plus a bilinear similarity; absent positives are the zero input."""

    def __init__(self, in_dim: int = 6, dim: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Linear(in_dim, dim)
        self.weight = nn.Parameter(torch.randn(dim, dim) * 0.5)

    def similarity(self, anchors: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        return anchors @ self.weight @ columns.T

    def forward(self, anchors_x, positives_x, present=None):
        # The trainer's way: the single-process loss plus the gather of process_gather().
        gather = process_gather()
        anchors = self.encoder(anchors_x)
        if present is None:
            out = info_nce_loss(anchors, self.encoder(positives_x), self.similarity, gather)
        else:
            positives = self.encoder(positives_x * present[:, None])
            out = null_source_contrastive_loss(anchors, positives, present, self.similarity, gather)
        return out.loss, out.logits, out.targets


def _dist_inputs(case: str):
    torch.manual_seed(0)
    model = TinyContrastiveModel()
    gen = torch.Generator().manual_seed(1)
    anchors_x = torch.randn(GLOBAL_BATCH, 6, generator=gen)
    positives_x = torch.randn(GLOBAL_BATCH, 6, generator=gen)
    mask = DIST_CASES[case]
    present = None if mask is None else torch.tensor(mask, dtype=torch.bool)
    return model, anchors_x, positives_x, present


def _worker_main(rank: int, init_file: str, out_dir: str) -> None:
    """One process of the distributed test (run in a subprocess, see ``dist_results``)."""
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=30),
    )
    try:
        results = {}
        local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        for case in DIST_CASES:
            model, anchors_x, positives_x, present = _dist_inputs(case)
            ddp = DistributedDataParallel(model)
            loss, logits, targets = ddp(
                anchors_x[local], positives_x[local], None if present is None else present[local]
            )
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[case] = {
                "loss": mean_loss / WORLD,
                "logits": logits.detach(),
                "targets": targets,
                "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            }

        # The gradient of a gathered slice is the sum over processes of its gradient.
        x = torch.ones(2, 3, requires_grad=True)
        (gather_with_grad(x) * (rank + 1)).sum().backward()
        results["gather_grad"] = x.grad
        results["gather_bool"] = gather_no_grad(torch.tensor([rank == 0, True, False]))

        errors = {}
        x = torch.randn(3 + rank, 4)  # unequal local batch sizes
        for name, fn in {
            "info_nce_unequal": lambda: info_nce_loss(
                x, x, bilinear(torch.eye(4)), process_gather()
            ),
            "gather_no_grad_unequal": lambda: gather_no_grad(x),
        }.items():
            try:
                fn()
                errors[name] = None
            except ValueError as err:
                errors[name] = str(err)
        results["errors"] = errors
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # neither process tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


# Imports modeling_mscl.losses without running the package __init__ (which registers the
# Auto classes and imports the Hub helpers): only what the losses need.
_WORKER_BOOT = """
import sys, types
root = sys.argv[1]
sys.path.insert(0, root)
package = types.ModuleType("modeling_mscl")
package.__path__ = [root + "/modeling_mscl"]
sys.modules["modeling_mscl"] = package
from tests.test_losses import _worker_main
_worker_main(int(sys.argv[2]), sys.argv[3], sys.argv[4])
"""
# Each worker imports transformers (the losses are imported through the Hub files).
DIST_TIMEOUT_S = 240
SHUTDOWN_GRACE_S = 20


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if sys.platform.startswith("linux"):
        # gloo otherwise binds to the address the host name resolves to, which may be
        # unreachable in a sandbox; the loopback device always works for one machine.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # Logs go to files, not pipes: a worker blocked on a full pipe while the other waits
    # in a collective would hang both; and on a timeout the logs say where each one was.
    logs = [tmp / f"worker{rank}.log" for rank in range(WORLD)]
    procs = []
    for rank in range(WORLD):
        argv = [sys.executable, "-c", _WORKER_BOOT, str(REPO_ROOT), str(rank)]
        with open(logs[rank], "w") as log:
            procs.append(
                subprocess.Popen(
                    [*argv, str(tmp / "store"), str(tmp)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    outputs = [tmp / f"rank{rank}.pt" for rank in range(WORLD)]
    deadline = time.monotonic() + DIST_TIMEOUT_S
    saved_at = None
    try:
        while any(proc.poll() is None for proc in procs):
            now = time.monotonic()
            if saved_at is None and all(path.exists() for path in outputs):
                saved_at = now
            # Gloo's teardown after the results are saved has hung on a loaded machine
            # (one process left in destroy_process_group): what is tested is in the files.
            if saved_at is not None and now - saved_at > SHUTDOWN_GRACE_S:
                break
            if now > deadline:
                tails = "\n".join(
                    f"--- worker {r}:\n{p.read_text()[-2000:]}" for r, p in enumerate(logs)
                )
                pytest.fail(
                    f"distributed workers did not finish within {DIST_TIMEOUT_S} s\n{tails}"
                )
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, proc in enumerate(procs):
        finished = proc.returncode == 0 or (saved_at is not None and proc.returncode < 0)
        assert finished, f"worker {rank} failed:\n{logs[rank].read_text()}"
    return [torch.load(path) for path in outputs]


@pytest.mark.parametrize("case", list(DIST_CASES))
def test_two_processes_match_one_process_on_the_global_batch(dist_results, case):
    model, anchors_x, positives_x, present = _dist_inputs(case)
    loss, logits, targets = model(anchors_x, positives_x, present)
    loss.backward()
    got = [r[case] for r in dist_results]
    torch.testing.assert_close(got[0]["loss"], loss.detach(), rtol=0, atol=1e-6)
    # Each process holds its own rows of the global logits and targets.
    torch.testing.assert_close(torch.cat([g["logits"] for g in got]), logits.detach())
    assert torch.cat([g["targets"] for g in got]).tolist() == targets.tolist()
    for rank_result in got:  # DDP leaves the same averaged gradient on every process
        for name, param in model.named_parameters():
            torch.testing.assert_close(
                rank_result["grads"][name], param.grad, rtol=0, atol=1e-6, msg=name
            )


def test_two_process_null_column_is_shared(dist_results):
    """All absent anchors, on both processes, point at the same (last) column."""
    got = dist_results[0]["absent_on_both"], dist_results[1]["absent_on_both"]
    mask = torch.tensor(DIST_CASES["absent_on_both"], dtype=torch.bool).view(WORLD, -1)
    num_columns = mask.numel() + 1  # one per row of the global batch, the null column
    for result, local_mask in zip(got, mask, strict=True):
        assert result["logits"].shape[1] == num_columns
        assert set(result["targets"][~local_mask].tolist()) == {num_columns - 1}
        assert torch.isinf(result["logits"][:, :-1][:, ~mask.flatten()]).all()
        assert torch.isfinite(result["logits"][:, -1]).all()


def test_gather_with_grad_sums_the_gradient_of_each_slice(dist_results):
    for result in dist_results:
        torch.testing.assert_close(result["gather_grad"], torch.full((2, 3), 3.0))


def test_gather_no_grad_keeps_bool(dist_results):
    for result in dist_results:
        assert result["gather_bool"].dtype == torch.bool
        assert result["gather_bool"].tolist() == [True, True, False, False, True, False]


@pytest.mark.parametrize("name", ["info_nce_unequal", "gather_no_grad_unequal"])
def test_unequal_local_sizes_raise_on_every_process(dist_results, name):
    for result in dist_results:
        assert result["errors"][name] is not None
        assert "same shape on every process" in result["errors"][name]
        assert "(3, 4)" in result["errors"][name] and "(4, 4)" in result["errors"][name]
