"""kohya's daily tools: resize, merge (into one LoRA; into a single-file checkpoint), extract.

Expected values are computed here from the definitions: a LoRA's delta is scale * up @ down, the best
rank-k approximation drops exactly the smaller singular values, merging LoRAs adds their deltas."""
import argparse
import sys
from pathlib import Path

import torch

from loraflow.models.lora import cli
from loraflow.models.lora.apply import apply_loras, remove_loras
from loraflow.models.lora.load import read_lora
from loraflow.models.lora.save import save_lora
from loraflow.models.lora.tools import extract_lora, module_deltas

from lora_helpers import ATTENTION  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1]))
from ldm_convert import pipeline_to_original  # noqa: E402


def _run(*argv):
    parser = argparse.ArgumentParser(prog="loraflow")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _deltas(path):
    """`<component>.<module>` -> the file's scaled delta (out, in*k), straight from its tensors."""
    lora = read_lora(path)
    out = {}
    for target, (rank, alpha) in lora.modules().items():
        down = lora.neutral[f"{target}.lora_A.weight"].float().reshape(rank, -1)
        up = lora.neutral[f"{target}.lora_B.weight"].float().reshape(-1, rank)
        out[target] = alpha / rank * up @ down
    return out


def _spectral_lora(pipe, spectrum, seed=0, targets=ATTENTION + ["conv1"]):
    """A peft-style UNet state dict whose every delta has exactly the singular values `spectrum` (rank = len)."""
    gen = torch.Generator().manual_seed(seed)
    rank = len(spectrum)
    s = torch.tensor(spectrum).sqrt()
    state = {}
    for name, module in pipe.unet.named_modules():
        if not any(name.endswith(t) for t in targets) or not hasattr(module, "weight"):
            continue
        w = module.weight
        u, _ = torch.linalg.qr(torch.randn(w.shape[0], rank, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(w[0].numel(), rank, generator=gen))
        state[f"{name}.lora_A.weight"] = (s[:, None] * v.T).reshape(rank, *w.shape[1:])
        state[f"{name}.lora_B.weight"] = (u * s).reshape(w.shape[0], rank, *[1] * (w.ndim - 2))
    return state


def _image(pipe):
    return pipe("a red fox", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_resize_to_half_rank_keeps_99_percent_and_the_image(pipe_of, tmp_path, capsys):
    pipe = pipe_of("sd15")
    spectrum = [0.5, 0.4, 0.3, 0.25, 0.004, 0.003, 0.002, 0.001]  # rank 8, four strong directions
    src = save_lora(tmp_path / "r8.safetensors", _spectral_lora(pipe, spectrum), family="sd15", rank=8, alpha=8,
                    dtype=torch.float32)
    dst = tmp_path / "r4.safetensors"
    assert _run("lora", "resize", str(src), str(dst), "--rank", "4") == 0
    report = capsys.readouterr().out
    assert "rank 8 -> 4" in report and "kept energy" in report and "fro retained" in report
    before, after = _deltas(src), _deltas(dst)
    assert set(before) == set(after) and read_lora(dst).rank == 4
    for target, delta in before.items():
        kept = 1 - ((delta - after[target]).norm() ** 2 / delta.norm() ** 2).item()
        assert kept >= 0.99
    expected = _image(pipe)
    images = []
    for path in (src, dst):
        apply_loras(pipe, [(path, 1.0)], "sd15")
        images.append(_image(pipe))
        remove_loras(pipe)
    assert abs(images[0] - expected).max() > 1e-3  # the LoRA does something
    assert abs(images[0] - images[1]).max() < 5e-3


def test_resize_by_kept_energy_picks_the_rank_per_module(pipe_of, tmp_path):
    pipe = pipe_of("sd15")
    src = save_lora(tmp_path / "r6.safetensors", _spectral_lora(pipe, [1.0, 0.9, 0.8, 0.001, 0.001, 0.001]),
                    family="sd15", rank=6, alpha=3, dtype=torch.float32)
    _run("lora", "resize", str(src), str(tmp_path / "e.safetensors"), "--kept-energy", "0.99")
    assert {rank for rank, _ in read_lora(tmp_path / "e.safetensors").modules().values()} == {3}


def test_merging_loras_into_one_at_full_rank_adds_their_deltas(pipe_of, trained, unet_out, tmp_path):
    pipe = pipe_of("sd15")
    _, _, sd1, _ = trained(pipe, rank=2, alpha=1, seed=1)
    _, _, sd2, _ = trained(pipe, rank=2, alpha=2, seed=2)
    p1 = save_lora(tmp_path / "a.safetensors", sd1, family="sd15", rank=2, alpha=1, dtype=torch.float32)
    p2 = save_lora(tmp_path / "b.safetensors", sd2, family="sd15", rank=2, alpha=2, dtype=torch.float32)
    merged = tmp_path / "ab.safetensors"
    assert _run("lora", "merge", str(merged), f"{p1}:0.7", f"{p2}:-0.5", "--rank", "4") == 0
    d1, d2, dm = _deltas(p1), _deltas(p2), _deltas(merged)
    for target in d1:
        assert (dm[target] - (0.7 * d1[target] - 0.5 * d2[target])).abs().max() < 1e-5
    apply_loras(pipe, [(p1, 0.7), (p2, -0.5)], "sd15")
    both = unet_out(pipe.unet)
    apply_loras(pipe, [(merged, 1.0)], "sd15")
    assert (unet_out(pipe.unet) - both).abs().max() < 1e-5


def test_merge_into_a_single_file_checkpoint_equals_applying_the_lora(pipe_of, trained, tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    from loraflow.models.single_file import load_single_file

    pipe = pipe_of("sdxl")
    base_file = tmp_path / "base.safetensors"
    save_file(pipeline_to_original(pipe, "sdxl"), str(base_file))
    _, _, unet_sd, te_sds = trained(pipe, rank=4, alpha=2, text=True,
                                    unet_targets=ATTENTION + ["conv1", "proj_in", "ff.net.2"])
    lora = save_lora(tmp_path / "l.safetensors", unet_sd, te_sds, family="sdxl", rank=4, alpha=2,
                     dtype=torch.float32)
    merged = tmp_path / "merged.safetensors"
    assert _run("lora", "merge", str(merged), f"{lora}:0.8", "--base", str(base_file)) == 0

    config_dir = tiny_model_dir("sdxl")
    with_lora = load_single_file(base_file, "sdxl", dtype=torch.float32, config_dir=config_dir)
    with_lora.set_progress_bar_config(disable=True)
    apply_loras(with_lora, [(lora, 0.8)], "sdxl")
    expected = _image(with_lora)
    remove_loras(with_lora)
    baked = load_single_file(merged, "sdxl", dtype=torch.float32, config_dir=config_dir)
    baked.set_progress_bar_config(disable=True)
    got = _image(baked)
    assert abs(got - expected).max() < 1e-4
    assert abs(got - _image(with_lora)).max() > 1e-3


def test_extract_recovers_a_known_low_rank_delta(pipe_of, tmp_path):
    import copy

    pipe = pipe_of("sdxl")
    tuned = copy.copy(pipe)
    tuned.unet = copy.deepcopy(pipe.unet)
    gen = torch.Generator().manual_seed(3)
    known = {}
    modules = dict(tuned.unet.named_modules())
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.2.resnets.0.conv1"):
        w = modules[name].weight
        delta = (torch.randn(w.shape[0], 2, generator=gen) @ torch.randn(2, w[0].numel(), generator=gen)) * 0.1
        with torch.no_grad():
            w.add_(delta.reshape(w.shape))
        known[f"unet.{name}"] = delta
    out = tmp_path / "extracted.safetensors"
    rows = extract_lora(pipe, tuned, out, rank=2, family="sdxl", components=("unet",))
    assert {r.target for r in rows} == set(known)
    got = _deltas(out)
    for target, delta in known.items():
        assert (got[target] - delta).abs().max() < 1e-5
    assert read_lora(out).format == "kohya"
    assert set(module_deltas(read_lora(out))) == set(known)


def test_info_shows_rank_and_alpha_per_block_and_the_base_model(pipe_of, trained, tmp_path, capsys):
    pipe = pipe_of("sdxl")
    _, _, unet_sd, _ = trained(pipe, rank=4, alpha=2)
    path = save_lora(tmp_path / "i.safetensors", unet_sd, family="sdxl", rank=4, alpha=2,
                     metadata={"ss_sd_model_name": "sd_xl_base_1.0.safetensors"})
    _run("lora", "info", str(path))
    out = capsys.readouterr().out
    assert "base model:  sd_xl_base_1.0.safetensors" in out
    attention = [m for m in read_lora(path).modules() if m.startswith("unet.down_blocks.1.")]
    assert f"  unet down_blocks.1: {len(attention)} modules, rank 4, alpha 2" in out
    assert "  unet mid_block:" in out and "  unet up_blocks.0:" in out
