//! The logit-based post-hoc scores against an independent numpy/scipy implementation written
//! from the methods' papers (tests/fixtures/scores/make_fixtures.py), to 1e-5 relative.
use stages::scores::gen::{generalized_entropy_score, GAMMA, TOP};
use stages::scores::gradnorm::gradnorm;
use stages::scores::maxlogit::max_logit;

#[test]
fn maxlogit_and_gen_match_the_python_reference() {
    let document: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/scores/logits.json")).unwrap();
    let cases = document["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-12), "{what}: {got} vs {want}");
    };
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let rows: Vec<Vec<f32>> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
            .collect();
        for (i, row) in rows.iter().enumerate() {
            close(max_logit(row), case["maxlogit"][i].as_f64().unwrap(), &format!("{name} maxlogit {i}"));
            close(
                generalized_entropy_score(row, GAMMA, TOP),
                case["gen"][i].as_f64().unwrap(),
                &format!("{name} gen {i}"),
            );
        }
    }
}

fn rows(value: &serde_json::Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect()
}

/// One case of features.json: features and their logits, the head, the training features.
struct FeatureCase {
    name: String,
    features: Vec<Vec<f32>>,
    logits: Vec<Vec<f32>>,
    train: Vec<Vec<f32>>,
    weight: Vec<Vec<f32>>,
    bias: Vec<f32>,
    expected: serde_json::Value,
}

fn feature_cases() -> Vec<FeatureCase> {
    let document: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/scores/features.json")).unwrap();
    document["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| FeatureCase {
            name: case["name"].as_str().unwrap().to_string(),
            features: rows(&case["features"]),
            logits: rows(&case["logits"]),
            train: rows(&case["train"]),
            weight: rows(&case["weight"]),
            bias: case["bias"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            expected: case.clone(),
        })
        .collect()
}

/// `got` within 1e-5 of `want`, relative (absolute below `floor`).
fn assert_close(got: f64, want: f64, floor: f64, what: &str) {
    assert!((got - want).abs() <= 1e-5 * want.abs().max(floor), "{what}: {got} vs {want}");
}

#[test]
fn gradnorm_matches_finite_differences_of_the_divergence() {
    for case in feature_cases() {
        for (i, (h, f)) in case.features.iter().zip(&case.logits).enumerate() {
            let want = case.expected["gradnorm"][i].as_f64().unwrap();
            assert_close(gradnorm(h, f), want, 0.0, &format!("{} gradnorm {i}", case.name));
        }
    }
}

#[test]
fn react_and_knn_match_the_python_reference() {
    use stages::scores::feature_bank::{percentile, unit};
    use stages::scores::knn::{knn_scores, K};
    use stages::scores::react::react_energy;
    for case in feature_cases() {
        let (name, want) = (&case.name, &case.expected);
        let all: Vec<f64> = case.train.iter().flatten().map(|&v| v as f64).collect();
        let threshold = percentile(&all, 90.0);
        assert_close(
            threshold,
            want["react_threshold"].as_f64().unwrap(),
            1e-6,
            &format!("{name} threshold"),
        );
        for (i, h) in case.features.iter().enumerate() {
            let got = react_energy(h, threshold, &case.weight, &case.bias);
            assert_close(got, want["react"][i].as_f64().unwrap(), 1e-6, &format!("{name} react {i}"));
        }
        let bank: Vec<Vec<f32>> = case.train.iter().map(|r| unit(r)).collect();
        let queries: Vec<Vec<f32>> = case.features.iter().map(|r| unit(r)).collect();
        for (i, got) in knn_scores(&queries, &bank, K).unwrap().into_iter().enumerate() {
            assert_close(got, want["knn"][i].as_f64().unwrap(), 1e-6, &format!("{name} knn {i}"));
        }
    }
}

#[test]
fn ash_dice_and_kl_matching_match_the_python_reference() {
    use stages::scores::ash::{shape, Shaping, PERCENTILE};
    use stages::scores::dice::sparsified;
    use stages::scores::head::{energy, widen};
    use stages::scores::kl_matching::{class_templates, kl_matching};
    use stages::scores::softmax::probabilities;
    for case in feature_cases() {
        let (name, want) = (&case.name, &case.expected);
        for (key, shaping) in
            [("ash-p", Shaping::Prune), ("ash-b", Shaping::Binarize), ("ash-s", Shaping::Scale)]
        {
            for (i, h) in case.features.iter().enumerate() {
                let got = energy(&shape(h, shaping, PERCENTILE), &case.weight, &case.bias);
                assert_close(got, want[key][i].as_f64().unwrap(), 1e-6, &format!("{name} {key} {i}"));
            }
        }
        let width = case.train[0].len();
        let mean: Vec<f64> = (0..width)
            .map(|k| case.train.iter().map(|r| r[k] as f64).sum::<f64>() / case.train.len() as f64)
            .collect();
        let masked = sparsified(&case.weight, &mean, 90.0);
        let templates = class_templates(&case.train, &case.weight, &case.bias);
        for (i, (h, f)) in case.features.iter().zip(&case.logits).enumerate() {
            let dice = energy(&widen(h), &masked, &case.bias);
            assert_close(dice, want["dice"][i].as_f64().unwrap(), 1e-6, &format!("{name} dice {i}"));
            let kl = kl_matching(&probabilities(&widen(f)), &templates);
            assert_close(kl, want["kl-matching"][i].as_f64().unwrap(), 1e-6, &format!("{name} kl {i}"));
        }
    }
}

#[test]
fn vim_and_rmds_match_the_python_reference() {
    use stages::scores::gaussian::GaussianFit;
    use stages::scores::rmds::rmds_scores;
    use stages::scores::vim::{principal_dimension, VimFit};
    for case in feature_cases() {
        let (name, want) = (&case.name, &case.expected);
        let vim =
            VimFit::new(&case.train, &case.weight, &case.bias, principal_dimension(case.train[0].len()))
                .unwrap();
        for (i, (h, f)) in case.features.iter().zip(&case.logits).enumerate() {
            assert_close(vim.score(h, f), want["vim"][i].as_f64().unwrap(), 1e-3, &format!("{name} vim {i}"));
        }
        let labels: Vec<u32> =
            want["train_labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let class_fit = GaussianFit::fit(&case.train, &labels, case.weight.len()).unwrap();
        for (i, got) in rmds_scores(&class_fit, &case.train, &case.features).unwrap().into_iter().enumerate()
        {
            assert_close(got, want["rmds"][i].as_f64().unwrap(), 1e-3, &format!("{name} rmds {i}"));
        }
    }
}
