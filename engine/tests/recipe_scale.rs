//! Recipes at any size (issue 32): an expansion past the instance limit is refused before
//! anything is built, at the sweep, saying where the count comes from; deep graphs are walked
//! without recursion; diagnostics stay bounded whatever the input; what used to fail at run time
//! is refused by `check` at its position.
use engine::plan::Plan;
use engine::recipe::diagnostic::{error_count, Diagnostic, MAX_DIAGNOSTICS};
use engine::recipe::Recipe;
use std::fmt::Write;
use std::path::{Path, PathBuf};

fn load_text(text: &str) -> (tempfile::TempDir, Result<Recipe, Vec<Diagnostic>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = Recipe::load_with_env(&path, &|_| None);
    (dir, loaded)
}

fn errors_of(text: &str) -> Vec<Diagnostic> {
    match load_text(text).1 {
        Ok(_) => panic!("the recipe should be invalid"),
        Err(errors) => errors,
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/data/mnist-10k")
}

fn header(extra: &str) -> String {
    format!(
        "[recipe]\nname = \"scale\"\n{extra}\n[datasets.id]\nformat = \"idx\"\nroot = \"{}\"\nclasses = [0, 1]\nlimit = 32\n\n\
         [datasets.ood]\nformat = \"idx\"\nroot = \"{}\"\nclasses = [7]\nlimit = 16\n",
        data_dir().display(),
        data_dir().display()
    )
}

fn values(n: usize, f: impl Fn(usize) -> String) -> String {
    (0..n).map(f).collect::<Vec<_>>().join(", ")
}

/// 10^12 combinations, written in 170 KB: refused at the sweep with the count and its factors,
/// without building a single variant (without the limit this aborts the process).
#[test]
fn a_sweep_past_the_limit_is_refused_at_its_position_before_anything_is_built() {
    let text = format!(
        "{}\n[stages.base]\nkind = \"train\"\ndata = \"id\"\nlr = {{ sweep = [{}] }}\nweight_decay = {{ sweep = [{}] }}\n\
         momentum = {{ sweep = [{}] }}\n",
        header(""),
        values(10_000, |i| format!("{:.6}", (i + 1) as f64 * 1e-6)),
        values(10_000, |i| format!("{:.6}", i as f64 * 1e-6)),
        values(10_000, |i| format!("{:.6}", i as f64 * 1e-5)),
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.line, line_of(&text, "lr = { sweep"), "{}", e.message);
    assert!(e.message.contains("1,000,000,000,000 variants"), "{}", e.message);
    assert!(e.message.contains("`lr` 10,000 × `weight_decay` 10,000 × `momentum` 10,000"), "{}", e.message);
    assert!(e.message.contains("100,000 instances"), "{}", e.message);
}

fn crossed(a: usize, b: usize, limit: Option<usize>) -> String {
    let extra = limit.map(|n| format!("max_instances = {n}\n")).unwrap_or_default();
    format!(
        "{}\n[stages.base]\nkind = \"train\"\ndata = \"id\"\nwidths = [2]\nstrides = [2]\nepochs = 1\n\
         lr = {{ sweep = [{}] }}\n\n[stages.scores]\nkind = \"score\"\nmodel = \"base\"\nid = \"id\"\nood = [\"ood\"]\n\
         methods = [\"energy\"]\nbatch_size = {{ sweep = [{}] }}\n\n[stages.table]\nkind = \"report\"\nscores = [\"scores\"]\n",
        header(&extra),
        values(a, |i| format!("{:.6}", (i + 1) as f64 * 1e-6)),
        values(b, |i| (i + 1).to_string()),
    )
}

/// Sweeps crossed between stages are counted from the sweep groups: each stage's own sweep is
/// small, the product is not.
#[test]
fn sweeps_crossed_between_stages_are_counted_before_planning() {
    let text = crossed(1_000, 1_000, None);
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.line, line_of(&text, "batch_size = { sweep"), "{}", e.message);
    assert!(e.message.contains("stage `scores` expands to 1,000,000 instances"), "{}", e.message);
    assert!(e.message.contains("1 seed × `base.lr` 1,000 × `batch_size` 1,000"), "{}", e.message);
    assert!(e.message.contains("the recipe as a whole makes 1,001,001"), "{}", e.message);

    // Just past the default limit; `max_instances` raises it, and the plan has exactly the
    // instances counted.
    assert!(load_text(&crossed(300, 334, None)).1.is_err());
    let (_dir, loaded) = load_text(&crossed(300, 334, Some(200_000)));
    let recipe = loaded.expect("valid with the raised limit");
    let plan = Plan::new(&recipe, None);
    assert_eq!(plan.instances.len(), 300 + 300 * 334 + 1);
    let errors = errors_of(&crossed(3, 3, Some(0)));
    assert!(errors[0].message.contains("`max_instances` must be a positive integer"), "{errors:?}");
}

