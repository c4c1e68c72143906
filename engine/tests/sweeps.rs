//! Sweeps: expansion into instances (labels, keys, cross product and zip, fan-out downstream),
//! adding a value keeps every existing key, recipe errors with positions, the leakage guard,
//! and the scale of a large sweep's plan.
use engine::plan::Plan;
use engine::recipe::Recipe;
use std::collections::{BTreeMap, BTreeSet};

fn load(text: &str) -> Result<Recipe, Vec<engine::recipe::diagnostic::Diagnostic>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweep.toml");
    std::fs::write(&path, text).unwrap();
    Recipe::load_with_env(&path, &|_| None)
}

/// Instance label → structural key (upstream digests replaced by upstream keys, as the golden
/// test does), so keys are comparable without running anything.
fn keys(recipe: &Recipe) -> BTreeMap<String, String> {
    let plan = Plan::new(recipe, None);
    let mut keys: Vec<String> = Vec::new();
    for i in 0..plan.instances.len() {
        let digest = |d: usize| keys[d].clone();
        let key = plan.key_inputs(recipe, i, &digest, &BTreeMap::new()).key().to_string();
        keys.push(key);
    }
    plan.instances.iter().map(|i| i.label.clone()).zip(keys).collect()
}

fn labels_of(recipe: &Recipe, stage: &str) -> Vec<String> {
    Plan::new(recipe, None)
        .instances
        .iter()
        .filter(|i| recipe.stages[i.stage].name == stage)
        .map(|i| i.label.clone())
        .collect()
}

const HEAD: &str = r#"
[recipe]
seeds = [0, 1]

[datasets.id]
format = "uniform-noise"
count = 8

[datasets.val]
format = "gaussian-noise"
count = 8

[datasets.test]
format = "uniform-noise"
count = 8
seed = 9

[datasets.val_id]
format = "uniform-noise"
count = 8
seed = 4

[stages.base]
kind = "train"
data = "id"
"#;

fn recipe(deltas: &str, extra: &str) -> String {
    format!(
        r#"{HEAD}
[stages.zeta]
kind = "estimate-loss-constraint"
model = "base"
data = "id"
delta = {{ sweep = {deltas} }}

[stages.um]
kind = "um"
model = "base"
data = "id"
constraint = "zeta"
lr = {{ sweep = [0.01, 0.1] }}
{extra}
[stages.scores]
kind = "score"
model = "um"
id = "id"
ood = ["test"]

[stages.table]
kind = "report"
scores = ["scores"]
"#
    )
}

#[test]
fn sweeps_expand_with_readable_labels_and_fan_out_downstream() {
    let r = load(&recipe("[0.95, 0.99]", "")).expect("valid");
    assert_eq!(
        labels_of(&r, "zeta"),
        ["zeta[delta=0.95]@0", "zeta[delta=0.99]@0", "zeta[delta=0.95]@1", "zeta[delta=0.99]@1"]
    );
    // um crosses its own lr with the inherited δ: 2 × 2 per seed.
    let um = labels_of(&r, "um");
    assert_eq!(um.len(), 8);
    assert!(um.contains(&"um[lr=0.01,zeta.delta=0.99]@1".to_string()), "{um:?}");
    assert_eq!(labels_of(&r, "scores").len(), 8, "the score stage fans out with um");
    assert_eq!(labels_of(&r, "table"), ["table"], "a report combines every variant and seed");
    let plan = Plan::new(&r, None);
    let table = plan.instances.iter().find(|i| i.label == "table").unwrap();
    // Every score instance, and every ζ estimate (the report shows the ζ each UM model used).
    let read: Vec<&str> = table.deps().map(|d| r.stages[plan.instances[d].stage].name.as_str()).collect();
    assert_eq!(read.iter().filter(|s| **s == "scores").count(), 8);
    assert_eq!(read.iter().filter(|s| **s == "zeta").count(), 4, "{read:?}");
    // Each score instance reads the um instance with the same coordinates and seed.
    for i in plan.instances.iter().filter(|i| r.stages[i.stage].name == "scores") {
        let um = &plan.instances[i.deps().next().unwrap()];
        assert_eq!((um.seed, &um.coords), (i.seed, &i.coords));
    }
    let keys = keys(&r);
    let distinct: BTreeSet<&String> = keys.values().collect();
    assert_eq!(distinct.len(), keys.len(), "every instance has its own key");
}

