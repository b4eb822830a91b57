"""Disk full: an eval whose results root is a small tmpfs that fills mid-run must stop with a clear error,
leave no corrupt record (at most a torn last line, which resume drops), and resume to the uninterrupted
run's records and scores once the filesystem has room again (remounted larger)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from common import cli, corrupt_files, run_to_end
from kill9 import run_records, write_prompts


def _args(results: Path) -> list[str]:
    return cli("eval", "--model", "a", "--model", "b", "--reference", "a", "--backend", "fake", "--n", "2",
               "--max-new-tokens", "64", "--judges", "sentiment,kl", "--prompts", "prompts.jsonl", "--run-id", "r",
               "--results-dir", str(results))


def main(work: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    write_prompts(work / "prompts.jsonl", 400)
    rc, _ = run_to_end(_args(work / "reference"), work, log=work / "reference.log")
    assert rc == 0, (work / "reference.log").read_text()
    size = sum(p.stat().st_size for p in (work / "reference").rglob("*") if p.is_file())
    mnt = work / "tmpfs"
    mnt.mkdir()
    small = max(64, size // 2 // 1024)  # KiB: fills about half way through
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={small}k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        log(f"  disk full: cannot mount a tmpfs here ({mounted.stderr.strip()}); not measured")
        return {"measured": False, "why": mounted.stderr.strip()}
    try:
        rc_full, _ = run_to_end(_args(mnt / "results"), work, log=work / "full.log")
        message = (work / "full.log").read_text(errors="replace")
        run = mnt / "results" / "r"
        corrupt = corrupt_files(mnt / "results")
        torn = [c for c in corrupt if c.endswith("torn last line")]
        records_before = sum(1 for _ in open(run / "generations.jsonl", "rb")) if (run / "generations.jsonl").is_file() else 0
        subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)
        rc_resume, _ = run_to_end(_args(mnt / "results"), work, log=work / "resume.log")
        got, ref = run_records(run), run_records(work / "reference" / "r")
        after = corrupt_files(mnt / "results")
        dup = sum(c - 1 for k in ("gen_keys", "verdict_keys") for c in got[k].values() if c > 1)
        lost = sum(len(set(ref[k]) - set(got[k])) for k in ("gen_keys", "verdict_keys"))
        out = {"measured": True, "tmpfs_kib": small, "results_bytes_needed": size, "exit_code_full": rc_full,
               "error_line": [l for l in message.splitlines() if l.startswith("error:")][-1:],
               "traceback": "Traceback" in message, "records_before_full": records_before,
               "corrupt_after_full": [c for c in corrupt if c not in torn], "torn_last_lines_after_full": len(torn),
               "resume_exit_code": rc_resume, "corrupt_after_resume": after, "duplicated": dup, "lost": lost,
               "scores_equal_uninterrupted": got["scores"] == ref["scores"] and got["gen_text"] == ref["gen_text"],
               "status": got["status"]}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)
    log(f"  disk full ({small} KiB tmpfs, {size} bytes needed): exit {out['exit_code_full']}, {out['error_line']}, "
        f"traceback {out['traceback']}, corrupt records {len(out['corrupt_after_full'])} (torn last lines "
        f"{out['torn_last_lines_after_full']}); resumed: exit {out['resume_exit_code']}, identical "
        f"{out['scores_equal_uninterrupted']}, duplicated {dup}, lost {lost}")
    return out
