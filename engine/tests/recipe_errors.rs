//! Recipe validation: every planted error is reported, with its line, in one pass.
use engine::recipe::Recipe;
use std::path::Path;

fn load(text: &str) -> Result<Recipe, Vec<engine::recipe::diagnostic::Diagnostic>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    Recipe::load_with_env(&path, &|name| (name == "DATA").then(|| "/data".to_string()))
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

const PLANTED: &str = r#"[recipe]
name = "planted"
sedes = [0]

[datasets.digits]
format = "idx"
root = "${DATA}/mnist"
classes = [0, 1]

[datasets.noise]
format = "gausian-noise"

[stages.base]
kind = "train"
data = "digits"
lrr = 0.1
epochs = "ten"
batch_size = -3

[stages.oops]
kind = "trian"

[stages.scores]
kind = "score"
model = "nope"
id = "digitz"
ood = ["digits"]

[stages.a]
kind = "checkpoint"
from = "b"

[stages.b]
kind = "checkpoint"
from = "a"

[stages.table]
kind = "report"
scores = ["scores"]
title = 3
"#;

#[test]
fn every_planted_error_is_reported_with_its_line() {
    let errors = load(PLANTED).err().expect("the recipe is invalid");
    let found: Vec<(usize, &str)> = errors.iter().map(|d| (d.line, d.message.as_str())).collect();
    let expect = |needle: &str, fragment: &str| {
        let line = line_of(PLANTED, needle);
        assert!(
            found.iter().any(|(l, m)| *l == line && m.contains(fragment)),
            "no error containing {fragment:?} on line {line} ({needle}); got {found:#?}"
        );
    };
    expect("sedes", "unknown key `sedes`");
    expect("gausian-noise", "unknown format");
    expect("lrr", "unknown key `lrr`");
    expect("epochs = \"ten\"", "`epochs`");
    expect("batch_size = -3", "`batch_size`");
    expect("trian", "unknown stage kind");
    expect("model = \"nope\"", "no stage named `nope`");
    expect("id = \"digitz\"", "no dataset named `digitz`");
    expect("from = \"b\"", "cycle: a → b → a (each reads the next)");
    expect("title = 3", "`title`");
    // Suggestions for typos.
    let help = |needle: &str| {
        errors.iter().find(|d| d.line == line_of(PLANTED, needle)).and_then(|d| d.help.clone())
    };
    assert_eq!(help("lrr").as_deref(), Some("did you mean `lr`?"));
    assert_eq!(help("trian").as_deref(), Some("did you mean `train`?"));
    assert_eq!(help("gausian").as_deref(), Some("did you mean `gaussian-noise`?"));
    assert_eq!(help("digitz").as_deref(), Some("did you mean `digits`?"));
    assert_eq!(help("sedes").as_deref(), Some("did you mean `seeds`?"));
    // Every diagnostic names the file.
    assert!(errors.iter().all(|d| d.file.ends_with("bad.toml")));
}

#[test]
fn a_longer_cycle_is_named_in_order() {
    let text = r#"
[datasets.d]
format = "uniform-noise"

[stages.s1]
kind = "score"
model = "c3"
id = "d"
ood = ["d2"]

[stages.c2]
kind = "checkpoint"
from = "s1"

[stages.c3]
kind = "checkpoint"
from = "c2"
"#;
    let errors = load(text).err().unwrap();
    let cycle = errors.iter().find(|d| d.message.contains("cycle")).expect("cycle reported");
    assert!(cycle.message.contains("s1 → c3 → c2 → s1"), "{}", cycle.message);
}

#[test]
fn syntax_errors_point_at_the_line() {
    let errors = load("[stages.a]\nkind = \"train\"\ndata = \n").err().unwrap();
    assert_eq!(errors[0].line, 3);
    assert!(errors[0].message.contains("invalid TOML"));
}

#[test]
fn unset_variables_and_bad_devices_are_errors() {
    let text = "[recipe]\ndevice = \"gpu\"\n[datasets.d]\nformat = \"idx\"\nroot = \"${MISSING}/x\"\n[stages.t]\nkind = \"train\"\ndata = \"d\"\n";
    let errors = load(text).err().unwrap();
    assert!(errors.iter().any(|d| d.line == 2 && d.message.contains("invalid device")));
    assert!(errors.iter().any(|d| d.line == 5 && d.message.contains("`MISSING` is not set")));
}

