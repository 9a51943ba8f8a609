"""The offline corpus: GM tables, stem rules, FluidSynth rendering, MMA arrangement,
the synthetic song corpus, the note set and the MIDI-folder corpus (tiny sizes)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pretty_midi = pytest.importorskip("pretty_midi")
pytest.importorskip("music21")
try:
    import fluidsynth  # noqa: F401
except ImportError:  # pyfluidsynth raises ImportError when libfluidsynth3 is missing
    pytest.skip(
        "pyfluidsynth or libfluidsynth3 missing (make system-deps)", allow_module_level=True
    )
if shutil.which("mma") is None:
    pytest.skip("the MMA arranger is missing (make system-deps)", allow_module_level=True)

import soundfile as sf  # noqa: E402
from datasets import ClassLabel, load_from_disk  # noqa: E402

from modeling_mscl.corpora.arrangement import arrange_song, mma_script  # noqa: E402
from modeling_mscl.corpora.chorales import (  # noqa: E402
    available_chorales,
    extract_chorale,
    index_chorales,
    name_chord,
)
from modeling_mscl.corpora.general_midi import (  # noqa: E402
    INSTRUMENT_CLASSES,
    STEMS,
    assign_stems,
    default_soundfont,
    gm_programs,
    instrument_labels,
)
from modeling_mscl.corpora.midi_folder import build_midi_folder_corpus  # noqa: E402
from modeling_mscl.corpora.midi_render import mix_stems, render_instruments  # noqa: E402
from modeling_mscl.corpora.note_set import build_note_set, load_note_config  # noqa: E402
from modeling_mscl.corpora.rendered_tracks import write_track  # noqa: E402
from modeling_mscl.corpora.song_plans import (  # noqa: E402
    TEMPO_BANDS,
    load_recipe,
    plan_songs,
    tempo_band,
)
from modeling_mscl.corpora.synthetic import build_synthetic_corpus  # noqa: E402

SR = 16000
SECONDS = 8.0
NUM_SONGS = 3


def _read(path: str) -> np.ndarray:
    wav, sr = sf.read(path, dtype="float32")
    assert sr == SR and wav.ndim == 1, (sr, wav.shape)
    return wav


def _instrument(program=0, name="", is_drum=False, notes=((60, 0.0, 0.5),), velocity=100):
    inst = pretty_midi.Instrument(program=program, name=name, is_drum=is_drum)
    for pitch, start, end in notes:
        inst.notes.append(pretty_midi.Note(velocity, pitch, start, end))
    return inst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three 8-second songs built through `mscl corpus` (rock, jazz, bossanova)."""
    from modeling_mscl.commands import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    args = ["--out", str(out), "--num-songs", str(NUM_SONGS), "--seconds", str(SECONDS)]
    assert build_corpus.main(args + ["--workers", "1", "--no-notes"]) == 0
    return out, load_from_disk(str(out / "songs"))


# --------------------------------------------------------------------------- tables and rules


def test_gm_table_families():
    table = gm_programs()
    assert len(table) == 128
    assert table[0].family == "keyboard" and table[33].family == "bass"
    assert table[53].family == "vocal" and table[85].family == "vocal"
    assert table[73].family == "flute" and table[40].family == "string"
    assert table[120].family is None  # sound effects have no NSynth family
    families = {p.family for p in table} - {None}
    assert families == set(INSTRUMENT_CLASSES[:-1]) and INSTRUMENT_CLASSES[-1] == "drums"


def test_assign_stems_rules():
    insts = {
        "kit": _instrument(0, "Kit", is_drum=True),
        "bass": _instrument(33, "Bass"),
        "lead_bass": _instrument(34, "Lead bass"),
        "choir": _instrument(52, "Choir"),
        "melody": _instrument(0, "Melody"),
        "piano": _instrument(0, "Piano"),
        "strings": _instrument(48, "Strings"),
    }
    stems = assign_stems(insts.values())
    names = {s: sorted(k for k, v in insts.items() if v in stems[s]) for s in STEMS}
    assert names == {
        "drums": ["kit"],
        "bass": ["bass", "lead_bass"],
        "vocals": ["choir", "melody"],
        "other": ["piano", "strings"],
    }


