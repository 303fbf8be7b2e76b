"""Audio and voices: spoken words in many voices and synthesised sound effects as log-mel pictures, a speaker
encoder for speech in a new voice, Griffin-Lim and a small neural vocoder. See README.md in this folder."""

from ..core.registry import Modality, register_modality

MODALITY = register_modality(Modality(
    name="audio",
    title="audio and voices",
    evaluation=('the share of generated words or sounds a classifier recognises, FAD-genloom, and for voices the speaker similarity of speech made in held-out voices from reference clips (--num-samples clips, 200 by default).'),
    summary="spoken words and sound effects from a prompt, speech in the voice of a reference clip",
    data_kinds=("audio",),
    components=("genloom.audio.data", "genloom.audio.objective"),
    open="genloom.audio.handle:open_checkpoint",
    evaluate="genloom.audio.handle:score",
    assets=("labels.json", "speaker_encoder.safetensors", "speaker_encoder.json", "vocoder.safetensors",
            "vocoder.json"),
    cli="genloom.audio.cli",
    handles=("genloom.audio.handle:AudioModel",),
))
