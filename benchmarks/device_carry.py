"""Make what a GPU device call carries fit its 64 MiB working-tree limit beside the 47-MB default model.

    python benchmarks/device_carry.py --wheel PATH/diffusers-0.42.0-py3-none-any.whl --bank data/bank

writes
- `.whl/diffusers-*.whl`: the wheel without `diffusers/pipelines/*/` and `diffusers/modular_pipelines/*/`
  (their packages' top-level modules stay): 2.2 MB instead of 6.4. Training, evaluation and generation use
  diffusers' models, schedulers and training utilities only; `tests/test_train.py` passes on it;
- `data/bank-lite`: the bank's training part with crops 0 and 1 of each photograph (1× and the first 1.6×;
  crops 2–4, the second 1.6× and the 2.8× ones, are left out) and its training clips: 4.9 MiB instead of 9.3,
  for training calls (`BANK=data/bank-lite benchmarks/train_default_gpu.sh ...`);
- `data/bank-eval`: the bank's held-out clips and photographs only (1.5 MiB), for `evaluate --bank`.

And with `--encoder-only-vae DIR`: `.carry/vae-encoder` (6 MB), the codec of model folder DIR with its encoder and
latent statistics and a 4-channel placeholder decoder: all that G's training needs (it only encodes clips), for a
call that trains G and must carry the 7.3-MB caption table beside the 59-MB default model. Put it in the model's
place for that call (`mv assets/pfp-default/vae /tmp/vae-full && cp -r .carry/vae-encoder assets/pfp-default/vae`,
then `git checkout -- assets/pfp-default/vae` after the call); keep `EVAL_TIMEOUT=0`, since it cannot decode.

Device calls then carry e.g. `[".whl", ".carry", "data/bank-lite"]`. Written by hand (no library repacks a
wheel without some of its files); the RECORD is rewritten so pip's install check passes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import sys
import zipfile
from pathlib import Path

LEFT_OUT_PACKAGES = ("diffusers/pipelines/", "diffusers/modular_pipelines/")


def slim_wheel(src: Path, dst: Path) -> int:
    """Copy wheel `src` to `dst` without the subpackages of LEFT_OUT_PACKAGES; returns the new size in bytes."""
    with zipfile.ZipFile(src) as zin:
        names = [n for n in zin.namelist()
                 if not any(n.startswith(p) and "/" in n[len(p):] for p in LEFT_OUT_PACKAGES)]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        data = {n: zin.read(n) for n in names if n != record}
    lines = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}"
             for n, b in sorted(data.items())] + [f"{record},,"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for n, b in sorted(data.items()):
            zout.writestr(n, b)
        zout.writestr(record, "\n".join(lines) + "\n")
    return dst.stat().st_size


def subset_bank(bank: Path, out: Path, split: str, max_crop: int | None) -> int:
    """Copy bank.json and the `split` part of the bank (photos: crops numbered < max_crop) into `out`, with the
    other split's folders present and empty. Returns the bytes copied."""
    if not (bank / "bank.json").is_file():
        raise SystemExit(f"{bank} is not a bank (no bank.json): build one with `python -m pfp_app bank --out {bank}`")
    shutil.rmtree(out, ignore_errors=True)
    total = 0
    for kind in ("photos", "clips"):
        for part in ("train", "heldout"):
            (out / kind / part).mkdir(parents=True, exist_ok=True)
        for f in sorted((bank / kind / split).glob("*")):
            m = re.search(r"-(\d+)\.jpg$", f.name)
            if kind == "photos" and max_crop is not None and m and int(m.group(1)) >= max_crop:
                continue
            shutil.copy2(f, out / kind / split / f.name)
            total += f.stat().st_size
    shutil.copy2(bank / "bank.json", out / "bank.json")
    return total


def encoder_only_vae(vae_dir: Path, out: Path) -> int:
    """Write the codec of `vae_dir` with a placeholder decoder (base width 4, random) to `out`; returns bytes.
    Latents are unchanged: the encoder, quant_conv and the latent statistics are copied."""
    import torch
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(str(vae_dir), torch_dtype=torch.float32, local_files_only=True)
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    small = AutoencoderKLWan.from_config({**config, "decoder_base_dim": 4})
    encoder_side = {k: v for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    missing, unexpected = small.load_state_dict(encoder_side, strict=False)
    assert not unexpected and all(not k.startswith(("encoder.", "quant_conv.")) for k in missing)
    small.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", default=None, help="the full diffusers wheel (pip download, see the device README)")
    ap.add_argument("--bank", default="data/bank")
    ap.add_argument("--lite-crops", type=int, default=2, help="photo crops kept per picture in data/bank-lite")
    ap.add_argument("--encoder-only-vae", default=None, metavar="MODEL_DIR",
                    help="also write .carry/vae-encoder: MODEL_DIR's codec with a placeholder decoder (G's training)")
    args = ap.parse_args(argv)
    if args.encoder_only_vae:
        out = Path(".carry/vae-encoder")
        print(f"{out}: {encoder_only_vae(Path(args.encoder_only_vae) / 'vae', out) / 1e6:.1f} MB")
    if args.wheel:
        src = Path(args.wheel)
        dst = Path(".whl") / src.name
        if dst.resolve() == src.resolve():
            raise SystemExit("--wheel must be a copy outside .whl/ (the slim wheel is written there)")
        print(f"{dst}: {slim_wheel(src, dst) / 1e6:.1f} MB (from {src.stat().st_size / 1e6:.1f})")
    bank = Path(args.bank)
    print(f"data/bank-lite: {subset_bank(bank, Path('data/bank-lite'), 'train', args.lite_crops) / 2**20:.1f} MiB")
    print(f"data/bank-eval: {subset_bank(bank, Path('data/bank-eval'), 'heldout', None) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
