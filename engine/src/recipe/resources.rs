//! What a stage instance asks a cluster for (`resources = { gpus, cpus, mem, time }`) and the
//! `[executor.slurm]` table: read from the recipe, checked as Slurm would read them, and never
//! part of a cache key (where a result was computed does not change what it is).
use super::tree::{Node, NodeValue};
use std::collections::BTreeMap;

/// Resources one instance asks for; `None` leaves the field to the next layer of defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    pub gpus: Option<u32>,
    pub cpus: Option<u32>,
    /// As Slurm's `--mem` reads it: a number and a unit (`512M`, `32G`).
    pub mem: Option<String>,
    /// As Slurm's `--time` reads it (`30`, `4:00:00`, `2-00:00:00`).
    pub time: Option<String>,
}

pub const RESOURCE_KEYS: &[&str] = &["gpus", "cpus", "mem", "time"];

impl Resources {
    /// `self`, with what it leaves open taken from `fallback`.
    pub fn or(&self, fallback: &Resources) -> Resources {
        Resources {
            gpus: self.gpus.or(fallback.gpus),
            cpus: self.cpus.or(fallback.cpus),
            mem: self.mem.clone().or_else(|| fallback.mem.clone()),
            time: self.time.clone().or_else(|| fallback.time.clone()),
        }
    }

    /// The built-in request of a stage kind, by its role: training and scoring want a GPU when
    /// the recipe may use one (its device is not "cpu"), reports and selections a little CPU.
    pub fn kind_default(role: stages::Role, gpu_recipe: bool) -> Resources {
        use stages::Role;
        let gpus = u32::from(gpu_recipe);
        match role {
            Role::Trains => Resources {
                gpus: Some(gpus),
                cpus: Some(4),
                mem: Some("16G".into()),
                time: Some("1-00:00:00".into()),
            },
            Role::Reports | Role::Selects => Resources {
                gpus: Some(0),
                cpus: Some(1),
                mem: Some("2G".into()),
                time: Some("1:00:00".into()),
            },
            Role::Scores | Role::Evaluates => Resources {
                gpus: Some(gpus),
                cpus: Some(4),
                mem: Some("16G".into()),
                time: Some("4:00:00".into()),
            },
        }
    }
}

/// A problem at a path inside the table that was read (`["mem"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub path: Vec<String>,
    pub message: String,
}

fn problem<S: AsRef<str>>(path: &[S], message: impl Into<String>) -> FieldProblem {
    FieldProblem { path: path.iter().map(|s| s.as_ref().to_string()).collect(), message: message.into() }
}

/// Reads a `resources` table; `prefix` is where it sits, for the problems' paths.
pub fn read_resources(node: &Node, prefix: &[&str]) -> Result<Resources, Vec<FieldProblem>> {
    let at = |key: &str| -> Vec<String> {
        prefix.iter().map(|s| s.to_string()).chain([key.to_string()]).collect()
    };
    let NodeValue::Table(_) = &node.value else {
        return Err(vec![problem(prefix, format!("must be a table such as {{ gpus = 1, cpus = 8, mem = \"32G\", time = \"12:00:00\" }}, found {}", node.type_name()))]);
    };
    let mut resources = Resources::default();
    let mut problems = Vec::new();
    for entry in node.entries() {
        let value = entry.node.to_json();
        match entry.key.as_str() {
            "gpus" | "cpus" => {
                let least = if entry.key == "cpus" { 1 } else { 0 };
                match value.as_u64().filter(|&n| n >= least && n <= 4096) {
                    Some(n) => {
                        if entry.key == "gpus" {
                            resources.gpus = Some(n as u32)
                        } else {
                            resources.cpus = Some(n as u32)
                        }
                    }
                    None => problems.push(problem(
                        &at(&entry.key),
                        format!("`{}` must be a whole number from {least} to 4096, found {value}", entry.key),
                    )),
                }
            }
            "mem" => match value.as_str().map(check_memory) {
                Some(Ok(())) => resources.mem = value.as_str().map(str::to_string),
                Some(Err(error)) => problems.push(problem(&at("mem"), error.to_string())),
                None => problems.push(problem(
                    &at("mem"),
                    format!("`mem` must be a string with a unit such as \"32G\", found {value}"),
                )),
            },
            "time" => match value.as_str().map(check_time) {
                Some(Ok(())) => resources.time = value.as_str().map(str::to_string),
                Some(Err(error)) => problems.push(problem(&at("time"), error.to_string())),
                None => problems.push(problem(
                    &at("time"),
                    format!("`time` must be a Slurm time string such as \"12:00:00\", found {value}"),
                )),
            },
            other => problems.push(problem(
                &at(other),
                format!("unknown resource `{other}` (expected one of: {})", RESOURCE_KEYS.join(", ")),
            )),
        }
    }
    if problems.is_empty() {
        Ok(resources)
    } else {
        Err(problems)
    }
}

