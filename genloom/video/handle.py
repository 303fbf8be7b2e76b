"""The handle of a video diffusion model: clips from a prompt, footage extended, clips scored and saved.

`genloom.load(DIR)` returns a `VideoModel` for a checkpoint trained with `objective.kind = "video_diffusion"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..core.config import RunConfig
from ..core.errors import GenloomError
from ..handle import EvalRequest, Handle, score_with
from ..images.data import load_labels
from ..media.video import read_clip, save_clip
from .data import VideoData, parse_video_prompt
from .eval import VideoEvalResult, digit_in_frames, motion_directions, score_clips
from .objective import generate_videos

__all__ = ["VideoModel", "open_checkpoint", "score"]




class VideoModel(Handle):
    """A video denoiser with its noise schedule and class names."""

    def __init__(self, path: Path, config: RunConfig, model: torch.nn.Module, classes: list[str]):
        super().__init__(path, config, model)
        self.classes = classes
        self.schedule = config.objective.noise_schedule()

    @property
    def frames(self) -> int:
        return self.model.config.frames

    def label(self, prompt: str) -> int:
        """The class of a prompt such as 'the digit 3 moving right'."""
        return parse_video_prompt(prompt, self.classes)

    def load_clip(self, path: str | Path) -> torch.Tensor:
        """A GIF or folder of frames as one clip (C, T, H, W) in [-1, 1]: up to this model's number of frames,
        resized to its frame size."""
        cfg = self.model.config
        frames = read_clip(path, cfg.frames, cfg.image_size, cfg.channels, at_most=True)
        return torch.from_numpy(frames).float().permute(3, 0, 1, 2) / 127.5 - 1

    def _given(self, video: str | Path | torch.Tensor, option: str) -> torch.Tensor:
        clip = video if isinstance(video, torch.Tensor) else self.load_clip(video)
        cfg = self.model.config
        if tuple(clip.shape[-2:]) != (cfg.image_size, cfg.image_size) or clip.shape[0] != cfg.channels:
            raise GenloomError(f"{option}: frames of {tuple(clip.shape[-2:])} pixels with {clip.shape[0]} "
                               f"channel(s); this model makes {cfg.image_size}x{cfg.image_size} with {cfg.channels}")
        return clip

    def generate(self, prompts: str | Sequence[str], *, num_samples: int = 1, seed: int | None = None,
                 steps: int | None = None, sampler: str | None = None, guidance: float | None = None,
                 frames: int | None = None, init_video: str | Path | torch.Tensor | None = None,
                 context_frames: int = 0, end_video: str | Path | torch.Tensor | None = None,
                 end_frames: int = 1) -> torch.Tensor:
        """Clips (N, C, frames, H, W) in [-1, 1], `num_samples` per prompt (prompt-major; sample j uses seed + j).
        With `init_video` (a file, a folder of frames, or a (C, T, H, W) tensor) its first `context_frames`
        frames are kept and the rest are made to follow them. With `end_video` (a picture, clip or tensor) its
        last `end_frames` frames end the clip and the frames between are made. More `frames` than the model
        makes at once are made in windows, each continuing the second half of the one before."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        labels = [self.label(p) for p in prompts for _ in range(num_samples)] if self.classes else None
        count = len(prompts) * num_samples
        seed = self.draw_seed(seed)
        T = self.frames
        frames = frames or T
        objective = self.config.objective
        options = dict(sampler=sampler or objective.sampler, steps=steps or objective.sample_steps,
                       guidance=objective.guidance if guidance is None else guidance)
        cfg = self.model.config
        context = torch.zeros(count, cfg.channels, T, cfg.image_size, cfg.image_size)
        if init_video is not None:
            clip = self._given(init_video, "--init-video")
            if not 1 <= context_frames < T:
                raise GenloomError(f"--context-frames {context_frames}: give 1 to {T - 1} frames of the clip to "
                                   "continue")
            if clip.shape[1] < context_frames:
                raise GenloomError(f"--init-video has {clip.shape[1]} frame(s), fewer than --context-frames "
                                   f"{context_frames}")
            context[:, :, :context_frames] = clip[:, :context_frames]
        elif context_frames:
            raise GenloomError("--context-frames needs --init-video (the clip to continue)")
        last = 0
        if end_video is not None:
            end = self._given(end_video, "--end-video")
            last = end_frames
            if not 1 <= last <= min(end.shape[1], T - 1 - context_frames):
                raise GenloomError(f"--end-frames {end_frames}: give 1 to {min(end.shape[1], T - 1 - context_frames)}"
                                   f" frame(s) of --end-video ({end.shape[1]} frame(s)); at least one frame of the "
                                   f"{T} must be left to make")
            if frames != T:
                raise GenloomError(f"--end-video makes the frames between in one window of {T} frames; leave out "
                                   f"--frames (asked for {frames})")
            context[:, :, T - last:] = end[:, end.shape[1] - last:]
        clips = generate_videos(self.model, self.schedule, labels, count, seed, context=context,
                                context_frames=context_frames if init_video is not None else 0,
                                last_frames=last, **options)
        made = clips
        while made.shape[2] < frames:                                          # extend in windows
            keep = T // 2
            context = torch.zeros_like(clips)
            context[:, :, :keep] = made[:, :, -keep:]
            more = generate_videos(self.model, self.schedule, labels, count, seed + 1000 + made.shape[2],
                                   context=context, context_frames=keep, **options)
            made = torch.cat([made, more[:, :, keep:]], dim=2)
        return made[:, :, :frames]

    def evaluate(self, *, num_samples: int = 200, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, context_frames: int = 2, progress: bool = True) -> VideoEvalResult:
        """Identity, motion and FVD-digits of `num_samples` clips (the classes in turn), and the continuation
        of as many held-out clips from their first `context_frames` frames (moving-digits models)."""
        if self.config.data.path != "builtin:moving-digits":
            raise GenloomError("the video evaluation scores moving digits; this model was trained on "
                               f"{self.config.data.path}")
        data = VideoData(self.config.data)
        data.prepare()
        classes = torch.arange(num_samples) % len(self.classes)
        objective = self.config.objective
        options = dict(sampler=objective.sampler, steps=steps or objective.sample_steps,
                       guidance=objective.guidance if guidance is None else guidance)
        clips = generate_videos(self.model, self.schedule, classes.tolist(), num_samples, seed, **options)
        n_val = data.num_examples("val")
        real, real_classes = data.batch(torch.arange(min(num_samples, n_val)), "val")
        other, _ = data.batch(torch.arange(min(num_samples, data.num_examples("train"))), "train")
        result = score_clips(clips, classes, real, other, progress)
        if context_frames:
            made = generate_videos(self.model, self.schedule, real_classes.tolist(), len(real), seed + 1,
                                   context=real, context_frames=context_frames, **options)
            result.continuation_identity = float(digit_in_frames(made, real_classes // 4, context_frames)
                                                 .all(1).float().mean())
            result.continuation_mse = float((made[:, :, context_frames:] - real[:, :, context_frames:]).pow(2).mean())
            directions = motion_directions(made)
            result.continuation_direction = sum(d == n.split()[1] for d, n in zip(
                directions, [self.classes[int(c)] for c in real_classes])) / len(real)
        if getattr(objective, "between_rate", 0) > 0:
            made = generate_videos(self.model, self.schedule, real_classes.tolist(), len(real), seed + 2,
                                   context=real, context_frames=2, last_frames=1, **options)
            T = self.frames
            result.between_identity = float(digit_in_frames(made[:, :, :T - 1], real_classes // 4, 2)
                                            .all(1).float().mean())
            result.between_mse = float((made[:, :, 2:T - 1] - real[:, :, 2:T - 1]).pow(2).mean())
        return result

    def save(self, clips: torch.Tensor, folder: str | Path, *, prefix: str = "clip", scale: int = 4) -> list[Path]:
        paths = []
        for i, clip in enumerate(clips):
            paths += save_clip(clip, Path(folder) / f"{prefix}_{i:03d}", scale)
        return paths


def open_checkpoint(checkpoint) -> VideoModel:
    return VideoModel(checkpoint.path, checkpoint.config, checkpoint.model, load_labels(checkpoint.path))


def score(handle: VideoModel, request: EvalRequest) -> VideoEvalResult:
    """`genloom eval` of a video model: the digit in every frame, motion, FVD-digits, continuation, frames between."""
    return score_with(handle, request, "a video model", {"num_samples": 200, "steps": None, "guidance": None,
                                                        "seed": 0})
