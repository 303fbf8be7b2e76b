"""Music: the encodings' round trips, the synthesizer, files in and out, bad input, and a tiny model trained,
composed with, harmonised and scored end to end."""

from __future__ import annotations

import random

import numpy as np
import pytest
from typer.testing import CliRunner

import genloom
from genloom.cli import app
from genloom.core.errors import DataError, GenloomError
from genloom.music.data import parse_music_file, score_to_piece
from genloom.music.eval import music_stats, pitch_class_distance
from genloom.music.generate import piano_roll, synthesize, to_music21, write_piece
from genloom.music.tokens import TOKEN_ID, VOCAB, Note, Piece, decode, encode

music21 = pytest.importorskip("music21")


def random_piece(seed: int, bars: int = 4, voices: int = 4) -> Piece:
    """Four voices of random notes and rests, repeated pitches included, in G major 4/4."""
    rng = random.Random(seed)
    notes = []
    for v in range(voices):
        t = 0
        while t < bars * 16:
            duration = rng.choice([1, 2, 2, 4, 4, 4, 6, 8, 12])
            if rng.random() < 0.85:
                notes.append(Note(t, v, rng.choice([72, 72, 67, 64, 60, 55, 48, 43]) - 5 * v // 2, duration))
            t += duration
    return Piece(f"random{seed}", [n for n in notes if n.end <= bars * 16] or [Note(0, 0, 60, 4)], voices, 16, 7,
                 "major")


@pytest.mark.parametrize("encoding", ["grid", "remi"])
def test_encodings_round_trip_random_pieces(encoding):
    for seed in range(20):
        piece = random_piece(seed)
        back = decode(encode(piece, encoding), encoding, piece.voices)
        assert back.notes == piece.notes and (back.tonic, back.mode, back.bar) == (7, "major", 16)


@pytest.mark.parametrize("encoding", ["grid", "remi"])
def test_encodings_round_trip_real_chorales(encoding):
    for name in ("bach/bwv269", "bach/bwv347", "bach/bwv153.1"):
        piece = score_to_piece(music21.corpus.parse(name), name)
        assert piece.voices == 4 and len(piece.notes) > 100
        back = decode(encode(piece, encoding), encoding, 4)
        assert back.notes == piece.notes


def test_the_grid_keeps_a_held_note_and_a_repeated_note_apart():
    held = Piece("a", [Note(0, 0, 60, 2)], 1, 4)
    repeated = Piece("b", [Note(0, 0, 60, 1), Note(1, 0, 60, 1)], 1, 4)
    def tokens(piece):
        return [VOCAB[i] for i in encode(piece, "grid")][3:-1]

    assert tokens(held) == ["BAR", "P_60", "HOLD", "REST", "REST"]
    assert tokens(repeated) == ["BAR", "P_60", "P_60", "REST", "REST"]


def test_decoding_survives_malformed_sequences():
    ids = [TOKEN_ID[t] for t in ["<piece>", "KEY_2_minor", "TS_12", "HOLD", "V_0", "P_60", "BAR", "POS_3", "V_1",
                                 "D_4", "V_2", "P_50", "D_2", "<end>", "P_70"]]
    remi = decode(ids, "remi", 4)
    assert remi.notes == [Note(3, 2, 50, 2)] and (remi.tonic, remi.mode, remi.bar) == (2, "minor", 12)
    grid = decode(ids, "grid", 2)
    assert all(n.pitch in (60, 50) for n in grid.notes)


def test_midi_and_musicxml_files_read_back_the_same_notes(tmp_path):
    piece = random_piece(3)
    paths = write_piece(piece, tmp_path / "piece", formats=("mid", "musicxml", "png"))
    assert [p.suffix for p in paths] == [".mid", ".musicxml", ".png"] and all(p.stat().st_size > 100 for p in paths)
    for path in paths[:2]:
        back = parse_music_file(path)
        assert sorted((n.start, n.voice, n.pitch, n.duration) for n in back.notes) == \
            sorted((n.start, n.voice, n.pitch, n.duration) for n in piece.notes), path.suffix


def test_the_synthesizer_plays_the_right_pitch_for_the_right_time_without_clipping():
    rate, tempo = 22050, 120.0                              # a sixteenth = 0.125 s
    for name in ("flute", "organ", "clarinet", "strings", "piano"):
        piece = Piece("a4", [Note(0, 0, 69, 16)], 1, 16)    # A4 for a whole 4/4 bar: 2 s
        audio = synthesize(piece, rate, tempo, timbres=[name])
        assert audio.dtype == np.float32 and np.abs(audio).max() <= 0.9
        held = audio[: 2 * rate]
        assert len(audio) == pytest.approx(2 * rate + max(0.08, 0.15) * rate, rel=0.06)
        spectrum = np.abs(np.fft.rfft(held * np.hanning(len(held))))
        assert np.fft.rfftfreq(len(held), 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=1), name
    chord = Piece("chord", [Note(0, v, p, 8) for v, p in enumerate([72, 67, 64, 48])], 4, 16)
    loud = synthesize(chord, rate, tempo)
    assert np.abs(loud).max() == pytest.approx(0.89, abs=1e-3)      # mixed voices are scaled, never clipped


def test_bad_music_files_are_reported(tmp_path):
    empty = tmp_path / "empty.mid"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        parse_music_file(empty)
    corrupt = tmp_path / "corrupt.mid"
    corrupt.write_bytes(b"MThd\x00\x00\x00\x06garbage" + bytes(range(200)))
    with pytest.raises(DataError, match="corrupt.mid: cannot be read as MID"):
        parse_music_file(corrupt)
    text = tmp_path / "notes.txt"
    text.write_text("C D E")
    with pytest.raises(DataError, match="not a music file"):
        parse_music_file(text)


def test_statistics_of_real_pieces():
    chorales = [score_to_piece(music21.corpus.parse(n), n) for n in ("bach/bwv269", "bach/bwv347")]
    stats = music_stats(chorales)
    assert stats.in_key > 0.85 and stats.in_range > 0.9 and stats.crossings < 0.05 and stats.parallels_per_100 < 5
    assert pitch_class_distance(chorales, chorales) == 0
    # parallel fifths, written on purpose, are counted
    fifths = Piece("p", [Note(0, 0, 67, 4), Note(4, 0, 69, 4), Note(0, 1, 60, 4), Note(4, 1, 62, 4)], 2, 16)
    assert music_stats([fifths]).parallels_per_100 == 100
    crossing = Piece("x", [Note(0, 0, 60, 4), Note(0, 1, 64, 4)], 2, 16)
    assert music_stats([crossing]).crossings == 1


# -- a tiny model, end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def music_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    folder = root / "pieces"
    folder.mkdir()
    for i in range(16):
        to_music21(random_piece(i, bars=3)).write("musicxml", fp=str(folder / f"p{i}.musicxml"))
    out = root / "run"
    genloom.train("bach-chorales", out=out, overrides=[
        f"data.path={folder}", "data.transpose=[-1, 1]", "data.val_fraction=0.25", "model.n_layer=1",
        "model.d_model=32", "model.n_head=2", "model.block_size=64", "train.max_steps=20", "train.batch_size=4",
        "train.compile=false", "train.eval_interval=20"])
    return out, folder


def test_a_music_model_composes_continues_harmonises_and_is_scored(music_run, tmp_path):
    out, folder = music_run
    assert (out / "samples" / "step_0000020.mid").is_file() and (out / "samples" / "step_0000020.png").is_file()
    model = genloom.load(out)
    assert isinstance(model, genloom.MusicModel)
    (piece,) = model.compose(bars=2, key="D minor", seed=0)
    assert piece.length <= 32 and (piece.tonic, piece.mode) == (2, "minor")
    assert all(21 <= n.pitch <= 108 for n in piece.notes)
    again = model.compose(bars=2, key="D minor", seed=0)[0]
    assert again.notes == piece.notes
    (continued,) = model.continue_piece(folder / "p0.musicxml", bars=1, opening_bars=1, seed=0)
    opening = parse_music_file(folder / "p0.musicxml")
    def first_bar(piece):              # (a note crossing the bar line may be held on or not by the model)
        return [(n.start, n.voice, n.pitch) for n in piece.notes if n.start < 16]

    assert first_bar(continued) == first_bar(opening) and continued.length > 16
    (harmonised,) = model.harmonize("heldout:0", seed=0)
    melody = model.held_out()[0]
    assert harmonised.voice(0) == melody.voice(0)
    ruled = model.compose(num_samples=3, bars=4, seed=1, voice_leading=True)     # the rule holds exactly
    assert music_stats(ruled).parallels_per_100 == 0
    ruled = model.harmonize("heldout:1", seed=1, voice_leading=True)
    assert music_stats(ruled).parallels_per_100 == 0
    result = model.evaluate(num_samples=2, harmonise=2, progress=False)
    assert result.nll_per_note > 0 and result.nll_per_frame > 0 and result.harmonised_in_key is not None
    assert "| in key |" in result.summary()
    high = Piece("high", [Note(0, 0, 120, 4)], 1, 16)
    with pytest.raises(GenloomError, match="outside the model's range"):
        model.harmonize(high)


def test_the_grid_grammar_is_a_constraint_that_text_decoding_follows_too(music_run):
    """Music's token grammar is a `Constraint` like llguidance's: lm's generate_tokens, which knows nothing of
    music, keeps to it through the same mask_logits (a bar line first, one voice token per voice and step, the
    end last), and the tokens decode to one bar of notes."""
    import torch

    from genloom.lm.constraints import Constraint
    from genloom.lm.decoding import Sampling, generate_tokens
    from genloom.music.generate import GRID_VOICE, SlotGrammar

    model = genloom.load(music_run[0])
    prompt = [TOKEN_ID["<piece>"], TOKEN_ID["KEY_0_major"], TOKEN_ID["TS_16"]]
    slots = [TOKEN_ID["BAR"], *[GRID_VOICE] * (16 * model.voices), TOKEN_ID["<end>"]]
    grammar = SlotGrammar(prompt, slots)
    assert isinstance(grammar, Constraint) and grammar.forced() == TOKEN_ID["BAR"]
    steps = generate_tokens(model.model, [prompt], len(slots), [torch.Generator().manual_seed(0)], Sampling(),
                            constraints=[grammar])
    tokens = [int(token[0]) for token, _ in steps]
    assert grammar.done and tokens[0] == TOKEN_ID["BAR"] and tokens[-1] == TOKEN_ID["<end>"]
    assert all(GRID_VOICE[t] for t in tokens[1:-1])
    piece = decode(prompt + tokens, "grid", model.voices)
    assert piece.length <= 16 and all(21 <= n.pitch <= 108 for n in piece.notes)


def test_generate_music_cli_writes_midi_musicxml_wav_and_png(music_run, tmp_path):
    out, _ = music_run
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "music", "--checkpoint", str(out), "--num-samples", "2", "--seed", "5",
                                 "--bars", "2", "--out", str(tmp_path / "music")])
    assert result.exit_code == 0, result.output
    for seed in (5, 6):
        for suffix in ("mid", "musicxml", "wav", "png"):
            assert (tmp_path / "music" / f"composed-{seed}.{suffix}").stat().st_size > 0
    bad = runner.invoke(app, ["generate", "music", "--checkpoint", str(out), "--key", "H major"])
    assert bad.exit_code != 0 and "--key 'H major'" in bad.output
    both = runner.invoke(app, ["generate", "music", "--checkpoint", str(out), "--opening", "x", "--melody", "y"])
    assert both.exit_code != 0 and "not both" in both.output
    evaluation = runner.invoke(app, ["eval", "--checkpoint", str(out), "--num-samples", "4"])
    assert evaluation.exit_code == 0 and "nats per note" in evaluation.output and "| in voice range |" in evaluation.output