/// Why a `mem` or `time` value is not one Slurm takes (the message says what would be).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResourceValueError(String);

/// A memory amount as `--mem` takes it, with its unit required: a bare number means megabytes
/// to Slurm, which is seldom what was meant.
pub fn check_memory(text: &str) -> Result<(), ResourceValueError> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || digits.parse::<u64>().is_err() {
        return Err(ResourceValueError(format!("`mem` = \"{text}\" is not a memory amount (a whole number and a unit: K, M, G or T, such as \"32G\")")));
    }
    if unit.is_empty() {
        return Err(ResourceValueError(format!(
            "`mem` = \"{text}\" has no unit; write \"{text}M\" or \"{text}G\" (Slurm would read megabytes)"
        )));
    }
    if !matches!(unit, "K" | "M" | "G" | "T" | "KB" | "MB" | "GB" | "TB") {
        return Err(ResourceValueError(format!("`mem` = \"{text}\": unknown unit `{unit}` (K, M, G or T)")));
    }
    Ok(())
}

/// A time limit in one of the forms `--time` takes: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`,
/// `D-H:M:S`; minutes and seconds below 60, hours below 24 after a day count.
pub fn check_time(text: &str) -> Result<(), ResourceValueError> {
    let bad = || {
        ResourceValueError(format!(
            "`time` = \"{text}\" is not a Slurm time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or \
             D-HH:MM:SS, such as \"12:00:00\")"
        ))
    };
    let number = |part: &str| -> Option<u64> {
        (!part.is_empty() && part.len() <= 6 && part.chars().all(|c| c.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (Some(number(d).ok_or_else(bad)?), rest),
        None => (None, text),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Option<_>>().ok_or_else(bad)?;
    let fine = match (days, parts.as_slice()) {
        (None, [_minutes]) => true,
        (None, [_minutes, s]) => *s < 60,
        (None, [_h, m, s]) => *m < 60 && *s < 60,
        (Some(_), [h]) => *h < 24,
        (Some(_), [h, m]) => *h < 24 && *m < 60,
        (Some(_), [h, m, s]) => *h < 24 && *m < 60 && *s < 60,
        _ => false,
    };
    if !fine {
        return Err(bad());
    }
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => 0,
    };
    if seconds == 0 {
        return Err(ResourceValueError(format!("`time` = \"{text}\" is no time at all")));
    }
    Ok(())
}

/// `[executor.slurm]`: where and how jobs are submitted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Further `sbatch` arguments, passed as they are (`["--constraint=a100"]`).
    pub extra: Vec<String>,
    /// Resources for every stage, under each stage's own `resources`.
    pub defaults: Resources,
    /// Resources per stage kind (`[executor.slurm.kinds.train]`), between the two.
    pub kinds: BTreeMap<String, Resources>,
    /// How often `squeue` is asked, in seconds.
    pub poll_seconds: Option<f64>,
    /// How many times a job that hit its time limit is resubmitted (it resumes).
    pub retries: Option<u32>,
    /// What the coordinator of `run --detach` asks for (its `time` above all: it waits for the
    /// whole run).
    pub coordinator: Resources,
    /// Whether instances ready together that ask for the same resources go as one job array
    /// (default true), and how many of an array's tasks may run at once (`--array=…%M`).
    pub arrays: Option<bool>,
    pub array_cap: Option<u32>,
}

impl SlurmSettings {
    /// `--partition`, `--account` and `--qos`, for those that are set.
    pub fn placement_args(&self) -> Vec<String> {
        [("partition", &self.partition), ("account", &self.account), ("qos", &self.qos)]
            .into_iter()
            .filter_map(|(flag, value)| value.as_ref().map(|v| format!("--{flag}={v}")))
            .collect()
    }

    /// These settings (a recipe's), with what they leave open taken from `site` (the project's
    /// `pipeline.toml`).
    pub fn over(&self, site: &SlurmSettings) -> SlurmSettings {
        let mut kinds = site.kinds.clone();
        for (kind, resources) in &self.kinds {
            let merged = resources.or(&site.kinds.get(kind).cloned().unwrap_or_default());
            kinds.insert(kind.clone(), merged);
        }
        SlurmSettings {
            partition: self.partition.clone().or_else(|| site.partition.clone()),
            account: self.account.clone().or_else(|| site.account.clone()),
            qos: self.qos.clone().or_else(|| site.qos.clone()),
            extra: if self.extra.is_empty() { site.extra.clone() } else { self.extra.clone() },
            defaults: self.defaults.or(&site.defaults),
            kinds,
            poll_seconds: self.poll_seconds.or(site.poll_seconds),
            retries: self.retries.or(site.retries),
            coordinator: self.coordinator.or(&site.coordinator),
            arrays: self.arrays.or(site.arrays),
            array_cap: self.array_cap.or(site.array_cap),
        }
    }
}

pub const SLURM_KEYS: &[&str] = &[
    "partition",
    "account",
    "qos",
    "extra",
    "defaults",
    "kinds",
    "poll_seconds",
    "retries",
    "coordinator",
    "arrays",
    "array_cap",
];

/// The `sbatch` options `extra` may hold: ones that say where and with what a job runs, never
/// what it runs, where its output goes or with which environment (`--wrap`, `--output`,
/// `--chdir`, `--export`, `--container`, … are refused). A recipe is run by its readers.
pub const EXTRA_ALLOWED: &[&str] = &[
    "acctg-freq",
    "begin",
    "cluster-constraint",
    "clusters",
    "comment",
    "constraint",
    "contiguous",
    "core-spec",
    "cores-per-socket",
    "cpu-freq",
    "cpus-per-gpu",
    "deadline",
    "distribution",
    "exclude",
    "exclusive",
    "gpu-bind",
    "gpu-freq",
    "gpus",
    "gpus-per-node",
    "gpus-per-socket",
    "gpus-per-task",
    "gres",
    "gres-flags",
    "hint",
    "licenses",
    "mail-type",
    "mail-user",
    "mem-bind",
    "mem-per-cpu",
    "mem-per-gpu",
    "mincpus",
    "network",
    "nice",
    "nodelist",
    "nodes",
    "ntasks-per-core",
    "ntasks-per-node",
    "ntasks-per-socket",
    "overcommit",
    "oversubscribe",
    "power",
    "prefer",
    "priority",
    "profile",
    "reservation",
    "sockets-per-node",
    "spread-job",
    "switches",
    "threads-per-core",
    "time-min",
    "tmp",
    "use-min-nodes",
    "wckey",
];

/// Why an `extra` item is refused, if it is.
pub fn check_extra(item: &str) -> Option<String> {
    let Some(option) = item.strip_prefix("--") else {
        return Some(format!(
            "`extra` item \"{item}\" is not a long option: write each as \"--name=value\" (or \"--name\")"
        ));
    };
    let (name, value) = match option.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    };
    if !EXTRA_ALLOWED.contains(&name) {
        return Some(format!(
            "`extra` item \"{item}\": `--{name}` is not allowed, as it can change what the job runs, \
             where its output goes or its environment (allowed: {})",
            EXTRA_ALLOWED.iter().map(|n| format!("--{n}")).collect::<Vec<_>>().join(", ")
        ));
    }
    if value.is_some_and(|v| v.chars().any(|c| c.is_control())) {
        return Some(format!("`extra` item {item:?} holds a control character"));
    }
    None
}

