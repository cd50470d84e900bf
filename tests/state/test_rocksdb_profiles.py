"""RocksDB machine profiles: each opens, passes the state conformance suite, and applies its
options (read back from the OPTIONS file RocksDB writes, and from the shared cache).

The conformance tests (``test_conformance.py``, ``test_map_entries.py``) are collected here a
second time with ``backend_spec`` overridden: bare RocksDB under each profile.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.cli import main
from eddies.state import Batch, StateBackend, open_backend
from eddies.state.rocksdb import (
    PROFILES,
    WRITE_BUFFER_BYTES,
    RocksDbProfile,
    RocksDbStateBackend,
    read_options_file,
)

HERE = Path(__file__).parent


@dataclass
class ProfileSpec:
    """conftest's BackendSpec for bare RocksDB under a profile."""

    path: Path
    profile: str
    kind: str = "rocksdb"
    ttl: bool = False
    persistent: bool = True

    def open_inner(self) -> StateBackend:
        return RocksDbStateBackend(self.path, profile=self.profile)

    def open(self) -> StateBackend:
        return self.open_inner()


@pytest.fixture(params=sorted(PROFILES))
def backend_spec(request: pytest.FixtureRequest, tmp_path: Path) -> ProfileSpec:
    return ProfileSpec(tmp_path / "state", request.param)