#[test]
fn zip_pairs_values_instead_of_crossing_them() {
    let zipped = recipe("[0.95, 0.99]", "zip = true\n");
    let r = load(&zipped).expect("valid");
    let um = labels_of(&r, "um");
    assert_eq!(
        um,
        [
            "um[lr=0.01,zeta.delta=0.95]@0",
            "um[lr=0.1,zeta.delta=0.99]@0",
            "um[lr=0.01,zeta.delta=0.95]@1",
            "um[lr=0.1,zeta.delta=0.99]@1"
        ]
    );

    // Zip needs equal lengths, and says which.
    let text = recipe("[0.95, 0.975, 0.99]", "zip = true\n");
    let errors = load(&text).err().expect("invalid");
    let zip_line = text.lines().position(|l| l.starts_with("zip")).unwrap() + 1;
    let e =
        errors.iter().find(|d| d.message.contains("`zip` pairs sweeps of equal length")).expect("zip error");
    assert_eq!(e.line, zip_line);
    assert!(e.message.contains("`zeta.delta` has 3") && e.message.contains("`um.lr` has 2"), "{}", e.message);
}

#[test]
fn adding_a_value_keeps_every_existing_key() {
    let before = keys(&load(&recipe("[0.95, 0.99]", "")).unwrap());
    let after = keys(&load(&recipe("[0.95, 0.975, 0.99]", "")).unwrap());
    for (label, key) in before.iter().filter(|(l, _)| *l != "table") {
        assert_eq!(after.get(label), Some(key), "{label} keeps its key");
    }
    let new: Vec<&String> = after.keys().filter(|l| !before.contains_key(*l)).collect();
    // zeta ×2 seeds, um ×2 lr ×2 seeds, scores the same, and the report (its inputs grew).
    assert_eq!(new.len(), 2 + 4 + 4, "{new:?}");
    assert_ne!(before["table"], after["table"]);
}

#[test]
fn bad_sweeps_are_recipe_errors_at_their_values() {
    // A value that fails the stage's own checks is reported at that value.
    let text = recipe("[0.95, 1.5]", "");
    let errors = load(&text).err().expect("invalid");
    let e = errors.iter().find(|d| d.message.contains("delta=1.5")).expect("error names the variant");
    assert_eq!(e.line, text.lines().position(|l| l.contains("delta = { sweep")).unwrap() + 1);
    assert_eq!(e.column, text.lines().find(|l| l.contains("delta = {")).unwrap().find("1.5").unwrap() + 1);

    for (bad, expected) in [
        ("delta = { sweep = [] }", "non-empty array"),
        ("delta = { sweep = [0.9, 0.9] }", "lists a value twice"),
        ("delta = { sweep = [0.9], also = 1 }", "with nothing else"),
    ] {
        let text = recipe("[0.95]", "").replace("delta = { sweep = [0.95] }", bad);
        let errors = load(&text).err().expect("invalid");
        assert!(
            errors.iter().any(|d| d.message.contains(expected)),
            "{bad}: {:?}",
            errors.iter().map(|d| &d.message).collect::<Vec<_>>()
        );
    }
    // What a stage reads cannot be swept: the graph is the same for every variant.
    let text = recipe("[0.95]", "")
        .replace("data = \"id\"\nconstraint", "data = { sweep = [\"id\", \"val\"] }\nconstraint");
    let errors = load(&text).err().expect("invalid");
    assert!(errors.iter().any(|d| d.message.contains("names what the stage reads")));
    // A report cannot be swept itself.
    let text = recipe("[0.95]", "")
        .replace("scores = [\"scores\"]", "scores = [\"scores\"]\ntitle = { sweep = [\"a\", \"b\"] }");
    let errors = load(&text).err().expect("invalid");
    assert!(errors.iter().any(|d| d.message.contains("cannot be swept itself")));
}