def test_instrument_labels_count_only_played_notes():
    insts = [
        _instrument(0, is_drum=True),
        _instrument(24),  # guitar
        _instrument(56, notes=((60, 5.0, 6.0),)),  # brass, only after the cut
        _instrument(121),  # breath noise: no family
        pretty_midi.Instrument(program=40),  # no notes
    ]
    names = [INSTRUMENT_CLASSES[i] for i in instrument_labels(insts, until=4.0)]
    assert names == ["guitar", "drums"]


@pytest.mark.parametrize(
    "pitches, name",
    [
        ([48, 64, 67, 72], "C"),
        ([45, 60, 64, 69], "Am"),
        ([43, 59, 62, 65], "G7"),
        ([43, 59, 65], "G7"),  # fifth left out
        ([47, 62, 65, 68], "Bdim7"),
        ([50, 65, 69, 72], "Dm7"),
        ([60, 62, 64], None),  # a cluster fits no template
        ([60, 72], None),
    ],
)
def test_name_chord(pitches, name):
    assert name_chord(pitches) == name


# --------------------------------------------------------------------------- rendering


def test_render_is_deterministic_and_sized():
    sfont = default_soundfont()
    insts = [
        _instrument(0, notes=((60, 0.0, 0.4), (64, 0.5, 0.9))),
        _instrument(0, is_drum=True, notes=((36, 0.0, 0.1),)),
    ]
    a = render_instruments(insts, sfont, SR, SR)
    b = render_instruments(insts, sfont, SR, SR)
    assert a.shape == (SR,) and a.dtype == np.float32
    assert np.array_equal(a, b) and np.abs(a).max() > 1e-3
    assert not np.any(render_instruments([], sfont, SR, SR))


def test_mix_stems_is_exact_sum_without_clipping(tmp_path):
    rng = np.random.default_rng(0)
    stems = {s: rng.normal(0, 0.8 * (i + 1), 4000) for i, s in enumerate(STEMS)}
    stems["vocals"] = np.zeros(4000)  # silent stems stay zeros
    mixture, out = mix_stems(stems, peak=0.95)
    assert np.array_equal(mixture, sum(out.values()))
    assert max(np.abs(w).max() for w in [mixture, *out.values()]) <= 0.95 + 1e-4
    assert not np.any(out["vocals"])
    # The 16-bit grid survives FLAC: the files sum exactly as well.
    paths = write_track(tmp_path, mixture, out, SR)
    files = {k: _read(p) for k, p in paths.items()}
    assert np.array_equal(files["audio"], sum(files[s] for s in STEMS))


# --------------------------------------------------------------------------- plans and MMA


def test_plans_are_seeded_balanced_and_split_by_chorale():
    recipe = load_recipe()
    assert len(recipe.styles) >= 5
    plans = plan_songs(recipe, 40, 30.0, seed=0)
    assert plans == plan_songs(recipe, 40, 30.0, seed=0)
    assert plans != plan_songs(recipe, 40, 30.0, seed=1)
    counts = np.bincount([p.genre for p in plans], minlength=len(recipe.styles))
    assert counts.max() - counts.min() <= 1
    assert len({p.chorale for p in plans}) == 40  # drawn without replacement
    for p in plans:
        lo, hi = next(s.tempo for s in recipe.styles if s.name == p.style)
        assert lo <= p.tempo <= hi
        assert p.tacet[0][0] == 0 and "vocals" in p.tacet[0][2]  # no vocals in the intro
    names = ("train", "validation", "test")
    for split in names[1:]:  # every genre in every split (7 styles, 5-6 songs each)
        assert {p.genre for p in plans if p.split == split} == set(range(len(recipe.styles)))
    assert [sum(p.split == s for p in plans) for s in names] == [26, 7, 7]
    # With more songs than chorales a chorale comes back, in the same split.
    many = plan_songs(recipe, len(recipe.chorales) + 30, 30.0, seed=0)
    split_of = {}
    for p in many:
        assert split_of.setdefault(p.chorale, p.split) == p.split


