"""extras/convert_musicldm.py: the diffusers MusicLDM folder becomes a file synctrack.load_first_stage reads, with
bit-identical weights. The folder is written here from the official fixture weights under diffusers' names."""
import json
import re

import pytest
import torch

import synctrack as fs
import toy
from conftest import MUSICLDM_SCALE, same_weights
from extras import convert_musicldm


def diffusers_vae_name(key, levels):
    """Official LDM name -> diffusers AutoencoderKL name, as diffusers' convert_original_musicldm_to_diffusers.py."""
    renames = [
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
        (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
         lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.{m[2]}."),
        (r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0."),
        (r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}."),
        (r"\.mid\.attn_1\.norm\.", ".mid_block.attentions.0.group_norm."),
        (r"\.mid\.attn_1\.([qkv])\.", r".mid_block.attentions.0.to_\1."),
        (r"\.mid\.attn_1\.proj_out\.", ".mid_block.attentions.0.to_out.0."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
        (r"\.norm_out\.", ".conv_norm_out."),
    ]
    for pattern, rename in renames:
        key = re.sub(pattern, rename, key)
    return key


def write_safetensors(path, tensors):
    """Minimal safetensors writer: u64 little-endian header length, JSON header (padded to 8 bytes), raw bytes."""
    codes = {torch.float32: "F32", torch.float16: "F16"}
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, tensor in tensors.items():
        data = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": codes[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(chunks))


def write_diffusers_folder(folder, official, vae, vocoder, fmt, extra_vae=None):
    """A ucsd-reach/musicldm-style folder (vae/ + vocoder/) holding our small fixture weights."""
    levels = len(official["vae_ddconfig"]["ch_mult"])
    vae_state = {}
    for key, value in vae.state_dict().items():
        name = diffusers_vae_name(key, levels)
        value = value.half()  # fp16-exact fixture weights: also exercises the F16 reader
        vae_state[name] = value[:, :, 0, 0] if re.search(r"attentions\.0\.to_(q|k|v|out\.0)\.weight$", name) else value
    vae_state.update(extra_vae or {})
    # real diffusers names, spot-checked against diffusers' AutoencoderKL
    assert {"encoder.mid_block.attentions.0.to_q.weight", "encoder.down_blocks.2.resnets.0.conv_shortcut.weight",
            "decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.conv_norm_out.weight"} <= vae_state.keys()
    voc_state = {re.sub(r"^ups\.", "upsampler.", k): v for k, v in vocoder.state_dict().items()}
    voc_state.update(mean=torch.zeros(64), scale=torch.ones(64))  # SpeechT5HifiGan's unused normalisation buffers
    cfg = official["hifigan_config"]
    widths = [official["vae_ddconfig"]["ch"] * m for m in official["vae_ddconfig"]["ch_mult"]]
    configs = {
        "vae": {"_class_name": "AutoencoderKL", "in_channels": 1, "out_channels": 1, "block_out_channels": widths,
                "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
                "latent_channels": 8, "layers_per_block": official["vae_ddconfig"]["num_res_blocks"],
                "norm_num_groups": 32, "act_fn": "silu", "sample_size": 1024, "scaling_factor": MUSICLDM_SCALE},
        "vocoder": {"architectures": ["SpeechT5HifiGan"], "model_in_dim": 64, "sampling_rate": 16000,
                    "leaky_relu_slope": 0.1, "normalize_before": False,
                    **{k: cfg[k] for k in ["upsample_initial_channel", "upsample_rates", "upsample_kernel_sizes",
                                           "resblock_kernel_sizes", "resblock_dilation_sizes"]}},
    }
    files = {"vae": ("diffusion_pytorch_model", vae_state), "vocoder": ("model" if fmt == "safetensors"
                                                                        else "pytorch_model", voc_state)}
    for sub, (stem, state) in files.items():
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text(json.dumps(configs[sub]))
        if fmt == "safetensors":
            write_safetensors(folder / sub / f"{stem}.safetensors", state)
        else:
            torch.save(state, folder / sub / f"{stem}.bin")
    return folder


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_diffusers_folder_converts_to_identical_weights(tmp_path, official, small_vae, small_vocoder, fmt,
                                                       small_official_configs):
    folder = write_diffusers_folder(tmp_path / "musicldm", official, small_vae, small_vocoder, fmt)
    out = tmp_path / "musicldm.ckpt"
    convert_musicldm.main([str(folder), str(out)])
    vae, vocoder, scale = fs.load_first_stage(out)  # tensors only: no --trust needed
    assert scale == MUSICLDM_SCALE
    assert same_weights(vae, small_vae) and same_weights(vocoder, small_vocoder)  # bit-identical
    stage = toy.make_first_stage(out)
    assert stage.kind == "musicldm" and stage.scale_factor == MUSICLDM_SCALE
    with pytest.raises(SystemExit, match="exists"):  # never replaced without --overwrite
        convert_musicldm.main([str(folder), str(out)])


def test_diffusers_folder_errors(tmp_path, official, small_vae, small_vocoder, small_official_configs):
    folder = write_diffusers_folder(tmp_path / "extra", official, small_vae, small_vocoder, "safetensors",
                                    extra_vae={"encoder.mystery.weight": torch.zeros(3)})
    with pytest.raises(SystemExit, match="encoder.mystery.weight"):
        convert_musicldm.main([str(folder), str(tmp_path / "extra.ckpt")])
    folder = write_diffusers_folder(tmp_path / "norm", official, small_vae, small_vocoder, "bin")
    config = json.loads((folder / "vocoder" / "config.json").read_text())
    (folder / "vocoder" / "config.json").write_text(json.dumps({**config, "normalize_before": True}))
    with pytest.raises(ValueError, match="normalize_before"):
        convert_musicldm.convert(folder)
