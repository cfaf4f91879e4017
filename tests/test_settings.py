"""Each setting is written once: the service's flags, environment variables and documented table come
from one table, the help states the real defaults, and the names of lung methods, engines and job
states agree wherever they are used."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _serve_parser():
    from coviax.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["serve"]


def test_flags_env_vars_and_docs_are_one_set():
    from coviax_service.config import ServiceConfig
    from coviax_service.settings import SETTINGS, markdown_table

    flags = {a.option_strings[0] for a in _serve_parser()._actions if a.option_strings and a.dest != "help"}
    assert flags == {s.flag for s in SETTINGS}
    # every ServiceConfig field is a setting, except those with no flag (say why here)
    no_flag = {"tokens",  # COVIAX_TOKENS only (secrets do not belong on a command line)
               "extra", "max_chunk_bytes"}  # set by code and tests, not by operators
    assert {f.name for f in dataclasses.fields(ServiceConfig)} == {s.name for s in SETTINGS} | no_flag
    documented = set(re.findall(r"`(COVIAX_[A-Z_]+)`", (ROOT / "docs/SERVICE.md").read_text().split("## Configuration")[1]
                                .split("\n## ")[0]))
    assert documented == {s.env for s in SETTINGS} | {"COVIAX_TOKENS", "COVIAX_LUNGMASK_WEIGHTS"}
    assert markdown_table() in (ROOT / "docs/SERVICE.md").read_text(), \
        "docs/SERVICE.md is stale: paste the output of `python -m coviax_service.settings`"


def test_help_states_the_real_defaults():
    from coviax_service.config import ServiceConfig
    from coviax_service.settings import SETTINGS

    helps = {a.dest: a.help for a in _serve_parser()._actions}
    defaults = ServiceConfig()
    for s in SETTINGS:
        assert f"({s.env}, default {s.describe_default()})" in helps[s.name]
        if s.default_text is None and getattr(defaults, s.name) is not None:
            value = getattr(defaults, s.name)
            assert s.describe_default() == (f"{value:g}" if isinstance(value, float) else str(value))
    assert "(COVIAX_ENGINE, default unet)" in helps["engine"] and defaults.engine == "unet"


def test_every_env_var_is_read(tmp_path):
    from coviax_service.settings import from_env_and_flags
    from coviax_service.settings import SETTINGS

    values = {str: "x", int: "7", float: "2.5", Path: str(tmp_path)}
    for s in SETTINGS:
        raw = s.choices[-1] if s.choices else values[s.kind]
        if s.name in ("tls_cert", "tls_key", "tls_client_ca", "tokens_file", "device", "weights"):
            continue  # need files / a valid device; covered by tests/test_service_security.py
        config = from_env_and_flags({}, {s.env: raw})
        assert str(getattr(config, s.name)) == str(s.parse(raw)), s.env


def test_deployments_set_only_known_variables():
    from coviax_service.settings import SETTINGS, TOKENS_ENV

    known = {s.env for s in SETTINGS} | {TOKENS_ENV}
    for path in [*ROOT.glob("k8s/**/*config*.yaml")]:
        names = set(re.findall(r"^\s+(COVIAX_[A-Z_]+):", path.read_text(), re.M))
        assert names <= known, (path, names - known)


def test_lung_methods_and_engines_are_one_list():
    from coviax.cli import build_parser
    from coviax.lesions import ENGINES, SERVED_ENGINES
    from coviax.lungs import LUNG_METHODS
    from coviax.pipeline import SegmentOptions
    from coviax_client.cli_common import LUNG_METHODS as CLIENT_LUNG_METHODS
    from coviax_service.config import ServiceConfig

    assert CLIENT_LUNG_METHODS == LUNG_METHODS
    assert set(SERVED_ENGINES) <= set(ENGINES)
    seg = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices["segment"]
    by_dest = {a.dest: a for a in seg._actions}
    assert tuple(by_dest["lungs"].choices) == LUNG_METHODS and by_dest["lungs"].default == SegmentOptions.lungs
    assert tuple(by_dest["engine"].choices) == ENGINES and by_dest["engine"].default == SegmentOptions.engine
    assert ServiceConfig.engine == SegmentOptions.engine == "unet"
    assert "default" in by_dest["engine"].help and "unet" in by_dest["engine"].help


def test_job_states_are_the_api_states():
    from coviax_api.coviax.v1 import coviax_pb2 as pb
    from coviax_service.jobs.model import JobState

    api = [n for n in pb.JobState.keys() if n != "JOB_STATE_UNSPECIFIED"]
    assert [s.value for s in JobState] == api
    for state in JobState:
        assert pb.JobState.Name(pb.JobState.Value(state)) == state


@pytest.mark.parametrize("name", ["kmeans", "unet"])
def test_served_engines_are_accepted(name):
    from coviax_service.settings import from_env_and_flags

    assert from_env_and_flags({"engine": name}, {}).engine == name
