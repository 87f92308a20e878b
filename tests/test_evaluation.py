import math

import numpy as np
import pandas as pd
import pytest
import torch

from disback_pipeline.diffusion.config import SamplerConfig
from disback_pipeline.diffusion.data import GaussianMixture2D, load_digits_source
from disback_pipeline.evaluation.convergence import speedup_report
from disback_pipeline.evaluation.features import FeatureSpec, inception_extractor, train_domain_classifier
from disback_pipeline.evaluation.metrics import exact_kl, gmm_metrics, knn_log_density
from disback_pipeline.evaluation.quality import fid_against, quality, reference_statistics

RING = GaussianMixture2D.ring(8, 1.0, 0.05)


def test_knn_density_of_a_gaussian():
    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(20000, 2)), rng.normal(size=(4000, 2))
    exact = -math.log(2 * math.pi) - 0.5 * (q**2).sum(1)
    # unbiased on average (each single estimate has variance ~ 1/k)
    assert np.mean(knn_log_density(x, q, k=10) - exact) == pytest.approx(0.0, abs=0.03)
    assert np.mean(knn_log_density(x, x[:4000], k=10, exclude_self=True)
                   - (-math.log(2 * math.pi) - 0.5 * (x[:4000] ** 2).sum(1))) == pytest.approx(0.0, abs=0.03)


def test_exact_metrics_reward_the_truth_and_punish_collapse():
    true, _ = RING.sample(5000, torch.Generator().manual_seed(3))
    good = gmm_metrics(RING, true)
    assert abs(good["reverse_kl"]) < 0.06 and abs(good["forward_kl"]) < 0.06
    assert good["mode_coverage"] == 1.0 and good["precision"] > 0.98 and good["frechet_distance"] < 1e-3
    collapsed = RING.means[0] + 0.05 * torch.randn(5000, 2, generator=torch.Generator().manual_seed(4))
    bad = gmm_metrics(RING, collapsed)
    # one mode of eight: the NLL and precision look fine, the KLs and coverage do not
    assert bad["nll"] == pytest.approx(good["nll"], abs=0.1) and bad["precision"] > 0.98
    assert bad["reverse_kl"] == pytest.approx(math.log(8), abs=0.1)
    assert bad["forward_kl"] > 3 and bad["mode_coverage"] == 0.125
    blurred = true + 0.1 * torch.randn_like(true)
    assert exact_kl(RING, blurred)["reverse_kl"] > 0.5


def test_fid_is_zero_on_identical_features_and_grows_with_shift():
    feats = np.random.default_rng(0).normal(size=(2000, 8))
    ref = reference_statistics(feats)
    assert fid_against(ref, feats) == pytest.approx(0.0, abs=1e-6)
    assert fid_against(ref, feats + 1.0) == pytest.approx(8.0, rel=1e-3)  # ||mu shift||^2
    assert len(str(ref["hash"])) == 64
    assert str(reference_statistics(feats)["hash"]) == str(ref["hash"])


def test_domain_extractor_accuracy_and_fid_orders_sample_quality():
    digits = load_digits_source()
    trained = train_domain_classifier(digits, steps=400, seed=0)
    assert trained.test_accuracy > 0.9
    spec = FeatureSpec("domain", trained.net, trained.config, trained.test_accuracy)
    ref = reference_statistics(spec.extract(digits.images))
    real = quality(digits.images[:1000], digits, spec, ref)
    noisy = quality((digits.images[:1000] + 0.5 * torch.randn(1000, 1, 8, 8)).clamp(-1, 1), digits, spec, ref)
    assert real["fid"] < noisy["fid"]
    assert real["extractor"] == "domain" and real["n_samples"] == 1000 and real["reference_hash"] == str(ref["hash"])


def test_absent_inception_weights_explain_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt.*evaluation.inception_path"):
        inception_extractor(tmp_path, "clean")
    with pytest.raises(FileNotFoundError, match="extractor: domain"):
        inception_extractor(None)
    with pytest.raises(ValueError, match="legacy_tensorflow"):
        inception_extractor(tmp_path, "tf")


def _hist(values, iters, stage1=0.0, per_it=1.0):
    return pd.DataFrame({"iteration": iters, "wall_clock_s": [stage1 + per_it * i for i in iters],
                         "stage": "backtracking", "proxy_fid": values})


