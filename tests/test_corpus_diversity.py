"""Timbre and production diversity of the synthetic corpus, and the held-out SoundFont."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

pretty_midi = pytest.importorskip("pretty_midi")
pytest.importorskip("music21")
try:
    import fluidsynth  # noqa: F401
except ImportError:  # the module raises ImportError when libfluidsynth is missing
    pytest.skip("FluidSynth is not installed", allow_module_level=True)

import soundfile as sf  # noqa: E402
from datasets import Dataset, DatasetDict, load_from_disk  # noqa: E402

from modeling_mscl.corpora import soundfonts as sfmod  # noqa: E402
from modeling_mscl.corpora.general_midi import STEMS, default_soundfont  # noqa: E402
from modeling_mscl.corpora.midi_render import render_instruments  # noqa: E402
from modeling_mscl.corpora.note_set import build_note_set  # noqa: E402
from modeling_mscl.corpora.production import (  # noqa: E402
    CorpusDiversity,
    apply_eq,
    draw_production,
    shelf_coefficients,
)
from modeling_mscl.corpora.song_plans import diversify_plans, load_recipe, plan_songs  # noqa: E402
from modeling_mscl.corpora.soundfonts import resolve_soundfonts, soundfont_path  # noqa: E402
from modeling_mscl.corpora.synthetic import build_synthetic_corpus  # noqa: E402
from modeling_mscl.timbre_transfer import (  # noqa: E402
    DIVERSITY_CONFIG,
    in_and_out_of_timbre,
    load_diversity,
    summarise_transfer,
    transfer_table,
)

REPO = Path(__file__).resolve().parents[1]

HAVE_FLUID = Path(sfmod.SOUNDFONTS["FluidR3_GM"].path).is_file()


@pytest.fixture(scope="module")
def second(tmp_path_factory) -> str:
    """A second SoundFont: FluidR3_GM where Debian's package is installed, else the
    wheel's TimGM6mb copied under another name (enough to check the bookkeeping)."""
    if HAVE_FLUID:
        return "FluidR3_GM"
    copy = tmp_path_factory.mktemp("sf") / "Second.sf2"
    copy.write_bytes(default_soundfont().read_bytes())
    return str(copy)


def _name(spec: str) -> str:
    return spec if spec in sfmod.SOUNDFONTS else Path(spec).stem


def _diversity(second: str = "FluidR3_GM", **kw) -> CorpusDiversity:
    base = dict(
        soundfonts=("TimGM6mb", second),
        held_out_soundfont="TimGM6mb",
        held_out_share=0.3,
        eq_db=(-6.0, 6.0),
        reverb_send=(0, 100),
        reverb_room=(0.1, 0.8),
        chorus_send=(0, 60),
        chorus_depth_ms=(2.0, 12.0),
        gain_db=(-3.0, 3.0),
        detune_cents=(-15.0, 15.0),
        tempo_stretch=0.15,
        transpose=(-5, 6),
    )
    base.update(kw)
    return CorpusDiversity(**base)


# --- SoundFonts by name --------------------------------------------------------------


def test_missing_soundfont_names_its_debian_package(monkeypatch, tmp_path):
    monkeypatch.setitem(
        sfmod.SOUNDFONTS,
        "FluidR3_GM",
        sfmod.KnownSoundFont("FluidR3_GM", str(tmp_path / "none.sf2"), "fluid-soundfont-gm", ""),
    )
    with pytest.raises(FileNotFoundError, match="apt-get install fluid-soundfont-gm"):
        soundfont_path("FluidR3_GM")
    with pytest.raises(ValueError, match="unknown SoundFont 'NoSuchFont'"):
        soundfont_path("NoSuchFont")


def test_timgm6mb_falls_back_to_the_wheel(monkeypatch, tmp_path):
    monkeypatch.setitem(
        sfmod.SOUNDFONTS,
        "TimGM6mb",
        sfmod.KnownSoundFont("TimGM6mb", str(tmp_path / "none.sf2"), "timgm6mb-soundfont", ""),
    )
    assert soundfont_path("TimGM6mb") == default_soundfont()


def test_resolve_soundfonts_by_name_and_path(tmp_path):
    copy = tmp_path / "Other.sf2"
    copy.write_bytes(default_soundfont().read_bytes())
    fonts = resolve_soundfonts(["TimGM6mb", str(copy)])
    assert list(fonts) == ["TimGM6mb", "Other"] and fonts["Other"] == copy.resolve()
    # A path is named by its file's stem: the same name twice is refused.
    with pytest.raises(ValueError, match="listed twice"):
        resolve_soundfonts(["TimGM6mb", str(default_soundfont())])
    with pytest.raises(ValueError, match="a SoundFont must be a .sf2 or .sf3 file"):
        soundfont_path(str(tmp_path / "x.wav"))