def test_arrangement_follows_plan():
    recipe = load_recipe()
    plan = plan_songs(recipe, 1, 12.0, seed=3)[0]
    chorale = extract_chorale(plan.chorale)
    assert [len(v) > 0 for v in chorale.voices] == [True] * 4
    script = mma_script(plan, chorale)
    assert f"Groove {plan.groove}" in script and len(script.splitlines()) == 5 + plan.bars
    midi = arrange_song(plan, chorale)
    stems = assign_stems(midi.instruments)
    assert all(stems[s] for s in STEMS)
    assert {i.program for i in stems["vocals"]} == {plan.vocal_program}
    assert {i.program for i in stems["bass"]} == {plan.bass_program}
    bar = 4 * 60.0 / plan.tempo
    for first, last, silent in plan.tacet:
        for stem in silent:
            starts = [n.start for i in stems[stem] for n in i.notes]
            assert not any(first * bar <= t < last * bar for t in starts), (stem, first, last)


# --------------------------------------------------------------------------- the song corpus


@pytest.mark.parametrize(
    "bpm, band", [(60.0, 0), (99.9, 0), (100.0, 1), (119.0, 1), (120.0, 2), (139.5, 2), (176.0, 3)]
)
def test_tempo_band_boundaries(bpm, band):
    assert tempo_band(bpm) == band
    with pytest.raises(ValueError, match="tempo"):
        tempo_band(0.0)


def test_corpus_schema_and_files(corpus):
    out, dd = corpus
    recipe = load_recipe()
    assert set(dd) == {"train", "validation", "test"}
    assert sum(len(d) for d in dd.values()) == NUM_SONGS
    feats = dd["train"].features
    assert feats["genre"].names == recipe.genres
    assert isinstance(feats["instruments"].feature, ClassLabel)
    assert feats["instruments"].feature.names == list(INSTRUMENT_CLASSES)
    assert feats["tempo"].names == [name for name, _ in TEMPO_BANDS]
    for split, rows in dd.items():  # the band is the plan's tempo, read back from meta.json
        for row in rows:
            meta = json.loads((out / "audio" / row["track_id"] / "meta.json").read_text())
            assert row["tempo"] == tempo_band(meta["plan"]["tempo"]), (split, row["track_id"])
    assert "genre" in (out / "songs" / "README.md").read_text()
    report = json.loads((out / "build_report.json").read_text())
    assert report["num_songs"] == NUM_SONGS and "songs_seconds" in report


def test_corpus_mixture_is_sum_of_stems(corpus):
    _, dd = corpus
    for row in (r for d in dd.values() for r in d):
        assert os.path.isabs(row["audio"])
        mix = _read(row["audio"])
        stems = {s: _read(row[s]) for s in STEMS}
        assert len(mix) == int(SECONDS * SR)
        assert all(len(w) == len(mix) for w in stems.values())
        assert np.array_equal(mix, sum(stems.values()))
        assert np.abs(mix).max() <= 0.96
        drums, vocal = INSTRUMENT_CLASSES.index("drums"), INSTRUMENT_CLASSES.index("vocal")
        assert {drums, vocal} <= set(row["instruments"])


def test_corpus_sections_silence_stems(corpus):
    out, dd = corpus
    for row in (r for d in dd.values() for r in d):
        plan = json.loads((Path(row["audio"]).parent / "meta.json").read_text())["plan"]
        bar = int(4 * 60.0 / plan["tempo"] * SR)
        vocals = _read(row["vocals"])
        intro = plan["intro_bars"] * bar
        assert not np.any(vocals[:intro])  # vocals rest through the intro
        if intro + SR < len(vocals):
            assert np.abs(vocals[intro:]).mean() > 0.01  # and are present afterwards


def test_corpus_is_deterministic_and_resumable(corpus, tmp_path):
    out, dd = corpus
    row = dd["train"][0]
    song_dir = Path(row["audio"]).parent
    stamp = {p.name: p.stat().st_mtime_ns for p in song_dir.iterdir()}
    before = {s: _read(row[s]) for s in ("audio", *STEMS)}
    # A rebuild with the same arguments skips finished songs...
    again = build_synthetic_corpus(out, NUM_SONGS, SECONDS, seed=0, num_workers=1)
    assert again["train"][0] == row
    assert {p.name: p.stat().st_mtime_ns for p in song_dir.iterdir()} == stamp
    # ...and a song rendered anew (its marker removed) comes out identical.
    (song_dir / "meta.json").unlink()
    build_synthetic_corpus(out, NUM_SONGS, SECONDS, seed=0, num_workers=1)
    assert (song_dir / "meta.json").is_file()
    for key, wav in before.items():
        assert np.array_equal(_read(row[key]), wav), key


