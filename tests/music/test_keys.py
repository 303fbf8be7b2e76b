"""The Krumhansl-Schmuckler key finder on closed-form cases, on Bach chorales (against music21's own
implementation and the files' key signatures), and the key-consistency figures of `--task consistency`."""

from types import SimpleNamespace

import numpy as np
import pytest

from genloom.core.errors import GenloomError
from genloom.handle import EvalRequest
from genloom.music.eval import evaluate_key_consistency
from genloom.music.handle import score
from genloom.music.keys import (
    MAJOR_PROFILE,
    MINOR_PROFILE,
    Key,
    count_modulations,
    estimate_key,
    key_consistency,
    key_scores,
    pitch_class_durations,
    window_keys,
)
from genloom.music.tokens import Note, Piece

MAJOR_SCALE = [0, 2, 4, 5, 7, 9, 11, 12]
HARMONIC_MINOR = [0, 2, 3, 5, 7, 8, 11, 12]


def scale_piece(tonic: int, steps, bars: int = 1, start_bar: int = 0) -> list[Note]:
    """`bars` bars of the scale from `tonic` (MIDI 60 + tonic), in quarter notes, four per bar."""
    notes, t = [], start_bar * 16
    for b in range(bars):
        for k in range(4):
            notes.append(Note(t, 0, 60 + tonic + steps[(4 * b + k) % len(steps)], 4))
            t += 4
    return notes


def test_a_c_major_scale_is_c_major_and_a_harmonic_minor_scale_is_a_minor():
    c = Piece("c", scale_piece(0, MAJOR_SCALE, 2), voices=1)
    key = estimate_key(pitch_class_durations(c))
    assert (key.tonic, key.mode) == (0, "major") and key.name == "C major"
    a = Piece("a", scale_piece(9, HARMONIC_MINOR, 2), voices=1)
    key = estimate_key(pitch_class_durations(a))
    assert (key.tonic, key.mode) == (9, "minor") and key.name == "A minor"
    assert estimate_key(np.zeros(12)) is None and estimate_key(np.ones(12)) is None    # no notes / no centre


def test_scores_are_pearson_correlations_with_the_rotated_profiles_and_transposition_invariant():
    rng = np.random.default_rng(0)
    for _ in range(5):
        d = rng.random(12) * 10
        scores = key_scores(d)
        for tonic in range(12):                       # the profile of a key on tonic t, read at pitch class p
            major = [MAJOR_PROFILE[(p - tonic) % 12] for p in range(12)]
            minor = [MINOR_PROFILE[(p - tonic) % 12] for p in range(12)]
            assert scores[tonic] == pytest.approx(np.corrcoef(d, major)[0, 1])
            assert scores[12 + tonic] == pytest.approx(np.corrcoef(d, minor)[0, 1])
        base = estimate_key(d)
        for shift in range(12):                        # transposing the piece moves the key by as much
            moved = estimate_key(np.roll(d, shift))
            assert (moved.tonic, moved.mode) == ((base.tonic + shift) % 12, base.mode)
            assert moved.correlation == pytest.approx(base.correlation)


def test_modulations_count_keys_that_hold_and_windows_follow_a_modulating_piece():
    c, g, a = Key(0, "major"), Key(7, "major"), Key(9, "minor")
    assert count_modulations([c, c, g, g, g, c, c]) == 2
    assert count_modulations([c, c, g, c, c, a, c, c]) == 0          # one-window excursions are not modulations
    assert count_modulations([c, None, c, g, None, g]) == 1          # empty windows are skipped
    assert count_modulations([c, g, c], hold=1) == 2
    # 8 bars of C major, then 4 bars of F# major: 2-bar windows (hop 1) start at bars 0..10.
    notes = scale_piece(0, MAJOR_SCALE, 8) + scale_piece(6, MAJOR_SCALE, 4, start_bar=8)
    piece = Piece("modulating", notes, voices=1)
    keys = window_keys(piece, 2)
    assert len(keys) == 11
    assert all(k.name == "C major" for k in keys[:7]) and all(k.name == "F# major" for k in keys[8:])
    result = key_consistency(piece)
    assert result.key.name == "C major" and result.modulations == 1 and result.bars == 12
    assert result.in_key_share in (pytest.approx(7 / 11), pytest.approx(8 / 11))   # window 7 straddles the change


