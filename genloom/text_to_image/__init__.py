"""Text-to-image: captioned scenes and digits, a caption encoder, prompts with guidance, negative prompts,
image-to-image, inpainting and a personalised concept; GenEval-style scores. See README.md in this folder."""

from ..core.registry import Modality, register_modality

MODALITY = register_modality(Modality(
    name="text_to_image",
    title="text-to-image",
    evaluation=("GenEval-style shares of images whose every prompted attribute is right, per prompt set (single objects, two objects, held-out combinations, paraphrases; --num-samples prompts each, 200 by default; several --guidances to compare); captioned digits are scored like the digits models; --task concept: how often a personalisation adapter's new word shows its concept (100 prompts by default), and single-object scores with and without the adapter."),
    summary="images from a written prompt: guidance, negative prompts, image-to-image, inpainting, new concepts",
    data_kinds=("captioned_images",),
    components=("genloom.text_to_image.data",),
    open="genloom.text_to_image.handle:open_checkpoint",
    evaluate="genloom.text_to_image.handle:score",
    assets=("caption_tokenizer.json", "labels.json", "autoencoder.json", "autoencoder.safetensors"),
    finetune_assets="genloom.text_to_image.data:finetune_assets",
    serve="images",
    adapters=True,
    handles=("genloom.text_to_image.handle:TextToImageModel",),
))