# --- options --------------------------------------------------------------------------


def test_diversity_options_are_checked():
    assert not CorpusDiversity().active
    assert CorpusDiversity(eq_db=(-1.0, 1.0)).active
    with pytest.raises(ValueError, match="not one of the soundfonts"):
        CorpusDiversity(soundfonts=("TimGM6mb", "FluidR3_GM"), held_out_soundfont="Other")
    with pytest.raises(ValueError, match="at least two"):
        CorpusDiversity(soundfonts=("TimGM6mb",), held_out_soundfont="TimGM6mb")
    with pytest.raises(ValueError, match="summing to 1"):
        CorpusDiversity(split_fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="eq_db: low"):
        CorpusDiversity(eq_db=(3.0, -3.0))
    with pytest.raises(ValueError, match="detune_cents"):
        CorpusDiversity(detune_cents=(-150.0, 0.0))
    with pytest.raises(ValueError, match="unknown corpus diversity options"):
        CorpusDiversity.from_dict({"reverb": 3})


def test_shipped_transfer_config_loads_and_overrides(tmp_path):
    d = load_diversity(DIVERSITY_CONFIG)
    assert d.held_out_soundfont in d.soundfonts and len(d.soundfonts) >= 3
    assert load_diversity(DIVERSITY_CONFIG, "FluidR3_GM").held_out_soundfont == "FluidR3_GM"
    bad = tmp_path / "bad.yaml"
    bad.write_text("soundfonts: [TimGM6mb, FluidR3_GM]\n")
    with pytest.raises(ValueError, match="name a held_out_soundfont"):
        load_diversity(bad)
    bad.write_text("soundfonts: [TimGM6mb, FluidR3_GM]\nheld_out_soundfont: X\n")
    with pytest.raises(ValueError, match=f"{bad}: held_out_soundfont 'X'"):
        load_diversity(bad)


# --- production -------------------------------------------------------------------------


def _db(b: np.ndarray, a: np.ndarray, z: float) -> float:
    return float(20 * np.log10(abs(np.polyval(b[::-1], 1 / z) / np.polyval(a[::-1], 1 / z))))


@pytest.mark.parametrize("gain", [-6.0, 4.0])
def test_shelves_have_their_gain_at_dc_and_nyquist(gain):
    for kind, at, other in (("low", 1.0, -1.0), ("high", -1.0, 1.0)):
        b, a = shelf_coefficients(kind, 1000.0, gain, 16000)
        # |H(z)| in dB at z = 1 (DC) and z = -1 (Nyquist)
        assert _db(b, a, at) == pytest.approx(gain, abs=1e-6)
        assert _db(b, a, other) == pytest.approx(0.0, abs=1e-6)


def test_eq_at_zero_db_is_a_no_op_and_otherwise_changes_the_tone():
    wav = np.random.default_rng(0).standard_normal(16000)
    assert np.array_equal(apply_eq(wav, 0.0, 0.0, 16000), wav)
    out = apply_eq(wav, 6.0, -6.0, 16000)
    spec_in, spec_out = np.abs(np.fft.rfft(wav)), np.abs(np.fft.rfft(out))
    low, high = slice(10, 100), slice(6000, 8000)  # bins of 1 Hz: 10-100 Hz, 6-8 kHz
    assert spec_out[low].mean() / spec_in[low].mean() == pytest.approx(10 ** (6 / 20), rel=0.05)
    assert spec_out[high].mean() / spec_in[high].mean() == pytest.approx(10 ** (-6 / 20), rel=0.05)


def test_production_draws_are_seeded_and_within_ranges():
    d = _diversity()
    first = draw_production(d, seed=3, index=5)
    assert first == draw_production(d, seed=3, index=5)
    assert first != draw_production(d, seed=3, index=6)
    assert set(first) == set(STEMS)
    assert first["drums"]["detune_cents"] == 0.0
    for prod in first.values():
        assert -6 <= prod["eq_low_db"] <= 6 and -6 <= prod["eq_high_db"] <= 6
        assert 0 <= prod["reverb_send"] <= 100 and 0 <= prod["chorus_send"] <= 60
        assert -15 <= prod["detune_cents"] <= 15 and -3 <= prod["gain_db"] <= 3