#[test]
fn the_shipped_recipes_are_valid_and_defaults_fill_in() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for recipe in [
        "recipes/mnist_energy.toml",
        "recipes/mnist_um.toml",
        "recipes/smoke/smoke.toml",
        "recipes/smoke/um.toml",
    ] {
        let loaded = Recipe::load(&root.join(recipe));
        assert!(
            loaded.is_ok(),
            "{recipe}: {:?}",
            loaded.err().map(|e| e.iter().map(|d| d.render()).collect::<Vec<_>>())
        );
    }
    // Writing a default out or leaving it implicit gives the same parameters (so the same key).
    let implicit = "[datasets.d]\nformat = \"uniform-noise\"\n[stages.t]\nkind = \"train\"\ndata = \"d\"\n";
    let explicit = "[datasets.d]\nformat = \"uniform-noise\"\ncount = 2000\n[stages.t]\nkind = \"train\"\ndata = \"d\"\nlr = 0.1\nnesterov = true\nepochs = 100\n";
    let a = load(implicit).ok().unwrap();
    let b = load(explicit).ok().unwrap();
    assert_eq!(a.stages[0].stage().params(), b.stages[0].stage().params());
    assert_eq!(a.datasets, b.datasets);
}

/// Invalid UTF-8 is reported at its line and column; a huge name is refused and its diagnostic
/// shows a window of the line, not the whole line (issue 12).
#[test]
fn invalid_utf8_has_a_position_and_huge_names_stay_short() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, b"[recipe]\nname = \"x\"\n[stages.a]\nkind = \"tr\xffain\"\n").unwrap();
    let errors = Recipe::load(&path).err().expect("invalid");
    assert_eq!((errors[0].line, errors[0].column), (4, 11));
    assert!(errors[0].message.contains("not UTF-8"), "{}", errors[0].message);

    let name = "n".repeat(1_000_000);
    std::fs::write(&path, format!("[recipe]\nname = \"{name}\"\n[stages.{name}]\nkind = \"train\"\n"))
        .unwrap();
    let errors = Recipe::load(&path).err().expect("invalid");
    assert!(errors.iter().any(|e| e.message.contains("at most 128")), "{errors:?}");
    let rendered: usize = errors.iter().map(|e| e.render().len()).sum();
    assert!(rendered < 4_000, "{rendered} bytes of diagnostics");
}

#[test]
fn a_remote_table_names_the_default_remote_and_changes_no_key() {
    let body = "[datasets.noise]\nformat = \"uniform-noise\"\ncount = 8\n\n[stages.base]\nkind = \"train\"\ndata = \"noise\"\n";
    let with = load(&format!("[remote]\nurl = \"${{DATA}}/shared-cache\"\n\n{body}")).expect("valid");
    let without = load(body).expect("valid");
    assert_eq!(with.remote.as_deref(), Some("/data/shared-cache"), "variables expand in the url");
    assert_eq!(without.remote, None);
    assert_eq!(with.stages[0].stage().params(), without.stages[0].stage().params());

    let text = format!("[remote]\nurl = 3\nbucket = \"x\"\n\n{body}");
    let errors = load(&text).err().expect("invalid");
    let rendered: Vec<String> = errors.iter().map(|d| format!("{}:{}", d.line, d.message)).collect();
    assert!(
        rendered.iter().any(|r| r.starts_with("2:") && r.contains("`url` must be a non-empty string")),
        "{rendered:?}"
    );
    assert!(
        rendered.iter().any(|r| r.starts_with("3:") && r.contains("unknown key `bucket` in [remote]")),
        "{rendered:?}"
    );
    let errors = load(&format!("[remote]\n\n{body}")).err().expect("invalid");
    assert!(errors.iter().any(|d| d.message.contains("[remote] has no `url`")));
}

