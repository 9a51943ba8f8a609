"""Corpus loaders on tiny fixture folders that copy each dataset's real layout and formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modeling_mscl.audio_io import write_audio
from modeling_mscl.corpora import (
    FMA_SMALL_GENRES,
    FMA_TOP_GENRES,
    NSYNTH_FAMILIES,
    check_audio,
    is_multi_label,
    label_names,
    load_audio_folder,
    load_fma,
    load_mtat,
    load_nsynth,
    load_stems_folder,
    multi_hot,
)

GARBAGE = b"ID3\x03\x00\x00\x00\x00\x00\x00this is not an mp3 frame" * 4


def tone(seconds: float = 0.5, sr: int = 16000, freq: float = 440.0, channels: int = 1):
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return wav if channels == 1 else np.stack([wav] * channels)


# --------------------------------------------------------------------------- MTAT
# Real column layout: clip_id, tag columns, mp3_path; every field double-quoted, tabs.
MTAT_TAGS = ["no voice", "slow", "guitar", "classical", "techno", "rock", "piano"]
MTAT_TAGS += ["ambient", "male vocal", "weird"]
MTAT_CLIPS = [  # clip_id, mp3_path, active tags
    (
        2,
        "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3",
        ["classical", "slow"],
    ),
    (
        6,
        "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-88-117.mp3",
        ["classical"],
    ),
    (10, "0/artist_a-album_x-01-first_song-0-29.mp3", ["guitar", "rock"]),
    (11, "0/artist_a-album_x-01-first_song-30-59.mp3", ["rock"]),
    (12, "1/artist_b-album_y-03-techno_song-0-29.mp3", ["guitar", "techno"]),
    (13, "a/artist_c-album_z-02-untagged-0-29.mp3", []),
    (14, "b/artist_d-album_w-05-odd-146-175.mp3", ["weird"]),
    (15, "c/artist_e-album_v-01-quiet-0-29.mp3", ["piano", "slow"]),
    (16, "c/artist_e-album_v-02-pad-0-29.mp3", ["ambient"]),
    (17, "d/artist_f-album_u-04-chant-59-88.mp3", ["no voice", "classical"]),
    (18, "e/artist_g-album_t-07-loud-0-29.mp3", ["male vocal", "rock"]),
]
MTAT_MISSING = 12  # its mp3 is not written
MTAT_GARBAGE = 18  # its mp3 holds bytes that do not decode


def make_mtat(root: Path) -> Path:
    lines = ["\t".join(f'"{c}"' for c in ["clip_id", *MTAT_TAGS, "mp3_path"])]
    for clip_id, path, tags in MTAT_CLIPS:
        bits = ["1" if t in tags else "0" for t in MTAT_TAGS]
        lines.append("\t".join(f'"{v}"' for v in [str(clip_id), *bits, path]))
        if clip_id == MTAT_GARBAGE:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(GARBAGE)
        elif clip_id != MTAT_MISSING:
            write_audio(root / path, tone(freq=200 + clip_id), 16000)
    (root / "annotations_final.csv").write_text("\n".join(lines) + "\n")
    return root


def tag_sets(split):
    names = label_names(split)
    return {row["track_id"]: {names[i] for i in row["tags"]} for row in split}


def test_mtat_fallback_split_top_k_and_missing(tmp_path):
    root = make_mtat(tmp_path / "mtat")
    ds, skipped = load_mtat(root, top_k=3, return_skipped=True)
    # counts: classical 3, rock 3, slow 2, guitar 2 -> the tie at 2 goes to 'guitar' by name
    assert label_names(ds["train"], "tags") == ["classical", "rock", "guitar"]
    assert is_multi_label(ds)
    assert tag_sets(ds["train"]) == {"10": {"guitar", "rock"}, "11": {"rock"}}
    assert tag_sets(ds["validation"]) == {}  # folder c clips carry none of the top 3
    assert tag_sets(ds["test"]) == {
        "2": {"classical"},
        "6": {"classical"},
        "17": {"classical"},
        "18": {"rock"},
    }
    assert [(s["track_id"], s["reason"]) for s in skipped] == [("12", "audio file not found")]
    row = ds["test"][0]
    assert Path(row["audio"]).is_absolute() and Path(row["audio"]).is_file()
    assert row["audio"].endswith(MTAT_CLIPS[0][1])


def test_mtat_all_tags_and_untagged_dropped(tmp_path):
    root = make_mtat(tmp_path / "mtat")
    ds = load_mtat(root, top_k=None)
    assert len(label_names(ds, "tags")) == len(MTAT_TAGS)
    ids = {r["track_id"] for split in ds.values() for r in split}
    assert "13" not in ids and {"14", "15", "16"} <= ids  # untagged clip 13 dropped
    with pytest.raises(ValueError, match="top_k"):
        load_mtat(root)  # the fixture has 10 tags, fewer than 50


def test_mtat_split_files_npy(tmp_path):
    root = make_mtat(tmp_path / "mtat")
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    by_id = {c[0]: (i, c[1]) for i, c in enumerate(MTAT_CLIPS)}
    for name, ids in {"train": [10, 14, 15], "valid": [16], "test": [2, 17]}.items():
        np.save(split_dir / f"{name}.npy", np.array([f"{by_id[i][0]}\t{by_id[i][1]}" for i in ids]))
    # Won et al.'s tag list spells tags in camel case; its order is the label order.
    np.save(split_dir / "tags.npy", np.array(["rock", "noVoice", "classical", "slow"]))
    ds = load_mtat(root, split_dir=split_dir)
    assert label_names(ds, "tags") == ["rock", "no voice", "classical", "slow"]
    assert tag_sets(ds["train"]) == {"10": {"rock"}, "14": set(), "15": {"slow"}}
    assert list(ds["validation"]["track_id"]) == ["16"]
    assert tag_sets(ds["test"]) == {"2": {"classical", "slow"}, "17": {"no voice", "classical"}}


def test_mtat_split_file_needing_pickle_is_refused(tmp_path):
    root = make_mtat(tmp_path / "mtat")
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    for name in ("train", "valid", "test"):
        np.save(split_dir / f"{name}.npy", np.array(["x"], dtype=object), allow_pickle=True)
    np.save(split_dir / "tags.npy", np.array(["rock"]))
    with pytest.raises(ValueError, match="object array.*does not unpickle"):
        load_mtat(root, split_dir=split_dir)


def test_mtat_split_files_txt_and_errors(tmp_path):
    root = make_mtat(tmp_path / "mtat")
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    (split_dir / "train.txt").write_text("0/artist_a-album_x-01-first_song-0-29.mp3\n")
    (split_dir / "valid.txt").write_text("a/artist_c-album_z-02-untagged-0-29.mp3\n")
    (split_dir / "test.txt").write_text(MTAT_CLIPS[1][1] + "\n")
    ds = load_mtat(root, split_dir=split_dir, top_k=2)
    assert {k: list(v["track_id"]) for k, v in ds.items()} == {
        "train": ["10"],
        "validation": ["13"],  # the supplied split is kept as given
        "test": ["6"],
    }
    (split_dir / "test.txt").write_text("f/not_in_the_csv.mp3\n")
    with pytest.raises(ValueError, match="not_in_the_csv"):
        load_mtat(root, split_dir=split_dir, top_k=2)
    (split_dir / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test split file"):
        load_mtat(root, split_dir=split_dir, top_k=2)


def test_mtat_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations_final.csv not found.*MagnaTagATune"):
        load_mtat(tmp_path)
    (tmp_path / "annotations_final.csv").write_text('"clip_id"\t"rock"\t"path"\n"1"\t"0"\t"x"\n')
    with pytest.raises(ValueError, match="mp3_path"):
        load_mtat(tmp_path)
    (tmp_path / "annotations_final.csv").write_text(
        '"clip_id"\t"rock"\t"mp3_path"\n"1"\t"1"\t"0/a.mp3"\n'
    )
    with pytest.raises(FileNotFoundError, match="none of the MagnaTagATune mp3"):
        load_mtat(tmp_path, top_k=1)


def test_check_audio_drops_garbage_mp3_and_applies_min_seconds(tmp_path):
    root = make_mtat(tmp_path / "mtat")
    ds = load_mtat(root, top_k=3)
    ok, report = check_audio(ds)
    assert [(r["split"], r["track_id"]) for r in report] == [("test", "18")]
    assert MTAT_CLIPS[-1][1] in report[0]["reason"] and "cannot decode" in report[0]["reason"]
    assert "18" not in ok["test"]["track_id"] and len(ok["test"]) == len(ds["test"]) - 1
    ok, report = check_audio(ds["train"], min_seconds=1.0)  # fixture clips last 0.5 s
    assert len(ok) == 0 and all("shorter than 1.0 s" in r["reason"] for r in report)


# --------------------------------------------------------------------------- NSynth
NSYNTH_NOTES = {
    "nsynth-train": [
        ("bass_synthetic_033-022-050", 417, "synthetic"),
        ("guitar_acoustic_010-060-100", 102, "acoustic"),
        ("keyboard_electronic_001-021-127", 5, "electronic"),
        ("vocal_synthetic_003-070-127", 900, "synthetic"),  # wav not written
    ],
    "nsynth-valid": [("flute_acoustic_002-077-075", 40, "acoustic")],
    "nsynth-test": [
        ("mallet_acoustic_047-096-025", 70, "acoustic"),
        ("synth_lead_synthetic_000-100-100", 800, "synthetic"),
    ],
}
NSYNTH_SOURCES = ["acoustic", "electronic", "synthetic"]


def make_nsynth(root: Path) -> Path:
    note_number = 1000
    for folder, notes in NSYNTH_NOTES.items():
        examples = {}
        for note_str, instrument, source in notes:
            instrument_str, pitch, velocity = note_str.rsplit("-", 2)
            family = instrument_str.rsplit("_", 2)[0]
            note_number += 1
            examples[note_str] = {
                "note": note_number,
                "sample_rate": 16000,
                "pitch": int(pitch),
                "instrument_source": NSYNTH_SOURCES.index(source),
                "instrument_family_str": family,
                "instrument_str": instrument_str,
                "note_str": note_str,
                "instrument_source_str": source,
                "velocity": int(velocity),
                "instrument_family": NSYNTH_FAMILIES.index(family),
                "instrument": instrument,
                "qualities": [0] * 10,
                "qualities_str": [],
            }
            if not note_str.startswith("vocal"):
                write_audio(root / folder / "audio" / f"{note_str}.wav", tone(), 16000)
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "examples.json").write_text(json.dumps(examples, indent=4))
    return root


def test_nsynth_families_and_columns(tmp_path):
    root = make_nsynth(tmp_path / "nsynth")
    ds, skipped = load_nsynth(root, return_skipped=True)
    assert sorted(ds) == ["test", "train", "validation"]
    assert label_names(ds) == list(NSYNTH_FAMILIES) and len(NSYNTH_FAMILIES) == 11
    assert not is_multi_label(ds)
    names = label_names(ds)
    train = {r["track_id"]: r for r in ds["train"]}
    assert {k: names[r["label"]] for k, r in train.items()} == {
        "bass_synthetic_033-022-050": "bass",
        "guitar_acoustic_010-060-100": "guitar",
        "keyboard_electronic_001-021-127": "keyboard",
    }
    bass = train["bass_synthetic_033-022-050"]
    assert (bass["pitch"], bass["velocity"], bass["instrument"]) == (22, 50, "bass_synthetic_033")
    assert (
        ds["train"].features["instrument_source"].int2str(bass["instrument_source"]) == "synthetic"
    )
    assert Path(bass["audio"]).is_file()
    assert [names[i] for i in ds["test"]["label"]] == ["mallet", "synth_lead"]
    assert [(s["split"], s["track_id"]) for s in skipped] == [
        ("train", "vocal_synthetic_003-070-127")
    ]


def test_nsynth_partial_download_and_errors(tmp_path):
    root = make_nsynth(tmp_path / "nsynth")
    import shutil

    shutil.rmtree(root / "nsynth-train")
    shutil.rmtree(root / "nsynth-valid")
    assert list(load_nsynth(root)) == ["test"]
    path = root / "nsynth-test" / "examples.json"
    examples = json.loads(path.read_text())
    examples["mallet_acoustic_047-096-025"]["instrument_family_str"] = "organ"
    path.write_text(json.dumps(examples))
    with pytest.raises(ValueError, match="instrument_family_str='organ'"):
        load_nsynth(root)
    with pytest.raises(FileNotFoundError, match="nsynth-\\*/examples.json"):
        load_nsynth(tmp_path / "empty")


# --------------------------------------------------------------------------- FMA
FMA_TRACKS = [  # track_id, subset, split, genre_top, audio: "ok" | "garbage" | "none"
    (2, "small", "training", "Hip-Hop", "ok"),
    (3, "medium", "training", "Jazz", "ok"),
    (5, "small", "training", "Hip-Hop", "ok"),
    (10, "small", "training", "Pop", "ok"),
    (20, "large", "training", "", "none"),
    (140, "small", "validation", "Folk", "ok"),
    (666, "small", "test", "Rock", "garbage"),
    (1000, "small", "validation", "Experimental", "none"),
    (98565, "small", "training", "Electronic", "garbage"),
    (98567, "small", "test", "Rock", "none"),
    (141, "small", "test", "Folk", "ok"),
]


def make_fma(root: Path) -> Path:
    import pandas as pd

    columns = pd.MultiIndex.from_tuples(
        [
            ("album", "comments"),
            ("album", "title"),
            ("artist", "name"),
            ("set", "split"),
            ("set", "subset"),
            ("track", "genre_top"),
            ("track", "title"),
        ]
    )
    rows = [
        [0, f"Album {t}, vol. 1", "Artist\nwith a newline", split, subset, genre, f'"T{t}"']
        for t, subset, split, genre, _ in FMA_TRACKS
    ]
    table = pd.DataFrame(rows, columns=columns, index=pd.Index([t[0] for t in FMA_TRACKS]))
    table.index.name = "track_id"
    (root / "fma_metadata").mkdir(parents=True)
    table.to_csv(root / "fma_metadata" / "tracks.csv")  # how FMA wrote it: 3 header lines
    for track, subset, _, _, audio in FMA_TRACKS:
        folder = "fma_small" if subset == "small" else f"fma_{subset}"
        path = root / folder / f"{track:06d}"[:3] / f"{track:06d}.mp3"
        if audio == "ok":
            write_audio(path, tone(sr=44100, channels=2), 44100)
        elif audio == "garbage":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(GARBAGE)
    return root


def test_fma_small_split_labels_and_corrupt_report(tmp_path):
    root = make_fma(tmp_path / "fma")
    header = (root / "fma_metadata" / "tracks.csv").read_text().splitlines()[:3]
    assert header[0].startswith(",album") and header[2].startswith("track_id,")
    ds, skipped = load_fma(root, return_skipped=True)
    assert label_names(ds) == list(FMA_SMALL_GENRES)
    got = {s: {r["track_id"]: label_names(ds)[r["label"]] for r in ds[s]} for s in ds}
    assert got == {
        "train": {"000002": "Hip-Hop", "000005": "Hip-Hop", "000010": "Pop"},
        "validation": {"000140": "Folk"},
        "test": {"000141": "Folk", "000666": "Rock"},
    }
    assert ds["train"][0]["audio"].endswith("fma_small/000/000002.mp3")
    reasons = {s["track_id"]: s["reason"] for s in skipped}
    assert set(reasons) == {"098565", "098567", "001000"}
    assert "known corrupt" in reasons["098565"] and "known corrupt" in reasons["098567"]
    assert reasons["001000"] == "audio file not found"
    ok, report = check_audio(ds)  # 000666 is garbage but not on the known list
    assert [r["track_id"] for r in report] == ["000666"]
    assert "000666" not in ok["test"]["track_id"]


def test_fma_medium_and_errors(tmp_path):
    root = make_fma(tmp_path / "fma")
    ds, skipped = load_fma(root, subset="medium", audio_dir=root / "fma_small", return_skipped=True)
    assert label_names(ds) == list(FMA_TOP_GENRES)
    assert {s["track_id"] for s in skipped} >= {"000003"}  # in medium, mp3 under fma_medium
    assert "000020" not in {s["track_id"] for s in skipped}  # large only: not in medium
    with pytest.raises(ValueError, match="subset"):
        load_fma(root, subset="tiny")
    with pytest.raises(FileNotFoundError, match="fma_large"):
        load_fma(root, subset="large")
    (root / "fma_metadata" / "tracks.csv").write_text(",track\n,title\ntrack_id,\n2,x\n")
    with pytest.raises(ValueError, match="'set', 'subset'"):
        load_fma(root)


# --------------------------------------------------------------------------- stems / folders
STEMS = ("mixture", "vocals", "drums", "bass", "other")


def make_stems(root: Path, tracks: dict[str, list[str]]) -> Path:
    for track_dir in tracks:
        for stem in tracks[track_dir]:
            write_audio(root / track_dir / f"{stem}.wav", tone(0.25, 44100, channels=2), 44100)
    return root


def test_stems_folder_musdb_layout(tmp_path):
    root = make_stems(
        tmp_path / "musdb",
        {
            "train/A Classic Education - NightOwl": list(STEMS),
            "train/ANiMAL - Clinic A": list(STEMS),
            "test/Al James - Schoolboy Facination": list(STEMS),
        },
    )
    ds = load_stems_folder(root)
    assert {k: list(v["track_id"]) for k, v in ds.items()} == {
        "test": ["Al James - Schoolboy Facination"],
        "train": ["A Classic Education - NightOwl", "ANiMAL - Clinic A"],
    }
    row = ds["train"][1]
    for stem in ("vocals", "drums", "bass", "other"):
        assert row[stem] == str(root / "train" / "ANiMAL - Clinic A" / f"{stem}.wav")
    assert row["audio"].endswith("ANiMAL - Clinic A/mixture.wav")


def test_stems_folder_flat_and_missing_stem(tmp_path):
    root = make_stems(tmp_path / "flat", {"song1": list(STEMS), "song2": list(STEMS)})
    ds = load_stems_folder(root)
    assert list(ds) == ["train"] and len(ds["train"]) == 2
    # A track without its drums is skipped and reported; the other tracks still load.
    make_stems(root, {"song3": ["mixture", "vocals", "bass", "other"]})
    ds, skipped = load_stems_folder(root, return_skipped=True)
    assert list(ds["train"]["track_id"]) == ["song1", "song2"]
    assert [(s["track_id"], s["reason"]) for s in skipped] == [
        ("song3", "no drums file (looked for wav/flac)")
    ]
    only_broken = make_stems(tmp_path / "broken", {"song": ["mixture", "vocals"]})
    with pytest.raises(FileNotFoundError, match="no complete track folder.*no drums, bass"):
        load_stems_folder(only_broken)


def test_check_audio_on_stems(tmp_path):
    root = make_stems(tmp_path / "s", {"good": list(STEMS), "bad": list(STEMS)})
    (root / "bad" / "bass.wav").write_bytes(b"RIFF0000WAVEjunk")
    write_audio(root / "good" / "vocals.wav", np.zeros(4000, np.float32), 16000)  # silent stem
    ok, report = check_audio(load_stems_folder(root))
    assert list(ok["train"]["track_id"]) == ["good"]  # a silent stem is allowed
    assert report[0]["track_id"] == "bad" and report[0]["reason"].startswith("bass stem: ")


def test_audio_folder_labels_extensions_and_report(tmp_path):
    root = tmp_path / "folder"
    write_audio(root / "rock" / "a.wav", tone(), 16000)
    write_audio(root / "rock" / "live" / "b.flac", tone(), 16000)
    write_audio(root / "jazz" / "c.OGG", tone(), 16000)
    write_audio(root / "jazz" / "d.mp3", tone(), 16000)
    write_audio(root / "jazz" / "quiet.wav", np.zeros(8000, np.float32), 16000)
    (root / "jazz" / "notes.txt").write_text("not audio")
    write_audio(root / ".cache" / "x.wav", tone(), 16000)
    (root / "rock" / "empty.wav").write_bytes(b"")
    ds, skipped = load_audio_folder(root, return_skipped=True)
    assert list(ds) == ["train"] and label_names(ds) == ["jazz", "rock"]
    got = {r["track_id"]: label_names(ds)[r["label"]] for r in ds["train"]}
    assert got == {
        "jazz/c.OGG": "jazz",
        "jazz/d.mp3": "jazz",
        "jazz/quiet.wav": "jazz",
        "rock/a.wav": "rock",
        "rock/live/b.flac": "rock",
    }
    assert [(s["track_id"], s["reason"]) for s in skipped] == [
        ("rock/empty.wav", "audio file is empty (0 bytes)")
    ]
    ok, report = check_audio(ds)
    assert [r["track_id"] for r in report] == ["jazz/quiet.wav"] and "silent" in report[0]["reason"]
    assert len(ok["train"]) == 4
    assert set(load_audio_folder(root, extensions=(".wav",))["train"]["track_id"]) == {
        "jazz/quiet.wav",
        "rock/a.wav",
    }


def test_audio_folder_splits_unlabelled_and_errors(tmp_path):
    root = tmp_path / "splits"
    write_audio(root / "train" / "rock" / "a.wav", tone(), 16000)
    write_audio(root / "valid" / "jazz" / "b.wav", tone(), 16000)
    write_audio(root / "test" / "rock" / "c.wav", tone(), 16000)
    ds = load_audio_folder(root)
    assert sorted(ds) == ["test", "train", "validation"]
    assert label_names(ds["train"]) == label_names(ds["validation"]) == ["jazz", "rock"]
    assert ds["validation"][0]["track_id"] == "valid/jazz/b.wav"

    flat = tmp_path / "flat"
    write_audio(flat / "x.wav", tone(), 16000)
    unlabelled = load_audio_folder(flat)
    assert unlabelled["train"].column_names == ["track_id", "audio"]
    write_audio(flat / "rock" / "y.wav", tone(), 16000)
    with pytest.raises(ValueError, match="outside them"):
        load_audio_folder(flat)
    write_audio(root / "extra" / "rock" / "d.wav", tone(), 16000)
    with pytest.raises(ValueError, match="extra"):
        load_audio_folder(root)
    with pytest.raises(FileNotFoundError, match="no audio files"):
        load_audio_folder(tmp_path / "flat" / "rock", extensions=("flac",))


def test_multi_hot_and_label_names():
    assert multi_hot([[0, 2], [], [1]], 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="outside"):
        multi_hot([[3]], 3)
    from datasets import Dataset, Features, Value

    plain = Dataset.from_dict({"x": ["a"]}, features=Features({"x": Value("string")}))
    with pytest.raises(KeyError):
        label_names(plain)
    with pytest.raises(TypeError):
        label_names(plain, "x")


def test_a_truncated_wav_decodes_with_a_warning(tmp_path, caplog):
    from modeling_mscl.audio_io import load_audio

    path = tmp_path / "cut.wav"
    write_audio(path, np.full(16000, 0.1, np.float32), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download that stopped half-way
    with caplog.at_level("WARNING"):
        audio = load_audio(path)
    assert 0 < len(audio) < 16000
    assert "cut.wav: truncated: the header announces 32000 bytes" in caplog.text
    caplog.clear()
    write_audio(path, np.full(16000, 0.1, np.float32), 16000)
    with caplog.at_level("WARNING"):
        assert len(load_audio(path)) == 16000
    assert "truncated" not in caplog.text
