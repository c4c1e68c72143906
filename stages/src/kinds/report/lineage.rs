//! Where each reported score stage's model comes from, so that a report can say what a
//! selection chose, which ζ a UM or UMAP model used, and whether a chosen configuration is the
//! baseline's own. The recipe loader fills [`Lineage`] in from the declarations ([`derive()`]);
//! the report then reads the `select` and `estimate-loss-constraint` stages it names as inputs.
use crate::error::ParamError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A stage as the recipe declares it: kind and parameters, defaults filled in; a swept field
/// holds `{"sweep": [values]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Declared {
    pub stage: String,
    pub kind: String,
    pub params: Value,
}

impl Declared {
    fn text(&self, field: &str) -> Option<&str> {
        self.params.get(field).and_then(Value::as_str)
    }
}

/// One score stage's declaration, its model's, and (for a `select`) the stage chosen among.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreLineage {
    pub score: Declared,
    pub model: Declared,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Declared>,
}

impl ScoreLineage {
    /// The stage that was fine-tuned: the model itself, or what a selection chose among.
    pub fn trained(&self) -> &Declared {
        self.from.as_ref().unwrap_or(&self.model)
    }

    /// The `estimate-loss-constraint` stage giving ζ to a `um` or `umap` model, if it has one.
    pub fn constraint(&self) -> Option<&str> {
        let trained = self.trained();
        matches!(trained.kind.as_str(), "um" | "umap").then(|| trained.text("constraint")).flatten()
    }

    /// The `select` stage whose choice this score stage scores.
    pub fn selection(&self) -> Option<&str> {
        (self.model.kind == "select").then_some(self.model.stage.as_str())
    }

    /// The OOD sets the score stage tests on.
    pub fn ood(&self) -> Vec<String> {
        serde_json::from_value(self.score.params.get("ood").cloned().unwrap_or(Value::Null))
            .unwrap_or_default()
    }
}

/// Score stage → its lineage.
pub type Lineage = BTreeMap<String, ScoreLineage>;

/// The lineage of each of `scores`, from the declarations `declared` returns (by stage name);
/// score stages whose model cannot be found are left out.
pub fn derive(scores: &[String], declared: &dyn Fn(&str) -> Option<Declared>) -> Lineage {
    let mut lineage = Lineage::new();
    for name in scores {
        let Some(score) = declared(name) else { continue };
        let Some(model) = score.text("model").and_then(declared) else { continue };
        let from = if model.kind == "select" { model.text("from").and_then(declared) } else { None };
        lineage.insert(name.clone(), ScoreLineage { score, model, from });
    }
    lineage
}

/// The chosen variant's own parameters (swept values substituted, as a selection records them:
/// `zeta` → `"0"`) equal the baseline model's: the same recipe, another random stream.
pub fn same_configuration(chosen: &Declared, values: &BTreeMap<String, String>, baseline: &Declared) -> bool {
    if chosen.kind != baseline.kind || values.keys().any(|k| k.contains('.')) {
        return false;
    }
    let (Some(params), Some(base)) = (chosen.params.as_object(), baseline.params.as_object()) else {
        return false;
    };
    let value_of = |field: &str, v: &Value| -> Value {
        match (v.get("sweep"), values.get(field)) {
            (Some(_), Some(text)) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
            _ => v.clone(),
        }
    };
    let same = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    };
    params.len() == base.len()
        && params.iter().all(|(k, v)| base.get(k).is_some_and(|b| same(&value_of(k, v), b)))
}

/// Checks `ood_groups` against the OOD sets of the report's score stages: every listed set is
/// one of them, listed once, and no group is empty.
pub fn check_groups(groups: &BTreeMap<String, Vec<String>>, lineage: &Lineage) -> Vec<ParamError> {
    let mut known: Vec<String> = Vec::new();
    for l in lineage.values() {
        for set in l.ood() {
            if !known.contains(&set) {
                known.push(set);
            }
        }
    }
    let mut problems = Vec::new();
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (group, sets) in groups {
        if sets.is_empty() {
            problems.push(ParamError::new(
                &["ood_groups", group.as_str()],
                "an OOD group needs at least one set",
            ));
        }
        if group == super::model::ALL {
            problems.push(ParamError::new(
                &["ood_groups", group.as_str()],
                format!("`{group}` names the rows over all sets; call the group something else"),
            ));
        }
        for (i, set) in sets.iter().enumerate() {
            let at = ["ood_groups", group.as_str(), &i.to_string()];
            if !known.is_empty() && !known.contains(set) {
                problems.push(ParamError::new(
                    &at,
                    format!(
                        "`{set}` is not an OOD set of this report's score stages (they test on {})",
                        known.join(", ")
                    ),
                ));
            } else if let Some(other) = seen.insert(set, group) {
                problems.push(ParamError::new(&at, format!("`{set}` is already in group `{other}`")));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared(stage: &str, kind: &str, params: Value) -> Declared {
        Declared { stage: stage.into(), kind: kind.into(), params }
    }

    fn recipe(name: &str) -> Option<Declared> {
        Some(match name {
            "scores_pick" => declared(name, "score", json!({"model": "pick", "ood": ["digits", "noise"]})),
            "scores_control" => {
                declared(name, "score", json!({"model": "control", "ood": ["digits", "noise"]}))
            }
            "pick" => declared(name, "select", json!({"from": "um_zeta"})),
            "um_zeta" => {
                declared(name, "um", json!({"model": "final", "zeta": {"sweep": [0.0, 0.1]}, "epochs": 4}))
            }
            "control" => declared(name, "um", json!({"model": "final", "zeta": 0.0, "epochs": 4})),
            _ => return None,
        })
    }

    #[test]
    fn a_selection_of_zeta_zero_is_the_plain_ce_control() {
        let lineage = derive(&["scores_pick".into(), "scores_control".into(), "missing".into()], &recipe);
        assert_eq!(lineage.len(), 2);
        let pick = &lineage["scores_pick"];
        assert_eq!(
            (pick.selection(), pick.trained().stage.as_str(), pick.constraint()),
            (Some("pick"), "um_zeta", None)
        );
        let base = &lineage["scores_control"].model;
        let chose = |z: &str| BTreeMap::from([("zeta".to_string(), z.to_string())]);
        assert!(same_configuration(pick.trained(), &chose("0"), base));
        assert!(!same_configuration(pick.trained(), &chose("0.1"), base));
        // An upstream sweep's parameter means another upstream than the baseline's.
        let upstream = BTreeMap::from([("zeta.delta".to_string(), "0.95".to_string())]);
        assert!(!same_configuration(pick.trained(), &upstream, base));
    }

    #[test]
    fn groups_must_name_the_reports_sets_once() {
        let lineage = derive(&["scores_pick".into()], &recipe);
        let groups = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            pairs.iter().map(|(g, s)| (g.to_string(), s.iter().map(|x| x.to_string()).collect())).collect()
        };
        assert!(
            check_groups(&groups(&[("semantic", &["digits"]), ("noise", &["noise"])]), &lineage).is_empty()
        );
        let problems =
            check_groups(&groups(&[("a", &["digits", "typo"]), ("b", &["digits"]), ("c", &[])]), &lineage);
        let paths: Vec<String> = problems.iter().map(|p| p.path.join(".")).collect();
        assert_eq!(paths, ["ood_groups.a.1", "ood_groups.b.0", "ood_groups.c"]);
        assert!(
            problems[0].message.contains("`typo` is not an OOD set")
                && problems[0].message.contains("digits, noise")
        );
        assert!(problems[1].message.contains("already in group `a`"));
    }
}
