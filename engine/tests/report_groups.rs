//! A report's `ood_groups` are checked against its score stages' OOD sets when the recipe is
//! read, and the loader gives a report the selections and ζ estimates it reports on.
use engine::plan::Plan;
use engine::recipe::diagnostic::Diagnostic;
use engine::recipe::Recipe;

fn load(text: &str) -> Result<Recipe, Vec<Diagnostic>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.toml");
    std::fs::write(&path, text).unwrap();
    Recipe::load_with_env(&path, &|_| None)
}

fn recipe(groups: &str) -> String {
    format!(
        r#"[recipe]
seeds = [0, 1]

[datasets.id]
format = "uniform-noise"
count = 8

[datasets.val]
format = "uniform-noise"
count = 8
seed = 5

[datasets.digits]
format = "gaussian-noise"
count = 8

[datasets.noise]
format = "uniform-noise"
count = 8
seed = 9

[stages.base]
kind = "train"
data = "id"

[stages.zeta]
kind = "estimate-loss-constraint"
model = "base"
data = "id"

[stages.um]
kind = "um"
model = "base"
data = "id"
constraint = "zeta"

[stages.um_zeta]
kind = "um"
model = "base"
data = "id"
zeta = {{ sweep = [0.0, 0.1] }}

[stages.pick]
kind = "select"
from = "um_zeta"
id = "val"
ood = ["val"]
split = "train"

[stages.scores_um]
kind = "score"
model = "um"
id = "id"
ood = ["digits", "noise"]

[stages.scores_pick]
kind = "score"
model = "pick"
id = "id"
ood = ["digits", "noise"]

[stages.table]
kind = "report"
scores = ["scores_um", "scores_pick"]
{groups}
"#
    )
}

#[test]
fn groups_naming_a_set_no_score_stage_tests_on_are_errors_at_their_value() {
    let text = recipe(r#"ood_groups = { semantic = ["digits"], noise = ["noise", "noize"] }"#);
    let errors = load(&text).err().expect("`noize` is not an OOD set");
    let e = errors.iter().find(|d| d.message.contains("`noize`")).expect("names the value");
    assert!(e.message.contains("stage `table`, field `ood_groups.noise.1`"), "{}", e.message);
    assert!(e.message.contains("they test on digits, noise"), "{}", e.message);
    let line = text.lines().position(|l| l.starts_with("ood_groups")).unwrap() + 1;
    assert_eq!(e.line, line);
    assert_eq!(e.column, text.lines().nth(line - 1).unwrap().find("\"noize\"").unwrap() + 1);
    // A set in two groups, and a group called like the all-set rows.
    let text = recipe(r#"ood_groups = { a = ["digits"], b = ["digits"], mean = ["noise"] }"#);
    let messages: Vec<String> = load(&text).err().expect("invalid").into_iter().map(|d| d.message).collect();
    assert!(messages.iter().any(|m| m.contains("already in group `a`")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("names the rows over all sets")), "{messages:?}");
}

#[test]
fn a_report_reads_the_selections_and_constraints_of_its_models() {
    let r = load(&recipe(r#"ood_groups = { semantic = ["digits"], noise = ["noise"] }"#)).expect("valid");
    let plan = Plan::new(&r, None);
    let table = plan.instances.iter().find(|i| i.label == "table").unwrap();
    let mut read: Vec<&str> = table.deps().map(|d| r.stages[plan.instances[d].stage].name.as_str()).collect();
    read.sort();
    read.dedup();
    assert_eq!(read, ["pick", "scores_pick", "scores_um", "zeta"]);
    // The lineage is part of the report's parameters: what the selection chose among.
    let params = r.stages.iter().find(|s| s.name == "table").unwrap().stage().params();
    assert_eq!(params["lineage"]["scores_pick"]["from"]["stage"], "um_zeta");
    assert_eq!(
        params["lineage"]["scores_pick"]["from"]["params"]["zeta"],
        serde_json::json!({"sweep": [0.0, 0.1]})
    );
    assert_eq!(params["lineage"]["scores_um"]["model"]["params"]["constraint"], "zeta");
}
