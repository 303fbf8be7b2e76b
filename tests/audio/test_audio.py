"""Audio: STFT/mel round trips, Griffin-Lim on a known signal, the sound-effect synthesiser's labels, label and
voice conditioning, the speaker encoder on real espeak-ng voices, bad input, and tiny models end to end."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import genloom
from genloom.audio.data import (
    REGISTERS,
    SOUND_KINDS,
    AudioData,
    AudioDataConfig,
    espeak_voices,
    parse_audio_prompt,
    speak,
    synth_sound,
)
from genloom.audio.mel import MelSpectrogram, griffin_lim, mel_filters
from genloom.audio.objective import _WithVector
from genloom.audio.speaker import ge2e_loss, train_speaker_encoder
from genloom.audio.vocoder import (
    MelVocoder,
    cached_vocoder,
    spectral_loss,
    train_vocoder,
)
from genloom.cli import app
from genloom.core.errors import DataError
from genloom.diffusion.dit import DiT, DiTConfig
from genloom.media.audio import check_clip, read_audio, write_wav
from genloom.nn.conditioning import ConditionEmbedding

espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
SR = 16000
VOCODER_STEPS, VOCODER_FALL = 150, 0.8       # the training loss of a small vocoder on 12 notes must fall this far


def tone(frequency: float, seconds: float = 1.0, sample_rate: int = SR) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * sample_rate)) / sample_rate)).astype(np.float32)


def test_mel_filters_are_unit_area_triangles_in_rising_order():
    filters = mel_filters(64, 1024, SR)
    assert filters.shape == (64, 513)
    assert torch.allclose(filters.sum(1), torch.ones(64), atol=1e-5)
    peaks = filters.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > 400


def test_a_tone_lights_the_band_of_its_frequency_and_survives_the_round_trip():
    mel = MelSpectrogram(SR, 1024, 256, 64, 64)
    bins = np.linspace(0, SR / 2, 513)
    for frequency in (220.0, 1000.0, 3500.0):
        picture = mel(tone(frequency))
        assert picture.shape == (1, 1, 64, 64) and picture.min() >= -1 and picture.max() <= 1
        band = int(picture[0, 0, :, 32].argmax())
        assert mel.filters[band, int(np.argmin(abs(bins - frequency)))] > 0      # the band covers the tone
        back = mel.invert(picture, iterations=48)                                # picture -> sound -> picture
        assert (mel(back) - picture)[..., 4:-4].abs().mean() < 0.05
        spectrum = np.abs(np.fft.rfft(back[0].numpy()))
        assert abs(np.fft.rfftfreq(len(back[0]), 1 / SR)[spectrum.argmax()] - frequency) < 0.03 * frequency


def test_stft_magnitude_round_trip_through_the_mel_pseudo_inverse():
    mel = MelSpectrogram(SR, 1024, 256, 64, 64)
    rng = np.random.default_rng(0)
    wave = (tone(300) + tone(2000) * 0.5 + 0.05 * rng.standard_normal(SR)).astype(np.float32)
    picture = mel(wave)
    magnitude = mel.magnitude(picture)
    assert (magnitude >= 0).all()
    again = torch.log10((mel.filters @ (magnitude / (mel.n_fft / 4))).clamp(min=10 ** mel.floor))
    error = ((again - mel.floor) / mel.span * 2 - 1 - picture[:, 0]).abs()     # the mel bands come back
    assert error.mean() < 0.002 and error.max() < 0.1


def test_griffin_lim_converges_on_a_known_signal():
    t = np.arange(SR) / SR
    chirp = torch.from_numpy(0.5 * np.sin(2 * np.pi * (200 * t + 900 * t ** 2))).float()
    window = torch.hann_window(512)
    magnitude = torch.stft(chirp, 512, 128, window=window, return_complex=True).abs()[None]
    history: list[float] = []
    rebuilt = griffin_lim(magnitude, 512, 128, iterations=100, length=SR, history=history)
    assert history[-1] < 0.1 and history[-1] < history[0] / 4             # spectral convergence falls
    assert history[-1] <= min(history[:10])
    again = torch.stft(rebuilt[0], 512, 128, window=window, return_complex=True).abs()
    assert float((again - magnitude[0]).norm() / magnitude.norm()) < 0.1


@pytest.mark.parametrize("kind", list(SOUND_KINDS))
def test_sound_effects_are_labelled_by_what_they_are(kind):
    rng = np.random.default_rng(1)
    for register in REGISTERS:
        wave, params = synth_sound(kind, register, SR, 16384, rng)
        assert wave.shape == (16384,) and np.abs(wave).max() <= 0.9 + 1e-6 and np.abs(wave).max() > 0.5
        assert params["kind"] == kind and params["register"] == register
        low, high = REGISTERS[register]
        assert 0.97 * low <= params["frequency"] <= 1.03 * high
        if kind in ("pure", "hollow", "bright", "plucked"):          # the fundamental is where the label says
            spectrum = np.abs(np.fft.rfft(wave))
            frequencies = np.fft.rfftfreq(len(wave), 1 / SR)
            strongest = frequencies[spectrum.argmax()]
            ratio = strongest / params["frequency"]                     # the fundamental or a harmonic
            assert 1 <= round(ratio) <= 8 and abs(ratio - round(ratio)) < 0.03 * round(ratio)


def test_factor_embeddings_add_up():
    embed = ConditionEmbedding(16, 12, factors=(4, 3))
    t = torch.zeros(4)
    a = embed(t, torch.tensor([0 * 3 + 0, 2 * 3 + 1, 0 * 3 + 1, 2 * 3 + 0]))
    assert torch.allclose(a[0] + a[1], a[2] + a[3], atol=1e-6)        # e(0,0) + e(2,1) = e(0,1) + e(2,0)
    none = embed(t[:1], torch.tensor([12]))
    assert not torch.allclose(none, a[:1])
    with pytest.raises(ValueError, match="multiply"):
        ConditionEmbedding(16, 10, factors=(4, 3))


@pytest.mark.parametrize("vector_tokens", [0, 2])
def test_the_denoiser_hears_the_label_and_the_voice(vector_tokens):
    torch.manual_seed(0)
    model = DiT(DiTConfig(image_size=16, channels=1, num_classes=10, patch_size=4, d_model=32, n_layer=2, n_head=2,
                          vector_dim=8, vector_tokens=vector_tokens))
    for p in model.parameters():                                       # wake the zero-initialised gates
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([500.0, 500.0])
    voice = torch.randn(1, 8).expand(2, 8)
    base = model(x, t, torch.tensor([3, 3]), voice)
    assert not torch.allclose(base, model(x, t, torch.tensor([4, 4]), voice))
    assert not torch.allclose(base, model(x, t, torch.tensor([3, 3]), torch.randn(2, 8)))
    assert torch.allclose(model(x, t, torch.tensor([3, 3]), None), model(x, t, torch.tensor([3, 3]),
                                                                          torch.zeros(2, 8)))


def test_voice_guidance_extrapolates_from_no_voice_through_the_voice():
    torch.manual_seed(0)
    model = DiT(DiTConfig(image_size=16, channels=1, num_classes=10, patch_size=4, d_model=32, n_layer=2, n_head=2,
                          vector_dim=8))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, labels = torch.randn(3, 1, 16, 16), torch.tensor([100.0, 500.0, 900.0]), torch.tensor([1, 2, 3])
    voice = torch.randn(3, 8)
    voiced, plain = model(x, t, labels, voice), model(x, t, labels, torch.zeros(3, 8))
    for scale in (0.0, 1.0, 2.5):
        out = _WithVector(model, voice, scale)(x, t, labels)
        assert torch.allclose(out, plain + scale * (voiced - plain), atol=1e-5), scale
    # classifier-free guidance on the label runs both halves of a doubled batch with the same voices
    doubled = _WithVector(model, voice, 2.0)(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, labels + 1]))
    assert torch.allclose(doubled[:3], _WithVector(model, voice, 2.0)(x, t, labels), atol=1e-5)


def _notes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([synth_sound(kind, register, SR, 16384, rng)[0] for kind in ("pure", "bright", "plucked", "bell")
                     for register in REGISTERS])


def test_the_neural_vocoder_learns_to_give_back_the_sound(tmp_path):
    mel = MelSpectrogram(SR, 1024, 256, 64, 64)
    waves = _notes(0)
    real = torch.from_numpy(waves)
    pictures = mel(real)
    torch.manual_seed(0)
    untrained = MelVocoder(64, 1024, 256, width=64, blocks=2).eval()       # the same start as the training's
    trained = train_vocoder(waves, mel, steps=VOCODER_STEPS, seed=0, batch_size=8, width=64, blocks=2, progress=False)

    def loss(vocoder):
        with torch.no_grad():
            made = vocoder(pictures)
            return float(spectral_loss(made, real) + (mel(made) - pictures).abs().mean())

    assert loss(trained) < VOCODER_FALL * loss(untrained), (loss(untrained), loss(trained))
    assert trained(pictures[:1]).shape == (1, mel.samples)
    vocoder = cached_vocoder(tmp_path, waves, mel, steps=2, seed=0, progress=False)        # trained and cached ...
    again = cached_vocoder(tmp_path, waves, mel, steps=2, seed=0, progress=False)          # ... loaded, not retrained
    with torch.no_grad():
        assert torch.equal(again(pictures[:2]), vocoder(pictures[:2]))
    assert len(list(tmp_path.glob("vocoder_s2.*"))) == 2


def test_ge2e_loss_prefers_separated_voices():
    torch.manual_seed(0)
    scale, shift = torch.tensor(10.0), torch.tensor(-5.0)
    centres = torch.nn.functional.normalize(torch.randn(4, 1, 16), dim=-1)
    tight = torch.nn.functional.normalize(centres + 0.05 * torch.randn(4, 5, 16), dim=-1)
    mixed = torch.nn.functional.normalize(torch.randn(4, 5, 16), dim=-1)
    assert ge2e_loss(tight, scale, shift) < 0.1 < ge2e_loss(mixed, scale, shift)


@espeak
def test_the_speaker_encoder_separates_voices_it_never_heard(tmp_path):
    voices = espeak_voices(10, seed=3)
    mel = MelSpectrogram()
    words = ["zero", "one", "two", "three", "four", "five", "hello", "water"]
    pictures, speakers = [], []
    for v, voice in enumerate(voices):
        for w in words:
            wave = speak(w, voice, SR)
            pictures.append(mel(np.pad(wave, (0, max(0, mel.samples - len(wave))))[:mel.samples]))
            speakers.append(v)
    pictures, speakers = torch.cat(pictures), torch.tensor(speakers)
    seen = speakers < 7
    encoder = train_speaker_encoder(pictures[seen], speakers[seen], dim=32, steps=150, voices_per_batch=7,
                                    clips_per_voice=4, progress=False)
    with torch.no_grad():
        new = encoder(pictures[~seen])                                  # 3 voices held out of training
    who = speakers[~seen]
    cos = new @ new.T
    same = (who[:, None] == who[None]) & ~torch.eye(len(who), dtype=torch.bool)
    different = who[:, None] != who[None]
    assert cos[same].mean() > cos[different].mean() + 0.2
    right = 0                                                           # nearest centroid, leaving the clip out
    for i in range(len(new)):
        scores = []
        for v in who.unique():
            members = (who == v) & (torch.arange(len(who)) != i)
            scores.append(float(new[i] @ torch.nn.functional.normalize(new[members].mean(0), dim=0)))
        right += int(who.unique()[int(np.argmax(scores))] == who[i])
    assert right / len(new) >= 0.8


@espeak
def test_espeak_words_come_out_trimmed_at_the_asked_rate():
    voice = espeak_voices(1, seed=0)[0]
    wave = speak("seven", voice, 8000)
    assert wave.dtype == np.float32 and 0.2 < len(wave) / 8000 < 1.2 and np.abs(wave).max() > 0.05


def test_missing_espeak_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        speak("seven", espeak_voices(1)[0], SR)


def test_bad_audio_input_gets_clear_errors_and_resampling(tmp_path, caplog):
    write_wav(tmp_path / "silent.wav", np.zeros(SR), SR)
    with pytest.raises(DataError, match="silent"):
        check_clip(read_audio(tmp_path / "silent.wav", SR), SR, "silent.wav")
    write_wav(tmp_path / "short.wav", tone(440, 0.2), SR)
    with pytest.raises(DataError, match=r"short.wav: 0\.\d+ s of sound .* at least 0.5 s"):
        check_clip(read_audio(tmp_path / "short.wav", SR), SR, "short.wav", 0.5)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(DataError, match="corrupt.wav: cannot be read as sound"):
        read_audio(tmp_path / "corrupt.wav", SR)
    with pytest.raises(DataError, match="no such sound file"):
        read_audio(tmp_path / "missing.wav", SR)
    write_wav(tmp_path / "low.wav", tone(440, 1.0, 8000), 8000)         # another sample rate: resampled
    wave = read_audio(tmp_path / "low.wav", SR)
    assert len(wave) == SR
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.fft.rfftfreq(len(wave), 1 / SR)[spectrum.argmax()] - 440) < 2
    clipped = np.clip(tone(440) * 4, -1, 1)
    with caplog.at_level(logging.WARNING):
        fixed = check_clip(clipped, SR, "loud.wav")
    assert "clipped" in caplog.text and abs(np.abs(fixed).max() - 0.9) < 1e-6


def test_prompts_name_words_and_sounds():
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert parse_audio_prompt("seven", words) == 7
    assert parse_audio_prompt("the word seven", words) == 7
    assert parse_audio_prompt("say 3", words) == 3
    with pytest.raises(DataError, match="name one word"):
        parse_audio_prompt("elephant", words)
    sounds = [f"{k} {r}" for k in SOUND_KINDS for r in REGISTERS]
    assert sounds[parse_audio_prompt("a bright plucked note, high pitch", sounds)] == "plucked high"
    assert sounds[parse_audio_prompt("a hi-hat", sounds)] == "hihat middle"
    assert sounds[parse_audio_prompt("a deep kick drum", sounds)] == "kick low"
    with pytest.raises(DataError, match="name a sound"):
        parse_audio_prompt("a trumpet", sounds)


def test_a_folder_of_files_at_any_rate_becomes_classes(tmp_path):
    import soundfile

    for name, frequency in (("low", 200), ("high", 2000)):
        (tmp_path / name).mkdir()
        for i in range(3):
            stereo = np.stack([tone(frequency * (1 + i / 20), 0.6, 44100)] * 2, axis=1)
            soundfile.write(tmp_path / name / f"{i}.flac", stereo, 44100)
    data = AudioData(AudioDataConfig(path=str(tmp_path), cache_dir=str(tmp_path / "cache")), progress=False)
    data.prepare()
    assert data.classes == ["high", "low"] and data.pictures.shape == (6, 1, 64, 64)
    assert data.num_examples("train") + data.num_examples("val") == 6
    (tmp_path / "low" / "bad.wav").write_bytes(b"not a sound")
    with pytest.raises(DataError, match="bad.wav"):
        AudioData(AudioDataConfig(path=str(tmp_path), cache_dir=str(tmp_path / "cache")), progress=False).prepare()


def test_sound_effects_train_and_generate_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "sound-effects", "--out", str(run), "--set", "data.count=66",
                                      "--set", "train.max_steps=3", "--set", "train.compile=false", "--set",
                                      "model.n_layer=1", "--set", "model.d_model=32", "--set", "objective.sample_steps=2",
                                      "--set", "data.vocoder_steps=2"])
    assert result.exit_code == 0, result.output
    model = genloom.load(run)
    assert model.model.config.label_factors == (11, 3)
    assert (run / "vocoder.safetensors").is_file() and model.vocoder is not None
    waves, pictures = model.generate(["a plucked string, high pitch", "a kick drum, low"], num_samples=2, seed=0,
                                     steps=2, vocoder_iterations=4, vocoder="griffin-lim")
    assert waves.shape == (4, model.mel.samples) and pictures.shape == (4, 1, 64, 64)
    again, _ = model.generate("a plucked string, high pitch", num_samples=1, seed=0, steps=2, vocoder_iterations=4,
                              vocoder="griffin-lim")
    assert torch.allclose(again[0], waves[0], atol=1e-5)                 # seeded
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "audio", "--checkpoint", str(run), "--prompt", "a bell, low",
                                      "--steps", "2", "--seed", "5", "--out", str(out), "--vocoder-iterations", "4"])
    assert result.exit_code == 0, result.output
    assert (out / "a-bell-low-5.wav").is_file() and (out / "a-bell-low-5.png").is_file()
    assert read_audio(out / "a-bell-low-5.wav", SR).shape == (model.mel.samples,)
    result = CliRunner().invoke(app, ["generate", "audio", "--checkpoint", str(run), "--prompt", "a bell", "--voice",
                                      str(out / "a-bell-low-5.wav"), "--steps", "2", "--out", str(out)])
    assert result.exit_code == 2 and "no voice input" in result.output
    neural, _ = model.generate("a bell, low", seed=5, steps=2, vocoder="neural")
    plain, _ = model.generate("a bell, low", seed=5, steps=2, vocoder="griffin-lim", vocoder_iterations=4)
    assert neural.shape == plain.shape and not torch.allclose(neural, plain)
    result = CliRunner().invoke(app, ["generate", "audio", "--checkpoint", str(run), "--prompt", "a bell", "--steps",
                                      "2", "--out", str(out), "--vocoder", "wavenet"])
    assert result.exit_code == 2 and "vocoder 'wavenet'" in result.output


@espeak
def test_spoken_digits_in_a_new_voice_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "spoken-digits", "--out", str(run), "--set", "data.voices=5",
                                      "--set", "data.held_out_voices=2", "--set", "data.takes=1", "--set",
                                      "data.speaker_steps=10", "--set", "train.max_steps=2", "--set",
                                      "train.compile=false", "--set", "model.n_layer=1", "--set", "model.d_model=32",
                                      "--set", "objective.sample_steps=2", "--set", "data.voice_references=4"])
    assert result.exit_code == 0, result.output
    assert (run / "speaker_encoder.safetensors").is_file()
    model = genloom.load(run)
    assert model.config.data.voice_references == 4 and model.vocoder is None
    with pytest.raises(genloom.GenloomError, match="no neural vocoder"):
        model.generate("seven", steps=1, vocoder="neural")
    # training clips come with one of 4 reference sets of their voice, chosen by the index alone
    data = AudioData(model.config.data, progress=False)
    n = data.num_examples("train")
    first, again = data.batch(torch.tensor([0, n, 2 * n])), data.batch(torch.tensor([0, n, 2 * n]))
    assert torch.equal(first[2], again[2]) and torch.equal(first[0][0], first[0][1])   # the same clip ...
    assert not torch.allclose(first[2][1], first[2][2])                                 # ... other references
    assert all(float(first[2][0] @ first[2][k]) > 0.8 for k in (1, 2))                  # of the same voice
    assert int(data.sample_indices(torch.Generator().manual_seed(0), 512).max()) >= n
    reference = tmp_path / "me.wav"
    voice = espeak_voices(8, seed=99)[7]
    write_wav(reference, np.concatenate([speak(w, voice, 22050) for w in ("hello", "water", "morning")]), 22050)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", "audio", "--checkpoint", str(run), "--prompt", "seven", "--voice",
                                      str(reference), "--num-samples", "2", "--seed", "3", "--steps", "2", "--out",
                                      str(out), "--vocoder-iterations", "4"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["seven-3.png", "seven-3.wav", "seven-4.png", "seven-4.wav"]
    vector = model.voice(reference)
    assert vector.shape == (model.model.config.vector_dim,) and abs(float(vector.norm()) - 1) < 1e-4
    for bad, message in ((np.zeros(SR, dtype=np.float32), "silent"), (tone(300, 0.3), "at least 0.5 s")):
        with pytest.raises(DataError, match=message):
            model.voice(bad)
