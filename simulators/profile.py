"""Fleet profiles: which device models make up a fleet, in what shares, at which sites."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulators.devices import SENSORS

DEFAULT_PROFILE = "default"


class ModelSpec(BaseModel):
    """One kind of device in a profile: the sensors it carries and their parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Names the kind in the manifest.")
    share: float = Field(1.0, gt=0, description="Relative share of the fleet.")
    sensors: tuple[str, ...] = Field(min_length=1, description="Sensor models, see devices.py.")
    params: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per sensor, parameters overriding its defaults."
    )

    @model_validator(mode="after")
    def _known_sensors(self) -> ModelSpec:
        unknown = [s for s in (*self.sensors, *self.params) if s not in SENSORS]
        if unknown:
            raise ValueError(f"unknown sensors {unknown}; known: {sorted(SENSORS)}")
        metrics = [m for s in self.sensors for m in SENSORS[s].metrics]
        if len(metrics) != len(set(metrics)):
            raise ValueError(f"sensors {list(self.sensors)} report one metric twice")
        for sensor, params in self.params.items():
            bad = set(params) - set(SENSORS[sensor].defaults)
            if bad:
                raise ValueError(
                    f"{sensor}: unknown parameters {sorted(bad)}; "
                    f"known: {sorted(SENSORS[sensor].defaults)}"
                )
        return self


class Profile(BaseModel):
    """A fleet: models in shares, and the sites devices are spread over."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = DEFAULT_PROFILE
    description: str = ""
    sites: tuple[str, ...] = Field(("site-01",), min_length=1)
    models: tuple[ModelSpec, ...] = Field(min_length=1)


# No --profile: the reading of the documentation's example, temperature and humidity.
DEFAULT = Profile(
    name=DEFAULT_PROFILE,
    description="Climate sensors: temperature and humidity.",
    sites=("site-01",),
    models=(ModelSpec(name="climate", share=1.0, sensors=("temperature", "humidity")),),
)


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped in simulators/profiles/."""
    folder = resources.files("simulators") / "profiles"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str | None) -> Profile:
    """A shipped profile by name, or a TOML file by path; ValueError naming the problem."""
    if name_or_path is None or name_or_path == DEFAULT_PROFILE:
        return DEFAULT
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"profile {path}: {exc.strerror}") from exc
        default_name = path.stem
    else:
        resource = resources.files("simulators") / "profiles" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ValueError(
                f"no profile {name_or_path!r}; shipped: {', '.join(builtin_profiles())} "
                "(or give a .toml file)"
            )
        text = resource.read_text(encoding="utf-8")
        default_name = name_or_path
    try:
        data = tomllib.loads(text)
        data.setdefault("name", default_name)
        return Profile.model_validate(data)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"profile {name_or_path}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"profile {name_or_path}: {problems}") from exc