#[test]
fn selecting_on_a_test_set_is_refused_with_both_positions() {
    let select = |on: &str| {
        recipe("[0.95, 0.99]", "")
            + &format!(
                r#"
[stages.pick]
kind = "select"
from = "um"
id = "val_id"
ood = ["{on}"]
split = "test"

[stages.scores_pick]
kind = "score"
model = "pick"
id = "id"
ood = ["test"]

[stages.picked]
kind = "report"
scores = ["scores_pick"]
"#
            )
    };
    let fine = match load(&select("val")) {
        Ok(r) => r,
        Err(e) => panic!(
            "selecting on validation data is fine: {:?}",
            e.iter().map(|d| &d.message).collect::<Vec<_>>()
        ),
    };
    // One select instance per seed, each reading that seed's 4 variants.
    let plan = Plan::new(&fine, None);
    let picks: Vec<_> = plan.instances.iter().filter(|i| fine.stages[i.stage].name == "pick").collect();
    assert_eq!(picks.len(), 2);
    for pick in picks {
        let read: Vec<_> = pick.deps().map(|d| &plan.instances[d]).collect();
        assert_eq!(read.len(), 4);
        assert!(read.iter().all(|u| u.seed == pick.seed));
    }

    let text = select("test");
    let errors = load(&text).err().expect("leakage is an error");
    let e = errors.iter().find(|d| d.message.contains("selects on dataset `test`")).expect("leakage error");
    let line_of = |needle: &str, after: &str| {
        let start = text.find(after).unwrap();
        text[..start + text[start..].find(needle).unwrap()].matches('\n').count() + 1
    };
    assert_eq!(e.line, line_of("ood = [\"test\"]", "[stages.pick]"), "at the selection's field");
    let score_line = line_of("ood = [\"test\"]", "[stages.scores_pick]");
    assert!(
        e.message.contains("report `picked`") && e.message.contains(&format!(":{score_line}:")),
        "{}",
        e.message
    );
}

#[test]
fn unswept_recipes_keep_their_labels() {
    let r = load(&format!(
        "{HEAD}\n[stages.scores]\nkind = \"score\"\nmodel = \"base\"\nid = \"id\"\nood = [\"test\"]\n"
    ))
    .unwrap();
    assert_eq!(labels_of(&r, "base"), ["base@0", "base@1"]);
    assert!(r.groups.iter().all(|g| g.is_empty()));
}

#[test]
fn a_variant_can_be_named_on_the_command_line() {
    use engine::selector::{instances_of, Selector};
    let r = load(&recipe("[0.95, 0.99]", "")).unwrap();
    let plan = Plan::new(&r, None);
    let picked = |text: &str| -> Vec<String> {
        let selector = Selector::parse(&r, text, "--only").unwrap();
        instances_of(&plan, &[selector]).into_iter().map(|i| plan.instances[i].label.clone()).collect()
    };
    // Parameters in any order; without a seed, every seed.
    assert_eq!(picked("um[zeta.delta=0.99,lr=0.1]@1"), ["um[lr=0.1,zeta.delta=0.99]@1"]);
    assert_eq!(picked("um[lr=0.1,zeta.delta=0.99]").len(), 2);
    assert_eq!(picked("um").len(), 8);
    assert!(picked("um[lr=7]").is_empty());
    let error = Selector::parse(&r, "base[lr=1]", "--only").unwrap_err();
    assert!(error.contains("not swept"), "{error}");
}
