"""Code: source files, fill-in-the-middle training, completions that end where a block ends, and pass@k of
generated code run in a sandbox. See README.md in this folder."""

from ..core.registry import Modality, register_modality

MODALITY = register_modality(Modality(
    name="code",
    title="code",
    evaluation=('the same on the held-out files, with bits per byte; --task code: syntax validity of sampled functions, infilling exact match on held-out lines and expressions, pass@1/pass@10 on --tasks (10 samples per task by default), the generated code run in a sandbox.'),
    summary="language models of source code: completion, infilling, syntax and pass@k in a sandbox",
    data_kinds=("code",),
    components=("genloom.code.data",),
    open="genloom.code.handle:open_checkpoint",
    evaluate="genloom.code.handle:score",
    assets=("tokenizer.json", "chat_template.json"),
    finetune_assets="genloom.text.handle:finetune_assets",
    cli="genloom.code.cli",
    serve="text",
    adapters=True,
    handles=("genloom.code.handle:CodeModel",),
))
