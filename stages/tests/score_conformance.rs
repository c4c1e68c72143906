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
        let all: Vec<f32> = train.iter().flatten().copied().collect();
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
