"""diffusers <-> kohya module names: known spellings from real files, and exact round trips."""
import pytest

from loraflow.models.lora.kohya_keys import diffusers_to_kohya, kohya_to_diffusers

# (diffusers UNet module, kohya name as sd-scripts writes it for SDXL)
SDXL_EXAMPLES = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
    ("down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_out.0", "lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_out_0"),
    ("mid_block.attentions.0.proj_in", "lora_unet_middle_block_1_proj_in"),
    ("mid_block.resnets.1.conv2", "lora_unet_middle_block_2_out_layers_3"),
    ("up_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_0_proj"),
    ("up_blocks.1.attentions.2.proj_out", "lora_unet_output_blocks_5_1_proj_out"),
    ("up_blocks.2.resnets.0.conv_shortcut", "lora_unet_output_blocks_6_0_skip_connection"),
    ("down_blocks.0.resnets.1.conv1", "lora_unet_input_blocks_2_0_in_layers_2"),
    ("down_blocks.1.resnets.0.time_emb_proj", "lora_unet_input_blocks_4_0_emb_layers_1"),
    ("down_blocks.0.downsamplers.0.conv", "lora_unet_input_blocks_3_0_op"),
    ("up_blocks.1.upsamplers.0.conv", "lora_unet_output_blocks_5_2_conv"),
    ("conv_in", "lora_unet_input_blocks_0_0"),
    ("time_embedding.linear_2", "lora_unet_time_embed_2"),
    ("add_embedding.linear_1", "lora_unet_label_emb_0_0"),
]


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
@pytest.mark.parametrize("module,kohya", SDXL_EXAMPLES)
def test_sdxl_class_unet_uses_sgm_block_names(module, kohya, family):
    assert diffusers_to_kohya("unet", module, family) == kohya
    assert kohya_to_diffusers(kohya) == ("unet", module)


def test_sd15_unet_and_text_encoder_names():
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert diffusers_to_kohya("unet", module, "sd15") == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert diffusers_to_kohya("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", "sd15") == \
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    # transformers 5 flattens CLIPTextModel; files keep the text_model path
    assert diffusers_to_kohya("text_encoder", "encoder.layers.1.mlp.fc2", "sd15") == "lora_te_text_model_encoder_layers_1_mlp_fc2"
    assert kohya_to_diffusers("lora_te_text_model_encoder_layers_1_mlp_fc2") == \
        ("text_encoder", "text_model.encoder.layers.1.mlp.fc2")


def test_sdxl_text_encoders_are_te1_and_te2():
    assert diffusers_to_kohya("text_encoder_2", "text_model.encoder.layers.3.self_attn.out_proj", "sdxl") == \
        "lora_te2_text_model_encoder_layers_3_self_attn_out_proj"
    assert kohya_to_diffusers("lora_te1_text_model_encoder_layers_0_self_attn_k_proj") == \
        ("text_encoder", "text_model.encoder.layers.0.self_attn.k_proj")


@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_every_lora_targetable_unet_module_round_trips(family, pipes):
    unet = pipes(family).unet
    names = [n for n, m in unet.named_modules() if type(m).__name__ in ("Linear", "Conv2d")]
    assert len(names) > 50
    kohya = {n: diffusers_to_kohya("unet", n, family) for n in names}
    assert len(set(kohya.values())) == len(names)  # no two modules share a kohya name
    for name, key in kohya.items():
        assert kohya_to_diffusers(key) == ("unet", name)
