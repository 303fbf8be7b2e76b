"""Sound for audio diffusion: spoken words made by espeak-ng, sound effects made in numpy, or a folder of files.

`builtin:spoken-digits` / `builtin:spoken-words`: Debian's espeak-ng (an optional system dependency) says the
words "zero" to "nine" and 30 more in 60 voices; a voice is an English accent (British, American, Scottish,
Lancastrian, Received Pronunciation, West Midlands, Caribbean, New York) with a voice variant (espeak's
formant sets: men, women, old, breathy...), a base pitch and a speaking rate. Each voice says every word
three times with the pitch and rate jittered a little. 12 voices are held out of training: the voice-cloning
evaluation asks for them from a reference clip. spoken-digits trains on the ten digits, spoken-words on all
40 words; both keep every word of every voice for the speaker encoder.

`builtin:sound-effects`: sounds synthesised here in numpy, each with its parameters as labels: pitched notes
of five timbres (a pure sine, a hollow square, a bright sawtooth, a plucked string by Karplus-Strong, an FM
bell), percussive hits (a kick, a snare, a hi-hat), sweeps up and down and noise bursts, each in a low, middle
or high register. The class is kind x register ("a bright note, high pitch").

A folder: every .wav/.flac/.ogg file below it; the parent folder's name is its class (a flat folder is
unconditional). Files at another sample rate are resampled; stereo is mixed to mono.

Every clip becomes a log-mel spectrogram (`MelSpectrogram`): a square picture of `n_mels` mel bands by
`frames` frames scaled to [-1, 1], which the image denoisers model like a gray image; `griffin_lim` turns
one back into sound.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..core.cache import default_cache_dir
from ..core.config import require, validate
from ..core.errors import DataError
from ..core.registry import register
from ..media.audio import check_clip, read_audio
from .mel import MelSpectrogram

__all__ = ["AudioDataConfig", "AudioData", "MelSpectrogram", "read_audio", "check_clip", "espeak_voices", "speak", "synth_sound", "DIGIT_WORDS", "WORDS", "SOUND_KINDS", "REGISTERS", "parse_audio_prompt", "AUDIO_SUFFIXES"]

log = logging.getLogger(__name__)

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WORDS = DIGIT_WORDS + ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "hello", "world",
                       "red", "green", "blue", "black", "white", "cat", "dog", "house", "tree", "water", "fire",
                       "music", "happy", "morning", "night", "sun", "moon", "star"]
ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
            "grandma", "grandpa", "adam", "Alex", "Andy", "Annie", "belinda", "benjamin", "boris", "caleb", "david",
            "ed", "edward", "john", "linda", "max", "Michael", "paul", "pedro"]
SOUND_KINDS = {"pure": "a pure sine note", "hollow": "a hollow square-wave note", "bright": "a bright sawtooth note",
               "plucked": "a plucked string", "bell": "a bell", "kick": "a kick drum", "snare": "a snare drum",
               "hihat": "a hi-hat", "rising": "a rising sweep", "falling": "a falling sweep", "noise": "a noise burst"}
REGISTERS = {"low": (80.0, 180.0), "middle": (250.0, 500.0), "high": (800.0, 1600.0)}   # fundamental, Hz
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
BUILTIN_AUDIO = ("builtin:spoken-digits", "builtin:spoken-words", "builtin:sound-effects")
DATA_VERSION = 1
























# -- espeak-ng voices ----------------------------------------------------------------------------------
def _espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataError("the spoken-word data is made by espeak-ng, which is not installed: on Debian/Ubuntu "
                        "`sudo apt-get install espeak-ng`, on macOS `brew install espeak-ng` (builtin:sound-effects "
                        "needs nothing)")
    return path


def espeak_voices(count: int = 60, seed: int = 0) -> list[dict]:
    """`count` distinct voices: accent, variant, base pitch (0-99) and rate (words a minute)."""
    rng = np.random.default_rng(seed)
    voices, seen = [], set()
    while len(voices) < count:
        accent, variant = ACCENTS[rng.integers(len(ACCENTS))], VARIANTS[rng.integers(len(VARIANTS))]
        if (accent, variant) in seen:
            continue
        seen.add((accent, variant))
        voices.append({"name": f"{accent}+{variant}", "accent": accent, "variant": variant,
                       "pitch": int(rng.integers(25, 76)), "rate": int(rng.integers(140, 191))})
    return voices


def speak(text: str, voice: dict, sample_rate: int, pitch: int | None = None, rate: int | None = None) -> np.ndarray:
    """espeak-ng saying `text` in `voice`, as float32 samples at `sample_rate` with the silence around trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "say.wav"
        command = [_espeak(), "-v", f"{voice['accent']}+{voice['variant']}", "-p", str(pitch or voice["pitch"]),
                   "-s", str(rate or voice["rate"]), "-w", str(out), text]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode or not out.is_file():
            raise DataError(f"espeak-ng failed for {text!r} in voice {voice['name']}: {done.stderr.strip()[:200]}")
        wave = read_audio(out, sample_rate)
    return trim_silence(wave, sample_rate)


