"""`generate` against careless and hostile manifests, bundles and options; kill and resume.

Runs on a bundle of untrained tiny networks (``hostile.tiny_bundle``): what is tested is the job around the
networks, not their quality.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

import hostile
from ecgflowcmr.cli import main
from ecgflowcmr.commands import generate as generate_mod
from ecgflowcmr.commands.generate import SETTINGS_FILE, generate, shard_of
from ecgflowcmr.errors import InputError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile.tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good ECGs (ids a, b, c) and their manifest."""
    return hostile.ecg_cohort(tmp_path_factory.mktemp("cohort"), ["a", "b", "c"]).parent


def _failed(out: Path) -> dict[str, str]:
    with open(out / "failed.csv", newline="") as fh:
        return {row["subject_id"]: row["reason"] for row in csv.DictReader(fh)}


def _write_manifest(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject_id", "split", "ecg_path"])
        writer.writerows(rows)
    return path


def test_paths_family(bundle: Path, cohort: Path, tmp_path: Path) -> None:
    """Ids that would write outside --out, collide or hide are refused into failed.csv; the batch goes on."""
    os.mkfifo(cohort / "ecg" / "fifo.dat")
    (cohort / "ecg" / "fifo.hea").write_text("fifo 12 500 5000\n" + "".join(
        f"fifo.dat 16 1000.0(0)/mV 16 0 0 0 0 {lead}\n" for lead in
        ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")))
    (cohort / "ecg" / "loop.hea").symlink_to("loop.hea")
    rows = [["a", "test", "ecg/r0.hea"],
            ["../../escaped", "test", "ecg/r1.hea"], ["/tmp/absolute", "test", "ecg/r1.hea"],
            ["", "test", "ecg/r1.hea"], [".hidden", "test", "ecg/r1.hea"], ["x" * 200, "test", "ecg/r1.hea"],
            ["A", "test", "ecg/r1.hea"],                                  # same file name as "a" on macOS
            ["tab\tid", "test", "ecg/r1.hea"],
            ["=HYPERLINK(1)", "test", "ecg/missing.hea"],                 # a formula in failed.csv
            ["noecg", "test", ""], ["fifo", "test", "ecg/fifo.hea"], ["loop", "test", "ecg/loop.hea"],
            ["nul", "test", "ecg/r1\0.hea"],
            ["b", "test", "ecg/r1.hea"]]
    manifest = _write_manifest(cohort / "hostile.csv", rows)
    with open(manifest, "a") as fh:
        fh.write("c,test,ecg/r2.hea,\n")                                  # a trailing comma: still fine
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    out = tmp_path / "out"
    summary = generate(bundle, manifest, out, formats=["npy"], batch_size=2, steps=1)
    assert summary.generated == 3 and summary.failed == len(rows) - 2
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before   # nothing written beside --out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([f"{shard_of(s)}/{s}.npy" for s in "abc"] + ["failed.csv", SETTINGS_FILE])
    failed = _failed(out)
    assert "'=HYPERLINK(1)" in failed                                      # escaped for spreadsheets
    for sid, fragment in (("../../escaped", "separator"), ("/tmp/absolute", "separator"), ("", "empty"),
                          (".hidden", "dot"), ("x" * 200, "longer"), ("A", "more than once"),
                          ("tab\tid", "control"), ("noecg", "empty ecg_path"), ("fifo", "not a regular file"),
                          ("loop", "loop"), ("nul", "NUL")):
        assert fragment in failed[sid], (sid, failed[sid])


def test_settings_are_recorded_and_resume_must_match(bundle: Path, cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = generate(bundle, cohort / "manifest.csv", out, formats=["npy"], steps=1, seed=3)
    settings = json.loads((out / SETTINGS_FILE).read_text())
    assert (settings["seed"], settings["steps"], settings["sampler"], settings["formats"]) == (3, 1, "euler", ["npy"])
    assert len(settings["bundle_digest"]) == 64
    again = generate(bundle, cohort / "manifest.csv", out, formats=["npy"], steps=1, seed=3)
    assert (first.generated, again.generated, again.skipped_existing) == (3, 0, 3)
    for change, field in (({"seed": 4}, "seed"), ({"steps": 2}, "steps"), ({"guidance": 1.5}, "guidance"),
                          ({"sampler": "heun"}, "sampler"), ({"formats": ["npy", "nii"]}, "formats")):
        kwargs = {"formats": ["npy"], "steps": 1, "seed": 3} | change
        with pytest.raises(InputError, match=f"other settings.*{field}"):
            generate(bundle, cohort / "manifest.csv", out, **kwargs)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        generate(bundle, cohort / "manifest.csv", other, formats=["npy"], steps=1)


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 1), ("ancestral", 3)])
def test_batch_changes_results_only_by_rounding(bundle: Path, cohort: Path, tmp_path: Path, sampler: str,
                                                steps: int) -> None:
    """What the README states: an item's cine depends on its batch by float summation order only (the
    ancestral sampler's fresh noise too comes from the item's own generator)."""
    for batch in (1, 3):
        generate(bundle, cohort / "manifest.csv", tmp_path / f"b{batch}", formats=["npy"], steps=steps,
                 batch_size=batch, sampler=sampler)
    for sid in "abc":
        one, three = (np.load(tmp_path / f"b{b}" / shard_of(sid) / f"{sid}.npy") for b in (1, 3))
        np.testing.assert_allclose(one, three, rtol=0, atol=1e-5)
    if sampler == "ancestral":  # and it is not Euler: the fresh noise changed the cines
        generate(bundle, cohort / "manifest.csv", tmp_path / "euler", formats=["npy"], steps=steps, sampler="euler")
        euler = np.load(tmp_path / "euler" / shard_of("a") / "a.npy")
        assert np.abs(euler - np.load(tmp_path / "b1" / shard_of("a") / "a.npy")).max() > 1e-3


@pytest.mark.parametrize(("kwargs", "where"), [
    ({"steps": 0}, "--steps"), ({"steps": 10**9}, "--steps"), ({"guidance": float("nan")}, "--guidance"),
    ({"guidance": float("inf")}, "--guidance"), ({"guidance": 1e308}, "--guidance"), ({"sampler": "rk4"}, "--sampler"),
])
def test_sampler_options_are_validated(bundle: Path, cohort: Path, tmp_path: Path, kwargs: dict, where: str) -> None:
    with pytest.raises(InputError) as info:
        generate(bundle, cohort / "manifest.csv", tmp_path / "out", formats=["npy"], **kwargs)
    assert info.value.where == where


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


@pytest.mark.parametrize(("case", "fragment"), [
    ("not_json", "not valid JSON"), ("list", "JSON object"), ("deep", "not valid JSON|nested deeper"),
    ("sampling_type", "sampling"), ("spacing", "spacing_mm"), ("steps_huge", "sampling.steps"),
    ("template_key", "'template'"), ("width_huge", "model.dit.width"), ("size_mismatch", "do not belong"),
    ("nan_weights", "non-finite weights"),
])
def test_malformed_bundles_are_refused(bundle: Path, cohort: Path, tmp_path: Path, case: str, fragment: str,
                                       capsys) -> None:
    from safetensors.torch import load_file, save_file

    b = _copy_bundle(bundle, tmp_path)
    meta = b / "bundle.json"
    if case == "not_json":
        meta.write_text("{not json")
    elif case == "list":
        meta.write_text("[1, 2]")
    elif case == "deep":
        meta.write_text("[" * 100_000 + "]" * 100_000)
    elif case == "sampling_type":
        _edit_json(meta, lambda d: d.update(sampling="fast"))
    elif case == "spacing":
        _edit_json(meta, lambda d: d.update(geometry={"spacing_mm": ["a", -1]}))
    elif case == "steps_huge":
        _edit_json(meta, lambda d: d["sampling"].update(steps=10**9))
    elif case == "template_key":
        save_file({"mean": load_file(str(b / "template.safetensors"))["template"]}, str(b / "template.safetensors"))
    elif case == "width_huge":
        _edit_json(b / "flow" / "config.json", lambda d: d["dit"].update(width=10**9, heads=1))
    elif case == "size_mismatch":
        _edit_json(b / "flow" / "config.json", lambda d: d["dit"].update(width=32))
    elif case == "nan_weights":
        tensors = load_file(str(b / "flow" / "model.safetensors"))
        next(t for t in tensors.values() if t.is_floating_point()).fill_(float("nan"))
        save_file(tensors, str(b / "flow" / "model.safetensors"))
    code = main(["generate", "--model", str(b), "--ecg", str(cohort / "manifest.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    import re

    assert re.search(fragment, err), err


def test_non_finite_outputs_are_failures(bundle: Path, cohort: Path, tmp_path: Path) -> None:
    """α = 1e308 passes config validation (finite) but makes z0 infinite: every item fails, none 'generated'."""
    b = _copy_bundle(bundle, tmp_path)
    _edit_json(b / "flow" / "config.json", lambda d: d.update(alpha=1e308))
    out = tmp_path / "out"
    summary = generate(b, cohort / "manifest.csv", out, formats=["npy"], steps=1)
    assert (summary.generated, summary.failed) == (0, 3)
    assert all("non-finite" in reason for reason in _failed(out).values())
    assert not list(out.rglob("*.npy"))


def test_cli_one_line_errors(bundle: Path, cohort: Path, tmp_path: Path, capsys) -> None:
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((12, 5000), np.float32))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--ecg", str(tmp_path / "missing.hea")], "not found"),            # a single bad file: exit 2
        (["--ecg", str(cohort / "manifest.csv"), "--out", str(a_file)], "it is a file"),
        (["--ecg", str(cohort / "manifest.csv"), "--out", str(a_file / "sub")], "parent of it is a file"),
        (["--ecg", str(cohort / "manifest.csv"), "--steps", "0"], "--steps"),
    ]
    for extra, fragment in cases:
        args = ["generate", "--model", str(bundle), "--out", str(tmp_path / "out"), *extra]
        assert main(args) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


class SimulatedCrash(RuntimeError):
    pass


def test_generate_resumes_after_interruption(bundle: Path, cohort: Path, tmp_path: Path, monkeypatch) -> None:
    """Killed after two items, rerun: finished items are not redone, nothing partial is visible, and the
    result equals an uninterrupted run bit for bit (same batch size)."""
    real, written = generate_mod._write_outputs, []

    def flaky(stem, *args, **kwargs):
        if len(written) == 2:
            raise SimulatedCrash
        written.append(stem.name)
        real(stem, *args, **kwargs)

    monkeypatch.setattr(generate_mod, "_write_outputs", flaky)
    out = tmp_path / "out"
    with pytest.raises(SimulatedCrash):
        generate(bundle, cohort / "manifest.csv", out, formats=["npy", "nii"], steps=1, batch_size=1)
    assert not list(out.rglob(".tmp-*")) and not (out / "failed.csv").exists()
    monkeypatch.setattr(generate_mod, "_write_outputs", real)
    resumed = generate(bundle, cohort / "manifest.csv", out, formats=["npy", "nii"], steps=1, batch_size=1)
    assert (resumed.generated, resumed.skipped_existing) == (1, 2)
    fresh = generate(bundle, cohort / "manifest.csv", tmp_path / "fresh", formats=["npy", "nii"], steps=1,
                     batch_size=1)
    assert fresh.generated == 3
    for sid in "abc":
        np.testing.assert_array_equal(np.load(out / shard_of(sid) / f"{sid}.npy"),
                                      np.load(tmp_path / "fresh" / shard_of(sid) / f"{sid}.npy"))


def _decoder_run(bundle: Path, tmp_path: Path, change: str) -> Path:
    """A copy of the bundle's VAE run folder with ``change``'s tensors moved: a stand-in for a decoder fine-tuning
    (``decoder``), a run whose encoder moved (``encoder``) or whose template did (``template``)."""
    import shutil

    from safetensors.torch import load_file, save_file

    run = Path(shutil.copytree(bundle.parent / "vae", tmp_path / f"vae_{change}"))
    name = "template.safetensors" if change == "template" else "model.safetensors"
    tensors = load_file(str(run / name))
    save_file({k: t + 0.05 if k.startswith(change) else t for k, t in tensors.items()}, str(run / name))
    return run


def test_swap_decoder_keeps_everything_but_the_decoder(bundle: Path, cohort: Path, tmp_path: Path) -> None:
    from ecgflowcmr.bundle import read_bundle, swap_decoder

    run = _decoder_run(bundle, tmp_path, "decoder")
    new = swap_decoder(bundle, run, tmp_path / "swapped")
    _, meta, _ = read_bundle(new)
    assert meta["decoder"]["from_run"] == str(run.resolve())
    for name in ("pamae/model.safetensors", "flow/model.safetensors", "flow/config.json", "template.safetensors"):
        assert (new / name).read_bytes() == (bundle / name).read_bytes(), name
    assert (new / "vae/model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    old_cines = generate(bundle, cohort / "manifest.csv", tmp_path / "old", formats=["npy"], steps=1, seed=3)
    new_cines = generate(new, cohort / "manifest.csv", tmp_path / "new", formats=["npy"], steps=1, seed=3)
    assert old_cines.generated == new_cines.generated == 3
    a = np.load(tmp_path / "old" / shard_of("a") / "a.npy")
    b = np.load(tmp_path / "new" / shard_of("a") / "a.npy")
    assert a.shape == b.shape and not np.array_equal(a, b)  # the same latent, decoded by the new decoder


@pytest.mark.parametrize(("change", "fragment"), [("encoder", "encoder is not the bundle's"),
                                                  ("template", "not the bundle's template")])
def test_swap_decoder_refuses_other_latents(bundle: Path, tmp_path: Path, capsys, change: str,
                                            fragment: str) -> None:
    run = _decoder_run(bundle, tmp_path, change)
    args = ["swap-decoder", "--model", str(bundle), "--vae", str(run), "--out", str(tmp_path / "swapped")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "swapped").exists()
    good = _decoder_run(bundle, tmp_path, "decoder")
    (tmp_path / "taken").mkdir()
    assert main([*args[:4], str(good), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
