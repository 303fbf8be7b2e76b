"""Text-to-image: captioned scenes and digits, a caption encoder, prompts with guidance, negative prompts,
image-to-image, inpainting and a personalised concept; GenEval-style scores. See README.md in this folder."""

from ..core.registry import Modality, register_modality

MODALITY = register_modality(Modality(
    name="text_to_image",
    title="text-to-image",
    summary="images from a written prompt: guidance, negative prompts, image-to-image, inpainting, new concepts",
    data_kinds=("captioned_images",),
    components=("genloom.text_to_image.data",),
    open="genloom.text_to_image.handle:open_checkpoint",
    evaluate="genloom.text_to_image.handle:score",
    assets=("caption_tokenizer.json", "labels.json"),
    finetune_assets="genloom.text_to_image.data:finetune_assets",
    serve="images",
    adapters=True,
    handles=("genloom.text_to_image.handle:TextToImageModel",),
))
