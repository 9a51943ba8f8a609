"""Why the bilinear similarity stalls at demo scale: the first steps, measured.

For each variant of the bilinear similarity u^T W v, trains the demo's model from the same
seed on the same minibatches for ``--steps`` steps (Adam, the config's learning rate) and
prints, per step: the contrastive loss, the spread of the logits (std and the largest
absolute value), how saturated the softmax is (mean of each row's largest probability),
the gradient norms of W and of the encoder, the norm of the tanh embeddings, and how far
one update moves the logits of the step's own batch (mean absolute change, training mode,
the same stochastic-depth draws before and after).

Variants (all keep the bilinear form):
- ``reference``: W ~ N(0, 0.05^2), logits = u^T W v (the paper, ``paper.yaml``);
- ``scale=S``: logits = S * u^T W v (``bilinear_logit_scale``);
- ``init=S``: W ~ N(0, S^2);
- ``warmup=N``: the learning rate rises linearly over the first N steps.

    python scripts/bilinear_diagnostics.py --data_dir outputs/demo/chunks --steps 40 \
        --variants reference scale=0.0442 scale=0.00195 init=0.002 warmup=200

Figures go to stdout (and ``--out`` as JSON); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from modeling_mscl.pairs import PairDataset
from modeling_mscl.training import build_model, build_sampler, load_chunk_stores
from modeling_mscl.training_args import PretrainingArguments
from modeling_mscl.training_metrics import batch_inputs


def parse_variant(text: str) -> dict[str, float]:
    """``reference`` | ``scale=S`` | ``init=S`` | ``warmup=N`` (joined with ``,``)."""
    out: dict[str, float] = {}
    if text == "reference":
        return out
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in ("scale", "init", "warmup") or not value:
            raise ValueError(f"variant {text!r}: expected reference, scale=S, init=S or warmup=N")
        out[key] = float(value)
    return out


@torch.no_grad()
def _logits(model: Any, anchor: torch.Tensor, positive: torch.Tensor, present: Any) -> torch.Tensor:
    """The batch's logits in training mode with fixed stochastic-depth draws, so that two
    calls differ only by the weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return model(anchor, positive, source_present=present).logits.float()


def run_variant(args: PretrainingArguments, variant: dict[str, float], steps: int) -> list[dict]:
    """Train ``steps`` steps of ``variant``; one record of figures per step."""
    from accelerate.utils import set_seed

    from modeling_mscl.optim import make_optimizer

    t, d = args.training, args.data
    set_seed(t.seed)
    model = build_model(args).train()
    if "init" in variant:
        with torch.no_grad():
            model.similarity.weight.normal_(0.0, variant["init"])
    scale = variant.get("scale", 1.0)
    if "scale" in variant:
        model.config.bilinear_logit_scale = scale
        model.similarity.logit_scale = scale
    warmup = int(variant.get("warmup", 0))
    optimizer = make_optimizer(t.optimizer, model.parameters(), t.learning_rate, t.weight_decay)
    store, _ = load_chunk_stores(args)
    sampler = build_sampler(args, store)
    dataset = PairDataset(store, sampler, steps + 1)
    records = []
    weight = model.similarity.weight
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = t.learning_rate * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
        anchor, positive, present = batch_inputs(
            dataset[step], torch.device("cpu"), d.objective, None
        )
        out = model(anchor, positive, source_present=present)
        out.loss.backward()
        logits = out.logits.detach().float()
        probs = logits.softmax(-1)
        # Columns that do not count (absent rows, an unused null column) hold -inf at fixed
        # shapes: the statistics are over the columns that do.
        live = logits[torch.isfinite(logits)]
        w_grad = float(weight.grad.norm())
        rest = [p.grad.norm() ** 2 for p in model.parameters() if p.grad is not None]
        total = float(torch.stack(rest).sum().sqrt())
        before = _logits(model, anchor, positive, present)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after = _logits(model, anchor, positive, present)
        records.append(
            {
                "step": step,
                "loss": float(out.loss.detach()),
                "logit_std": float(live.std()),
                "logit_absmax": float(live.abs().max()),
                "max_prob": float(probs.max(-1).values.mean()),
                "saturated_rows": float((probs.max(-1).values > 0.99).float().mean()),
                "grad_norm_W": w_grad,
                "grad_norm_total": total,
                "embed_norm": float(out.anchor_embeds.detach().norm(dim=-1).mean()),
                "logit_shift": float((after - before)[torch.isfinite(before)].abs().mean()),
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    """Run every variant and print its per-step figures and a summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--objective", default="mscl", choices=["mscl", "cola"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=["reference"])
    parser.add_argument("--out", default=None, help="also write the records as JSON here")
    a = parser.parse_args(argv)
    variants = {v: parse_variant(v) for v in a.variants}
    args = PretrainingArguments.from_config(
        a.config,
        data_dir=a.data_dir,
        objective=a.objective,
        similarity="bilinear",
        seed=a.seed,
        max_steps=a.steps,
        output_dir="unused",
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    chance = math.log(args.training.batch_size)
    results = {}
    shown = (0, 1, 2, 3, 5, 10, 20, 40, 80, 160, 320)
    for name, variant in variants.items():
        records = run_variant(args, variant, a.steps)
        results[name] = records
        print(f"\n{name} ({a.objective}, chance ln {args.training.batch_size} = {chance:.2f})")
        print(
            "step  loss   logit_std  |logit|max  max_prob  sat>0.99  |g_W|     |g|      |u|    shift"
        )
        for r in records:
            if r["step"] in shown or r["step"] == a.steps - 1:
                print(
                    f"{r['step']:4d} {r['loss']:6.2f} {r['logit_std']:9.2f} {r['logit_absmax']:10.1f} "
                    f"{r['max_prob']:9.2f} {r['saturated_rows']:9.2f} {r['grad_norm_W']:8.3f} "
                    f"{r['grad_norm_total']:8.3f} {r['embed_norm']:6.1f} {r['logit_shift']:8.2f}"
                )
        tail = records[-10:]
        print(
            f"  last 10 steps: loss {sum(r['loss'] for r in tail) / len(tail):.2f}, "
            f"max loss over the run {max(r['loss'] for r in records):.2f}"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
