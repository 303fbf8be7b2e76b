"""Video: moving digits and glyphs, a space-time diffusion transformer, clips from a prompt, footage extended
and frames made between two given ones. See README.md in this folder."""

from ..core.registry import Modality, register_modality

MODALITY = register_modality(Modality(
    name="video",
    title="video",
    evaluation=('the requested digit in every frame, motion direction, FVD-digits, continuation of held-out clips and the frames between two given ones (moving digits; --num-samples clips, 200 by default).'),
    summary="short clips from a prompt, continued footage, frames between two given ones",
    data_kinds=("video",),
    components=("genloom.video.data", "genloom.video.model", "genloom.video.objective"),
    open="genloom.video.handle:open_checkpoint",
    evaluate="genloom.video.handle:score",
    assets=("labels.json",),
    cli="genloom.video.cli",
    handles=("genloom.video.handle:VideoModel",),
))