/// Reads `[executor.slurm]` (paths in problems are relative to `[executor]`).
pub fn read_slurm(node: &Node, kind_names: &[&str]) -> Result<SlurmSettings, Vec<FieldProblem>> {
    let mut settings = SlurmSettings::default();
    let mut problems = Vec::new();
    let NodeValue::Table(_) = &node.value else {
        return Err(vec![problem(
            &["slurm"],
            format!("[executor.slurm] must be a table, found {}", node.type_name()),
        )]);
    };
    for entry in node.entries() {
        let key = entry.key.as_str();
        let value = entry.node.to_json();
        let path = ["slurm", key];
        match key {
            "partition" | "account" | "qos" => match value.as_str().filter(|s| is_slurm_word(s)) {
                Some(text) => {
                    let slot = match key {
                        "partition" => &mut settings.partition,
                        "account" => &mut settings.account,
                        _ => &mut settings.qos,
                    };
                    *slot = Some(text.to_string());
                }
                None => problems.push(problem(
                    &path,
                    format!("`{key}` must be a name (letters, digits, `_`, `-`, `.`, `,`), found {value}"),
                )),
            },
            "extra" => match value.as_array().and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()) {
                Some(list) => {
                    let refused: Vec<String> = list.iter().filter_map(|item| check_extra(item)).collect();
                    if refused.is_empty() {
                        settings.extra = list;
                    }
                    problems.extend(refused.into_iter().map(|message| problem(&path, message)));
                }
                None => problems.push(problem(
                    &path,
                    format!("`extra` must be a list of sbatch options such as [\"--constraint=a100\"], found {value}"),
                )),
            },
            "arrays" => match value.as_bool() {
                Some(b) => settings.arrays = Some(b),
                None => problems.push(problem(&path, format!("`arrays` must be true or false, found {value}"))),
            },
            "array_cap" => match value.as_u64().filter(|&n| (1..=100_000).contains(&n)) {
                Some(n) => settings.array_cap = Some(n as u32),
                None => problems.push(problem(
                    &path,
                    format!("`array_cap` must be a whole number from 1 to 100000 (tasks of one array running at once), found {value}"),
                )),
            },
            "coordinator" => match read_resources(&entry.node, &["slurm", "coordinator"]) {
                Ok(r) => settings.coordinator = r,
                Err(mut p) => problems.append(&mut p),
            },
            "defaults" => match read_resources(&entry.node, &["slurm", "defaults"]) {
                Ok(r) => settings.defaults = r,
                Err(mut p) => problems.append(&mut p),
            },
            "kinds" => {
                if !matches!(entry.node.value, NodeValue::Table(_)) {
                    problems.push(problem(&path, "`kinds` must be a table of stage kinds".to_string()));
                    continue;
                }
                for kind in entry.node.entries() {
                    if !kind_names.contains(&kind.key.as_str()) {
                        problems.push(problem(
                            &["slurm", "kinds", &kind.key],
                            format!("unknown stage kind `{}` (one of: {})", kind.key, kind_names.join(", ")),
                        ));
                        continue;
                    }
                    match read_resources(&kind.node, &["slurm", "kinds", &kind.key]) {
                        Ok(r) => {
                            settings.kinds.insert(kind.key.clone(), r);
                        }
                        Err(mut p) => problems.append(&mut p),
                    }
                }
            }
            "poll_seconds" => match value.as_f64().filter(|s| (0.1..=600.0).contains(s)) {
                Some(s) => settings.poll_seconds = Some(s),
                None => problems.push(problem(&path, format!("`poll_seconds` must be from 0.1 to 600, found {value}"))),
            },
            "retries" => match value.as_u64().filter(|&n| n <= 100) {
                Some(n) => settings.retries = Some(n as u32),
                None => problems.push(problem(&path, format!("`retries` must be a whole number up to 100, found {value}"))),
            },
            other => problems.push(problem(
                &path,
                format!("unknown key `{other}` in [executor.slurm] (expected one of: {})", SLURM_KEYS.join(", ")),
            )),
        }
    }
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(problems)
    }
}

