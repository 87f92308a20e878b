"""A diffusers UNet on its discrete VP schedule as the project's denoiser, against diffusers' own schedulers.

Tiny random UNets (two levels of 8 and 16 channels, as diffusers' own tests size them) built here; nothing is
downloaded (HF_HUB_OFFLINE). The tolerances are float32's: the wrapper computes the same arithmetic in another
order (2e-7 of the largest value measured at the timesteps below), the 5-step Heun sample runs in float64 between
the network calls where diffusers stays in float32 (2e-7 of the largest value measured)."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch

from disback_pipeline.diffusion.checkpoint import CheckpointError
from disback_pipeline.diffusion.diffusers_teacher import (
    Guided,
    VPDenoiser,
    encode_prompts,
    guided,
    load_diffusers_teacher,
    null_condition,
)
from disback_pipeline.diffusion.sampling import heun_sampler
from disback_pipeline.tiny_t2i import SD_BETAS, save_clip, save_folder, save_latent_t2i, tiny_unet, tiny_vae

from .test_distill_pipeline import _tiny_digits

REL = 1e-5  # of the largest magnitude compared


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= REL * float(b.abs().max())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("conditional", [False, True])
@torch.no_grad()
def test_the_denoised_image_is_the_schedulers_predicted_original(prediction, conditional):
    unet = tiny_unet(conditional)
    scheduler = diffusers.DDPMScheduler(**SD_BETAS, prediction_type=prediction, clip_sample=False)
    denoiser = VPDenoiser(unet, scheduler.alphas_cumprod, prediction)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 3, 8) if conditional else None
    kwargs = {"encoder_hidden_states": text} if conditional else {}
    for t in (0, 10, 500, 999):
        a = scheduler.alphas_cumprod[t]
        x_t = scheduler.add_noise(x0, torch.randn_like(x0), torch.tensor([t]))
        expected = scheduler.step(unet(x_t, t, **kwargs).sample, t, x_t).pred_original_sample
        sigma = torch.full((2,), float(((1 - a) / a) ** 0.5))
        assert denoiser.sigma_to_t(sigma).tolist() == pytest.approx([t, t], abs=1e-3)
        got = denoiser(x_t / a ** 0.5, sigma, text)  # the same noisy image in the variance-exploding form
        assert close(got, expected), (t, float((got - expected).abs().max()))
    # a sigma between two table entries gets a timestep between theirs
    mid = denoiser.sigma_to_t(torch.tensor([float((denoiser.log_sigmas[400].exp() * denoiser.log_sigmas[401].exp())
                                                  ** 0.5)]))
    assert 400 < float(mid[0]) < 401


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@torch.no_grad()
def test_our_heun_sampler_equals_diffusers_heun_scheduler(prediction):
    unet = tiny_unet()
    scheduler = diffusers.HeunDiscreteScheduler(**SD_BETAS, prediction_type=prediction, use_karras_sigmas=True)
    scheduler.set_timesteps(5)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    x = noise * scheduler.sigmas[0]
    for t in scheduler.timesteps:  # diffusers' sampling loop, as its pipelines run it
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    denoiser = VPDenoiser(unet, scheduler.alphas_cumprod, prediction)
    ours = heun_sampler(denoiser, noise, nfe=9, sigma_min=float(scheduler.sigmas[-2]),
                        sigma_max=float(scheduler.sigmas[0]), rho=7.0)
    assert close(ours, x), float((ours - x).abs().max())
    wrong = heun_sampler(VPDenoiser(unet, scheduler.alphas_cumprod, "v_prediction" if prediction == "epsilon"
                                    else "epsilon"), noise, nfe=9, sigma_min=float(scheduler.sigmas[-2]),
                         sigma_max=float(scheduler.sigmas[0]))
    assert not close(wrong, x)  # the comparison tells the two parametrisations apart


@torch.no_grad()
def test_a_folder_loads_offline_into_the_same_denoiser(tmp_path):
    unet = tiny_unet(conditional=True)
    scheduler = diffusers.EulerDiscreteScheduler(**SD_BETAS, prediction_type="v_prediction")
    save_folder(tmp_path / "model", unet, scheduler)
    assert (tmp_path / "model/unet/diffusion_pytorch_model.safetensors").is_file()
    loaded = load_diffusers_teacher(tmp_path / "model")
    assert loaded.prediction_type == "v_prediction"
    assert torch.equal(loaded.log_sigmas, VPDenoiser(unet, scheduler.alphas_cumprod).log_sigmas)
    x, sigma, text = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 3.0]), torch.randn(2, 3, 8)
    null = encode_prompts(tmp_path / "model", [""])
    assert null.shape == (1, 16, 8) and loaded.null_condition.shape == (1, 16, 8)
    built = VPDenoiser(unet, scheduler.alphas_cumprod, "v_prediction", null_condition=null)
    assert torch.equal(loaded(x, sigma, text), built(x, sigma, text))
    assert torch.equal(loaded(x, sigma), built(x, sigma, null.expand(2, -1, -1)))  # no prompt: the empty one
    assert loaded.sigma_min == pytest.approx(float(((1 - scheduler.alphas_cumprod[0]) / scheduler.alphas_cumprod[0])
                                                   ** 0.5), rel=1e-6)


@torch.no_grad()
def test_guidance_is_uncond_plus_scale_times_the_difference(tmp_path):
    save_folder(tmp_path / "model", tiny_unet(conditional=True), diffusers.DDPMScheduler(**SD_BETAS))
    teacher = load_diffusers_teacher(tmp_path / "model")
    text = encode_prompts(tmp_path / "model", ["a photo of a cat", "seven"])
    assert not torch.equal(text[0], text[1])  # the prompts reach the embedding
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 2.0])
    cond, uncond = teacher(x, sigma, text), teacher(x, sigma, teacher.null_condition.expand(2, -1, -1))
    assert not torch.allclose(cond, uncond)
    by_hand = uncond + 7.5 * (cond - uncond)
    got = Guided(teacher, 7.5)(x, sigma, text)
    assert close(got, by_hand), float((got - by_hand).abs().max())  # one batch of both branches, same numbers
    assert close(Guided(teacher, 1.0)(x, sigma, text), cond) and guided(teacher, 1.0) is teacher
    assert torch.equal(Guided(teacher, 7.5)(x, sigma), teacher(x, sigma))  # no prompt: nothing to guide
    # stage 2 guides its target, whichever it is, and nothing else
    from types import SimpleNamespace

    from disback_pipeline.diffusion.schedule import TEACHER
    from disback_pipeline.diffusion.stage2_run import target_net

    nets = SimpleNamespace(teacher=teacher)
    target = target_net(nets, None, TEACHER, 7.5)
    assert isinstance(target, Guided) and target.net is teacher and target.scale == 7.5
    assert target_net(nets, None, TEACHER) is teacher


def test_prompts_condition_the_generated_samples(tmp_path):
    from disback_pipeline.diffusion.data import DataSourceError, make_data_source

    save_folder(tmp_path / "model", tiny_unet(conditional=True), diffusers.DDPMScheduler(**SD_BETAS))
    (tmp_path / "prompts.txt").write_text("a photo of a seven\n\nzero\nthree\n")
    cfg = {"source": "digits", "prompts": str(tmp_path / "prompts.txt"), "text_encoder": str(tmp_path / "model")}
    source = make_data_source(cfg)
    assert source.prompts == ("a photo of a seven", "zero", "three") and source.label_dim == 0
    first = source.random_labels(6, torch.Generator().manual_seed(0))
    assert first.shape == (6, 16, 8)
    assert torch.equal(first, source.random_labels(6, torch.Generator().manual_seed(0)))  # the seeded stream
    rows = {i for e in first for i in range(3) if torch.equal(e, source.prompt_embeddings[i])}
    assert len(rows) > 1  # drawn from the prompts, not one of them
    x, labels = source.sample(4, torch.Generator().manual_seed(0))
    assert labels is None  # real images carry no caption
    plain = make_data_source({"source": "digits"})
    assert source.content_sha256() != plain.content_sha256()  # a state of other prompts is not resumed onto
    assert plain.content_sha256() == make_data_source({"source": "digits"}).content_sha256()
    import pandas as pd

    pd.DataFrame({"prompt": ["zero", "three"]}).to_csv(tmp_path / "prompts.csv", index=False)
    assert make_data_source({**cfg, "prompts": str(tmp_path / "prompts.csv")}).prompts == ("zero", "three")
    with pytest.raises(DataSourceError, match="no `prompt` column"):
        pd.DataFrame({"text": ["zero"]}).to_csv(tmp_path / "bad.csv", index=False)
        make_data_source({**cfg, "prompts": str(tmp_path / "bad.csv")})
    with pytest.raises(DataSourceError, match="does not exist"):
        make_data_source({**cfg, "prompts": str(tmp_path / "absent.txt")})


def test_a_folder_that_is_not_a_teacher_is_refused_naming_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder.*nothing is downloaded"):
        load_diffusers_teacher(tmp_path / "absent")
    save_folder(tmp_path / "model", tiny_unet(), diffusers.DDPMScheduler(**SD_BETAS))
    (tmp_path / "model/scheduler/scheduler_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"scheduler/scheduler_config.json missing"):
        load_diffusers_teacher(tmp_path / "model")
    diffusers.FlowMatchEulerDiscreteScheduler().save_pretrained(tmp_path / "model/scheduler")
    with pytest.raises(CheckpointError, match="FlowMatchEulerDiscreteScheduler.*flow-matching"):
        load_diffusers_teacher(tmp_path / "model")
    (tmp_path / "model/unet/config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="a AutoencoderKL, but the teacher must be one of"):
        load_diffusers_teacher(tmp_path / "model")


@pytest.mark.slow
def test_kedro_distill_from_a_diffusers_teacher(project):
    """`teacher.mode: diffusers` on the digits: a tiny random UNet2DModel (1 channel, 8x8) and a v-prediction
    scheduler saved as a diffusers folder; the whole distill pipeline runs from it (stage 1's path nodes, stage 2,
    the evaluation), the teacher checkpoint it writes rebuilds the same denoiser, and the student is a diffusers
    UNet too."""
    import numpy as np

    from disback_pipeline.diffusion.checkpoint import load_checkpoint

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    scheduler = diffusers.DDPMScheduler(**SD_BETAS, prediction_type="v_prediction")
    save_folder(project.path / "data/01_raw/tiny_diffusers", unet, scheduler)
    _tiny_digits(project, budget=4, eval_every=2)  # the digits run at seconds' size, its teacher from the folder
    project.edit("base", "parameters_teacher", teacher__mode="diffusers",
                 teacher__checkpoint_path="data/01_raw/tiny_diffusers")
    project.run("distill")
    root = project.path / "data/base"
    teacher = load_checkpoint(root / "06_models/teacher.pt")
    assert teacher.config["backbone"] == "diffusers" and teacher.config["prediction_type"] == "v_prediction"
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        assert torch.equal(teacher.net(x, sigma), VPDenoiser(unet.eval(), scheduler.alphas_cumprod,
                                                             "v_prediction")(x, sigma))
    student = load_checkpoint(root / "06_models/generator_ema.pt")
    assert isinstance(student.net.unet, diffusers.UNet2DModel) and student.metadata["step"] == 4
    assert len(json.loads((root / "06_models/degradation_path/manifest.json").read_text())["order"]) == 3
    metrics = json.loads((root / "08_reporting/metrics.json").read_text())
    assert np.isfinite(metrics["teacher"]["fid"]) and np.isfinite(metrics["student"]["fid"])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["sd", "sdxl"])
def test_kedro_distill_in_the_tiny_t2i_env_with_lora_adapters_as_the_path(project, layout):
    """`--env tiny_t2i` (the folder `python -m disback_pipeline.tiny_t2i` writes: a VAE to 4x4x4 latents, a
    UNet2DConditionModel, CLIP text encoder(s), prompts; SD's layout or SDXL's) with guidance 2, LoRA rank 2 and
    gradient checkpointing: the whole distill pipeline runs in the latent space; the path's nodes are adapters (a
    fraction of the UNet's size) that start at the teacher; the student is a plain UNet with the teacher's keys, its
    adapters folded in; the evaluation decodes for FID, samples the teacher guided and scores prompts with CLIP."""
    from disback_pipeline.diffusion.checkpoint import load_checkpoint, read_payload
    from disback_pipeline.diffusion.path import load_path
    from disback_pipeline.tiny_t2i import main as write_tiny

    folder = project.path / "data/01_raw/tiny_t2i"
    assert write_tiny([str(folder)] + (["--sdxl"] if layout == "sdxl" else [])) == 0
    project.run("distill", env="tiny_t2i")
    root = project.path / "data/tiny_t2i"
    teacher = load_checkpoint(root / "06_models/teacher.pt")
    null = encode_prompts(folder, [""])
    assert torch.equal(teacher.net.null_condition, null if layout == "sd" else null_condition(folder)[0])
    assert (teacher.net.text_time is not None) == (layout == "sdxl")
    path = load_path(root / "06_models/degradation_path")
    assert path.metadata["lora_rank"] == 2 and len(path.keys) == 3
    unet_size = sum(v.numel() for v in teacher.net.unet.state_dict().values())
    for node in path.nodes:
        state = read_payload(node.file)["state_dict"]
        assert state and all(".lora_" in k for k in state)  # adapters only
        assert sum(v.numel() for v in state.values()) < unet_size / 20  # 3 % at rank 2
    first = read_payload(path.nodes[0].file)["state_dict"]
    assert all(float(v.abs().max()) == 0 for k, v in first.items() if "lora_B" in k)  # P_0: the teacher itself
    last = read_payload(path.nodes[-1].file)["state_dict"]
    assert any(float(v.abs().max()) > 0 for k, v in last.items() if "lora_B" in k)  # the end of the path moved
    student = load_checkpoint(root / "06_models/generator_ema.pt")
    assert isinstance(student.net.unet, diffusers.UNet2DConditionModel)
    assert set(student.net.state_dict()) == set(teacher.net.state_dict())  # adapters folded in
    assert torch.equal(student.net.null_condition, teacher.net.null_condition)
    assert student.net.text_time == teacher.net.text_time
    moved = [k for k, v in student.net.state_dict().items() if not torch.equal(v, teacher.net.state_dict()[k])]
    assert moved and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out")) for k in moved)  # LoRA's layers
    z, sigma = torch.randn(2, 4, 4, 4), torch.full((2,), 2.5)  # the student's samples are latents
    text = encode_prompts(folder, ["a handwritten zero", "a handwritten seven"])
    with torch.no_grad():
        assert not torch.allclose(student.net(z, sigma, text[:1].expand(2, -1, -1)),
                                  student.net(z, sigma, text[1:].expand(2, -1, -1)))  # the prompt steers it
    metrics = json.loads((root / "08_reporting/metrics.json").read_text())
    assert (metrics["teacher"]["guidance_scale"], metrics["teacher"]["nfe"],
            metrics["teacher"]["network_evaluations"]) == (2.0, 3, 6)  # guided: each Heun step runs twice
    registered = json.loads((root / "08_reporting/registered_model.json").read_text())
    assert registered["name"] == "digits-disback-di" and registered["version"] == 1  # in the MLflow registry
    _check_lora_export(root, project.path, folder, student, layout, z)
    assert metrics["student"]["fid"] > 0 and metrics["teacher"]["fid"] > 0
    assert 0 <= metrics["student"]["clip_score"] <= 100 and 0 <= metrics["teacher"]["clip_score"] <= 100


def _check_lora_export(root, out, folder, student, layout: str, z: torch.Tensor) -> None:
    """The student leaves as a whole model folder and as LoRA weights for the teacher's own pipeline, and both draw
    the same images."""
    from disback_pipeline.export_diffusers import export, export_lora

    assert student.metadata["lora_rank"] == 2
    whole = export(root / "06_models/generator_ema.pt", out / "student", folder)
    lora = export_lora(root / "06_models/generator_ema.pt", out / "student-lora", folder)
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    pipe = (diffusers.StableDiffusionXLPipeline if layout == "sdxl" else diffusers.StableDiffusionPipeline) \
        .from_pretrained(whole, local_files_only=True)
    call = {"prompt": ["a cat", "a dog"], "sigmas": [student.metadata["s_init"], 0.0], "guidance_scale": 1.0,
            "latents": z, "output_type": "latent"}
    want = pipe(**call).images
    teacher_unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    before = {k: v.clone() for k, v in teacher_unet.state_dict().items()}
    pipe.register_modules(unet=teacher_unet)
    pipe.load_lora_weights(lora)
    got = pipe(**call).images
    assert close(got, want), float((got - want).abs().max())
    # in the weights, where a few iterations move the student little: teacher + adapters = the student
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    fused, trained = pipe.unet.state_dict(), student.net.unet.state_dict()
    moved = [k for k in before if not torch.equal(before[k], trained[k])]
    assert moved and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out")) for k in moved)
    margins = []
    for k in moved:  # float32 rounding of W + B A: a few ulps of the weights, far below what the adapters move
        delta, ulps = float((trained[k] - before[k]).abs().max()), 4 * 1.2e-7 * float(trained[k].abs().max())
        assert float((fused[k] - trained[k]).abs().max()) <= ulps + 1e-3 * delta, k
        margins.append(delta / ulps)
    assert max(margins) > 10  # missing adapters would fail: they move the weights by more than the tolerance
    with pytest.raises(CheckpointError, match="not a student trained through LoRA"):
        export_lora(root / "06_models/teacher.pt", out / "teacher-lora", folder)


@torch.no_grad()
def test_latents_are_the_vaes_and_images_are_decoded_for_the_features(tmp_path):
    from disback_pipeline.diffusion.data import LatentImages, make_data_source
    from disback_pipeline.evaluation.quality import sample_generator

    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "model/vae")
    source = make_data_source({"source": "digits", "vae": str(tmp_path / "model")})
    assert isinstance(source, LatentImages) and source.shape == (4, 4, 4) and source.pixels.shape == (1, 8, 8)
    x, _ = source.pixels.sample(5, torch.Generator().manual_seed(0))
    z, _ = source.sample(5, torch.Generator().manual_seed(0))
    assert torch.equal(z, vae.encode(x).latent_dist.mean * vae.config.scaling_factor)  # the posterior's mean, scaled
    assert torch.equal(source.to_pixels(z), vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1))
    plain = make_data_source({"source": "digits"})
    assert source.content_sha256() != plain.content_sha256()
    generator = VPDenoiser(diffusers.UNet2DModel(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
                                                 block_out_channels=(8, 16), norm_num_groups=4,
                                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                                 up_block_types=("UpBlock2D", "UpBlock2D")),
                           diffusers.DDPMScheduler(**SD_BETAS).alphas_cumprod)
    images, _ = sample_generator(generator, source, 3, 0, 2.5)
    assert images.shape == (3, 1, 8, 8) and images.abs().max() <= 1  # what FID and the grids see


@torch.no_grad()
def test_the_exported_student_draws_generates_latents_in_diffusers_own_pipeline(tmp_path):
    """A student of a latent text-to-image teacher written as a diffusers folder: StableDiffusionPipeline loads it
    offline and, given the same latents, one step at s_init and no guidance, returns what `generate` draws."""
    from disback_pipeline.diffusion.checkpoint import Checkpoint, save_checkpoint
    from disback_pipeline.diffusion.diffusers_teacher import network_config
    from disback_pipeline.evaluation.samples import draw
    from disback_pipeline.export_diffusers import export, main

    teacher = tmp_path / "teacher"
    save_latent_t2i(teacher)
    net = load_diffusers_teacher(teacher)
    for p in net.parameters():  # a student: the teacher's weights, moved
        p.add_(0.01 * torch.randn_like(p))
    student = Checkpoint(net, network_config(net), {"role": "generator", "s_init": 2.5, "method": "disback",
                                                    "loss": "di", "step": 4})
    save_checkpoint(student, tmp_path / "generator_ema.pt")
    (ours,) = draw(student, [3, 4])  # what `python -m disback_pipeline.generate --seeds 3-4` writes (latents)

    out = export(tmp_path / "generator_ema.pt", tmp_path / "student", teacher)
    assert json.loads((out / "disback.json").read_text())["s_init"] == 2.5
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    z = torch.stack([torch.randn((4, 4, 4), generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    theirs = pipe(prompt=["", ""], sigmas=[2.5, 0.0], guidance_scale=1.0, latents=z, output_type="latent").images
    assert close(theirs, ours), float((theirs - ours).abs().max())
    # with a prompt, through the command: `generate --diffusers FOLDER --prompt TEXT` writes the images the pipeline
    # decodes (uint8 PNGs from [-1, 1]; the pipeline's [0, 1] images scaled alike)
    import numpy as np
    from PIL import Image

    from disback_pipeline.generate import main as generate

    assert generate([str(tmp_path / "generator_ema.pt"), "--seeds", "3-4", "--out", str(tmp_path / "png"),
                     "--diffusers", str(teacher), "--prompt", "a cat"]) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / f"png/{s:06d}.png")) for s in (3, 4)])
    images = pipe(prompt=["a cat", "a cat"], sigmas=[2.5, 0.0], guidance_scale=1.0, latents=z,
                  output_type="pt").images  # decoded by the teacher's VAE, in [0, 1]
    assert images.shape == (2, 1, 8, 8)
    expected = (images[:, 0] * 255).round().numpy().astype(np.int16)
    assert np.abs(written.astype(np.int16) - expected).max() <= 1  # one grey level: rounding of [-1, 1] vs [0, 1]
    # a prompts file: the i-th seed takes the i-th prompt (cycling), and the folder says which
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    assert generate([str(tmp_path / "generator_ema.pt"), "--seeds", "3-5", "--out", str(tmp_path / "each"),
                     "--diffusers", str(teacher), "--prompts", str(tmp_path / "prompts.txt"), "--batch", "2"]) == 0
    z5 = torch.randn((4, 4, 4), generator=torch.Generator().manual_seed(5))[None]
    images = pipe(prompt=["a cat", "a dog", "a cat"], sigmas=[2.5, 0.0], guidance_scale=1.0,
                  latents=torch.cat([z, z5]), output_type="pt").images
    written = np.stack([np.asarray(Image.open(tmp_path / f"each/{s:06d}.png")) for s in (3, 4, 5)])
    assert np.abs(written.astype(np.int16) - (images[:, 0] * 255).round().numpy().astype(np.int16)).max() <= 1
    import pandas as pd

    assert pd.read_csv(tmp_path / "each/prompts.csv").to_dict("list") == {"seed": [3, 4, 5],
                                                                          "prompt": ["a cat", "a dog", "a cat"]}
    assert generate([str(tmp_path / "generator_ema.pt"), "--seeds", "0", "--out", str(tmp_path / "x"),
                     "--prompt", "a cat"]) == 2  # a prompt needs the folder whose encoder embeds it

    assert main([str(tmp_path / "generator_ema.pt"), str(out), "--teacher", str(teacher)]) == 1  # not over a folder
    save_checkpoint(Checkpoint(net, network_config(net), {"role": "teacher"}), tmp_path / "teacher.pt")
    with pytest.raises(CheckpointError, match="only one-step students"):
        export(tmp_path / "teacher.pt", tmp_path / "other", teacher)


@torch.no_grad()
def test_an_sdxl_class_teacher_packs_pooled_text_and_size_ids_and_its_student_runs_in_the_sdxl_pipeline(tmp_path):
    """SDXL's layout (two text encoders, the pooled embedding, six size ids): the conditions equal what
    StableDiffusionXLPipeline.encode_prompt and its time ids give, the empty prompt's are zeros (its
    force_zeros_for_empty_prompt), and an exported student draws in that pipeline, one step without guidance, the
    images `generate --prompt` writes."""
    import numpy as np
    from PIL import Image

    from disback_pipeline.diffusion.checkpoint import Checkpoint, save_checkpoint
    from disback_pipeline.diffusion.diffusers_teacher import network_config, unpack_text_time
    from disback_pipeline.export_diffusers import export
    from disback_pipeline.generate import main as generate
    from disback_pipeline.tiny_t2i import main as write_tiny

    teacher = tmp_path / "teacher"
    assert write_tiny([str(teacher), "--sdxl"]) == 0
    net = load_diffusers_teacher(teacher)
    assert net.text_time == (16, 8) and net.null_condition.shape == (1, 16 + 1, 16)  # 8 + 6 values fit one row
    cond = encode_prompts(teacher, ["a cat", "a dog"])
    tokens, added = unpack_text_time(cond, net.text_time)
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(teacher, local_files_only=True)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(["a cat", "a dog"], do_classifier_free_guidance=True)
    assert torch.equal(tokens, embeds) and torch.equal(added["text_embeds"], pooled)
    assert added["time_ids"].tolist() == [[8, 8, 0, 0, 8, 8]] * 2  # 4x4 latents, a VAE that halves: 8 pixels
    null_tokens, null_added = unpack_text_time(net.null_condition, net.text_time)
    assert torch.equal(null_tokens, negative[:1]) and torch.equal(null_added["text_embeds"], negative_pooled[:1])
    assert not torch.equal(tokens[0], tokens[1]) and float(negative.abs().max()) == 0
    rebuilt = network_config(net)
    assert rebuilt["text_time"] == [16, 8]
    x, sigma = torch.randn(2, 4, 4, 4), torch.tensor([0.5, 3.0])
    assert not torch.allclose(net(x, sigma, cond), net(x, sigma))  # the prompt reaches the UNet

    for p in net.parameters():  # a student: the teacher's weights, moved
        p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(Checkpoint(net, network_config(net), {"role": "generator", "s_init": 2.5, "method": "disback",
                                                          "loss": "di", "step": 4}), tmp_path / "generator_ema.pt")
    out = export(tmp_path / "generator_ema.pt", tmp_path / "student", teacher)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    student = diffusers.StableDiffusionXLPipeline.from_pretrained(out, local_files_only=True)
    z = torch.stack([torch.randn((4, 4, 4), generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    theirs = student(prompt=["a cat", "a cat"], sigmas=[2.5, 0.0], guidance_scale=1.0, latents=z,
                     output_type="latent").images
    ours = net(2.5 * z, torch.full((2,), 2.5), encode_prompts(teacher, ["a cat"]).expand(2, -1, -1))
    assert close(theirs, ours), float((theirs - ours).abs().max())
    assert generate([str(tmp_path / "generator_ema.pt"), "--seeds", "3-4", "--out", str(tmp_path / "png"),
                     "--diffusers", str(teacher), "--prompt", "a cat"]) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / f"png/{s:06d}.png")) for s in (3, 4)])
    images = student(prompt=["a cat", "a cat"], sigmas=[2.5, 0.0], guidance_scale=1.0, latents=z,
                     output_type="pt").images
    expected = (images[:, 0] * 255).round().numpy().astype(np.int16)
    assert np.abs(written.astype(np.int16) - expected).max() <= 1


@torch.no_grad()
def test_clip_score_is_100_times_the_cosine_of_clips_embeddings(tmp_path):
    from disback_pipeline.evaluation.clip_score import ClipScoreError, clip_score, load_clip

    save_clip(tmp_path / "clip")
    model, tokenizer = load_clip(tmp_path / "clip")
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts = ["a cat", "a dog", "seven"]
    pixels = ((images + 1) / 2).expand(-1, 3, -1, -1)  # the model's own size already: no resampling
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    ids = tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    out = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask,
                pixel_values=(pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))  # CLIP's forward: unit embeds
    by_hand = float((100 * (out.image_embeds * out.text_embeds).sum(-1)).clamp_min(0).mean())
    assert clip_score(model, tokenizer, images, prompts) == pytest.approx(by_hand, rel=1e-5)
    assert clip_score(model, tokenizer, images, prompts, batch_size=2) == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(ValueError, match="one prompt an image"):
        clip_score(model, tokenizer, images, prompts[:2])
    with pytest.raises(ClipScoreError, match="evaluation.clip_path.*FID runs"):
        load_clip(tmp_path / "absent")
    # a run that names a CLIP model it does not have stops before anything trains (with the feature extractor)
    from disback_pipeline.pipelines.reference.nodes import build_feature_extractor

    with pytest.raises(ClipScoreError, match="no CLIP model at"):
        build_feature_extractor({"source": "digits"}, {"clip_path": str(tmp_path / "absent")})


@torch.no_grad()
def test_the_prompt_grid_has_one_row_a_prompt_with_the_same_latents(tmp_path):
    from disback_pipeline.diffusion.data import make_data_source
    from disback_pipeline.evaluation.quality import prompt_rows
    from disback_pipeline.reporting import prompt_grid_figure

    save_latent_t2i(tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("a zero\na seven\nan eight\n")
    folder = str(tmp_path / "model")
    source = make_data_source({"source": "digits", "prompts": str(tmp_path / "prompts.txt"), "text_encoder": folder,
                               "vae": folder})
    net = load_diffusers_teacher(tmp_path / "model")
    rows = prompt_rows(net, source, 2.5, prompts=2, per_prompt=3)
    assert [p for p, _ in rows] == ["a zero", "a seven"] and all(x.shape == (3, 1, 8, 8) for _, x in rows)
    assert not torch.allclose(rows[0][1], rows[1][1])  # the prompt, not the latents, differs between rows
    assert torch.equal(rows[0][1], prompt_rows(net, source, 2.5, prompts=1, per_prompt=3)[0][1])  # seeded latents
    fig = prompt_grid_figure(rows, "student")
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["a zero", "a seven"]


def test_lora_copies_share_the_teachers_tensors_train_only_their_adapters_and_fold_back(tmp_path):
    """With LoRA the trained copies and the EMA hold the teacher's frozen tensors themselves (the UNet is in memory
    once), start equal to the teacher, train and save only their adapters, and fold back into a plain UNet that
    computes what the adapted copy computes; without LoRA a copy owns its weights."""
    from disback_pipeline.diffusion.adapters import frozen_copy, merged, trainable_copy, trained_state
    from disback_pipeline.diffusion.checkpoint import load_state_strict
    from disback_pipeline.diffusion.config import ConfigError, TrainedNetsConfig
    from disback_pipeline.diffusion.training import EMA

    save_latent_t2i(tmp_path / "model")
    teacher = load_diffusers_teacher(tmp_path / "model")
    cfg = TrainedNetsConfig(lora_rank=2)
    gen = trainable_copy(teacher, cfg, "cpu")
    ptrs = {p.data_ptr() for p in teacher.parameters()}
    frozen_params = [p for p in gen.parameters() if not p.requires_grad]
    assert frozen_params and all(p.data_ptr() in ptrs for p in frozen_params)  # shared, not copied
    trained = [n for n, p in gen.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n for n in trained) and set(trained_state(gen)) == set(trained)
    ema = EMA(gen, 0.9)
    assert sum(p.data_ptr() in ptrs for p in ema.net.parameters()) == len(frozen_params)  # the EMA too
    x, sigma, text = torch.randn(2, 4, 4, 4), torch.tensor([0.5, 3.0]), encode_prompts(tmp_path / "model", ["a", "b"])
    with torch.no_grad():
        assert torch.equal(gen(x, sigma, text), teacher(x, sigma, text))  # B = 0: the teacher exactly
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD([p for p in gen.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        gen(x, sigma, text).square().mean().backward()
        opt.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # the teacher untouched
    with torch.no_grad():
        moved = gen(x, sigma, text)
        assert not torch.allclose(moved, teacher(x, sigma, text))
        holder = frozen_copy(teacher, cfg, "cpu")
        load_state_strict(holder, trained_state(gen), "adapters")
        assert torch.equal(holder(x, sigma, text), moved)  # a path node: the adapters alone rebuild the copy
        plain = merged(gen)
        assert set(plain.state_dict()) == set(teacher.state_dict())
        assert close(plain(x, sigma, text), moved)
    with pytest.raises(CheckpointError, match="LoRA adapters and the network trains every weight"):
        load_state_strict(trainable_copy(teacher, TrainedNetsConfig(), "cpu"), trained_state(gen), "adapters")
    whole = trainable_copy(teacher, TrainedNetsConfig(), "cpu")
    assert not any(p.data_ptr() in ptrs for p in whole.parameters())  # full training: its own weights
    import pickle

    checkpointed = trainable_copy(teacher, TrainedNetsConfig(lora_rank=2, gradient_checkpointing=True), "cpu")
    assert checkpointed.unet.is_gradient_checkpointing
    pickle.dumps(checkpointed)  # data-parallel ranks hand their networks back to the launcher pickled
    with pytest.raises(ConfigError, match="lora_targets.*names no layer"):
        trainable_copy(teacher, TrainedNetsConfig(lora_rank=2, lora_targets=("no_such_layer",)), "cpu")
    from disback_pipeline.diffusion.backbones import build_network

    edm = build_network({"backbone": "mlp", "dim": 2, "width": 8, "num_blocks": 1, "emb_dim": 8})
    with pytest.raises(ConfigError, match="applies to diffusers teachers"):
        trainable_copy(edm, cfg, "cpu")


def test_a_path_of_another_lora_rank_is_refused_before_stage_2_trains():
    from disback_pipeline.diffusion.config import ConfigError, DistillConfig, TrainedNetsConfig
    from disback_pipeline.diffusion.disback import check_path_adapters
    from disback_pipeline.diffusion.path import DegradationPath, PathNode

    path = DegradationPath({}, [PathNode("000000", 0, 0.0, 1.0, state_dict={})], {"lora_rank": 2})
    check_path_adapters(path, DistillConfig(trained_nets=TrainedNetsConfig(lora_rank=2)))  # the same rank: fine
    with pytest.raises(ConfigError, match="nodes are LoRA adapters of rank 2.*lora_rank is 0; set it to 2"):
        check_path_adapters(path, DistillConfig())
    whole = DegradationPath({}, path.nodes, {})
    with pytest.raises(ConfigError, match="nodes are whole networks.*lora_rank is 4; set it to 0"):
        check_path_adapters(whole, DistillConfig(trained_nets=TrainedNetsConfig(lora_rank=4)))
    check_path_adapters(DegradationPath({}, [], {}), DistillConfig(trained_nets=TrainedNetsConfig(lora_rank=4)))