# --------------------------------------------------------------------------- the note set


def test_note_set_split_by_program(tmp_path):
    config = load_note_config()
    config.update(seconds=1.0, hold=0.5, velocities=[40, 120], pitches_per_program=2)
    programs = [0, 1, 2, 3, 32, 33, 34, 35]  # four keyboards, four basses
    dd = build_note_set(tmp_path, config=config, programs=programs, num_workers=1)
    by_split = {s: set(d["program"]) for s, d in dd.items()}
    assert set().union(*by_split.values()) == set(programs)
    assert sum(len(v) for v in by_split.values()) == len(programs)  # no program twice
    assert all(len(v) == 2 for k, v in by_split.items() if k != "train")  # one per family
    names = dd["train"].features["label"].names
    for row in dd["train"]:
        assert names[row["label"]] == ("keyboard" if row["program"] < 8 else "bass")
        assert len(_read(row["audio"])) == SR
    loud = {}
    for row in dd["train"]:
        loud.setdefault((row["program"], row["pitch"]), {})[row["velocity"]] = np.abs(
            _read(row["audio"])
        ).max()
    assert all(v[120] > v[40] > 1e-3 for v in loud.values())
    assert (tmp_path / "notes" / "README.md").is_file()


# --------------------------------------------------------------------------- a user's MIDI folder


def test_midi_folder_corpus_with_broken_file(tmp_path):
    midi_dir = tmp_path / "midi"
    (midi_dir / "rock").mkdir(parents=True)
    (midi_dir / "jazz").mkdir()
    song = pretty_midi.PrettyMIDI()
    song.instruments += [
        _instrument(0, "Drums", is_drum=True, notes=[(36, t, t + 0.1) for t in (0, 0.5, 1.0)]),
        _instrument(33, "Bass", notes=((40, 0.0, 1.0),)),
        _instrument(0, "Melody", notes=((72, 0.0, 0.5), (74, 0.5, 1.0))),
    ]
    song.write(str(midi_dir / "rock" / "a.mid"))
    piano = pretty_midi.PrettyMIDI()
    piano.instruments.append(_instrument(0, "Piano", notes=((60, 0.0, 1.0), (64, 0.0, 1.0))))
    piano.write(str(midi_dir / "jazz" / "b.mid"))
    (midi_dir / "broken.mid").write_bytes(b"MThd this is not a MIDI file")

    out = tmp_path / "out"
    dd = build_midi_folder_corpus(midi_dir, out, seed=0, num_workers=1)
    rows = {r["track_id"]: r for d in dd.values() for r in d}
    assert set(rows) == {"rock__a", "jazz__b"}
    assert dd["train"].features["genre"].names == [
        "jazz",
        "rock",
    ]  # "unknown" only had the broken file
    report = json.loads((out / "report.json").read_text())
    assert [Path(s["path"]).name for s in report["skipped"]] == ["broken.mid"]
    assert "unreadable" in report["skipped"][0]["error"]
    a = {s: _read(rows["rock__a"][s]) for s in ("audio", *STEMS)}
    assert all(np.abs(a[s]).max() > 1e-3 for s in ("vocals", "drums", "bass"))
    assert not np.any(a["other"])  # a silent stem is a file of zeros
    assert np.array_equal(a["audio"], sum(a[s] for s in STEMS))
    b = {s: _read(rows["jazz__b"][s]) for s in STEMS}
    assert np.abs(b["other"]).max() > 1e-3 and not np.any(b["vocals"])
    labels = [INSTRUMENT_CLASSES[i] for i in rows["rock__a"]["instruments"]]
    assert labels == ["bass", "keyboard", "drums"]


@pytest.mark.slow
def test_chorale_list_matches_music21(tmp_path):
    """data/bach_chorales.csv is what index_chorales() finds (parses ~400 scores)."""
    found = index_chorales(tmp_path / "chorales.csv")
    assert tuple(found) == load_recipe().chorales
    assert available_chorales(tuple(found)) == tuple(found)