def test_speedup_report():
    baseline = _hist([9, 6, 4, 3, 2], [100, 200, 300, 400, 500])
    disback = _hist([5, 2, 1.5, 1.2, 1.0], [100, 200, 300, 400, 500], stage1=150.0)
    rep = speedup_report(baseline, disback, "proxy_fid")
    assert rep["target_quality"] == 2 and rep["disback_iterations_to_target"] == 200
    assert rep["speedup_iterations"] == pytest.approx(2.5)
    assert rep["speedup_wallclock"] == pytest.approx(500 / 350)  # stage 1 counted
    assert rep["final_quality"] == {"baseline": 2.0, "disback": 1.0}
    slower = speedup_report(baseline, _hist([9, 8, 7, 6, 5], [100, 200, 300, 400, 500]), "proxy_fid")
    assert math.isnan(slower["speedup_iterations"])
    with pytest.raises(ValueError, match="eval_every"):
        speedup_report(baseline.drop(columns="proxy_fid"), disback, "proxy_fid")


def test_batched_sampling_gives_the_same_samples_as_one_batch():
    from disback_pipeline.diffusion.backbones import build_network
    from disback_pipeline.evaluation.quality import sample_generator, sample_teacher

    torch.manual_seed(0)
    net = build_network({"backbone": "mlp", "dim": 2, "width": 16, "num_blocks": 1, "emb_dim": 8}).eval()
    src = GaussianMixture2D.ring(4, 1.0, 0.1, conditional=True)
    sampler = SamplerConfig(nfe=5)
    whole, tps = sample_teacher(net, src, 100, 3, sampler)
    chunked, _ = sample_teacher(net, src, 100, 3, sampler, batch_size=32)  # 32, 32, 32, 4
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    assert chunked.shape == (100, 2) and tps > 0
    g_whole, _ = sample_generator(net, src, 100, 3, 2.5)
    g_chunked, _ = sample_generator(net, src, 100, 3, 2.5, batch_size=7)
    torch.testing.assert_close(g_chunked, g_whole, atol=1e-5, rtol=1e-5)
    other, _ = sample_teacher(net, src, 100, 4, sampler, batch_size=32)
    assert not torch.allclose(other, whole)


@pytest.mark.parametrize("bad, message", [(0, "must be >= 1, got 0"), (-5, "must be >= 1, got -5"),
                                          (2.5, "must be an integer, got 2.5"), (True, "must be an integer, got True"),
                                          ("64", "must be an integer, got '64'")])
def test_evaluation_batch_size_must_be_a_positive_integer(bad, message):
    from disback_pipeline.diffusion.config import ConfigError, EvaluationConfig, from_dict

    with pytest.raises(ConfigError, match=f"evaluation.batch_size {message}"):
        from_dict(EvaluationConfig, {"batch_size": bad}, "evaluation")
    assert from_dict(EvaluationConfig, {"batch_size": 64}, "evaluation").batch_size == 64


def test_image_grid_enlarges_tiles_and_keeps_them_apart():
    from disback_pipeline.reporting import image_grid

    images = torch.ones(5, 1, 8, 8)  # white 8x8 tiles
    grid = image_grid(images, ncols=3)
    # each tile 4x enlarged (32 px, nearest neighbour), 4 px of grey around and between them: 2 rows of 3
    assert grid.shape == (2 * 32 + 3 * 4, 3 * 32 + 4 * 4, 1) and grid.dtype == np.uint8
    assert (grid[4:36, 4:36] == 255).all() and (grid[:4] == 128).all() and (grid[:, 36:40] == 128).all()
    assert (grid[40:72, 76:108] == 128).all()  # the sixth place is empty
    checker = torch.tensor([[-1.0, 1.0], [1.0, -1.0]]).repeat(4, 4)[None, None]
    tile = image_grid(checker, scale=2, gap=1)[1:17, 1:17, 0]
    assert (tile[0:2, 0:2] == 0).all() and (tile[0:2, 2:4] == 255).all()  # each pixel a 2x2 block


def test_features_do_not_depend_on_the_layout_images_arrive_in():
    """Grey images permuted from NHWC have a channel stride of 1, which the CPU's convolutions read as
    channels-last; the extractors copy such input to the standard layout, so the features are bit-identical."""
    from disback_pipeline.evaluation.features import DomainClassifier, domain_features, standard_layout

    torch.manual_seed(0)
    net = DomainClassifier().eval()
    nhwc = torch.rand(40, 8, 8, 1) * 2 - 1
    permuted, standard = nhwc.permute(0, 3, 1, 2), nhwc.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
    assert permuted.is_contiguous() and permuted.stride() != standard.stride()  # torch calls both contiguous
    assert standard_layout(permuted).stride() == standard.stride() and standard_layout(standard) is standard
    assert np.array_equal(domain_features(net, permuted), domain_features(net, standard))