def test_piano_roll_of_an_empty_piece(tmp_path):
    piano_roll(Piece("empty", [], 4, 16), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").is_file()


def test_fluidsynth_renders_when_installed(tmp_path):
    import shutil
    import wave

    from genloom.music.generate import find_soundfont, render_wav

    if not shutil.which("fluidsynth") or find_soundfont() is None:
        with pytest.raises(GenloomError, match="apt-get install fluidsynth"):
            render_wav(Piece("a4", [Note(0, 0, 69, 16)], 1, 16), tmp_path / "a.wav", "fluidsynth")
        pytest.skip("FluidSynth or a soundfont is not installed")
    used = render_wav(Piece("a4", [Note(0, 0, 69, 16)], 1, 16), tmp_path / "a.wav", "fluidsynth", tempo=120)
    assert used == "fluidsynth"
    with wave.open(str(tmp_path / "a.wav")) as f:
        rate, frames = f.getframerate(), f.readframes(f.getnframes())
        channels = f.getnchannels()
    audio = np.frombuffer(frames, dtype="<i2").reshape(-1, channels)[:, 0].astype(float)
    assert len(audio) >= 1.9 * rate                          # a 2-second note (and its release)
    held = audio[int(0.2 * rate):int(1.8 * rate)]
    spectrum = np.abs(np.fft.rfft(held * np.hanning(len(held))))
    assert np.fft.rfftfreq(len(held), 1 / rate)[spectrum.argmax()] == pytest.approx(440, rel=0.02)