def trim_silence(wave: np.ndarray, sample_rate: int, window: float = 0.01) -> np.ndarray:
    size = int(sample_rate * window)
    n = len(wave) // size
    if n == 0:
        return wave
    energy = np.sqrt((wave[:n * size].reshape(n, size) ** 2).mean(axis=1))
    loud = np.flatnonzero(energy > energy.max() / 100)
    return wave[loud[0] * size:(loud[-1] + 1) * size] if len(loud) else wave


def _fit(wave: np.ndarray, samples: int, offset: int) -> np.ndarray:
    """Place a clip `offset` samples into `samples` of silence, fading out what does not fit."""
    out = np.zeros(samples, dtype=np.float32)
    piece = wave[:samples - offset].copy()
    if len(wave) > samples - offset:
        fade = min(len(piece), 400)
        piece[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    out[offset:offset + len(piece)] = piece
    peak = np.abs(out).max()
    return out * (0.9 / peak) if peak > 0 else out


def spoken_words(voices: list[dict], words: list[str], takes: int, sample_rate: int, samples: int, seed: int,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every voice saying every word `takes` times (pitch +-4, rate +-8% jittered): (N, samples) float32,
    word index (N,), voice index (N,)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    jobs = [(v, w, int(voice["pitch"] + rng.integers(-4, 5)), int(voice["rate"] * rng.uniform(0.92, 1.08)),
             int(rng.integers(0, samples // 16)))
            for v, voice in enumerate(voices) for w in range(len(words)) for _ in range(takes)]

    def run(job):
        v, w, pitch, rate, offset = job
        return _fit(speak(words[w], voices[v], sample_rate, pitch, rate), samples, offset)

    with ThreadPoolExecutor(max_workers=4) as pool:
        waves = list(tqdm(pool.map(run, jobs), total=len(jobs), desc="espeak-ng", disable=not progress,
                          leave=False))
    return (np.stack(waves), np.array([j[1] for j in jobs], dtype=np.int64),
            np.array([j[0] for j in jobs], dtype=np.int64))


# -- sound effects in numpy ----------------------------------------------------------------------------
def _envelope(n: int, sample_rate: int, attack: float, decay: float) -> np.ndarray:
    t = np.arange(n) / sample_rate
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / decay)


def synth_sound(kind: str, register: str, sample_rate: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One sound effect of `kind` (SOUND_KINDS) in `register` (REGISTERS), with its drawn parameters."""
    low, high = REGISTERS[register]
    f0 = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    length = int(samples * rng.uniform(0.45, 0.85))
    t = np.arange(length) / sample_rate
    decay = float(rng.uniform(0.15, 0.4))
    params = {"kind": kind, "register": register, "frequency": round(f0, 1), "seconds": round(length / sample_rate, 3)}
    if kind == "pure":
        wave = np.sin(2 * np.pi * f0 * t) * _envelope(length, sample_rate, 0.01, decay)
    elif kind == "hollow":
        wave = np.sign(np.sin(2 * np.pi * f0 * t)) * 0.6 * _envelope(length, sample_rate, 0.01, decay)
    elif kind == "bright":
        wave = (2 * ((f0 * t) % 1.0) - 1) * 0.7 * _envelope(length, sample_rate, 0.01, decay)
    elif kind == "plucked":                                    # Karplus-Strong: a noise burst in a damped loop
        period = max(2, int(round(sample_rate / f0 + 0.5)))
        params["frequency"] = round(sample_rate / (period - 0.5), 1)  # the loop (and its averaging) sets the pitch
        buffer = rng.uniform(-1, 1, period)
        buffer -= buffer.mean()                                      # the loop keeps DC: start without it
        wave = np.empty(length)
        for i in range(length):
            wave[i] = buffer[i % period]
            buffer[i % period] = 0.996 * 0.5 * (buffer[i % period] + buffer[(i + 1) % period])
    elif kind == "bell":                                       # FM synthesis, inharmonic ratio 1.4
        index = 3.0 * _envelope(length, sample_rate, 0.001, decay * 1.5)
        wave = np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * 1.4 * f0 * t)) * \
            _envelope(length, sample_rate, 0.002, decay * 2)
    elif kind == "kick":                                       # a sine whose pitch falls fast
        pitch = f0 * 0.5 * (1 + 3 * np.exp(-t / 0.03))
        wave = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate) * _envelope(length, sample_rate, 0.002, 0.15)
    elif kind == "snare":                                      # a tone plus band-passed noise
        noise = _band_noise(rng, length, sample_rate, f0 * 4, min(f0 * 16, sample_rate / 2 - 100))
        wave = (0.4 * np.sin(2 * np.pi * f0 * t) + noise) * _envelope(length, sample_rate, 0.001, 0.08)
    elif kind == "hihat":                                      # high noise, very short
        bottom = min(f0 * 4, sample_rate / 2 * 0.6)
        wave = _band_noise(rng, length, sample_rate, bottom, min(bottom * 3, sample_rate / 2 - 100)) * \
            _envelope(length, sample_rate, 0.001, 0.04)
    elif kind in ("rising", "falling"):                        # an exponential glide over two octaves
        ratio = 4.0 if kind == "rising" else 0.25
        pitch = f0 * ratio ** (t / t[-1])
        wave = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate) * _envelope(length, sample_rate, 0.02, 10.0)
        wave *= np.minimum(1.0, (t[-1] - t) / 0.05)
    elif kind == "noise":                                      # noise centred on the register
        wave = _band_noise(rng, length, sample_rate, f0 / 1.5, f0 * 3) * _envelope(length, sample_rate, 0.005, decay)
    else:
        raise DataError(f"unknown sound kind {kind!r}; known: {', '.join(SOUND_KINDS)}")
    return _fit(wave.astype(np.float32), samples, int(rng.integers(0, samples // 16))), params


def _band_noise(rng: np.random.Generator, n: int, sample_rate: int, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sample_rate)
    spectrum[(f < low) | (f > high)] = 0
    wave = np.fft.irfft(spectrum, n)
    return wave / max(np.abs(wave).max(), 1e-9)


def sound_effects(count: int, sample_rate: int, samples: int, seed: int, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """`count` sound effects, the kind x register classes in turn: (N, samples), class (N,), parameters."""
    rng = np.random.default_rng(seed)
    kinds, registers = list(SOUND_KINDS), list(REGISTERS)
    waves, labels, params = [], [], []
    for i in range(count):
        label = i % (len(kinds) * len(registers))
        wave, p = synth_sound(kinds[label // len(registers)], registers[label % len(registers)], sample_rate,
                              samples, rng)
        waves.append(wave)
        labels.append(label)
        params.append(p)
    return np.stack(waves), np.array(labels, dtype=np.int64), params


def parse_audio_prompt(prompt: str, classes: list[str]) -> int:
    """The class a prompt names: a word ("seven", "the word seven"), a sound ("a bright plucked note, high
    pitch" -> the kind and register named), or a class name."""
    text = prompt.lower().strip()
    if text in classes:
        return classes.index(text)
    words = [w.strip(".,;:!?\"'") for w in text.replace("-", " ").split()]
    if classes and classes[0] in WORDS:                          # spoken words: the one class word named
        named = [w for w in words if w in classes]
        if len(set(named)) == 1:
            return classes.index(named[0])
        digits = [w for w in words if w.isdigit() and len(w) == 1]
        if not named and len(digits) == 1 and DIGIT_WORDS[int(digits[0])] in classes:
            return classes.index(DIGIT_WORDS[int(digits[0])])
        raise DataError(f"prompt {prompt!r}: name one word this model says, e.g. \"seven\" (words: "
                        f"{', '.join(classes[:12])}{'...' if len(classes) > 12 else ''})")
    if classes and " " in classes[0] and classes[0].split()[0] in SOUND_KINDS:
        synonyms = {"sine": "pure", "square": "hollow", "sawtooth": "bright", "saw": "bright", "pluck": "plucked",
                    "string": "plucked", "chime": "bell", "drum": "kick", "bass": "kick", "hat": "hihat",
                    "cymbal": "hihat", "up": "rising", "down": "falling", "burst": "noise", "hiss": "noise",
                    "mid": "middle", "medium": "middle", "deep": "low"}
        terms = [synonyms.get(w, w) for w in words]
        # the most specific kind named wins ("a bright plucked note": plucked; "hi-hat": hihat)
        kinds = [w for w in terms if w in SOUND_KINDS]
        if "hi" in words and "hat" in words:
            kinds = ["hihat"]
        specific = [k for k in kinds if k not in ("bright", "pure", "hollow")] or kinds
        register = [w for w in terms if w in REGISTERS]
        if specific:
            name = f"{specific[-1]} {register[-1] if register else 'middle'}"
            if name in classes:
                return classes.index(name)
        raise DataError(f"prompt {prompt!r}: name a sound ({', '.join(SOUND_KINDS)}) and a register "
                        f"({', '.join(REGISTERS)}), e.g. \"a plucked string, high pitch\"")
    raise DataError(f"prompt {prompt!r} names none of this model's classes: {', '.join(classes[:12])}"
                    if classes else "this model is unconditional: leave out the prompt")


# -- the data component --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioDataConfig:
    kind: Literal["audio"] = "audio"
    path: str = "builtin:spoken-digits"   # builtin:spoken-digits, builtin:spoken-words, builtin:sound-effects, or a folder
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64                      # mel bands = the picture's height
    frames: int = 64                      # STFT frames = its width (64 x 256 samples = 1.02 s at 16 kHz)
    voices: int = 60                      # espeak-ng voices made (spoken words)
    held_out_voices: int = 12             # of them, kept out of training (validation and voice cloning)
    takes: int = 3                        # times each voice says each word
    count: int = 3300                     # sound effects made (builtin:sound-effects)
    speaker_dim: int = 64                 # speaker embedding width; 0: no voice conditioning
    speaker_steps: int = 1500             # training steps of the speaker encoder
    voice_references: int = 1             # reference sets per training clip (three other clips of its voice),
                                          # one drawn each time the clip is used; 1: always the same three
    vocoder_steps: int = 0                # > 0: also train a neural vocoder (cached; ~4 min for 2000 here); 0: Griffin-Lim
    val_fraction: float = 0.1             # sound effects and folders
    seed: int = 0
    cache_dir: str = ""                   # "" = $GENLOOM_CACHE or ~/.cache/genloom

    def __post_init__(self) -> None:
        validate(self, "data")
        require(self.sample_rate >= 4000, "data.sample_rate", "must be at least 4000 Hz")
        require(self.n_fft >= 64 and self.hop_length >= 1, "data.n_fft", "n_fft >= 64 and hop_length >= 1")
        require(self.n_mels == self.frames, "data.frames", f"the spectrogram is a square picture: frames must "
                f"equal n_mels ({self.n_mels})")
        require(self.n_mels <= self.n_fft // 2, "data.n_mels", f"must be at most n_fft/2 = {self.n_fft // 2}")
        require(0 < self.held_out_voices < self.voices, "data.held_out_voices",
                f"must be between 1 and data.voices - 1 = {self.voices - 1}")
        require(0 < self.val_fraction < 1, "data.val_fraction", "must be between 0 and 1 (e.g. 0.1)")
        require(self.voice_references >= 1, "data.voice_references", "must be at least 1")
        require(self.vocoder_steps >= 0, "data.vocoder_steps", "must be >= 0 (0: no neural vocoder)")
        require(not self.path.startswith("builtin:") or self.path in BUILTIN_AUDIO, "data.path",
                f"unknown built-in sound {self.path!r}; available: {', '.join(BUILTIN_AUDIO)}")

    def mel(self) -> MelSpectrogram:
        return MelSpectrogram(self.sample_rate, self.n_fft, self.hop_length, self.n_mels, self.frames)

    @property
    def spoken(self) -> bool:
        return self.path in ("builtin:spoken-digits", "builtin:spoken-words")


class AudioData:
    """Clips as log-mel pictures (B, 1, n_mels, frames) in [-1, 1], with classes and (spoken words) the
    speaker embedding of other clips of the same voice."""

    item_name = "clip"
    items_per_example = 1

    def __init__(self, config: AudioDataConfig, progress: bool = True):
        self.config = config
        self.progress = progress
        self.classes: list[str] = []
        self.words: list[str] = []
        self.voices: list[dict] = []
        self.attributes: list[dict] | None = None
        self.waves = np.zeros((0, 0), dtype=np.float32)
        self.pictures = torch.empty(0)
        self.labels = torch.empty(0, dtype=torch.long)
        self.speakers = torch.empty(0, dtype=torch.long)    # voice of each clip (-1: none)
        self.word_ids = torch.empty(0, dtype=torch.long)
        self.voice_vectors: torch.Tensor | None = None      # (N, speaker_dim): embedding of other clips of the voice
        self._embeddings: torch.Tensor | None = None        # (N, speaker_dim): each clip's own embedding
        self._others: list[np.ndarray] = []                 # per clip: the clips of its voice saying other words
        self.speaker_encoder = None
        self.vocoder = None                                  # the neural vocoder (data.vocoder_steps > 0)
        self._splits: dict[str, torch.Tensor] = {}

    # preparation -------------------------------------------------------------------------------------
    def _cache_folder(self) -> Path:
        cfg = self.config
        keys = {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir", "speaker_steps", "speaker_dim",
                                                                    "val_fraction", "vocoder_steps",
                                                                    "voice_references")}
        if cfg.path == "builtin:spoken-words":
            keys["path"] = "builtin:spoken-digits"                   # the same clips
        if not cfg.spoken:
            keys = {k: keys[k] for k in ("path", "sample_rate", "n_fft", "hop_length", "n_mels", "frames", "count", "seed")}
        digest = hashlib.sha1(json.dumps({"version": DATA_VERSION, **keys}, sort_keys=True).encode()).hexdigest()[:12]
        root = Path(self.config.cache_dir).expanduser() if self.config.cache_dir else default_cache_dir()
        return root / "audio" / digest

    def prepare(self) -> None:
        if self._splits:
            return
        cfg = self.config
        mel = cfg.mel()
        if cfg.path.startswith("builtin:"):
            folder = self._cache_folder()
            if (folder / "waves.npy").is_file() and (folder / "meta.json").is_file():
                self.waves = np.load(folder / "waves.npy")
                meta = json.loads((folder / "meta.json").read_text())
            else:
                meta = self._make_builtin(mel.samples)
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / "waves.npy.tmp.npy", self.waves)
                (folder / "waves.npy.tmp.npy").replace(folder / "waves.npy")
                (folder / "meta.json").write_text(json.dumps(meta))
            self._use_meta(meta)
        else:
            self._read_folder(mel.sample_rate, mel.samples)
        self.pictures = torch.cat([mel(torch.from_numpy(self.waves[i:i + 256]))
                                   for i in range(0, len(self.waves), 256)])
        if cfg.spoken and cfg.speaker_dim:
            self._voice_vectors()
        if cfg.vocoder_steps:
            self._train_vocoder(mel)
        log.info("%s: %d clips (%d classes); %d for training", cfg.path, len(self.waves), len(self.classes),
                 len(self._splits["train"]))

    def _make_builtin(self, samples: int) -> dict:
        cfg = self.config
        if cfg.spoken:
            self.voices = espeak_voices(cfg.voices, cfg.seed)
            log.info("making %d spoken words in %d voices with espeak-ng (once; cached)",
                     cfg.voices * len(WORDS) * cfg.takes, cfg.voices)
            self.waves, words, speakers = spoken_words(self.voices, WORDS, cfg.takes, cfg.sample_rate, samples,
                                                       cfg.seed, self.progress)
            return {"voices": self.voices, "words": words.tolist(), "speakers": speakers.tolist()}
        self.waves, labels, params = sound_effects(cfg.count, cfg.sample_rate, samples, cfg.seed, self.progress)
        return {"labels": labels.tolist(), "params": params}

    def _use_meta(self, meta: dict) -> None:
        cfg = self.config
        if cfg.spoken:
            self.voices = meta["voices"]
            self.words = list(WORDS) if cfg.path == "builtin:spoken-words" else list(DIGIT_WORDS)
            self.word_ids = torch.tensor(meta["words"])
            self.speakers = torch.tensor(meta["speakers"])
            self.classes = list(self.words)
            self.labels = self.word_ids.clone()
            held = self.speakers >= cfg.voices - cfg.held_out_voices             # the last voices are held out
            usable = self.word_ids < len(self.words)
            ids = torch.arange(len(self.labels))
            self._splits = {"train": ids[usable & ~held], "val": ids[usable & held]}
        else:
            kinds, registers = list(SOUND_KINDS), list(REGISTERS)
            self.classes = [f"{k} {r}" for k in kinds for r in registers]
            self.labels = torch.tensor(meta["labels"])
            self.attributes = meta["params"]
            self.speakers = torch.full_like(self.labels, -1)
            order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(cfg.seed))
            n_val = max(1, int(len(self.labels) * cfg.val_fraction))
            self._splits = {"train": order[:-n_val], "val": order[-n_val:]}

    def _read_folder(self, sample_rate: int, samples: int) -> None:
        cfg = self.config
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path: {cfg.path} is not a folder (expected {', '.join(BUILTIN_AUDIO)} or a "
                            f"folder of {'/'.join(AUDIO_SUFFIXES)} files)")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if len(files) < 2:
            raise DataError(f"data.path: {root} has {len(files)} sound file(s) ({'/'.join(AUDIO_SUFFIXES)}); "
                            "training and validation need at least 2")
        parents = sorted({f.parent.relative_to(root).as_posix() for f in files})
        self.classes = parents if parents != ["."] else []
        waves, labels = [], []
        for f in files:
            wave = check_clip(read_audio(f, sample_rate), sample_rate, str(f))
            waves.append(_fit(wave, samples, 0))
            parent = f.parent.relative_to(root).as_posix()
            labels.append(self.classes.index(parent) if parent in self.classes else 0)
        self.waves = np.stack(waves)
        self.labels = torch.tensor(labels)
        self.speakers = torch.full_like(self.labels, -1)
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(cfg.seed))
        n_val = min(len(files) - 1, max(1, round(len(files) * cfg.val_fraction)))
        self._splits = {"train": order[:-n_val], "val": order[-n_val:]}

    def _voice_vectors(self) -> None:
        """Train (or load) the speaker encoder on the training voices, then give each clip the mean embedding
        of three other clips of its voice saying other words — what a reference clip gives at generation."""
        from .speaker import cached_speaker_encoder

        cfg = self.config
        train_voices = self.speakers < cfg.voices - cfg.held_out_voices
        self.speaker_encoder = cached_speaker_encoder(self._cache_folder(), self.pictures[train_voices],
                                                      self.speakers[train_voices], cfg.speaker_dim,
                                                      cfg.speaker_steps, cfg.seed, self.progress)
        with torch.no_grad():
            embeddings = torch.cat([self.speaker_encoder(self.pictures[i:i + 512])
                                    for i in range(0, len(self.pictures), 512)])
        rng = np.random.default_rng(cfg.seed + 7)
        by_voice: dict[int, np.ndarray] = {}
        for v in range(cfg.voices):
            by_voice[v] = np.flatnonzero(self.speakers.numpy() == v)
        words = self.word_ids.numpy()
        self._embeddings = embeddings
        self._others = [by_voice[int(self.speakers[i])][words[by_voice[int(self.speakers[i])]] != words[i]]
                        for i in range(len(embeddings))]
        vectors = torch.empty(len(embeddings), embeddings.shape[1])
        for i in range(len(embeddings)):
            chosen = rng.choice(self._others[i], size=3, replace=False)
            vectors[i] = torch.nn.functional.normalize(embeddings[chosen].mean(0), dim=0)
        self.voice_vectors = vectors

    def _train_vocoder(self, mel: MelSpectrogram) -> None:
        """Train (or load) the neural vocoder on the training clips (for spoken words: every word of the
        training voices; the held-out voices stay unheard). Cached beside built-in data; for a folder, under
        the digest of its sounds."""
        from .vocoder import cached_vocoder

        cfg = self.config
        if cfg.spoken:
            ids = np.flatnonzero(self.speakers.numpy() < cfg.voices - cfg.held_out_voices)
        else:
            ids = np.sort(self._splits["train"].numpy())
        waves = self.waves[ids]
        if cfg.path.startswith("builtin:"):
            folder = self._cache_folder()
        else:
            digest = hashlib.sha1(np.ascontiguousarray(waves).tobytes()).hexdigest()[:12]
            root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
            folder = root / "audio" / f"vocoder-{digest}"
        self.vocoder = cached_vocoder(folder, waves, mel, cfg.vocoder_steps, cfg.seed, self.progress)

    # the data interface ------------------------------------------------------------------------------
    def num_examples(self, split: str) -> int:
        self.prepare()
        return len(self._splits[split])

    def model_settings(self) -> dict:
        self.prepare()
        cfg = self.config
        factors = (len(SOUND_KINDS), len(REGISTERS)) if cfg.path == "builtin:sound-effects" else (0,)
        return {"image_size": cfg.n_mels, "channels": 1, "num_classes": len(self.classes),
                "label_factors": factors,
                "vector_dim": self.voice_vectors.shape[1] if self.voice_vectors is not None else 0}

    def save_assets(self, folder: Path) -> None:
        from ..core.io import save_tensors

        settings = self.model_settings()
        info = {"classes": self.classes, **settings, "source": self.config.path}
        if self.voices:
            info["voices"] = self.voices
            info["held_out_voices"] = self.config.held_out_voices
        (Path(folder) / "labels.json").write_text(json.dumps(info, indent=2))
        if self.speaker_encoder is not None:
            save_tensors(self.speaker_encoder.state_dict(), Path(folder) / "speaker_encoder.safetensors")
            (Path(folder) / "speaker_encoder.json").write_text(json.dumps(self.speaker_encoder.settings(), indent=2))
        if self.vocoder is not None:
            save_tensors(self.vocoder.state_dict(), Path(folder) / "vocoder.safetensors")
            (Path(folder) / "vocoder.json").write_text(json.dumps(self.vocoder.settings(), indent=2))

    def sample_indices(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """`n` training clips drawn uniformly with replacement; index i >= N (N clips) names clip i % N with its
        (i // N)-th reference set (data.voice_references), so a batch depends on its indices alone."""
        references = self.config.voice_references if self.voice_vectors is not None else 1
        return torch.randint(0, self.num_examples("train") * references, (n,), generator=generator)

    def val_indices(self, n: int) -> torch.Tensor:
        return torch.arange(n) % self.num_examples("val")

    def batch(self, indices: torch.Tensor, split: str = "train"):
        """Pictures (B, 1, n_mels, frames) in [-1, 1], classes (B,), and for voices the speaker vectors (B, D)."""
        self.prepare()
        count = len(self._splits[split])
        ids = self._splits[split][indices % count]
        if self.voice_vectors is not None:
            vectors = self.voice_vectors[ids].clone()
            for row, (clip, draw) in enumerate(zip(ids.tolist(), (indices // count).tolist())):
                if draw:                                     # another three clips of the voice
                    rng = np.random.default_rng([self.config.seed, clip, draw])
                    chosen = rng.choice(self._others[clip], size=3, replace=False)
                    vectors[row] = torch.nn.functional.normalize(self._embeddings[chosen].mean(0), dim=0)
            return self.pictures[ids], self.labels[ids], vectors
        return self.pictures[ids], self.labels[ids]

    def split_ids(self, split: str) -> torch.Tensor:
        self.prepare()
        return self._splits[split]


@register("data", "audio", AudioDataConfig)
def build_audio_data(config: AudioDataConfig, run=None) -> AudioData:
    return AudioData(config)
