"""Does a spectral-statistics probe saturate the corpus's genre task? Builds a corpus with
the given diversity options and probes log-mel statistics on genre and tempo band.

python scripts/genre_saturation.py --out outputs/genre --num_songs 140 --seconds 15 \
    --options '{"shared_programs": true, "split_fractions": [0.6, 0.1, 0.3]}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Build the corpus, probe log-mel statistics, print and save the scores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/genre")
    parser.add_argument("--num_songs", type=int, default=140)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", default="{}", help="CorpusDiversity options (JSON)")
    parser.add_argument("--probe_windows", type=int, default=8)
    parser.add_argument("--probe_seeds", type=int, default=3)
    parser.add_argument("--num_workers", type=int, default=2)
    args = parser.parse_args(argv)

    from modeling_mscl.corpora.production import CorpusDiversity
    from modeling_mscl.corpora.synthetic import build_synthetic_corpus
    from modeling_mscl.probing import LogMelStatistics, get_task, mean_over_seeds, run_probe

    out = Path(args.out)
    diversity = CorpusDiversity.from_dict(json.loads(args.options))
    t0 = time.perf_counter()
    songs = build_synthetic_corpus(
        out / "corpus", args.num_songs, args.seconds, args.seed,
        num_workers=args.num_workers, diversity=diversity,
    )  # fmt: skip
    render = time.perf_counter() - t0
    encoder = LogMelStatistics(64)
    scores = {"options": diversity.to_dict(), "render_seconds": round(render, 1)}
    scores["sizes"] = {k: len(v) for k, v in songs.items()}
    for name in ("corpus_genre", "corpus_tempo"):
        task = get_task(name, train_windows=args.probe_windows, test_windows=args.probe_windows)
        runs = [
            run_probe(encoder, task, songs, cache_dir=out / "embeddings", seed=s).to_dict()
            for s in range(args.seed, args.seed + args.probe_seeds)
        ]
        merged = mean_over_seeds(runs)
        scores[name] = {
            "metrics": merged["metrics"],
            "metrics_std": merged["metrics_std"],
            "num_test": merged["num_clips"]["test"],
        }
        print(name, json.dumps(scores[name]), flush=True)
    print(f"sizes {scores['sizes']}, render {render:.0f} s")
    (out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
