//! The metrics against scikit-learn and a transparent Python version of the nearest-recall FPR95
//! rule, on score sets with ties, plateaus, saturation and extreme imbalance. The fixtures come
//! from tests/fixtures/metrics/make_fixtures.py (its header says how to rerun it).
use stages::metrics::{ood_metrics_with, Convention};

#[test]
fn metrics_match_the_python_reference_to_1e_9() {
    let text = include_str!("fixtures/metrics/cases.json");
    let document: serde_json::Value = serde_json::from_str(text).unwrap();
    let cases = document["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (id, ood) = (floats(&case["id"]), floats(&case["ood"]));
        for (convention, key) in [(Convention::IdPositive, "idpos"), (Convention::OpenOod, "openood")] {
            let got = ood_metrics_with(convention, &id, &ood).unwrap();
            let expected = &case[key];
            for (metric, value) in [
                ("fpr95", got.fpr95),
                ("auroc", got.auroc),
                ("aupr_in", got.aupr_in),
                ("aupr_out", got.aupr_out),
            ] {
                let want = expected[metric].as_f64().unwrap();
                assert!((value - want).abs() < 1e-9, "{name} {key} {metric}: {value} vs {want}");
            }
        }
    }
}