def _borrow(filename: str) -> None:
    """Collect ``filename``'s test functions and fixtures in this module too."""
    spec = importlib.util.spec_from_file_location(f"_profiles_{filename[:-3]}", HERE / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, obj in vars(module).items():
        fixture = type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(
            obj, "_pytestfixturefunction")
        test = name.startswith("test_") and inspect.isfunction(obj)
        if (test or fixture) and name != "backend_spec":
            globals()[f"{name}_under_profile" if test else name] = obj


_borrow("test_conformance.py")
_borrow("test_map_entries.py")


# -- the profiles themselves ---------------------------------------------------------------------


def test_profiles_are_budgets_sized_for_machine_classes() -> None:
    small, medium, large = PROFILES["small"], PROFILES["medium"], PROFILES["large"]
    assert (small.block_cache_mb, medium.block_cache_mb, large.block_cache_mb) == (64, 512, 4096)
    assert (small.background_jobs, medium.background_jobs, large.background_jobs) == (2, 4, 8)
    assert small.write_buffer_mb <= medium.write_buffer_mb <= large.write_buffer_mb
    for p in PROFILES.values():
        assert p.total_write_buffer_mb == p.block_cache_mb // 2, "memtables: half the budget"
        assert p.bloom_bits_per_key == 10
        assert p == RocksDbProfile.from_memory_budget(p.block_cache_mb, p.name)


def test_memory_budget_derives_every_option() -> None:
    p = RocksDbProfile.from_memory_budget(100)
    assert p == RocksDbProfile("100mb", block_cache_mb=100, write_buffer_mb=2,
                               max_write_buffers=2, total_write_buffer_mb=50, background_jobs=2)
    assert RocksDbProfile.from_memory_budget(1024).write_buffer_mb == 16
    assert RocksDbProfile.from_memory_budget(10**6).write_buffer_mb == 16, "capped"
    for bad in (0, 15, 64.0, "64"):
        with pytest.raises(ConfigError, match="memory_budget_mb"):
            RocksDbProfile.from_memory_budget(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_options_are_applied(name: str, tmp_path: Path) -> None:
    profile = PROFILES[name]
    with RocksDbStateBackend(tmp_path, profile=name) as db:
        assert db.profile is profile
        batch = Batch()
        for i in range(2_000):
            batch.put("s", i.to_bytes(4, "big"), b"v" * 100)
        db.write(batch)
        usage = db.memory_usage()
        assert usage is not None and usage["memtables"] > 0, "memtables charged to the manager"
        assert usage["block_cache"] >= usage["memtables"], "and to the shared block cache"
        assert db.get("s", (7).to_bytes(4, "big")) == b"v" * 100
    options = read_options_file(tmp_path)
    assert options["DBOptions"]["max_background_jobs"] == str(profile.background_jobs)
    for cf in ("default", "s"):
        cf_opts = options[f'CFOptions "{cf}"']
        assert cf_opts["write_buffer_size"] == str(profile.write_buffer_mb << 20)
        assert cf_opts["max_write_buffer_number"] == str(profile.max_write_buffers)
        table = options[f'TableOptions/BlockBasedTable "{cf}"']
        assert table["filter_policy"].startswith("bloomfilter")
        assert table["cache_index_and_filter_blocks"] == "true"
        assert table["pin_l0_filter_and_index_blocks_in_cache"] == "true"
    # reopen under another profile: the options are per open, the data stays
    with RocksDbStateBackend(tmp_path, memory_budget_mb=32) as db:
        assert db.get("s", (7).to_bytes(4, "big")) == b"v" * 100
    assert read_options_file(tmp_path)['CFOptions "s"']["write_buffer_size"] == str(2 << 20)


def test_default_options_are_unchanged(tmp_path: Path) -> None:
    db = open_backend(f"rocksdb:{tmp_path}")
    try:
        assert isinstance(db, RocksDbStateBackend) and db.profile is None
        assert db.memory_usage() is None
        batch = Batch()
        batch.put("s", b"k", b"v")
        db.write(batch)
    finally:
        db.close()
    options = read_options_file(tmp_path)
    assert options['CFOptions "s"']["write_buffer_size"] == str(WRITE_BUFFER_BYTES)
    assert options['CFOptions "s"']["max_write_buffer_number"] == "2"  # RocksDB's default
    assert options['TableOptions/BlockBasedTable "s"']["cache_index_and_filter_blocks"] == "false"


def test_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown RocksDB profile 'huge'.*small, medium, large"):
        RocksDbStateBackend(tmp_path / "a", profile="huge")
    with pytest.raises(ConfigError, match="not both"):
        RocksDbStateBackend(tmp_path / "b", profile="small", memory_budget_mb=64)
    with pytest.raises(ConfigError, match="state='rocksdb:DIR'"):
        open_backend("memory", rocksdb_profile="small")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists(), "nothing created"


class Totals(ed.KeyedProcessFunction):
    total = ed.MapState("total")

    def on_event(self, event, ctx):
        self.total.put("n", self.total.get("n", 0) + event["n"], metadata={"last": event["n"]})
        yield {"key": ctx.key, "n": self.total.get("n")}


def _job(src: Path, out: Path) -> ed.Job:
    job = ed.Job("totals")
    (job.source(ed.sources.jsonl(str(src)), timestamp="ts")
     .key_by("k").process(Totals(), name="totals").sink(ed.sinks.jsonl(str(out))))
    return job


def test_run_local_and_cli_take_a_profile(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"k": k, "n": i, "ts": i}) + "\n"
                           for i, k in enumerate("abab")))
    state = tmp_path / "state"
    ed.run_local(_job(src, tmp_path / "out.jsonl"), f"rocksdb:{state}",
                 rocksdb_profile="medium")
    assert read_options_file(state)["DBOptions"]["max_background_jobs"] == "4"
    with RocksDbStateBackend(state, read_only=True) as view:
        assert view.count("total") == 2
    jobfile = tmp_path / "jobfile.py"
    jobfile.write_text(
        "import eddies as ed\n"
        "class Totals(ed.KeyedProcessFunction):\n"
        "    total = ed.MapState('total')\n"
        "    def on_event(self, event, ctx):\n"
        "        self.total.put('n', self.total.get('n', 0) + event['n'])\n"
        "        yield {'n': self.total.get('n')}\n"
        "job = ed.Job('cli-totals')\n"
        f"(job.source(ed.sources.jsonl({str(src)!r}), timestamp='ts').key_by('k')\n"
        f" .process(Totals(), name='totals').sink(ed.sinks.jsonl({str(tmp_path / 'o2')!r})))\n"
    )
    cli_state = tmp_path / "cli-state"
    result = CliRunner().invoke(main, ["run", f"{jobfile}:job", "--state", f"rocksdb:{cli_state}",
                                       "--rocksdb-profile", "small", "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_options_file(cli_state)["DBOptions"]["max_background_jobs"] == "2"
    assert read_options_file(cli_state)['CFOptions "total"']["write_buffer_size"] == str(2 << 20)
    bad = CliRunner().invoke(main, ["run", f"{jobfile}:job", "--rocksdb-profile", "small"])
    assert bad.exit_code == 1 and "state='rocksdb:DIR'" in bad.output
