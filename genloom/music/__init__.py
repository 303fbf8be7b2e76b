"""Music: chorales and folk songs as tokens; compose, continue and harmonise, written as MIDI, MusicXML, WAV
and piano rolls. See README.md in this folder."""

from ..core.registry import Modality, register_modality

MODALITY = register_modality(Modality(
    name="music",
    title="music",
    evaluation=('held-out NLL per note and per sixteenth frame, statistics of composed pieces (--num-samples, 20 by default) beside the held-out ones (in key, voice ranges, crossings, parallel fifths/octaves, pitch-class distance), and the in-key share of harmonised held-out sopranos.'),
    summary="symbolic music: compose, continue an opening, harmonise a melody",
    data_kinds=("music",),
    components=("genloom.music.data",),
    open="genloom.music.handle:open_checkpoint",
    evaluate="genloom.music.handle:score",
    assets=("tokenizer.json",),
    cli="genloom.music.cli",
    handles=("genloom.music.handle:MusicModel",),
))