/// A chain of 100,000 stages: validated, ordered and planned without recursion (the test thread
/// has a 2 MB stack; petgraph's Tarjan overflowed an 8 MB one), and refused by the limit one
/// stage further.
#[test]
fn a_chain_of_100000_stages_checks_and_plans_without_overflowing_the_stack() {
    let n = 100_000;
    let mut text = header("");
    text.push_str(
        "\n[stages.s0]\nkind = \"train\"\ndata = \"id\"\nwidths = [2]\nstrides = [2]\nepochs = 1\n",
    );
    for i in 1..n {
        write!(text, "\n[stages.s{i}]\nkind = \"um\"\nmodel = \"s{}\"\ndata = \"id\"\nzeta = 0.0\n", i - 1)
            .unwrap();
    }
    let (_dir, loaded) = load_text(&text);
    let recipe = loaded.unwrap_or_else(|e| panic!("{:?}", &e[..e.len().min(3)]));
    assert_eq!(recipe.graph.order().len(), n);
    assert_eq!(recipe.graph.order()[n - 1], n - 1, "each stage after the one it reads");
    assert!(recipe.check_data(None).is_empty(), "the model behind the last stage is found");
    let plan = Plan::new(&recipe, None);
    assert_eq!(plan.instances.len(), n);
    assert_eq!(plan.instances[n - 1].deps().collect::<Vec<_>>(), [n - 2]);

    // A cycle through a long chain is still named as a path.
    let cyclic = text.replacen(
        "kind = \"train\"\ndata = \"id\"",
        "kind = \"um\"\nmodel = \"s5\"\ndata = \"id\"\nzeta = 0.0",
        1,
    );
    let errors = errors_of(&cyclic);
    assert!(errors.iter().any(|e| e.message.contains("the stages form a cycle: s0 → s5 → s4")), "{errors:?}");
    // One stage more is one instance past the limit.
    write!(text, "\n[stages.s{n}]\nkind = \"um\"\nmodel = \"s{}\"\ndata = \"id\"\nzeta = 0.0\n", n - 1)
        .unwrap();
    let errors = errors_of(&text);
    assert!(errors[0].message.contains("100,001"), "{errors:?}");
}

/// 100,000 bad lines give 50 errors and the count of the rest; one 129 KB line of errors keeps
/// 50 short windows of it; a multi-megabyte value is not repeated in a message.
#[test]
fn diagnostics_are_bounded_whatever_the_input() {
    let bad_lines = "x = = 1\n".repeat(100_000);
    let errors = errors_of(&bad_lines);
    assert_eq!(errors.len(), MAX_DIAGNOSTICS + 1);
    assert!(error_count(&errors) >= 100_000, "{}", error_count(&errors));
    assert!(errors.last().unwrap().message.contains("more errors not shown"), "{:?}", errors.last());

    let long_line = format!("a = [{}]\n", "=,".repeat(64 * 1024));
    let errors = errors_of(&long_line);
    assert!(errors.len() <= MAX_DIAGNOSTICS + 1);
    for e in &errors {
        assert!(e.render().len() < 2_000, "{} characters", e.render().len());
    }

    let huge = "k".repeat(4 << 20);
    let text = format!("[stages.a]\nkind = \"{huge}\"\n");
    let errors = errors_of(&text);
    let rendered = errors[0].render();
    assert!(rendered.len() < 4_000, "{} characters", rendered.len());
    assert!(rendered.contains("characters left out"), "{rendered}");
}

