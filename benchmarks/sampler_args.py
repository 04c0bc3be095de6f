"""The sampler settings a benchmark generates with: the model's (`pfp_model.json`), overridden from its command line.

`--steps` and `--guidance` (one classifier-free guidance scale throughout) as the app's CLI takes them, and any
field of `pfp_app.sampling.settings.SamplerSettings` by name: `--sampler memory_guidance_scale=0 --sampler
return_keyframes=1`. A new setting needs nothing here.
"""

from __future__ import annotations


def add_sampler_args(ap, steps_flag: str = "--steps") -> None:
    ap.add_argument(steps_flag, dest="steps", type=int, default=None, help="sampler steps per segment (default: the model's)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="one classifier-free guidance scale for every segment (default: the model's)")
    ap.add_argument("--sampler", action="append", default=[], metavar="FIELD=VALUE",
                    help="any sampler setting (pfp_app/sampling/settings.py), repeatable, e.g. return_keyframes=1")


def sampler_from_args(model, args):
    """The model's sampler settings with this run's overrides (a ValueError names a bad one)."""
    return model.sampler.overridden(args.steps, args.guidance).with_text_overrides(args.sampler)