def test_detune_is_in_cents_and_defaults_render_as_before():
    inst = pretty_midi.Instrument(program=73)  # flute: a clear fundamental
    inst.notes.append(pretty_midi.Note(velocity=100, pitch=69, start=0.0, end=2.0))
    sfp = default_soundfont()

    def f0(w: np.ndarray) -> float:
        seg = w[4000:28000] * np.hanning(24000)
        spec = np.abs(np.fft.rfft(seg, 1 << 19))
        freqs = np.fft.rfftfreq(1 << 19, 1 / 16000)
        band = (freqs > 300) & (freqs < 600)
        return float(freqs[band][spec[band].argmax()])

    base = render_instruments([inst], sfp, 16000, 32000, effects=False)
    same = render_instruments(
        [inst], sfp, 16000, 32000, effects=False, settings={}, controllers={}, detune_cents=0.0
    )
    assert np.array_equal(base, same)
    up = render_instruments([inst], sfp, 16000, 32000, effects=False, detune_cents=50.0)
    assert 1200 * np.log2(f0(up) / f0(base)) == pytest.approx(50.0, abs=3.0)
    wet = render_instruments([inst], sfp, 16000, 32000, controllers={91: 120, 93: 80})
    assert not np.allclose(wet, render_instruments([inst], sfp, 16000, 32000))


# --- plans and splits ----------------------------------------------------------------------


def test_diverse_plans_keep_the_rest_of_the_plan_and_hold_one_soundfont_out():
    recipe = load_recipe()
    plain = plan_songs(recipe, 60, 30.0, seed=1)
    diverse = diversify_plans(plan_songs(recipe, 60, 30.0, seed=1), recipe, _diversity(), seed=1)
    held = "TimGM6mb"
    for a, b in zip(plain, diverse, strict=True):
        for key in ("style", "chorale", "groove", "drum_kit", "vocal_program", "gains_db"):
            assert getattr(a, key) == getattr(b, key)
        assert a.soundfont is None and b.soundfont is not None
        assert (b.soundfont == held) == (b.split == "test_ood")
    assert {p.split for p in diverse} == {"train", "validation", "test", "test_ood"}
    assert not any(p.soundfont == held for p in diverse if p.split != "test_ood")
    stretched = [p.tempo for p in diverse]
    lows = {s.name: s.tempo[0] for s in recipe.styles}
    assert any(p.tempo < lows[p.style] for p in diverse) and min(stretched) > 0
    assert {p.transpose for p in diverse} - set(range(-3, 4))  # wider than the recipe's
    again = diversify_plans(plan_songs(recipe, 60, 30.0, seed=1), recipe, _diversity(), seed=1)
    assert [asdict(p) for p in again] == [asdict(p) for p in diverse]


# --- builds -------------------------------------------------------------------------------


def test_inactive_options_build_the_single_soundfont_corpus(tmp_path):
    old = build_synthetic_corpus(tmp_path / "old", num_songs=2, seconds=3.0, num_workers=1)
    new = build_synthetic_corpus(
        tmp_path / "new", num_songs=2, seconds=3.0, num_workers=1, diversity=CorpusDiversity()
    )
    assert old["train"].column_names == new["train"].column_names
    assert "soundfont" not in new["train"].column_names
    for a, b in zip(old["train"], new["train"], strict=True):
        for col in ("audio", *STEMS):
            assert np.array_equal(sf.read(a[col])[0], sf.read(b[col])[0])


def test_diverse_corpus_columns_card_and_exact_mixture(tmp_path, second):
    d = _diversity(second, held_out_share=0.4)
    dd = build_synthetic_corpus(
        tmp_path / "c", num_songs=8, seconds=3.0, num_workers=1, diversity=d
    )
    assert "test_ood" in dd and len(dd["test_ood"]) > 0
    assert set(dd["test_ood"]["soundfont"]) == {"TimGM6mb"}
    for split in ("train", "validation", "test"):
        assert "TimGM6mb" not in set(dd[split]["soundfont"])
    reloaded = load_from_disk(str(tmp_path / "c" / "songs"))
    assert set(reloaded) == {"train", "validation", "test", "test_ood"}
    card = (tmp_path / "c" / "songs" / "README.md").read_text()
    assert "held out" in card and "shelving EQ" in card and "detune -15 to 15 cents" in card
    assert "`TimGM6mb`" in card
    for split in dd:
        for row in dd[split]:
            # The method needs the mixture to be the sum of its stems, exactly.
            stems = sum(sf.read(row[s], dtype="int16")[0].astype(np.int64) for s in STEMS)
            mixture = sf.read(row["audio"], dtype="int16")[0].astype(np.int64)
            assert np.array_equal(mixture, stems)
            meta = json.loads((Path(row["audio"]).parent / "meta.json").read_text())
            assert meta["plan"]["soundfont"] == row["soundfont"]
            assert set(meta["plan"]["production"]) == set(STEMS)