chorales = ("bach/bwv269", "bach/bwv347", "bach/bwv66.6", "bach/bwv86.6")


def _signature(key: Key) -> int:
    """Sharps (negative: flats) of a key's signature, mod 12 on the circle of fifths."""
    major = key.tonic if key.mode == "major" else (key.tonic + 3) % 12
    return (7 * major) % 12


def test_bach_chorales_agree_with_music21_and_sit_near_their_key_signatures():
    music21 = pytest.importorskip("music21")
    from genloom.music.data import score_to_piece

    for name in chorales:
        score_ = music21.corpus.parse(name)
        piece = score_to_piece(score_, name)
        key = estimate_key(pitch_class_durations(piece))
        theirs = music21.analysis.discrete.KrumhanslSchmuckler().getSolution(score_)   # their implementation
        assert (key.tonic, key.mode) == (theirs.tonic.pitchClass, theirs.mode), name
        sharps = list(score_.recurse().getElementsByClass(music21.key.KeySignature))[0].sharps
        steps = abs(_signature(key) - sharps % 12)
        assert min(steps, 12 - steps) <= 1, (name, key.name, sharps)   # its key, relative, or a fifth away
        # Transposing the chorale moves its key with it.
        up = estimate_key(pitch_class_durations(piece.transpose(5)))
        assert (up.tonic, up.mode) == ((key.tonic + 5) % 12, key.mode)


def test_key_consistency_figures_against_pieces_that_leave_their_key():
    def drifting(like, bars, seed):                  # the "model": its key for 10 bars, then a tritone away
        return Piece(f"g{seed}", scale_piece(like.tonic, MAJOR_SCALE, 10)
                     + scale_piece(like.tonic + 6, MAJOR_SCALE, bars - 10, start_bar=10), voices=1, tonic=like.tonic)

    reference = [Piece(f"r{t}", scale_piece(t, MAJOR_SCALE, 8), voices=1, tonic=t) for t in (0, 2, 7)]
    result = evaluate_key_consistency(drifting, reference, num_samples=4, bars=16, progress=False)
    f = result.figures
    assert f["in_key_share"]["real"] == 1 and f["modulations_per_piece"]["real"] == 0
    assert f["key_matches_label"]["real"] == 1 and f["key_matches_label"]["generated"] == 1
    assert f["modulations_per_piece"]["generated"] == 1 and f["modulations_per_8_bars"]["generated"] == 0.5
    # 15 two-bar windows: 0-8 in the key, 9 straddles the change, 10-14 a tritone away.
    assert f["in_key_share"]["generated"] in (pytest.approx(9 / 15), pytest.approx(10 / 15))
    assert f["in_key_first_half"]["generated"] == 1
    # Cut to their 8-bar training pieces' length, the pieces end before they leave the key.
    assert f["in_key_share"]["generated_cut"] == 1 and f["modulations_per_piece"]["generated_cut"] == 0
    assert f["bars_per_piece"]["generated_cut"] == 8
    assert f["in_key_second_half"]["generated"] in (pytest.approx(1 / 7), pytest.approx(2 / 7))
    assert len(result.by_bar["generated"]) == 15 and result.by_bar["generated"][0] == 1
    assert result.by_bar["generated"][-1] == 0 and "windows in the piece's key" in result.summary()
    with pytest.raises(GenloomError, match="shorter than one"):
        evaluate_key_consistency(drifting, reference, bars=1, progress=False)


def test_consistency_refuses_options_it_cannot_honour():
    fake = SimpleNamespace()
    with pytest.raises(GenloomError, match="--guidance"):
        score(fake, EvalRequest(task="consistency", guidance=2.0))
    with pytest.raises(GenloomError, match="music models have the task 'consistency'"):
        score(fake, EvalRequest(task="context"))