fn is_slurm_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-.,".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_times_are_read_as_slurm_reads_them() {
        for good in ["30", "90", "5:30", "12:00:00", "100:00:00", "2-0", "1-12:30", "1-00:00:00"] {
            assert_eq!(check_time(good), Ok(()), "{good}");
        }
        for bad in ["", "12h", "1:60", "1:00:60", "1-24:00:00", "1:2:3:4", "-1", "0", "0:00:00", "1.5"] {
            assert!(check_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_needs_a_unit() {
        assert_eq!(check_memory("32G"), Ok(()));
        assert_eq!(check_memory("512M"), Ok(()));
        let message = check_memory("32000").unwrap_err().to_string();
        assert!(message.contains("no unit") && message.contains("32000G"), "{message}");
        assert!(check_memory("32X").unwrap_err().to_string().contains("unknown unit"));
        assert!(check_memory("G").is_err());
        assert!(check_memory("-3G").is_err());
    }

    #[test]
    fn a_recipe_s_slurm_settings_go_over_the_site_s() {
        let site = SlurmSettings {
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            defaults: Resources { mem: Some("8G".into()), cpus: Some(2), ..Default::default() },
            kinds: [(
                "train".to_string(),
                Resources { time: Some("2-0".into()), gpus: Some(1), ..Default::default() },
            )]
            .into(),
            retries: Some(5),
            ..Default::default()
        };
        let recipe = SlurmSettings {
            partition: Some("short".into()),
            defaults: Resources { mem: Some("1G".into()), ..Default::default() },
            kinds: [("train".to_string(), Resources { gpus: Some(2), ..Default::default() })].into(),
            ..Default::default()
        };
        let merged = recipe.over(&site);
        assert_eq!(merged.partition.as_deref(), Some("short"));
        assert_eq!(merged.account.as_deref(), Some("lab"));
        assert_eq!(
            merged.defaults,
            Resources { mem: Some("1G".into()), cpus: Some(2), ..Default::default() }
        );
        assert_eq!(
            merged.kinds["train"],
            Resources { gpus: Some(2), time: Some("2-0".into()), ..Default::default() }
        );
        assert_eq!(merged.retries, Some(5));
    }

    #[test]
    fn layers_fill_what_the_one_above_leaves_open() {
        let stage = Resources { gpus: Some(2), ..Default::default() };
        let defaults = Resources { cpus: Some(8), mem: Some("64G".into()), ..Default::default() };
        let merged = stage.or(&defaults).or(&Resources::kind_default(stages::Role::Trains, true));
        assert_eq!(
            merged,
            Resources {
                gpus: Some(2),
                cpus: Some(8),
                mem: Some("64G".into()),
                time: Some("1-00:00:00".into())
            }
        );
        assert_eq!(Resources::kind_default(stages::Role::Trains, false).gpus, Some(0));
        assert_eq!(Resources::kind_default(stages::Role::Reports, true).gpus, Some(0));
    }
}
