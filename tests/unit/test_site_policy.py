"""Federations' release and site-request policies: defaults filled in, every bad field refused
naming it, and the pure rules of releases (approval counts) and their channels."""

from __future__ import annotations

import pytest

from fedstream.errors import ChannelNotFound, InvalidArgument
from fedstream.state import ReleaseRecord
from fedstream_scheduler.releases import complete, counts
from fedstream_scheduler.site_policy import (
    channel_policy,
    check_releases,
    check_site_requests,
    site_request_policy,
)


def test_a_release_policy_gets_its_defaults():
    checked = check_releases({"channels": {"production": {"require": {"metric": "accuracy", "min": 0.8}},
                                           "staging": {}}})
    assert checked == {"channels": {
        "production": {"admin_approvals": 1, "site_approvals": 0, "require": {"metric": "accuracy", "min": 0.8}},
        "staging": {"admin_approvals": 1, "site_approvals": 0, "require": None},
    }}


@pytest.mark.parametrize(("doc", "named"), [
    ({"channels": {"production": {"admin_approvals": -1}}}, "releases.channels.production.admin_approvals"),
    ({"channels": {"production": {"site_approvals": -2}}}, "releases.channels.production.site_approvals"),
    ({"channels": {"production": {"admins": 2}}}, "releases.channels.production.admins"),
    ({"channel": {}}, "releases.channel"),
    ({"channels": {"Prod!": {}}}, "releases.channels.Prod!"),
    ({"channels": {"-x": {}}}, "releases.channels.-x"),
    ({"channels": {"production": {"require": {"metric": "accuracy"}}}}, "releases.channels.production.require.min"),
    ({"channels": {"production": {"require": {"metric": "a b", "min": 1}}}},
     "releases.channels.production.require.metric"),
    ({"channels": {"production": {"admin_approvals": 0, "site_approvals": 0}}}, "releases.channels.production"),
    ({"channels": {f"c{i}": {} for i in range(33)}}, "releases.channels"),
])
def test_a_bad_release_policy_is_refused_naming_the_field(doc, named):
    with pytest.raises(InvalidArgument) as e:
        check_releases(doc)
    assert e.value.public.startswith(named + ":"), e.value.public


def test_a_site_request_policy_refuses_by_default():
    assert check_site_requests({}) == {"mode": "refuse", "max_per_site_per_day": 2}
    assert site_request_policy({}).mode == "refuse"
    assert check_site_requests({"mode": "auto", "max_per_site_per_day": 5})["max_per_site_per_day"] == 5


@pytest.mark.parametrize(("doc", "named"), [
    ({"mode": "sometimes"}, "site_requests.mode"),
    ({"max_per_site_per_day": 0}, "site_requests.max_per_site_per_day"),
    ({"max_per_site_per_day": -3}, "site_requests.max_per_site_per_day"),
    ({"modes": "auto"}, "site_requests.modes"),
])
def test_a_bad_site_request_policy_is_refused_naming_the_field(doc, named):
    with pytest.raises(InvalidArgument) as e:
        check_site_requests(doc)
    assert e.value.public.startswith(named + ":"), e.value.public


def test_a_channel_not_listed_is_not_found_by_name():
    releases = check_releases({"channels": {"production": {}}})
    assert channel_policy(releases, "fed", "production").admin_approvals == 1
    with pytest.raises(ChannelNotFound, match=r"'canary'.*fed.*production"):
        channel_policy(releases, "fed", "canary")
    with pytest.raises(ChannelNotFound, match="none"):
        channel_policy({}, "fed", "production")


def test_a_release_is_complete_when_both_counts_are_met():
    rec = ReleaseRecord("rel-1", "fed", "production", "run/000001", needed={"admins": 2, "sites": 1})
    rec.approvals = [{"kind": "admin", "id": "token/a", "name": "", "unix": 1.0},
                     {"kind": "site", "id": "site-a", "name": "site-a", "unix": 2.0}]
    assert counts(rec) == (1, 1) and not complete(rec)
    rec.approvals.append({"kind": "admin", "id": "token/b", "name": "", "unix": 3.0})
    assert counts(rec) == (2, 1) and complete(rec)
