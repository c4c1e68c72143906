//! report.html in a real browser: Debian's Chromium, headless, renders the page of the
//! Unleashing-Mask smoke recipe to a PNG; the page must load without console errors and contain
//! its plots. CI installs Chromium (.ci/run); elsewhere the test says it is skipped when no
//! browser is installed.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PIPELINE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn headless(browser: &Path, profile: &Path) -> Command {
    let mut command = Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1300,2600",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

#[test]
fn report_html_renders_in_a_browser_without_console_errors() {
    let Some(browser) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI must install Chromium (see .ci/run)");
        eprintln!("skipped: no Chromium installed (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/um.toml");
    let (out, events) = run(&recipe, &dir.path().join("cache"), &["--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = outputs_of(&events, "table").join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the page loads nothing from the network"
    );
    // 6 backtracking panels (MSP, Energy of the base model, for each of the 2 groups and all
    // sets), 8 ROC panels (4 score stages × 2 methods, every seed in each), 16 histograms (8 × 2
    // OOD sets).
    let expected_plots = 6 + 8 + 16;
    assert_eq!(html.matches("<svg").count(), expected_plots);
    // Summaries and plots first, the full per-set table folded at the end.
    let (summary, details) = (html.find("<h2>Summary: group").unwrap(), html.find("<details>").unwrap());
    assert!(summary < html.find("<h2>ROC curves").unwrap() && html.find("<h2>ROC curves").unwrap() < details);
    assert!(html.contains("ID positive, as the table"), "the ROC says which class is positive");

    let png = dir.path().join("report.png");
    let shot = headless(&browser, &dir.path().join("profile-a"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&shot.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(
        console.iter().any(|l| l.contains(&format!("\"plots: {expected_plots}\""))),
        "the page's script did not run or counted other plots: {console:?}"
    );
    assert!(
        !console.iter().any(|l| l.contains(":ERROR:") || l.contains(":WARNING:") || l.contains("Uncaught")),
        "console errors: {console:?}"
    );
    let bytes = std::fs::read(&png).expect("a screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "screenshot of {} bytes", bytes.len());

    // The rendered DOM holds the plots' drawing elements.
    let dom = headless(&browser, &dir.path().join("profile-b"))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<svg").count(), expected_plots);
    // Each ROC panel: the diagonal and 2 seeds × 2 OOD sets.
    assert!(dom.matches("<polyline").count() >= 8 * 5, "ROC curves of every seed and diagonals are drawn");
}
