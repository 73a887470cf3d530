"""What a phase run is: its identity, recorded in `<phase>/identity.json` and checked by
every reader that takes a number or a weight from the phase (no TensorFlow).

A phase's identity is
- its flags: the `Config` fields that change its result (those a run may change and still
  resume, `RESUMABLE`, are left out, and so is `--data_dir`: a path, not the data);
- its data: the fingerprint of the photos it read (`input_pipeline.data_fingerprint`: the
  content of every image file, never the folder's path or the files' times);
- its seed and phase name (both flags too);
- its parent: the identity digest of the phase it starts from (finetune: the head it loads;
  evaluate: the trained phase it scores), so a head trained on other photos makes every
  later phase another phase.

`digest(identity)` names it in 16 hex digits. A study keys its shared phases by it
(`research.grid.Trial.shared_dir`) and records the digest it expects of each phase in
trial.json; the runner, the report and a run writing through a link compare.
"""
from __future__ import annotations

import hashlib
import json
import os

from tapefit.flags.config import DATA, RESUMABLE, Config, fields_with, keyed
from tapefit.layout import paths
from tapefit.layout.atomic import read_json_file

VERSION = 1
# The data's location: its content (the fingerprint) stands in for it.
PATH_FIELDS = frozenset({"data_dir"})
_LEFT_OUT = frozenset(fields_with(RESUMABLE)) | PATH_FIELDS
_DATA_FIELDS = fields_with(DATA)
# What evaluate itself reads of its flags (the rest of the model is the trained run's).
EVALUATION_RUN_FIELDS = ("batch_size", "loop", "tta", "jit_compile", "mixed_precision",
                         "deterministic", "strategy", "steps_per_execution")
_KEYS = ("version", "phase", "seed", "flags", "data", "parent")


def flags_of(cfg: Config) -> dict:
    """The flags that make the phase's result what it is (see the module docstring)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in _LEFT_OUT and keyed(k, v)}


def identity(cfg: Config, data: str, parent: str | None) -> dict:
    """The identity of the phase `cfg` runs, on data of fingerprint `data`, started from
    the phase whose digest is `parent` (None: none, or a --init_checkpoint file)."""
    record = {"version": VERSION, "phase": cfg.phase, "seed": cfg.seed, "flags": flags_of(cfg),
              "data": data, "parent": parent}
    return {**record, "digest": digest(record)}


def evaluation_identity(data_cfg: Config, cfg: Config, data: str, parent: str | None) -> dict:
    """The identity of an evaluate run: what it scores (`parent`, the trained phase), on
    which data (`data_cfg`'s data flags, `data` their content) and how (the evaluate
    run's own `EVALUATION_RUN_FIELDS` of `cfg`: batch size, loop, --tta... which can change
    a prediction's last bit). The model's flags are the trained run's (in the parent)."""
    flags = {k: v for k, v in flags_of(data_cfg).items() if k in _DATA_FIELDS}
    flags.update({k: getattr(cfg, k) for k in EVALUATION_RUN_FIELDS})
    record = {"version": VERSION, "phase": "evaluate", "seed": data_cfg.seed, "flags": flags,
              "data": data, "parent": parent}
    return {**record, "digest": digest(record)}


def digest(record: dict) -> str:
    text = json.dumps({k: record.get(k) for k in _KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read(phase_dir: str) -> tuple[dict | None, str | None]:
    """(the identity recorded in `phase_dir`, None), (None, None) when it records none
    (a run of an older tapefit), or (None, why it is damaged)."""
    path = os.path.join(phase_dir, paths.IDENTITY_JSON)
    if not os.path.lexists(path):
        return None, None
    record, problem = read_json_file(path)
    if problem:
        return None, problem
    missing = [k for k in (*_KEYS, "digest") if k not in record]
    if missing:
        return None, f"no {json.dumps(missing[0])} key"
    if not isinstance(record["digest"], str) or digest(record) != record["digest"]:
        return None, "its \"digest\" does not match its content (edited or damaged)"
    return record, None


def recorded_digest(phase_dir: str) -> str | None:
    """The digest `phase_dir` records, or None (none recorded, or damaged)."""
    record, _ = read(phase_dir)
    return record["digest"] if record else None


def problem(phase_dir: str, expected, what: str | None = None) -> str | None:
    """Why the phase in `phase_dir` is not the one `expected` (an identity, or its digest)
    names, or None. A phase of an older tapefit (no identity.json) is not checked; nor is
    anything when nothing is expected."""
    if not expected:
        return None
    want = expected["digest"] if isinstance(expected, dict) else expected
    record, damaged = read(phase_dir)
    name = what or os.path.basename(os.path.normpath(phase_dir))
    if damaged:
        return f"{name}/{paths.IDENTITY_JSON}: {damaged}"
    if record is None or record["digest"] == want:
        return None
    why = differences(record, expected) if isinstance(expected, dict) else []
    return (f"{name} is another run than this one expects: "
            f"{'; '.join(why) if why else describe(record)}")


def differences(record: dict, expected: dict) -> list[str]:
    """What differs between two identities, in words (seed, data, flags, parent)."""
    out = []
    if record.get("phase") != expected.get("phase"):
        out.append(f"a {record.get('phase')} phase, not {expected.get('phase')}")
    if record.get("seed") != expected.get("seed"):
        out.append(f"seed {record.get('seed')}, not {expected.get('seed')}")
    if record.get("data") != expected.get("data"):
        out.append(f"other data (fingerprint {str(record.get('data'))[:8]}…, not "
                   f"{str(expected.get('data'))[:8]}…)")
    flags, want = record.get("flags") or {}, expected.get("flags") or {}
    if isinstance(flags, dict) and isinstance(want, dict):
        changed = sorted(k for k in set(flags) | set(want)
                         if k not in ("phase", "seed") and json.dumps(flags.get(k), default=str)
                         != json.dumps(want.get(k), default=str))
        if changed:
            out.append("other flags: " + ", ".join(
                f"--{k}={json.dumps(flags.get(k), default=str)} (expected "
                f"{json.dumps(want.get(k), default=str)})" for k in changed[:3])
                + (" …" if len(changed) > 3 else ""))
    if record.get("parent") != expected.get("parent"):
        out.append("started from another earlier phase (parent identity "
                   f"{record.get('parent')}, not {expected.get('parent')})")
    return out


def describe(record: dict) -> str:
    """A few words on which phase `record` is: its phase, seed and data."""
    data = record.get("data")
    return (f"{record.get('phase')} phase, seed {record.get('seed')}, data "
            f"{str(data)[:8] if data else 'unknown'}…, identity {record.get('digest')}")
