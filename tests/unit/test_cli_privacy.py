"""The privacy and secure aggregation flags: the same run spec over the admin API and gRPC,
valid for the scheduler, and removed on update."""

from __future__ import annotations

from google.protobuf import json_format

from fedstream_cli import build_parser
from fedstream_cli.dev_grpc import run_spec
from fedstream_cli.runspec import spec_from_args
from fedstream_scheduler.models import RunSpec
from fedstream_scheduler.servicer import spec_fields

FLAGS = ["--task", "digits", "--dp", "local", "--clip-norm", "1.5", "--noise-multiplier", "0.8",
         "--epsilon-budget", "8", "--delta", "1e-5", "--secure-aggregation", "--max-dropout", "0.2"]
PRIVACY = {"mode": "local", "clip_norm": 1.5, "noise_multiplier": 0.8, "epsilon_budget": 8.0, "delta": 1e-5}


def test_privacy_flags_make_the_same_spec_over_rest_and_grpc():
    parser = build_parser()

    rest = spec_from_args(parser.parse_args(["federations", "create", "f", *FLAGS]))
    grpc = run_spec(spec_from_args(parser.parse_args(["grpc", "run-start", *FLAGS])))

    assert rest["privacy"] == PRIVACY and rest["secure_aggregation"] == {"max_dropout": 0.2}
    parsed = RunSpec.model_validate(spec_fields(grpc))
    assert parsed.privacy is not None and parsed.privacy.spec().to_dict() == PRIVACY
    assert parsed.secure_aggregation is not None and parsed.secure_aggregation.max_dropout == 0.2
    assert json_format.MessageToDict(grpc.secure_aggregation) == {"maxDropout": 0.2}


def test_secure_aggregation_alone_takes_the_defaults_and_update_removes_both():
    parser = build_parser()

    alone = spec_from_args(parser.parse_args(["federations", "create", "f", "--task", "digits", "--secure-aggregation"]))
    none = spec_from_args(parser.parse_args(["federations", "create", "f", "--task", "digits"]))
    update = parser.parse_args(["federations", "update", "f", "--no-dp", "--no-secure-aggregation"])

    assert RunSpec.model_validate(alone).secure_aggregation is not None
    assert "privacy" not in none and "secure_aggregation" not in none
    assert update.no_dp and update.no_secure_aggregation
