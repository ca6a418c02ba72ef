"""The matched control of evidence v3 (`shuffle_condition`) and the demo's end-of-run ROSS-active check."""

import torch
from conftest import TINY_OBJECTIVE

from modeling_ross import from_components
from modeling_ross.objective import shuffle_across_images
from ross.train.demo import DemoSettings, condition_check, format_check


def test_shuffle_is_a_derangement():
    x = torch.arange(5.0).view(5, 1, 1).expand(5, 3, 2)
    shuffled = shuffle_across_images(x)
    assert shuffled.shape == x.shape
    assert not (shuffled[:, 0, 0] == x[:, 0, 0]).any()  # no image keeps its own condition
    assert sorted(shuffled[:, 0, 0].tolist()) == x[:, 0, 0].tolist()  # a permutation


def test_shuffled_condition_objective_is_the_loss_on_swapped_conditions(tiny_components):
    torch.manual_seed(0)
    model = from_components(**tiny_components, **TINY_OBJECTIVE, shuffle_condition=True)
    assert model.config.objective_config.shuffle_condition is True
    condition = torch.randn(3, model.config.image_seq_length, model.config.text_config.hidden_size)
    pixels = torch.randn(3, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    torch.manual_seed(1)
    control = model.objective(condition, pixels, denoiser=model.denoiser, teacher=model.teacher)
    model.config.objective_config.shuffle_condition = False
    torch.manual_seed(1)
    swapped = model.objective(shuffle_across_images(condition), pixels, denoiser=model.denoiser, teacher=model.teacher)
    assert torch.equal(control, swapped)


def test_condition_check_sees_a_denoiser_that_reads_its_condition(tiny_components, tiny_processor):
    torch.manual_seed(0)
    model = from_components(**tiny_components, **TINY_OBJECTIVE, latent_sample="mode").eval()  # random VAE: its
    # posterior noise would swamp the 4 images' differences
    from ross.synthetic.world import iter_scenes

    images = [image for _, image in iter_scenes(4, seed=0, size=48, stream="test")]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    text = tiny_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tiny_processor(text=[text] * 4, images=images, padding=True, return_tensors="pt")
    settings = DemoSettings(check_noise_rounds=2)
    with torch.no_grad():  # calibrate the random teacher as a real VAE is: unit-variance latents
        latents = model.teacher.vae.encode(model.teacher.preprocess(batch["pixel_values"])).latent_dist.mean
        model.teacher.vae.register_to_config(shift_factor=latents.mean().item(), scaling_factor=1 / latents.std().item())
    # Zero-initialised adaLN: the fresh denoiser ignores its condition, so true and shuffled give the same loss.
    fresh = condition_check(model, batch, settings)
    assert abs(fresh["visual_loss_true"] - fresh["visual_loss_shuffled"]) < 1e-6 and not fresh["passed"]
    lines = format_check({**fresh, "loss_passed": False, "psnr_passed": False, "passed": False,
                          "psnr_ross_vs_teacher_db": 1.0, "psnr_ross_vs_other_teacher_db": 1.0,
                          "psnr_constant_vs_teacher_db": 2.0, "psnr_shuffled_ross_vs_teacher_db": 1.0,
                          "psnr_margin_db": 1.0})  # fmt: skip
    assert "FAILED" in lines[0] and "shuffled across images" in lines[1]
    # Fit the denoiser to these images' visual outputs: now the true condition gives the lower loss.
    with torch.no_grad():
        outputs = model.model(**batch, output_hidden_states=model.condition_hidden_states_request())
        condition = model.get_visual_outputs(outputs)
        target = model.teacher(batch["pixel_values"])
    optimizer = torch.optim.Adam(model.denoiser.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.objective.loss(model.denoiser, model.teacher, condition, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fitted = condition_check(model, batch, settings)
    assert fitted["visual_loss_true"] < fitted["visual_loss_shuffled"]
