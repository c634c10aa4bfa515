"""Convert the diffusers MusicLDM folder (ucsd-reach/musicldm: vae/ + vocoder/, safetensors or .bin) into one file
that synctrack.load_first_stage reads: the Lightning layout {"state_dict": {"first_stage_model.*": ...,
"first_stage_model.vocoder.*": ..., "scale_factor": ...}}, tensors only (loads with torch.load(weights_only=True)).

    python extras/convert_musicldm.py musicldm/ musicldm-first-stage.ckpt
    python sample.py --first-stage musicldm-first-stage.ckpt ...

Only names change: diffusers' AutoencoderKL names become the official LDM ones (the inverse of diffusers'
scripts/convert_original_musicldm_to_diffusers.py), its Linear attention weights become 1×1 convolutions, the
SpeechT5HifiGan `upsampler.*` becomes `ups.*`. Shapes are checked when the file is loaded (strict, every tensor named).
"""
import argparse
import json
import pathlib
import re
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import synctrack as st  # noqa: E402  (the repo root is on the path only from here on)

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# diffusers AutoencoderKL name -> official LDM name; {flip} turns a coarse-to-fine decoder level into LDM's
# fine-to-coarse index (diffusers up_blocks.i is LDM up.(levels − 1 − i))
VAE_RENAMES = (
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m, flip: f"encoder.down.{m[1]}.block.{m[2]}."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m, flip: f"encoder.down.{m[1]}.downsample."),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m, flip: f"decoder.up.{flip(m[1])}.block.{m[2]}."),
    (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m, flip: f"decoder.up.{flip(m[1])}.upsample."),
    (r"\.mid_block\.resnets\.(\d+)\.", lambda m, flip: f".mid.block_{int(m[1]) + 1}."),
    (r"\.mid_block\.attentions\.0\.group_norm\.", lambda m, flip: ".mid.attn_1.norm."),
    (r"\.mid_block\.attentions\.0\.to_([qkv])\.", lambda m, flip: f".mid.attn_1.{m[1]}."),
    (r"\.mid_block\.attentions\.0\.to_out\.0\.", lambda m, flip: ".mid.attn_1.proj_out."),
    (r"\.conv_shortcut\.", lambda m, flip: ".nin_shortcut."),
    (r"\.conv_norm_out\.", lambda m, flip: ".norm_out."),
)


def read_safetensors(path):
    """Minimal safetensors reader: 8-byte little-endian header size, a JSON header, then the raw tensor bytes."""
    raw = bytearray(pathlib.Path(path).read_bytes())
    header_size = int.from_bytes(raw[:8], "little")
    tensors = {}
    for name, info in json.loads(raw[8:8 + header_size]).items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, expected one of "
                             f"{list(SAFETENSORS_DTYPES)}")
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        flat = torch.frombuffer(raw, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=8 + header_size + begin)
        tensors[name] = flat.reshape(info["shape"]).clone()  # own, aligned storage
    return tensors


def read_weights(folder, names, trust):
    """The first of `names` present in `folder`: safetensors read directly, .bin through the safe torch.load."""
    for name in names:
        path = folder / name
        if path.is_file():
            return read_safetensors(path) if path.suffix == ".safetensors" else st.read_checkpoint(path, trust)
    raise ValueError(f"{folder}: no weights file, expected one of {names}")


def read_config(path, expected):
    """The config, checked on the entries that change the architecture (absent keys take diffusers' defaults)."""
    if not path.is_file():
        raise ValueError(f"{path}: missing (expected in a diffusers MusicLDM folder)")
    config = json.loads(path.read_text())
    for key, (default, want) in expected(config).items():
        if config.get(key, default) != want:
            raise ValueError(f"{path}: {key} = {config.get(key, default)!r}, only {want!r} (MusicLDM) is supported")
    return config


def convert(folder, trust=False):
    """The diffusers folder -> the Lightning-layout dict that synctrack.load_first_stage reads."""
    folder = pathlib.Path(folder)
    blocks = lambda c: len(c.get("block_out_channels", []))  # noqa: E731
    vae_cfg = read_config(folder / "vae" / "config.json", lambda c: {
        "_class_name": (None, "AutoencoderKL"), "act_fn": ("silu", "silu"), "norm_num_groups": (32, 32),
        "mid_block_add_attention": (True, True), "use_quant_conv": (True, True), "use_post_quant_conv": (True, True),
        "down_block_types": (None, ["DownEncoderBlock2D"] * blocks(c)),
        "up_block_types": (None, ["UpDecoderBlock2D"] * blocks(c))})
    read_config(folder / "vocoder" / "config.json", lambda c: {
        "sampling_rate": (16000, st.SAMPLE_RATE), "leaky_relu_slope": (0.1, 0.1), "normalize_before": (True, False)})
    flip = lambda i: blocks(vae_cfg) - 1 - int(i)  # noqa: E731
    state = {"scale_factor": torch.tensor(float(vae_cfg["scaling_factor"]))}
    vae = read_weights(folder / "vae", ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"], trust)
    for key, value in vae.items():
        for pattern, rename in VAE_RENAMES:
            key = re.sub(pattern, lambda m: rename(m, flip), key)
        if re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", key) and value.dim() == 2:
            value = value[:, :, None, None]  # diffusers attention uses Linear (C, C); LDM a 1×1 conv (C, C, 1, 1)
        state["first_stage_model." + key] = value
    vocoder = read_weights(folder / "vocoder", ["model.safetensors", "pytorch_model.bin"], trust)
    for key, value in vocoder.items():
        if key not in ("mean", "scale"):  # input-normalisation buffers, unused with normalize_before=false
            state["first_stage_model.vocoder." + re.sub(r"^upsampler\.", "ups.", key)] = value
    return {"state_dict": state}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the diffusers MusicLDM folder (holds vae/ and vocoder/)")
    p.add_argument("out", help="the file to write (must not exist unless --overwrite)")
    p.add_argument("--trust", action="store_true", help="allow pickled .bin files to be unpickled")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = p.parse_args(argv)
    out, folder = pathlib.Path(args.out), pathlib.Path(args.folder)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists: choose another path, or pass --overwrite")
    if out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents:
        raise SystemExit(f"{out} lies inside the input folder {folder}: write it elsewhere")
    try:
        checkpoint = convert(folder, args.trust)
        st.write_checkpoint(out, checkpoint)
        st.load_first_stage(out)  # the strict load: every tensor claimed, every shape right
    except (OSError, ValueError) as err:
        raise SystemExit(f"{folder}: {err}") from None
    print(f"wrote {out}: {len(checkpoint['state_dict']) - 1} tensors; use it as --first-stage {out}")


if __name__ == "__main__":
    main()
