"""Images: class-conditional (or unconditional) diffusion models and GANs, their samples and FID-style scores.
See README.md in this folder."""

from ..core.registry import Modality, register_modality

MODALITY = register_modality(Modality(
    name="images",
    title="images",
    evaluation=('FID and KID on features of a classifier trained on the data (named e.g. FID-digits), precision/recall, and how often the requested class is recognised (--num-samples images, 1000 by default); the standard FID with --inception.'),
    summary="images of a class by diffusion or a GAN: samples, latent walks, FID-style scores",
    data_kinds=("images",),
    components=("genloom.images.data",),
    open="genloom.images.handle:open_checkpoint",
    evaluate="genloom.images.handle:score",
    assets=("labels.json", "autoencoder.json", "autoencoder.safetensors"),
    cli="genloom.images.cli",
    serve="images",
    adapters=True,
    handles=("genloom.images.handle:ImageModel", "genloom.images.handle:GANModel",
             "genloom.images.handle:AutoencoderModel"),
))