#[test]
fn resources_and_the_slurm_table_are_checked_at_their_position_and_change_no_key() {
    let body = "[datasets.noise]\nformat = \"uniform-noise\"\ncount = 8\n\n[stages.base]\nkind = \"train\"\ndata = \"noise\"\n";
    let with = load(&format!(
        "{body}resources = {{ gpus = 1, cpus = 8, mem = \"32G\", time = \"12:00:00\" }}\n\n\
         [executor.slurm]\npartition = \"gpu\"\nextra = [\"--constraint=a100\"]\ndefaults = {{ mem = \"8G\" }}\n\
         kinds.train = {{ time = \"2-00:00:00\" }}\n"
    ))
    .expect("valid");
    let without = load(body).expect("valid");
    assert_eq!(with.stages[0].stage().params(), without.stages[0].stage().params(), "in no cache key");
    assert_eq!(with.stages[0].resources.gpus, Some(1));
    assert_eq!(with.stages[0].resources.mem.as_deref(), Some("32G"));
    assert_eq!(with.slurm.partition.as_deref(), Some("gpu"));
    assert_eq!(with.slurm.extra, ["--constraint=a100"]);
    assert_eq!(with.slurm.kinds["train"].time.as_deref(), Some("2-00:00:00"));

    let text = format!(
        "{body}resources = {{ gpus = -1, mem = \"32000\", time = \"12h\", disk = 3 }}\n\n\
         [executor.slurm]\npartition = \"gpu partition\"\nretries = \"many\"\nkinds.trian = {{ cpus = 2 }}\nqueue = 1\n"
    );
    let errors = load(&text).err().expect("invalid");
    let rendered: Vec<String> =
        errors.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect();
    let line = line_of(&text, "resources =");
    let column = |needle: &str| text.lines().nth(line - 1).unwrap().find(needle).unwrap() + 1;
    for (col, needle) in [
        (column("-1"), "`gpus` must be a whole number"),
        (column("\"32000\""), "has no unit; write \"32000M\" or \"32000G\""),
        (column("\"12h\""), "is not a Slurm time"),
        (column("3 }"), "unknown resource `disk`"),
    ] {
        assert!(
            rendered.iter().any(|r| r.starts_with(&format!("{line}:{col}:")) && r.contains(needle)),
            "{needle} at {line}:{col} in {rendered:?}"
        );
    }
    for (needle, message) in [
        ("partition =", "`partition` must be a name"),
        ("retries =", "`retries` must be a whole number"),
        ("kinds.trian", "unknown stage kind `trian`"),
        ("queue =", "unknown key `queue` in [executor.slurm]"),
    ] {
        let at = line_of(&text, needle);
        assert!(
            rendered.iter().any(|r| r.starts_with(&format!("{at}:")) && r.contains(message)),
            "{message} in {rendered:?}"
        );
    }
}

/// A recipe is run by the people it is shared with: it cannot make their Slurm jobs run its
/// commands, nor carry their environment into its outputs.
#[test]
fn a_recipe_cannot_run_commands_through_extra_nor_read_the_environment_outside_locations() {
    let body = "[datasets.noise]\nformat = \"uniform-noise\"\ncount = 8\n\n[stages.base]\nkind = \"train\"\ndata = \"noise\"\n";
    let text = format!(
        "{body}\n[executor.slurm]\nextra = [\"--wrap=touch INJECTED\", \"--comment\", \"-o/tmp/x\", \"--export=ALL\"]\n"
    );
    let errors = load(&text).err().expect("invalid");
    let at = line_of(&text, "extra =");
    let rendered: Vec<String> =
        errors.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect();
    for refused in
        ["`--wrap` is not allowed", "\"-o/tmp/x\" is not a long option", "`--export` is not allowed"]
    {
        assert!(
            rendered.iter().any(|r| r.starts_with(&format!("{at}:")) && r.contains(refused)),
            "{refused} in {rendered:?}"
        );
    }
    assert!(
        !rendered.iter().any(|r| r.contains("\"--comment\"")),
        "a harmless flag is allowed: {rendered:?}"
    );
    let fine = load(&format!(
        "{body}\n[executor.slurm]\nextra = [\"--constraint=a100\", \"--exclusive\", \"--comment=ood\"]\n"
    ))
    .expect("valid");
    assert_eq!(fine.slurm.extra.len(), 3);

    // `${…}` is expanded in locations only (a dataset's root, the remote's url).
    let text = "[recipe]\nname = \"r\"\ndescription = \"by ${AWS_SECRET_ACCESS_KEY}\"\n\n\
                [datasets.digits]\nformat = \"idx\"\nroot = \"${DATA}/mnist\"\nclasses = [0, 1]\n\n\
                [stages.base]\nkind = \"train\"\ndata = \"digits\"\n";
    let errors = load(text).err().expect("invalid");
    let at = line_of(text, "description =");
    assert!(
        errors.iter().any(|d| d.line == at
            && d.message.contains("only in locations")
            && d.message.contains("`description`")),
        "{errors:?}"
    );
    assert!(errors.iter().all(|d| !d.message.contains("secret")), "{errors:?}");
    assert!(errors.iter().all(|d| d.line != line_of(text, "root =")), "the root is expanded: {errors:?}");
}