/// Cases that passed `check` and then failed at run time (a panic, a capacity overflow, an
/// internal error, a stall) are recipe errors at their position.
#[test]
fn what_failed_at_run_time_is_refused_by_check_at_its_position() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[datasets.noise]\nformat = \"uniform-noise\"\ncount = 8\nhigh = 1e39\n",
            "high = 1e39",
            "finite 32-bit float",
        ),
        (
            "[stages.base]\nkind = \"train\"\ndata = \"id\"\n\n[stages.oe]\nkind = \"oe\"\nmodel = \"base\"\ndata = \"id\"\naux = \"ood\"\naux_batch_size = 9223372036854775807\n",
            "aux_batch_size",
            "65536",
        ),
        (
            "[stages.base]\nkind = \"train\"\ndata = \"id\"\n\n[stages.zeta]\nkind = \"estimate-loss-constraint\"\nmodel = \"base\"\ndata = \"id\"\ndraws = 1000000000000\n",
            "draws =",
            "10000",
        ),
        (
            "[stages.base]\nkind = \"train\"\ndata = \"id\"\ncheckpoint_every = 1\nlr = { sweep = [0.1, 0.2, 0.3] }\n\n[stages.pick]\nkind = \"select\"\nfrom = \"base\"\nover = \"checkpoints\"\nid = \"id\"\nood = [\"ood\"]\nsplit = \"train\"\n",
            "from = \"base\"",
            "has 3 variants per seed",
        ),
        (
            "[stages.base]\nkind = \"train\"\ndata = \"id\"\nlr = { sweep = [1, 1.0] }\n",
            "lr = {",
            "give the same stage",
        ),
    ];
    for (body, at, says) in cases {
        let text = format!("{}\n{body}", header(""));
        let errors = errors_of(&text);
        let found = errors.iter().find(|e| e.message.contains(says));
        let e = found.unwrap_or_else(|| panic!("no error saying `{says}`: {errors:?}"));
        assert_eq!(e.line, line_of(&text, at), "{}", e.message);
    }
}

/// `skip` past the end of the data is found from the labels file by `check` (with data), and
/// said at the field that names the dataset.
#[test]
fn skip_past_the_end_of_the_data_is_a_check_error() {
    let text = header("").replace("limit = 32\n", "limit = 32\nskip = 5000\n")
        + "\n[stages.base]\nkind = \"train\"\ndata = \"id\"\n";
    let (_dir, loaded) = load_text(&text);
    let recipe = loaded.expect("valid without reading data");
    let problems = recipe.check_data(None);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("`skip = 5000` leaves no image"), "{}", problems[0].message);
    assert_eq!(problems[0].line, line_of(&text, "data = \"id\""));
}

/// A dataset missing for many stages is said once, with the others counted.
#[test]
fn a_missing_dataset_is_said_once_for_all_the_stages_that_read_it() {
    let mut text = header("").replace(&data_dir().display().to_string(), "/nonexistent/mnist");
    text.push_str("\n[stages.base]\nkind = \"train\"\ndata = \"id\"\n");
    for i in 0..5 {
        write!(text, "\n[stages.s{i}]\nkind = \"score\"\nmodel = \"base\"\nid = \"id\"\nood = [\"ood\"]\n")
            .unwrap();
    }
    let (_dir, loaded) = load_text(&text);
    let problems = loaded.unwrap().check_data(None);
    let about_train: Vec<_> =
        problems.iter().filter(|d| d.message.contains("dataset `id` (train split)")).collect();
    let about_test: Vec<_> =
        problems.iter().filter(|d| d.message.contains("dataset `id` (test split)")).collect();
    assert_eq!((about_train.len(), about_test.len()), (1, 1), "{problems:?}");
    assert!(
        about_test[0].message.contains("and 4 other stages read it: s1, s2, s3 and 1 more"),
        "{}",
        about_test[0].message
    );
}
