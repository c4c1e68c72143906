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

#[test]
fn gradnorm_matches_finite_differences_of_the_divergence() {
    let document: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/scores/features.json")).unwrap();
    for case in document["cases"].as_array().unwrap() {
        let (features, logits) = (rows(&case["features"]), rows(&case["logits"]));
        for (i, (h, f)) in features.iter().zip(&logits).enumerate() {
            let want = case["gradnorm"][i].as_f64().unwrap();
            let got = gradnorm(h, f);
            assert!((got - want).abs() <= 1e-5 * want.abs(), "{} {i}: {got} vs {want}", case["name"]);
        }
    }
}

#[test]
fn react_and_knn_match_the_python_reference() {
    use stages::scores::feature_bank::{percentile, unit};
    use stages::scores::knn::{knn_scores, K};
    use stages::scores::react::react_energy;
    let document: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/scores/features.json")).unwrap();
    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-6), "{what}: {got} vs {want}");
    };
    for case in document["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (features, train, weight) =
            (rows(&case["features"]), rows(&case["train"]), rows(&case["weight"]));
        let bias: Vec<f32> =
            case["bias"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let all: Vec<f64> = train.iter().flatten().map(|&v| v as f64).collect();
        let threshold = percentile(&all, 90.0);
        close(threshold, case["react_threshold"].as_f64().unwrap(), &format!("{name} threshold"));
        for (i, h) in features.iter().enumerate() {
            close(
                react_energy(h, threshold, &weight, &bias),
                case["react"][i].as_f64().unwrap(),
                &format!("{name} react {i}"),
            );
        }
        let bank: Vec<Vec<f32>> = train.iter().map(|r| unit(r)).collect();
        let queries: Vec<Vec<f32>> = features.iter().map(|r| unit(r)).collect();
        for (i, got) in knn_scores(&queries, &bank, K).unwrap().into_iter().enumerate() {
            close(got, case["knn"][i].as_f64().unwrap(), &format!("{name} knn {i}"));
        }
    }
}

#[test]
fn ash_dice_and_kl_matching_match_the_python_reference() {
    use stages::scores::ash::{shape, Shaping, PERCENTILE};
    use stages::scores::dice::sparsified;
    use stages::scores::head::energy as head_energy;
    use stages::scores::kl_matching::{class_templates, kl_matching};
    let document: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/scores/features.json")).unwrap();
    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-6), "{what}: {got} vs {want}");
    };
    for case in document["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (features, logits) = (rows(&case["features"]), rows(&case["logits"]));
        let (train, weight) = (rows(&case["train"]), rows(&case["weight"]));
        let bias: Vec<f32> =
            case["bias"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        for (key, shaping) in
            [("ash-p", Shaping::Prune), ("ash-b", Shaping::Binarize), ("ash-s", Shaping::Scale)]
        {
            for (i, h) in features.iter().enumerate() {
                let got = head_energy(&shape(h, shaping, PERCENTILE), &weight, &bias);
                close(got, case[key][i].as_f64().unwrap(), &format!("{name} {key} {i}"));
            }
        }
        let width = train[0].len();
        let mean: Vec<f64> =
            (0..width).map(|k| train.iter().map(|r| r[k] as f64).sum::<f64>() / train.len() as f64).collect();
        let masked = sparsified(&weight, &mean, 90.0);
        let templates = class_templates(&train, &weight, &bias);
        for (i, (h, f)) in features.iter().zip(&logits).enumerate() {
            let x: Vec<f64> = h.iter().map(|&v| v as f64).collect();
            close(
                head_energy(&x, &masked, &bias),
                case["dice"][i].as_f64().unwrap(),
                &format!("{name} dice {i}"),
            );
            let max = f.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exps: Vec<f64> = f.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            let p: Vec<f64> = exps.iter().map(|e| e / sum).collect();
            close(
                kl_matching(&p, &templates),
                case["kl-matching"][i].as_f64().unwrap(),
                &format!("{name} kl {i}"),
            );
        }
    }
}

#[test]
fn vim_and_rmds_match_the_python_reference() {
    use stages::scores::gaussian::GaussianFit;
    use stages::scores::rmds::rmds_scores;
    use stages::scores::vim::{principal_dimension, VimFit};
    let document: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/scores/features.json")).unwrap();
    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-3), "{what}: {got} vs {want}");
    };
    for case in document["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (features, logits) = (rows(&case["features"]), rows(&case["logits"]));
        let (train, weight) = (rows(&case["train"]), rows(&case["weight"]));
        let bias: Vec<f32> =
            case["bias"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let vim = VimFit::new(&train, &weight, &bias, principal_dimension(train[0].len())).unwrap();
        for (i, (h, f)) in features.iter().zip(&logits).enumerate() {
            close(vim.score(h, f), case["vim"][i].as_f64().unwrap(), &format!("{name} vim {i}"));
        }
        let labels: Vec<u32> =
            case["train_labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let class_fit = GaussianFit::fit(&train, &labels, weight.len()).unwrap();
        for (i, got) in rmds_scores(&class_fit, &train, &features).unwrap().into_iter().enumerate() {
            close(got, case["rmds"][i].as_f64().unwrap(), &format!("{name} rmds {i}"));
        }
    }
}
