"""What the corpus pipeline does before and around its parts: planning notes which files can carry sentence ids (so
a corpus without ids skips the duplicate-id index, and with it a pass over every row), and each actor runs torch on
as many threads as the CPUs Ray gave it.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from berg_ray.corpus import list_inputs, mark_duplicate_ids, plan_parts, read_part


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_planning_notes_which_files_can_carry_ids(tmp_path):
    write_lines(tmp_path / "a.txt", ["A plain sentence.", '{"id": "looks like json but is text"}'])
    write_lines(tmp_path / "b.jsonl", [json.dumps({"sentence": f"Sentence {i}."}) for i in range(5)])
    write_lines(tmp_path / "c.jsonl", [json.dumps({"sentence": "No id here."}), json.dumps({"id": "x", "sentence":
                                                                                           "An id."})])
    # a key spelled with an escape is still "id" once decoded: the scan must not miss it
    write_lines(tmp_path / "d.jsonl", ['{"\\u0069d": "y", "sentence": "Escaped key."}'])
    pd.DataFrame({"sentence": ["P one.", "P two."]}).to_parquet(tmp_path / "e.parquet")
    pd.DataFrame({"id": ["p1", "p2"], "sentence": ["Q one.", "Q two."]}).to_parquet(tmp_path / "f.parquet")
    files = list_inputs(str(tmp_path))
    parts = plan_parts(files, 2)
    flags: dict[str, list[bool | None]] = {}
    for part in parts:
        flags.setdefault(part.path, []).append(part.may_carry_ids)
    # every part of a file carries the file's flag (b.jsonl: 5 rows in parts of 2)
    assert flags == {"a.txt": [False], "b.jsonl": [False] * 3, "c.jsonl": [True], "d.jsonl": [True],
                     "e.parquet": [False], "f.parquet": [True]}
    escaped = [p for p in parts if p.path == "d.jsonl"][0]
    assert [r["sentence_id"] for r in read_part(escaped)[0]] == ["y"]  # the reader does decode it as an id


def test_a_corpus_without_ids_needs_no_index_and_no_ray(tmp_path, monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("a Ray task, object or instance was asked for")

    write_lines(tmp_path / "a.txt", ["One.", "Two.", "Three."])
    write_lines(tmp_path / "b.jsonl", [json.dumps({"sentence": f"Sentence {i}."}) for i in range(7)])
    files = list_inputs(str(tmp_path))
    parts = plan_parts(files, 3)
    for name in ("init", "remote", "put", "get"):  # whether or not the session's shared Ray runs
        monkeypatch.setattr(ray, name, refuse)
    assert mark_duplicate_ids(parts, files) == parts  # returned before any Ray task


@pytest.mark.parametrize(("num_cpus", "threads"), [(2, 2), (1, 1), (0.5, 1)])
def test_actor_torch_threads_follow_the_cpus_it_holds(ray_session, num_cpus, threads):
    """What PartEncoder and ExtractorActor call first. Ray sets OMP_NUM_THREADS only for some shapes; a fractional
    CPU still runs one thread."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    class Probe:
        def threads(self) -> tuple[int, int]:
            import torch

            from berg_ray.distributed import use_assigned_cpus

            torch.set_num_threads(7)  # whatever was there before
            return use_assigned_cpus(), torch.get_num_threads()

    actor = Probe.remote()
    try:
        assert ray.get(actor.threads.remote()) == (threads, threads)
    finally:
        ray.kill(actor)
