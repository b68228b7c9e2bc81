"""The scorer file's schema (format version 2): every way a file can differ from what the code
expects is one ``ArtifactError`` line naming the entry (exit code 2 from predict, no traceback);
a version-1 file loads through the documented migration; GAN folders get the same care."""

import copy
import json
import logging

import pytest
import torch

from anogan.engine import gan_store
from anogan.engine.artifact import VERSION, load_artifact, load_gan_checkpoint, read_artifact, save_artifact
from anogan.engine.inference import run_scorer
from anogan.post_processing.calibration import Calibration
from anogan.scorers import EncoderScorer, LatentMapping
from anogan.utils.errors import ArtifactError, GANLoadError
from conftest import CPU, random_split, small_nets

ARCH = {"latent_dim": 16, "channels": 3, "image_size": 32, "g_width": 8, "d_width": 8, "d_norm": "batch", "spectral_norm": False}
PREP = {"image_size": 32, "channels": 3, "resize": "stretch"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A latent scorer file (3 search steps, not the class default 400) and its payload."""
    folder = tmp_path_factory.mktemp("artifact")
    g, d = small_nets()
    scorer = LatentMapping(g, d, iterations=3, seed=1)
    cal = Calibration.fit(torch.arange(30.0), torch.ones(30), torch.zeros(30, dtype=torch.long))
    path = save_artifact(folder / "scorer.pt", scorer, ARCH, cal, PREP, "32-true", {"seed": 1})
    return path, torch.load(path, weights_only=True)


def _without(d: dict, dotted: str) -> dict:
    out = copy.deepcopy(d)
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    del node[last]
    return out


def _with(d: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(d)
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[last] = value
    return out


def _renamed(d: dict, key: str, new: str) -> dict:
    out = copy.deepcopy(d)
    out[new] = out.pop(key)
    return out


def _state_without_one(payload: dict) -> dict:
    out = copy.deepcopy(payload)
    del out["state_dict"][next(k for k in out["state_dict"] if k.startswith("discriminator."))]
    return out


def _state_reshaped(payload: dict) -> dict:
    out = copy.deepcopy(payload)
    key = next(k for k in out["state_dict"] if k.startswith("generator.") and k.endswith("weight"))
    out["state_dict"][key] = out["state_dict"][key][:1]
    return out


VARIANTS = {
    "entry missing": (lambda p: _without(p, "preprocess"), "entry 'preprocess' is missing"),
    "entry renamed": (lambda p: _renamed(p, "calibration", "calibrations"), "entry 'calibration' is missing"),
    "entry added": (lambda p: _with(p, "notes", "hand edit"), "unknown entry 'notes'"),
    "wrong type": (lambda p: _with(p, "precision", 32), "entry 'precision' is int, not a string"),
    "nested entry missing": (lambda p: _without(p, "calibration.normal_scores"), "entry 'calibration.normal_scores' is missing"),
    "nested wrong type": (lambda p: _with(p, "preprocess.image_size", "32"), "entry 'preprocess.image_size' is str"),
    "hparam removed": (lambda p: _without(p, "scorer.hparams.iterations"), "entry 'scorer.hparams.iterations' is missing"),
    "hparam added": (lambda p: _with(p, "scorer.hparams.temperature", 2.0), "unknown entry 'scorer.hparams.temperature'"),
    "hparam wrong type": (lambda p: _with(p, "scorer.hparams.iterations", "3"), "entry 'scorer.hparams.iterations' is str"),
    "state dict truncated": (_state_without_one, "entry 'state_dict' lacks 'discriminator."),
    "state dict reshaped": (_state_reshaped, "entry 'state_dict' holds 'generator."),
    "unknown scorer": (lambda p: _with(p, "scorer.target", "anogan.scorers.Magic"), "no scorer of this anogan"),
    "newer version": (lambda p: _with(p, "version", VERSION + 1), f"format version {VERSION + 1}"),
    "not a scorer file": (lambda p: {"weights": torch.zeros(1)}, "not an anogan scorer file"),
    "unknown rule": (lambda p: _with(p, "calibration.threshold_rule", "median"), "entry 'calibration.threshold_rule'"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_damaged_file_is_one_line_naming_the_entry(variant, saved, tmp_path, caplog):
    from anogan.cli.predict import main

    make, message = VARIANTS[variant]
    path = tmp_path / "scorer.pt"
    torch.save(make(saved[1]), path)
    with pytest.raises(ArtifactError) as err:
        load_artifact(path)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="anogan.cli.predict"):
        assert main([f"ckpt={path}", f"input={tmp_path}"]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0].getMessage() and errors[0].exc_info is None


def test_a_file_cut_short_is_one_line(saved, tmp_path):
    path = tmp_path / "scorer.pt"
    path.write_bytes(saved[0].read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="not a readable anogan scorer file") as err:
        read_artifact(path)
    assert "\n" not in str(err.value)


class _Code:  # an object torch.load must not build from an untrusted file
    pass


@pytest.mark.parametrize("kind", ["random bytes", "a pickled object", "a zip cut short"])
def test_an_untrusted_file_is_one_line_without_advice_to_load_it_unsafely(saved, tmp_path, kind):
    """Whatever the bytes, the message is ours: never PyTorch's advice to retry with weights_only=False."""
    import io
    import os

    if kind == "random bytes":
        data = os.urandom(4096)
    elif kind == "a pickled object":
        buf = io.BytesIO()
        torch.save({"format": "anogan-scorer", "x": _Code()}, buf)
        data = buf.getvalue()
    else:
        data = saved[0].read_bytes()[:-300]
    path = tmp_path / "scorer.pt"
    path.write_bytes(data)
    for how in ({}, {"data": data}):
        with pytest.raises(ArtifactError, match="is not a readable anogan scorer file") as err:
            read_artifact(path, **how)
        message = str(err.value)
        assert "\n" not in message and "weights_only" not in message and "copy the run's scorer.pt again" in message


def test_the_file_read_once_loads_as_the_file(saved):
    """load_artifact(path, data=the file's bytes) builds the same scorer as from the path."""
    data = saved[0].read_bytes()
    by_path, _ = load_artifact(saved[0])
    by_bytes, payload = load_artifact(saved[0], data=data)
    assert payload["version"] == VERSION
    assert all(torch.equal(by_path.state_dict()[k], v) for k, v in by_bytes.state_dict().items())


def test_the_intact_file_loads_with_the_runs_settings(saved):
    scorer, payload = load_artifact(saved[0])
    assert scorer.hparams.iterations == 3 and payload["version"] == VERSION
    assert Calibration.from_state(payload["calibration"]).thresholds["fpr_target"] == 0.05


def _as_v1(payload: dict) -> dict:
    """What anogan wrote before the calibration module: version 1, three thresholds, no combine."""
    out = copy.deepcopy(payload)
    out["version"] = 1
    cal = out["calibration"]
    cal["thresholds"] = {k: cal["thresholds"][k] for k in ("fpr", "f1", "youden")}
    del cal["combine"]
    del out["gan_arch"]["d_norm"], out["gan_arch"]["spectral_norm"]
    return out


def test_a_version_1_file_loads_through_the_migration_and_scores_the_same(saved, tmp_path):
    path = tmp_path / "v1.pt"
    torch.save(_as_v1(saved[1]), path)
    old, payload = load_artifact(path)
    new, _ = load_artifact(saved[0])
    assert payload["version"] == VERSION and payload["calibration"]["combine"] is None
    assert payload["gan_arch"]["d_norm"] == "batch" and payload["gan_arch"]["spectral_norm"] is False
    thresholds = payload["calibration"]["thresholds"]
    assert thresholds["fpr_target"] == 0.05 and thresholds["f1_value"] is None
    assert thresholds["fpr_observed"] == saved[1]["calibration"]["thresholds"]["fpr_observed"]
    data = random_split(3)
    assert torch.equal(run_scorer(old, data, CPU)["score"], run_scorer(new, data, CPU)["score"])
    # a version-1 file missing a scorer setting is refused like a damaged one, naming its version
    torch.save(_without(_as_v1(saved[1]), "scorer.hparams.iterations"), path)
    with pytest.raises(ArtifactError, match="'scorer.hparams.iterations' is missing"):
        load_artifact(path)
    torch.save(_without(_as_v1(saved[1]), "preprocess"), path)
    with pytest.raises(ArtifactError, match=r"'preprocess' is missing \(format version 1\)"):
        load_artifact(path)


def test_a_combination_survives_the_file(tmp_path):
    g, d = small_nets()
    scorer = EncoderScorer(g, d, width=8)
    comps = {"score": torch.rand(20) + 1, "residual": torch.rand(20) + 1, "discrimination": torch.rand(20) + 1}
    cal = Calibration.fit(comps, torch.ones(20), torch.zeros(20, dtype=torch.long), combine=["residual", "discrimination"])
    path = save_artifact(tmp_path / "s.pt", scorer, ARCH, cal, PREP, "32-true", {})
    _, payload = load_artifact(path)
    again = Calibration.from_state(payload["calibration"])
    assert again.combine == ["residual", "discrimination"] and torch.equal(
        again(comps, torch.ones(20))["score"], cal(comps, torch.ones(20))["score"]
    )
    broken = torch.load(path, weights_only=True)
    broken["calibration"]["combine"]["mean"] = torch.zeros(3)
    torch.save(broken, path)
    with pytest.raises(ArtifactError, match="calibration.combine.mean"):
        load_artifact(path)


# ---------------------------------------------------------------------- GAN folders and gan.checkpoint
@pytest.fixture()
def gan_folder(tmp_path):
    g, d = small_nets()
    return gan_store.save_gan(g, d, ARCH, tmp_path / "gan", {"cache_key": "abc"})


def _edit_json(folder, change):
    meta = json.loads((folder / "gan.json").read_text())
    (folder / "gan.json").write_text(json.dumps(change(meta)))


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: _edit_json(f, lambda m: {k: v for k, v in m.items() if k != "latent_dim"}), "lacks 'latent_dim'"),
        (lambda f: _edit_json(f, lambda m: {**m, "latent_dim": "16"}), "'latent_dim' is \"16\", not an integer"),
        (lambda f: _edit_json(f, lambda m: {**m, "spectral_norm": 1}), "'spectral_norm' is 1, not bool"),
        (lambda f: _edit_json(f, lambda m: {**m, "latentdim": 16}), "unknown key 'latentdim'"),
        (lambda f: (f / "gan.json").write_text("{not json"), "is not readable JSON"),
        (lambda f: (f / "gan.json").write_text("[16]"), "not an object"),
        (lambda f: torch.save(torch.zeros(3), f / "generator.pt"), "is not a state dict of the generator"),
        (lambda f: (f / "discriminator.pt").write_bytes(b"PK\x03\x04 cut"), "is not a PyTorch state dict"),
        (
            lambda f: torch.save(dict(list(torch.load(f / "generator.pt").items())[1:]), f / "generator.pt"),
            "do not fit the configured model",
        ),
    ],
)
def test_a_damaged_gan_folder_is_one_line(gan_folder, damage, message):
    damage(gan_folder)
    with pytest.raises(GANLoadError) as err:
        load_gan_checkpoint(gan_folder.parent, ARCH)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_gan_checkpoint_reads_a_checked_scorer_file(saved, tmp_path):
    g, d = load_gan_checkpoint(saved[0], ARCH)
    want, _ = load_artifact(saved[0])
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), want.generator.state_dict().values()))
    with pytest.raises(GANLoadError, match="latent_dim: checkpoint 16 vs config 32"):
        load_gan_checkpoint(saved[0], {**ARCH, "latent_dim": 32})
    torch.save(_state_without_one(saved[1]), tmp_path / "scorer.pt")
    with pytest.raises(ArtifactError, match="lacks"):
        load_gan_checkpoint(tmp_path, ARCH)
