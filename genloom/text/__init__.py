"""Text: plain text, chat conversations and preference pairs; language models that write, chat and are
scored on held-out text. See README.md in this folder."""

from ..core.registry import Modality, register_modality
from ..lm.chat_templates import HF_TOKENIZER_FILES

MODALITY = register_modality(Modality(
    name="text",
    title="text",
    evaluation=('validation loss (nats per token), bits per character and perplexity on the validation split (of the training data, or of --data); --task safety: refusal rate on held-out harmful requests of builtin:safety and answer rate on the others; --task hallucination, understanding, bias, consistency, context: the limits of a language model (docs/limits.md), each a JSON report and a plot.'),
    summary="language models of text: pretraining, chat and preference tuning, sampling, scoring",
    data_kinds=("text", "chat", "preference"),
    components=("genloom.text.data", "genloom.text.chat"),
    open="genloom.text.handle:open_checkpoint",
    evaluate="genloom.text.handle:score",
    assets=("tokenizer.json", "chat_template.json", *HF_TOKENIZER_FILES),
    finetune_assets="genloom.text.handle:finetune_assets",
    cli="genloom.text.cli",
    serve="text",
    adapters=True,
    handles=("genloom.text.handle:TextModel",),
))
