"""The handle of an audio diffusion model: words or sounds from a prompt, in a voice given by a short clip.

`genloom.load(DIR)` returns an `AudioModel` for a checkpoint trained with `objective.kind = "audio_diffusion"`
(the spoken-digits and sound-effects recipes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.config import RunConfig
from ..core.errors import GenloomError
from ..handle import EvalRequest, Handle, score_with
from ..media.audio import check_clip, read_audio, write_wav
from .data import parse_audio_prompt
from .eval import AudioEvalResult
from .mel import MelSpectrogram
from .objective import generate_spectrograms

__all__ = ["AudioModel", "save_sound", "open_checkpoint", "score"]

VOCODERS = ("auto", "neural", "griffin-lim")
REFERENCE_SECONDS = (0.5, 10.0)     # sound in a voice reference clip: at least / at most (the rest is cut)


def save_sound(wave: torch.Tensor, picture: torch.Tensor, stem: Path, sample_rate: int) -> list[Path]:
    """One clip as `stem`.wav and its spectrogram `stem`.png (low frequencies at the bottom)."""
    from ..media.image import save_image_grid

    stem = Path(stem)
    written = [write_wav(stem.with_suffix(".wav"), wave, sample_rate), stem.with_suffix(".png")]
    save_image_grid(picture[None].flip(2), written[1], nrow=1, scale=4, padding=0)
    return written


class AudioModel(Handle):
    """A log-mel denoiser with its classes, the mel settings, and (for voices) its speaker encoder."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module):
        super().__init__(path, config, model)
        self.schedule = config.objective.noise_schedule()
        self.mel: MelSpectrogram = config.data.mel()
        labels = self.path / "labels.json"
        info = json.loads(labels.read_text()) if labels.is_file() else {}
        self.classes: list[str] = info.get("classes", [])
        self.voices: list[dict] = info.get("voices", [])
        self.speaker_encoder = None
        if getattr(model.config, "vector_dim", 0):
            from .speaker import load_speaker_encoder

            if not (self.path / "speaker_encoder.safetensors").is_file():
                raise GenloomError(f"{self.path} has a voice input but no speaker_encoder.safetensors beside it")
            self.speaker_encoder = load_speaker_encoder(self.path)
        self.vocoder = None                       # the neural vocoder, where the run trained one
        if (self.path / "vocoder.safetensors").is_file() and (self.path / "vocoder.json").is_file():
            from .vocoder import load_vocoder

            self.vocoder = load_vocoder(self.path)

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    def label(self, prompt: str) -> int:
        """The class of a prompt such as "seven" or "a plucked string, high pitch"."""
        return parse_audio_prompt(prompt, self.classes)

    def picture(self, wave: np.ndarray | torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Sound (S,) -> its log-mel picture (1, 1, n_mels, frames); `frames` None: as long as the sound."""
        wave = torch.as_tensor(np.asarray(wave), dtype=torch.float32)
        mel = self.mel
        if frames is None:
            frames = max(1, len(wave) // mel.hop_length)
        if frames != mel.frames:
            mel = MelSpectrogram(mel.sample_rate, mel.n_fft, mel.hop_length, mel.n_mels, frames)
        return mel(wave)

    def voice(self, reference: str | Path | np.ndarray) -> torch.Tensor:
        """The speaker vector (vector_dim,) of a reference clip of a voice: a file (any sample rate; it is
        resampled) or samples at this model's rate. 1-3 s of speech is best; under 0.5 s is refused."""
        if self.speaker_encoder is None:
            raise GenloomError(f"{self.path} has no voice input (train it on spoken words with a speaker encoder, "
                               "e.g. the spoken-digits recipe)")
        name = str(reference) if not isinstance(reference, np.ndarray) else "the reference clip"
        wave = read_audio(reference, self.sample_rate) if not isinstance(reference, np.ndarray) else reference
        wave = check_clip(np.asarray(wave, dtype=np.float32), self.sample_rate, name, REFERENCE_SECONDS[0])
        wave = wave[:int(REFERENCE_SECONDS[1] * self.sample_rate)]
        with torch.no_grad():
            return self.speaker_encoder(self.picture(wave))[0]

    def generate(self, prompts: str | Sequence[str], *, num_samples: int = 1, seed: int | None = None,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                 voice: str | Path | np.ndarray | torch.Tensor | None = None,
                 vocoder_iterations: int | None = None, voice_guidance: float | None = None,
                 vocoder: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(sounds (N, samples), log-mel pictures (N, 1, n_mels, frames)), `num_samples` per prompt (prompt-major;
        sample j uses seed + j). `voice`: a reference clip (file or samples) or a speaker vector to speak in;
        `voice_guidance` > 1 pushes harder towards it. `vocoder`: "auto" (the neural one where the run has it),
        "neural" or "griffin-lim"."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self.classes:
            labels = [self.label(p) for p in prompts for _ in range(num_samples)]
        else:
            labels = None
        count = len(prompts) * num_samples
        seed = self.draw_seed(seed)
        vectors = None
        if voice is not None:
            vector = voice if isinstance(voice, torch.Tensor) else self.voice(voice)
            vectors = vector.reshape(1, -1).expand(count, -1)
        objective = self.config.objective
        self._vocoder(vocoder)                                      # a wrong name fails before the sampling
        pictures = generate_spectrograms(self.model, self.schedule, labels, count, seed, vectors,
                                         sampler=sampler or objective.sampler, steps=steps or objective.sample_steps,
                                         guidance=objective.guidance if guidance is None else guidance,
                                         voice_guidance=objective.voice_guidance if voice_guidance is None
                                         else voice_guidance)
        waves = self.vocode(pictures, iterations=vocoder_iterations, vocoder=vocoder)
        return waves, pictures

    def _vocoder(self, name: str):
        """The neural vocoder to use, or None for Griffin-Lim."""
        if name not in VOCODERS:
            raise GenloomError(f"vocoder {name!r}: expected one of {', '.join(VOCODERS)}")
        if name == "neural" and self.vocoder is None:
            raise GenloomError(f"{self.path} has no neural vocoder (train with data.vocoder_steps > 0, e.g. "
                               "data.vocoder_steps=2000); use Griffin-Lim")
        return self.vocoder if name in ("auto", "neural") else None

    def vocode(self, pictures: torch.Tensor, *, iterations: int | None = None, vocoder: str = "auto") -> torch.Tensor:
        """Log-mel pictures -> sound (by the neural vocoder where the run has one and `vocoder` is "auto" or
        "neural", else by Griffin-Lim of `iterations`), each peak-normalised to 0.9."""
        network = self._vocoder(vocoder)
        iterations = iterations or self.config.objective.vocoder_iterations
        with torch.no_grad():
            waves = torch.cat([network(pictures[i:i + 64]) if network is not None else
                               self.mel.invert(pictures[i:i + 64], iterations) for i in range(0, len(pictures), 64)])
        return waves * (0.9 / waves.abs().amax(1, keepdim=True).clamp(min=1e-6))

    def save(self, waves: torch.Tensor, pictures: torch.Tensor, folder: str | Path, *, prefix: str = "sound") -> list[Path]:
        paths = []
        for i, (wave, picture) in enumerate(zip(waves, pictures)):
            paths += save_sound(wave, picture, Path(folder) / f"{prefix}_{i:03d}", self.sample_rate)
        return paths

    def evaluate(self, *, num_samples: int = 200, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, voice_trials: int = 120, progress: bool = True, voice_guidance: float | None = None,
                 vocoder: str = "auto") -> AudioEvalResult:
        """Recognition and FAD-genloom of `num_samples` clips (the classes in turn; for spoken words in the
        held-out voices, from reference clips of other words), and voice cloning over `voice_trials` trials.
        Every clip is scored as sound: through the vocoder (`vocoder` as for `generate`) and back."""
        from ..metrics import frechet_distance
        from .data import AudioData
        from .eval import audio_classifier, vocoded
        from .eval import voice_trials as trials

        data = AudioData(self.config.data, progress=progress)
        data.prepare()
        if not self.classes:
            raise GenloomError("the audio evaluation scores a class-conditional model (words or sounds)")
        classifier = audio_classifier(data, progress=progress)
        objective = self.config.objective
        options = dict(sampler=objective.sampler, steps=steps or objective.sample_steps,
                       guidance=objective.guidance if guidance is None else guidance,
                       voice_guidance=objective.voice_guidance if voice_guidance is None else voice_guidance)
        network = self._vocoder(vocoder)

        def heard(pictures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return vocoded(pictures, self.mel, objective.vocoder_iterations, vocoder=network)

        val = data.split_ids("val")
        train = data.split_ids("train")
        real, real_labels = data.pictures[val], data.labels[val]
        with torch.no_grad():
            _, real_vocoded = heard(real)
            real_accuracy = float((classifier(real).argmax(-1) == real_labels).float().mean())
            vocoded_accuracy = float((classifier(real_vocoded).argmax(-1) == real_labels).float().mean())
        classes = torch.arange(num_samples) % len(self.classes)
        vectors, held, references, centroids = None, None, None, None
        if self.speaker_encoder is not None and data.voices:
            held, references, centroids = self._held_out_voices(data)
            voice_of = torch.arange(num_samples) % len(held)
            vectors = references[voice_of]
        pictures = generate_spectrograms(self.model, self.schedule, classes.tolist(), num_samples, seed, vectors,
                                         **options)
        with torch.no_grad():
            _, made_pictures = heard(pictures)
            predicted = classifier(made_pictures).argmax(-1)
            fake_features = classifier.features(made_pictures)
            real_features = classifier.features(real_vocoded)
            other = data.pictures[train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
                                        [:len(real)]]]
            other_features = classifier.features(heard(other)[1])
        result = AudioEvalResult(
            samples=num_samples, accuracy=float((predicted == classes).float().mean()),
            fad_genloom=frechet_distance(real_features, fake_features),
            real_fad_genloom=frechet_distance(real_features, other_features),
            classifier_accuracy=real_accuracy, vocoded_accuracy=vocoded_accuracy,
            vocoder="the neural vocoder" if network is not None else "Griffin-Lim",
            per_class={self.classes[c]: float((predicted[classes == c] == c).float().mean())
                       for c in range(len(self.classes)) if (classes == c).any()})
        if held is not None and voice_trials:
            n = voice_trials
            voice_of = torch.arange(n) % len(held)
            words = torch.arange(n) // len(held) % len(self.classes)
            made = generate_spectrograms(self.model, self.schedule, words.tolist(), n, seed + 1, references[voice_of],
                                         **options)
            silent = generate_spectrograms(self.model, self.schedule, words.tolist(), n, seed + 1, None, **options)
            with torch.no_grad():
                made_heard = heard(made)[1]
                silent_heard = heard(silent)[1]
            ok, cosines = trials(self.speaker_encoder, made_heard, voice_of, centroids)
            ok_silent, _ = trials(self.speaker_encoder, silent_heard, voice_of, centroids)
            # real clips of the held-out voices saying the class words, against the same centroids
            real_voice = torch.tensor([held.index(int(s)) for s in data.speakers[val]])
            ok_real, real_cosines = _leave_one_out(self.speaker_encoder, real, real_voice, len(held))
            own = torch.nn.functional.one_hot(voice_of, len(held)).bool()
            real_own = torch.nn.functional.one_hot(real_voice, len(held)).bool()
            result.voice_trials = n
            result.voice_success = float(ok.float().mean())
            result.voice_success_real = float(ok_real.float().mean())
            result.voice_success_no_voice = float(ok_silent.float().mean())
            result.same_voice_cosine = float(cosines[own].mean())
            result.other_voice_cosine = float(cosines[~own].mean())
            result.real_same_voice_cosine = float(real_cosines[real_own].mean())
            result.real_other_voice_cosine = float(real_cosines[~real_own].mean())
        return result

    def _held_out_voices(self, data) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The held-out voices, each one's reference vector (from a 1-3 s clip of three words that are not
        among the model's classes, said in that voice) and centroid (the encoder's mean over its clips of the
        class words, the clips the trials are scored against)."""
        from .data import WORDS

        cfg = data.config
        held = list(range(cfg.voices - cfg.held_out_voices, cfg.voices))
        spare = [w for w in range(len(WORDS)) if WORDS[w] not in self.classes] or list(range(len(WORDS)))
        rng = np.random.default_rng(cfg.seed + 11)
        references, centroids = [], []
        for v in held:
            clips = np.flatnonzero((data.speakers.numpy() == v) & np.isin(data.word_ids.numpy(), spare))
            chosen = rng.choice(clips, size=3, replace=False)
            wave = np.concatenate([_trimmed(data.waves[i], self.sample_rate) for i in chosen])
            references.append(self.voice(wave))
            scored = torch.from_numpy(np.flatnonzero((data.speakers.numpy() == v)
                                                     & (data.word_ids.numpy() < len(self.classes))))
            with torch.no_grad():
                centroids.append(torch.nn.functional.normalize(self.speaker_encoder(data.pictures[scored]).mean(0),
                                                               dim=0))
        return held, torch.stack(references), torch.stack(centroids)


@torch.no_grad()
def _leave_one_out(encoder, pictures: torch.Tensor, voices: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The voice trials of real clips, each against centroids that leave the clip itself out."""
    embeddings = torch.cat([encoder(pictures[i:i + 256]) for i in range(0, len(pictures), 256)])
    sums = torch.zeros(count, embeddings.shape[1]).index_add_(0, voices, embeddings)
    rows = torch.arange(len(embeddings))
    centroids = sums[None].repeat(len(embeddings), 1, 1)                     # (N, V, D)
    centroids[rows, voices] -= embeddings
    cosines = torch.einsum("nd,nvd->nv", embeddings, torch.nn.functional.normalize(centroids, dim=-1))
    return cosines.argmax(1) == voices, cosines


def _trimmed(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """A word without the silence around it, and a 0.1 s pause after it."""
    from .data import trim_silence

    return np.concatenate([trim_silence(wave, sample_rate), np.zeros(sample_rate // 10, dtype=np.float32)])


def open_checkpoint(checkpoint) -> AudioModel:
    return AudioModel(checkpoint.path, checkpoint.config, checkpoint.model)


def score(handle: AudioModel, request: EvalRequest) -> AudioEvalResult:
    """`genloom eval` of an audio model: recognition, FAD-genloom and (voices) speaker similarity."""
    return score_with(handle, request, "an audio model", {"num_samples": 200, "steps": None, "guidance": None,
                                                         "seed": 0})
