"""The benchmark at a tiny size: the JSON it prints, not its timings."""

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench

TINY = [
    "--sizes", "32", "64",
    "--latent-dim", "8",
    "--width", "8",
    "--search-batch-size", "8",
    "--single-images", "2",
    "--search-steps", "2",
    "--search-steps-large", "2",
    "--train-batch-size", "8",
    "--train-batch-size-large", "8",
    "--train-steps", "2",
    "--train-steps-large", "2",
    "--warmup", "1",
    "--rounds", "1",
    "--scorer-images", "4",
    "--scorer-steps", "2",
    "--phase-overrides", "model.latent_dim=8", "model.g_width=8", "model.d_width=8", "data.batch_size=8",
    "mapping.batch_size=4", "mapping.iterations=2",
    "--phase-batches", "1",
    "--phase-images", "2",
]  # fmt: skip

SIZE_KEYS = {
    "search_speedup",
    "search_speedup_fp32",
    "search_speedup_bf16",
    "search_max_rel_diff",
    "search_max_rel_diff_bf16",
    "train_speedup_fp32",
    "train_speedup_default",
    "train_speedup_bf16",
    "lightning_vs_matched_plain_fp32",
    "search_gain_vs_before_fp32",
    "search_alpha0_gain_fp32",
    "search",
    "train",
}


def test_tiny_benchmark_prints_one_json_object_with_every_key(capsys):
    bench.main(TINY)
    result = json.loads(capsys.readouterr().out)  # stdout holds the JSON object and nothing else

    for key in {"torch", "threads", "precision", "memory", "timing", "64px"} | SIZE_KEYS:
        assert key in result, key
    assert set(result["64px"]) >= SIZE_KEYS
    assert result["precision"] == "32-true"  # the project's default (conf/trainer/cpu.yaml)
    for res in (result, result["64px"]):
        assert res["search_max_rel_diff"] <= 1e-5  # batching is exact in fp32
    assert result["64px"]["image_size"] == 64
    scorers = result["scorers"]
    for key in (
        "latent_2",
        "latent_2_no_maps",
        "latent_2_early_stop",
        "encoder",
        "encoder_no_maps",
        "encoder_search_10",
        "encoder_onnxruntime",
    ):
        assert set(scorers[key]) >= {"images_s"}, key
    # each scorer really ran its own number of search steps per image
    assert scorers["latent_2"]["mean_steps"] == 2 and scorers["encoder"]["mean_steps"] == 0
    assert scorers["encoder_search_10"]["mean_steps"] == 10 and scorers["latent_2_early_stop"]["mean_steps"] <= 2
    assert {"maps_overhead_latent", "maps_overhead_encoder"} <= set(scorers)
    # per phase: the estimate against the measured cost, and fp32 against bf16-mixed
    phases = result["phases"]
    assert set(phases) == {"cifar_car_cpu_anogan", "cifar_car", "timing"}
    assert set(phases["cifar_car_cpu_anogan"]["estimate_vs_measured"]) == {"gan_batch_s", "encoder_batch_s", "scoring_image_s"}
    assert set(phases["cifar_car"]["estimate_vs_measured"]) == {"gan_batch_s", "scoring_image_s"}  # no encoder
    for res in phases["cifar_car_cpu_anogan"], phases["cifar_car"]:
        assert set(res["precision_comparison"]) == {"32-true", "bf16-mixed"}
        for k, v in res["estimate_vs_measured"].items():
            assert v["measured"] > 0 and abs(v["ratio"] - v["estimate"] / v["measured"]) <= 0.005 + 1e-9, k


def test_search_batch_size_defaults_to_the_mapping_config():
    from omegaconf import OmegaConf

    conf = OmegaConf.load(bench.CONF_DIR / "mapping" / "latent.yaml")
    assert bench.parse_args([]).search_batch_size == conf.batch_size
    assert bench.parse_args(["--search-batch-size", "64"]).search_batch_size == 64
    quick = bench.parse_args(["--quick"])
    assert quick.search_steps < bench.parse_args([]).search_steps


def test_the_speed_ups_keep_the_scores():
    """search_copy (BatchNorm folded, channels_last) is the same function as the plain networks, and
    the cached copies follow new weights."""
    import torch

    from anogan.scorers import LatentMapping

    g, d = bench.build_nets(32, 8, 8, 8, seed=0)
    g.train(), d.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            d(g(torch.randn(16, 8, 1, 1)))
    x, z0 = bench.random_images(4, 32, seed=1), torch.randn(4, 8)
    mapping = LatentMapping(g, d, alpha=0.3, iterations=10, lr=0.05)
    hp = dict(alpha=0.3, lr=0.05, betas=(0.9, 0.999))
    before = bench.reference_search(g, d, x, z0, iterations=10, **hp)
    assert torch.allclose(mapping.search(x, z0)["score"], before, rtol=1e-5)

    g.load_state_dict({k: v * 10 if k.endswith("weight") else v for k, v in g.state_dict().items()})  # in place
    after = LatentMapping(g, d, alpha=0.3, iterations=10, lr=0.05).search(x, z0)["score"]
    assert not torch.allclose(after, before, rtol=1e-3)
    assert torch.equal(mapping.search(x, z0)["score"], after)