def test_note_set_per_soundfont_holds_one_out(tmp_path, second):
    fonts = ("TimGM6mb", second)
    programs = [0, 1, 2, 3, 4, 5, 6, 7]  # keyboard: 8 programs -> 6 / 1 / 1
    dd = build_note_set(
        tmp_path, num_workers=1, programs=programs, soundfonts=fonts, held_out="TimGM6mb"
    )
    assert set(dd) == {"train", "validation", "test", "test_ood"}
    assert set(dd["test_ood"]["soundfont"]) == {"TimGM6mb"}
    for split in ("train", "validation", "test"):
        assert set(dd[split]["soundfont"]) == {_name(second)}
    # The same test programs, in and out of timbre.
    assert set(dd["test_ood"]["program"]) == set(dd["test"]["program"])
    assert len(dd["test_ood"]) == len(dd["test"])
    card = (tmp_path / "notes" / "README.md").read_text()
    assert "held out" in card
    with pytest.raises(ValueError, match="held_out needs soundfonts"):
        build_note_set(tmp_path / "x", programs=programs, held_out="TimGM6mb")


# --- the transfer report ------------------------------------------------------------------


def _split(fonts: list[str]) -> Dataset:
    return Dataset.from_dict({"track_id": [str(i) for i in range(len(fonts))], "soundfont": fonts})


def test_in_and_out_of_timbre_splits_and_leak_check():
    data = DatasetDict(
        train=_split(["A", "B"]),
        validation=_split(["A"]),
        test=_split(["B"]),
        test_ood=_split(["C"]),
    )
    both = in_and_out_of_timbre(data)
    assert both["in-timbre"]["test"]["soundfont"] == ["B"]
    assert both["out-of-timbre"]["test"]["soundfont"] == ["C"]
    assert both["out-of-timbre"]["train"]["soundfont"] == ["A", "B"]
    leaky = DatasetDict(train=_split(["A", "C"]), test=_split(["B"]), test_ood=_split(["C"]))
    with pytest.raises(ValueError, match="appear in the 'train' split"):
        in_and_out_of_timbre(leaky)
    with pytest.raises(ValueError, match="no 'test_ood' split"):
        in_and_out_of_timbre(DatasetDict(train=_split(["A"]), test=_split(["B"])))


def _probe(acc: float, n: int) -> dict:
    return {"notes_family": {"metrics": {"accuracy": acc}, "num_clips": {"test": n}}}


def _retrieval(r1: float, n: int) -> dict:
    return {"sources": {"drums": {"num_queries": n, "recall": {"1": r1}}}}


def test_transfer_summary_and_table_by_hand():
    scores = {
        "seeds": {
            str(seed): {
                "probes": {
                    "in-timbre": {"MSCL": _probe(0.40 + 0.1 * seed, 300)},
                    "out-of-timbre": {"MSCL": _probe(0.20, 150)},
                },
                "retrieval": {
                    "in-timbre": {"MSCL": _retrieval(0.5, 30)},
                    "out-of-timbre": {"MSCL": _retrieval(0.1 + 0.2 * seed, 50)},
                },
            }
            for seed in (0, 1)
        }
    }
    summary = summarise_transfer(scores)
    mean, std, n = summary["values"][("MSCL", "notes_family accuracy", "in-timbre")]
    assert (mean, std, n) == (pytest.approx(45.0), pytest.approx(5.0), 2)
    mean, std, n = summary["values"][("MSCL", "stem retrieval R@1 drums", "out-of-timbre")]
    assert (mean, std) == (pytest.approx(20.0), pytest.approx(10.0))
    table = transfer_table(summary)
    assert "| measure | encoder | in-timbre | out-of-timbre | test items (in / out) |" in table
    assert "| notes_family accuracy | MSCL | 45.0 ± 5.0 (2) | 20.0 ± 0.0 (2) | 300 / 150 |" in table
    assert (
        "| stem retrieval R@1 drums | MSCL | 50.0 ± 0.0 (2) | 20.0 ± 10.0 (2) | 30 / 50 |" in table
    )


