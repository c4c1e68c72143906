//! The leakage guard compares what datasets resolve to, not their names: a selection may not
//! choose on any image a downstream report tests on, whatever the sets are called, and `select`
//! must say which split it reads.
use engine::recipe::diagnostic::Diagnostic;
use engine::recipe::Recipe;

fn load(text: &str) -> Result<Recipe, Vec<Diagnostic>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leak.toml");
    std::fs::write(&path, text).unwrap();
    Recipe::load_with_env(&path, &|_| None)
}

/// A recipe training on MNIST digits 0–5 and testing on the test split's digits 0–5 (ID) and
/// 8–9 (OOD), with `datasets` declared besides and a selection reading `id` and `ood` in
/// `split` (the line left out when `split` is empty).
fn recipe(datasets: &str, id: &str, ood: &str, split: &str) -> String {
    let split = if split.is_empty() { String::new() } else { format!("split = \"{split}\"\n") };
    format!(
        r#"[recipe]
seeds = [0]

[datasets.train_0_5]
format = "idx"
root = "/data/mnist"
classes = [0, 1, 2, 3, 4, 5]
limit = 4000

[datasets.test_0_5]
format = "idx"
root = "/data/mnist"
classes = [0, 1, 2, 3, 4, 5]

[datasets.test_8_9]
format = "idx"
root = "/data/mnist"
classes = [8, 9]
{datasets}
[stages.base]
kind = "train"
data = "train_0_5"

[stages.um]
kind = "um"
model = "base"
data = "train_0_5"
zeta = {{ sweep = [0.0, 0.1] }}

[stages.pick]
kind = "select"
from = "um"
id = "{id}"
ood = ["{ood}"]
{split}
[stages.scores_pick]
kind = "score"
model = "pick"
id = "test_0_5"
ood = ["test_8_9"]

[stages.table]
kind = "report"
scores = ["scores_pick"]
"#
    )
}

const HELD_OUT: &str = r#"
[datasets.val_0_5]
format = "idx"
root = "/data/mnist"
classes = [0, 1, 2, 3, 4, 5]
skip = 4000

[datasets.val_6_7]
format = "idx"
root = "/data/mnist"
classes = [6, 7]
"#;

fn messages(errors: &[Diagnostic]) -> Vec<&str> {
    errors.iter().map(|d| d.message.as_str()).collect()
}

#[test]
fn a_genuinely_disjoint_validation_set_passes() {
    let text = recipe(HELD_OUT, "val_0_5", "val_6_7", "train");
    if let Err(errors) = load(&text) {
        panic!("held-out training digits are fine: {:?}", messages(&errors));
    }
}

#[test]
fn renamed_aliases_of_the_test_sets_are_refused_at_both_positions() {
    // The report's test sets declared again under other names, read in the test split.
    let aliases = r#"
[datasets.val_0_5]
format = "idx"
root = "/data/mnist/."
classes = [5, 4, 3, 2, 1, 0]

[datasets.val_8_9]
format = "idx"
root = "/data/mnist"
classes = [9, 8]
"#;
    let text = recipe(aliases, "val_0_5", "val_8_9", "test");
    let errors = load(&text).err().expect("aliases of the test sets leak");
    let line_of = |needle: &str, after: &str| {
        let start = text.find(after).unwrap();
        text[..start + text[start..].find(needle).unwrap()].matches('\n').count() + 1
    };
    let leaks: Vec<&Diagnostic> =
        errors.iter().filter(|d| d.message.contains("whose images report `table` also tests on")).collect();
    assert_eq!(leaks.len(), 2, "{:?}", messages(&errors));
    // The ID position: the selection's `id` against the score stage's `id`.
    let id = leaks.iter().find(|d| d.message.contains("dataset `val_0_5`")).expect("ID alias");
    assert_eq!(id.line, line_of("id = \"val_0_5\"", "[stages.pick]"));
    let score_id = line_of("id = \"test_0_5\"", "[stages.scores_pick]");
    assert!(id.message.contains("field `id`, dataset `test_0_5` ("), "{}", id.message);
    assert!(id.message.contains(&format!(":{score_id}:")), "{}", id.message);
    assert!(id.message.contains("positions 0..the end of classes [0, 1, 2, 3, 4, 5]"), "{}", id.message);
    // The OOD position.
    let ood = leaks.iter().find(|d| d.message.contains("dataset `val_8_9`")).expect("OOD alias");
    assert_eq!(ood.line, line_of("ood = [\"val_8_9\"]", "[stages.pick]"));
    assert!(ood.message.contains("field `ood.0`, dataset `test_8_9`"), "{}", ood.message);
}

#[test]
fn overlapping_skip_and_limit_ranges_are_refused() {
    // Validation images 0..2000 of the test split's digits 0–5 against a report testing on
    // 1000.. of them: 1000..2000 are shared.
    let ranges = r#"
[datasets.val_0_5]
format = "idx"
root = "/data/mnist"
classes = [0, 1, 2, 3, 4, 5]
limit = 2000

[datasets.val_6_7]
format = "idx"
root = "/data/mnist"
classes = [6, 7]
"#;
    let text = recipe(ranges, "val_0_5", "val_6_7", "test")
        .replace("[datasets.test_0_5]\nformat = \"idx\"\nroot = \"/data/mnist\"\nclasses = [0, 1, 2, 3, 4, 5]\n",
                 "[datasets.test_0_5]\nformat = \"idx\"\nroot = \"/data/mnist\"\nclasses = [0, 1, 2, 3, 4, 5]\nskip = 1000\n");
    let errors = load(&text).err().expect("the ranges overlap");
    let leak =
        errors.iter().find(|d| d.message.contains("selects on dataset `val_0_5`")).expect("range leak");
    assert!(leak.message.contains("positions 1000..2000"), "{}", leak.message);
    // From 2000 on they are disjoint.
    let text = text.replace("skip = 1000\n", "skip = 2000\n");
    if let Err(errors) = load(&text) {
        panic!("0..2000 and 2000.. are disjoint: {:?}", messages(&errors));
    }
}

#[test]
fn a_selection_without_split_is_a_recipe_error() {
    let text = recipe(HELD_OUT, "val_0_5", "val_6_7", "");
    let errors = load(&text).err().expect("split is required");
    let e = errors.iter().find(|d| d.message.contains("split")).expect("names the field");
    assert!(e.message.contains("stage `pick`"), "{}", e.message);
    assert_eq!(e.line, text.lines().position(|l| l == "[stages.pick]").unwrap() + 1, "{}", e.message);
}

#[test]
fn generated_sets_leak_when_declared_alike() {
    let noise = r#"
[datasets.val_0_5]
format = "idx"
root = "/data/mnist"
classes = [0, 1, 2, 3, 4, 5]
skip = 4000

[datasets.noise_a]
format = "uniform-noise"
count = 16
seed = 3

[datasets.noise_b]
format = "uniform-noise"
count = 16
seed = 3
"#;
    let text =
        recipe(noise, "val_0_5", "noise_a", "train").replace("ood = [\"test_8_9\"]", "ood = [\"noise_b\"]");
    let errors = load(&text).err().expect("the same generated images, whatever the split");
    assert!(errors.iter().any(|d| d.message.contains("same generated images")), "{:?}", messages(&errors));
    let text = text
        .replace("count = 16\nseed = 3\n\n[datasets.noise_b]", "count = 16\nseed = 4\n\n[datasets.noise_b]");
    assert!(load(&text).is_ok(), "another seed is other images");
}
