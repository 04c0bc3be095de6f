"""Runtime profiles: where each part of the model lives and in which precision.

- `profiles`: the profile files (presets/profiles/*.json): ProfileSettings, RuntimeProfile, load_profiles,
  get_profile, profile_names;
- `footprint`: a model's sizes, the estimated peak memory under a profile, the `auto` choice (choose_profile);
- `offload`: the building blocks (on_device, cast_for_compute, float8 storage, block offload);
- `apply`: applying a profile to a model (apply_profile, reset_runtime, RuntimeInfo).

The names the app uses are also here (the studio takes this package as its runtime).
"""

from pfp_app.runtime.apply import RuntimeInfo, apply_profile, reset_runtime
from pfp_app.runtime.footprint import choose_profile
from pfp_app.runtime.profiles import get_profile, load_profiles, profile_names

__all__ = ["RuntimeInfo", "apply_profile", "choose_profile", "get_profile", "load_profiles", "profile_names",
           "reset_runtime"]