@pytest.mark.slow
def test_tiny_transfer_end_to_end(tmp_path, second):
    from modeling_mscl.timbre_transfer import TransferSettings, run_transfer

    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(
        f"soundfonts: [{second}, TimGM6mb]\nheld_out_soundfont: TimGM6mb\n"
        "held_out_share: 0.25\nsplit_fractions: [0.7, 0.1, 0.2]\neq_db: [-6, 6]\n"
        "reverb_send: [0, 100]\ndetune_cents: [-15, 15]\n"
    )
    notes = tmp_path / "notes.yaml"
    notes.write_text(
        (REPO / "data" / "note_set.yaml")
        .read_text()
        .replace("pitches_per_program: 6", "pitches_per_program: 2")
        .replace("velocities: [40, 80, 120]", "velocities: [80]")
    )
    settings = TransferSettings(
        workdir=str(tmp_path / "transfer"),
        config=str(REPO / "scripts" / "configs" / "tiny.yaml"),
        corpus=str(corpus),
        note_config=str(notes),
        num_songs=70,
        seconds=8.0,
        max_steps=2,
        seeds=[0],
        probe_every=2,
        probe_windows=2,
        probe_seeds=1,
        max_clips=24,
    )
    out = run_transfer(settings)
    work = tmp_path / "transfer"
    saved = json.loads((work / "results.json").read_text())
    entry = saved["seeds"]["0"]
    for regime in ("in-timbre", "out-of-timbre"):
        assert set(entry["probes"][regime]) == {"log-mel statistics", "random init", "COLA", "MSCL"}
        assert set(entry["retrieval"][regime]) == {"random init", "COLA", "MSCL"}
    # The held-out SoundFont is in no split pre-training or the probe heads see.
    songs = load_from_disk(str(work / "corpus" / "songs"))
    assert set(songs["test_ood"]["soundfont"]) == {"TimGM6mb"}
    assert "TimGM6mb" not in set(songs["train"]["soundfont"]) | set(
        songs["validation"]["soundfont"]
    )
    assert "| stem retrieval R@1 drums | MSCL |" in out["table"]
    assert "| notes_family accuracy | COLA |" in out["table"]
    text = (work / "results.md").read_text()
    assert "in-timbre | out-of-timbre" in text
    # Out of timbre, retrieval ranks among as many tracks as the in-timbre test split has.
    pool = len(songs["test"])
    for regime, n in (("in-timbre", pool), ("out-of-timbre", min(pool, len(songs["test_ood"])))):
        for row in entry["retrieval"][regime]["MSCL"]["sources"].values():
            assert row["num_candidates"] + row["skipped_tracks"] == n
    # A second run reuses the scored seed; --report_only rebuilds the same table.
    assert run_transfer(settings)["table"] == out["table"]
    # Scores of an earlier pool size are scored again (retrieval only).
    saved["seeds"]["0"]["retrieval_pool"] = 999
    (work / "results.json").write_text(json.dumps(saved))
    assert run_transfer(settings)["table"] == out["table"]
    assert json.loads((work / "results.json").read_text())["seeds"]["0"]["retrieval_pool"] == len(
        songs["test"]
    )
    settings.report_only = True
    assert run_transfer(settings)["table"] == out["table"]


def test_shared_programs_draw_instruments_from_every_style():
    from modeling_mscl.corpora.arrangement import arrange_song
    from modeling_mscl.corpora.chorales import extract_chorale
    from modeling_mscl.corpora.general_midi import BASS_PROGRAMS

    recipe = load_recipe()
    shared = CorpusDiversity(shared_programs=True)
    assert shared.active
    plans = diversify_plans(plan_songs(recipe, 70, 20.0, seed=0), recipe, shared, seed=0)
    styles = {s.name: s for s in recipe.styles}
    union = {a: {p for s in recipe.styles for p in getattr(s, a)} for a in ("bass", "harmony")}
    outside = 0
    for plan in plans:
        assert plan.bass_program in union["bass"]
        assert set(plan.harmony_programs) <= union["harmony"] and plan.harmony_programs
        outside += plan.bass_program not in styles[plan.style].bass
        outside += not set(plan.harmony_programs) <= set(styles[plan.style].harmony)
    assert outside > 0  # instruments no longer follow the style
    midi = arrange_song(plans[0], extract_chorale(plans[0].chorale))
    harmony = [i for i in midi.instruments if i.name.startswith("Harmony")]
    assert harmony and all(i.program in plans[0].harmony_programs for i in harmony)
    assert (
        all(
            i.program == plans[0].bass_program
            for i in midi.instruments
            if i.program in BASS_PROGRAMS
        )
        or plans[0].chorale_bass
    )
