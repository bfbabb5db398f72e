"""`fedstream data`: the sample data sets the documents tell users to generate, written by the
command run as a process."""

from __future__ import annotations

from fedstream_tasks.reid.data import training_entries
from fedstream_testing.helpers import run_script


def test_generate_reid_command_writes_loadable_sites(tmp_path):
    done = run_script("fedstream", "data", "generate-reid", "--out", str(tmp_path), "--scale", "0.5", "--public-images", "8")
    assert done.returncode == 0, done.stderr
    for site, ids in (("market", 20), ("duke", 12), ("cuhk", 6), ("viper", 3)):
        assert f"{tmp_path / site}: {ids} identities" in done.stdout
        entries, num_ids = training_entries(tmp_path / site)
        assert entries and num_ids == ids - max(1, ids // 3)
    assert len(list((tmp_path / "public").iterdir())) == 8
    bad = run_script("fedstream", "data", "generate-reid", "--out", str(tmp_path), "--scale", "0")
    assert bad.returncode != 0 and "--scale must be positive" in bad.stderr
