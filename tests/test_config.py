"""Config: TOML < environment < flags; bad input fails at start naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.cli import apply_subscription_flags, build_parser, resolve_config
from gateway.config import (
    CheckRangeStep,
    ConvertUnitsStep,
    DropDuplicatesStep,
    GatewayConfig,
    load_config,
)
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "gateway.example.toml"


def _field_names(model: type[BaseModel], seen: set[str] | None = None) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", (annotation,)):
            for inner in getattr(candidate, "__args__", (candidate,)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    names |= _field_names(inner)
    return names


def test_example_config_loads_and_equals_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    assert load_config(EXAMPLE).model_dump() == GatewayConfig().model_dump()


def test_example_config_documents_every_field() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")

    names = _field_names(GatewayConfig)
    for step in (CheckRangeStep, ConvertUnitsStep, DropDuplicatesStep):
        names |= set(step.model_fields)
    missing = sorted(
        n for n in names if f"{n} =" not in text and f"[{n}]" not in text and f".{n}]" not in text
    )
    assert not missing, f"deploy/gateway.example.toml lacks: {missing}"


def test_unknown_keys_are_rejected_at_every_level_with_their_path(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        "colour = 1\n[mqtt]\nhots = 'x'\n[mqtt.tls]\nverfy = false\n[files]\nfsync = 'sometimes'\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = "\n".join(err.value.problems)
    for where in ("colour", "mqtt.hots", "mqtt.tls.verfy", "files.fsync"):
        assert where in text


def test_environment_overrides_file_and_flags_override_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[mqtt]\nhost = 'from-file'\nport = 1111\nclient_id = 'file-id'\n")
    monkeypatch.setenv("GATEWAY_MQTT__PORT", "2222")
    monkeypatch.setenv("GATEWAY_MQTT__CLIENT_ID", "env-id")
    args = build_parser().parse_args(
        ["run", "--config", str(path), "--client-id", "flag-id", "--topic", "a/#", "--qos", "0"]
    )
    config = resolve_config(args)
    assert config.mqtt.host == "from-file"
    assert config.mqtt.port == 2222
    assert config.mqtt.client_id == "flag-id"
    assert [(s.filter, s.qos) for s in config.mqtt.subscriptions] == [("a/#", 0)]


def test_flags_alone_are_enough_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--broker", "mqtts://alice@broker.example:8884",
            "--data-dir", str(tmp_path),
            "--metrics-addr", "0.0.0.0:9200",
            "--topic", "x/+/+/telemetry",
            "--topic", "$share/g/y/+/+/telemetry",
        ]
    )  # fmt: skip
    config = apply_subscription_flags(resolve_config(args), args)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username) == (
        "broker.example",
        8884,
        "alice",
    )
    assert config.mqtt.tls.enabled
    assert config.mqtt.tls.verify
    assert config.files.data_dir == tmp_path
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9200)
    assert [s.effective_filter for s in config.mqtt.subscriptions] == [
        "x/+/+/telemetry",
        "$share/g/y/+/+/telemetry",
    ]


def test_a_password_in_the_broker_url_is_refused() -> None:
    args = build_parser().parse_args(["run", "--broker", "mqtt://u:secret@h:1883"])
    with pytest.raises(ConfigError, match="password"):
        resolve_config(args)


def test_password_comes_from_a_file_and_is_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-value\n")
    path = tmp_path / "gw.toml"
    path.write_text(f"[mqtt]\nusername = 'gw'\npassword_file = '{secret}'\n")
    config = load_config(path)
    assert config.mqtt.read_password() == "s3cr3t-value"
    out = _cli("check-config", str(path))
    assert out.returncode == 0
    assert "s3cr3t" not in out.stdout + out.stderr


def test_check_config_masks_an_env_password(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[mqtt]\nusername = 'gw'\n")
    out = _cli("check-config", str(path), env={"GATEWAY_MQTT__PASSWORD": "hunter2-secret"})
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["mqtt"]["password"] == "**********"
    assert "hunter2" not in out.stdout


def test_check_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[mqtt]\nport = 70000\nclient_id = '../evil'\n[pipeline]\nworkers = 0\n")
    out = _cli("check-config", str(path))
    assert out.returncode == 2
    for where in ("mqtt.port", "mqtt.client_id", "pipeline.workers"):
        assert where in out.stderr


def test_check_config_rejects_a_range_whose_min_is_above_its_max(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        "[[steps]]\nkind = 'drop_duplicates'\n"
        "[[steps]]\nkind = 'check_range'\nmetric = 'temperature'\nmin = 150\nmax = -60\n"
    )
    out = _cli("check-config", str(path))
    assert out.returncode == 2
    assert "steps.1.check_range" in out.stderr
    assert "min (150) is greater than max (-60)" in out.stderr


def test_not_toml_and_missing_file_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[mqtt\nport=")
    assert _cli("check-config", str(path)).returncode == 2
    out = _cli("run", "--config", str(tmp_path / "absent.toml"))
    assert out.returncode == 2
    assert "no such file" in out.stderr


def test_templates_must_name_whole_levels(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[[mqtt.subscriptions]]\ntemplate = 'a/dev-{device_id}/+'\n")
    with pytest.raises(ConfigError, match=r"mqtt\.subscriptions\.0\.template"):
        load_config(path)


def test_example_toml_is_valid_toml() -> None:
    assert tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=ROOT,
    )


def test_broker_auth_and_tls_flags_as_gateway_sim_has_them(tmp_path: Path) -> None:
    for name in ("pw", "ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x\n")
    args = build_parser().parse_args(
        [
            "run",
            "--broker", "mqtt://broker.example:8883",
            "--username", "gw",
            "--password-file", str(tmp_path / "pw"),
            "--ca-file", str(tmp_path / "ca.pem"),
            "--cert", str(tmp_path / "client.pem"),
            "--key", str(tmp_path / "client.key"),
        ]
    )  # fmt: skip
    mqtt = resolve_config(args).mqtt
    assert (mqtt.host, mqtt.port, mqtt.username) == ("broker.example", 8883, "gw")
    assert mqtt.password_file == tmp_path / "pw"
    assert mqtt.read_password() == "x"
    assert mqtt.tls.enabled
    assert (mqtt.tls.ca_file, mqtt.tls.cert_file, mqtt.tls.key_file) == (
        tmp_path / "ca.pem",
        tmp_path / "client.pem",
        tmp_path / "client.key",
    )
    alias = build_parser().parse_args(["run", "--cert-file", "c", "--key-file", "k"])
    assert (alias.cert, alias.key) == (Path("c"), Path("k"))


def test_a_cert_without_its_key_is_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "client.pem").write_text("x")
    args = build_parser().parse_args(["run", "--cert", str(tmp_path / "client.pem")])
    with pytest.raises(ConfigError, match=r"mqtt\.tls"):
        resolve_config(args)


@pytest.mark.parametrize(
    ("argv", "template", "subscribed"),
    [
        (["--topic", "home/#"], "home/#", "home/#"),
        (["--topic", "home/#", "--format", "flat_json"], "home/#", "home/#"),
        (["--format", "zigbee2mqtt"], "zigbee2mqtt/{device_id}", "zigbee2mqtt/+"),
        (
            ["--format", "tasmota", "--topic", "tele/+/SENSOR"],
            "tele/{device_id}/SENSOR",
            "tele/+/SENSOR",
        ),
        (
            ["--template", "v3/+/devices/{device_id}/up", "--format", "ttn_v3"],
            None,
            "v3/+/devices/+/up",
        ),
        (["--template", "a/{device_id}"], "a/{device_id}", "a/+"),
    ],
)
def test_topic_template_and_format_flags_make_the_subscription(
    argv: list[str], template: str | None, subscribed: str
) -> None:
    args = build_parser().parse_args(["run", *argv])
    (sub,) = resolve_config(args).mqtt.subscriptions
    assert sub.effective_template == (template or "v3/+/devices/{device_id}/up")
    assert sub.effective_filter == subscribed


def test_a_template_flag_that_cannot_read_the_topic_flag_is_a_config_error() -> None:
    args = build_parser().parse_args(
        ["run", "--topic", "home/#", "--template", "sensors/{site}/{device_id}/telemetry"]
    )
    with pytest.raises(ConfigError) as err:
        resolve_config(args)
    assert err.value.problems == [
        "mqtt.subscriptions.0 (from --topic/--template/--format): filter 'home/#' and template "
        "'sensors/{site}/{device_id}/telemetry' cannot match the same topic: no message the "
        "filter delivers can be read"
    ]


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ("format = 'xml'", "mqtt.subscriptions.0.format: 'xml' is not one of"),
        ("format = 'json'\n[mqtt.subscriptions.mapping]\nts = 'received'", "mapping is for format"),
        ("format = 'mapping'", "format 'mapping' needs a [mapping] table"),
        (
            "format = 'mapping'\n[mqtt.subscriptions.mapping]\nrename = { a = 'b c' }",
            "mqtt.subscriptions.0.mapping.rename: a = 'b c': not a metric name",
        ),
        (
            "format = 'mapping'\n[mqtt.subscriptions.mapping]\nts = 'topic:x'",
            "mqtt.subscriptions.0.mapping.ts: 'topic:x': expected received | payload:<path>",
        ),
        (
            "format = 'mapping'\n[mqtt.subscriptions.mapping]\nts = 'received|payload:t'",
            "'received' is always there, so it can only come last",
        ),
        (
            "format = 'mapping'\n[mqtt.subscriptions.mapping]\nunits = { t = 'deg C' }",
            "mqtt.subscriptions.0.mapping.units: t = 'deg C': a unit is 1-32 printable ASCII",
        ),
        (
            "format = 'zigbee2mqtt'\n[mqtt.subscriptions.mapping]\ncolour = 1",
            "mqtt.subscriptions.0.mapping.colour: Extra inputs are not permitted",
        ),
        (
            "format = 'mapping'\ntemplate = 'a/{device_id}'\n[mqtt.subscriptions.mapping]\n"
            "device_id = 'topic:room'",
            "mapping.device_id: 'topic:room' names no field of template 'a/{device_id}'",
        ),
        (
            "format = 'mapping'\n[mqtt.subscriptions.mapping]\nroot = 'a..b'",
            "mqtt.subscriptions.0.mapping.root: 'a..b' is not a payload path",
        ),
    ],
)
def test_a_bad_mapping_is_refused_at_load_naming_the_field(
    tmp_path: Path, toml: str, where: str
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(f"[[mqtt.subscriptions]]\n{toml}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert where in "\n".join(err.value.problems)
