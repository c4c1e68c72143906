//! The Slurm executor: an instance that is not cached becomes one `sbatch` job running this
//! binary's `worker` mode on that instance alone, which commits into the shared cache. One
//! `squeue` per interval serves every waiting instance (no `sacct`, which is often disabled);
//! the committed entry, not the job's state, is the proof of success.
//!
//! Jobs are named after the cache and the instance's key (`pipeline-<16 hex>`), so a
//! coordinator started again re-attaches to the jobs still queued or running instead of
//! submitting them twice, and two caches never share a job.
use super::squeue::{self, JobRow, Meaning};
use crate::recipe::resources::{Resources, SlurmSettings};
use crate::recipe::Recipe;
use crate::run::{Executor, JobSpec, Reporter};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often `squeue` is asked unless `[executor.slurm] poll_seconds` says otherwise.
const DEFAULT_POLL: f64 = 2.0;
/// How many times a job that hit its time limit is submitted again by default.
const DEFAULT_RETRIES: u32 = 3;
/// Lost jobs (preempted, node failure) are resubmitted at most this many times in a row, so a
/// broken partition cannot loop forever.
const MAX_LOST: u32 = 20;
/// Lines of a failed job's log shown with the failure.
const LOG_TAIL: usize = 20;

/// What `run --executor slurm` needs to submit jobs.
pub struct SlurmExecutor {
    settings: SlurmSettings,
    gpu_recipe: bool,
    binary: PathBuf,
    recipe: PathBuf,
    cache: PathBuf,
    logs: PathBuf,
    poll: Duration,
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Jobs this coordinator submitted (Ctrl-C cancels them).
    submitted: Mutex<BTreeSet<String>>,
    /// Jobs named like ours that were queued or running when this coordinator started.
    attachable: Mutex<BTreeMap<String, String>>,
}

/// The last `squeue` answer.
#[derive(Default)]
struct Queue {
    rows: BTreeMap<String, JobRow>,
    polled_at: Option<Instant>,
    polling: bool,
    /// Why the last poll failed, if it did.
    error: Option<String>,
}

/// Why the executor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("cannot run `squeue` ({0}); is this a Slurm login node, and is SLURM_CONF set?")]
    NoSlurm(String),
    #[error("cannot create {path}: {source}")]
    Logs { path: PathBuf, source: std::io::Error },
    #[error("cannot find this program's own path: {0}")]
    Binary(std::io::Error),
}

impl SlurmExecutor {
    /// An executor for `recipe` (read from `recipe_path`) committing into the cache at `cache`,
    /// submitting with `settings` (the recipe's over the project's); asks `squeue` once for the
    /// jobs of an earlier coordinator to re-attach to.
    pub fn new(
        recipe: &Recipe,
        recipe_path: &Path,
        cache: &Path,
        settings: SlurmSettings,
    ) -> Result<SlurmExecutor, SlurmError> {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let cache = absolute(cache);
        let logs = cache.join("logs").join("slurm");
        std::fs::create_dir_all(&logs).map_err(|source| SlurmError::Logs { path: logs.clone(), source })?;
        let binary = std::env::current_exe().map_err(SlurmError::Binary)?;
        let executor = SlurmExecutor {
            poll: Duration::from_secs_f64(settings.poll_seconds.unwrap_or(DEFAULT_POLL)),
            settings,
            gpu_recipe: recipe.device != stages::device::DeviceChoice::Cpu,
            binary,
            recipe: absolute(recipe_path),
            cache,
            logs,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            submitted: Mutex::new(BTreeSet::new()),
            attachable: Mutex::new(BTreeMap::new()),
        };
        let rows = query_squeue().map_err(SlurmError::NoSlurm)?;
        let active = rows
            .into_iter()
            .filter(|r| r.name.starts_with(JOB_PREFIX) && squeue::meaning(&r.state) == Meaning::Waiting)
            .map(|r| (r.name, r.id))
            .collect();
        *executor.attachable.lock().unwrap_or_else(|e| e.into_inner()) = active;
        Ok(executor)
    }

    /// What an instance of `stage_kind` asks for: its stage's `resources`, then
    /// `[executor.slurm.kinds.KIND]`, then `[executor.slurm.defaults]`, then the kind's
    /// built-in request.
    pub fn resources(&self, declared: &Resources, stage_kind: &str, role: stages::Role) -> Resources {
        let kind = self.settings.kinds.get(stage_kind).cloned().unwrap_or_default();
        declared.or(&kind).or(&self.settings.defaults).or(&Resources::kind_default(role, self.gpu_recipe))
    }

    /// The `sbatch` arguments for a job named `name` computing `label`.
    pub fn sbatch_args(&self, name: &str, label: &str, resources: &Resources, forced: bool) -> Vec<String> {
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={name}"),
            format!("--output={}", self.log_path(name).display()),
            "--open-mode=append".into(),
            // Preempted or failed nodes put the job back in the queue; it resumes.
            "--requeue".into(),
        ];
        if let Some(cpus) = resources.cpus {
            args.push(format!("--cpus-per-task={cpus}"));
        }
        if let Some(mem) = &resources.mem {
            args.push(format!("--mem={mem}"));
        }
        if let Some(time) = &resources.time {
            args.push(format!("--time={time}"));
        }
        if let Some(gpus) = resources.gpus.filter(|&g| g > 0) {
            args.push(format!("--gres=gpu:{gpus}"));
        }
        args.extend(self.settings.placement_args());
        args.extend(self.settings.extra.iter().cloned());
        let mut command = vec![
            self.binary.display().to_string(),
            "worker".into(),
            self.recipe.display().to_string(),
            "--instance".into(),
            label.to_string(),
            "--cache".into(),
            self.cache.display().to_string(),
        ];
        if forced {
            command.push("--force".into());
        }
        args.push(wrap(&command));
        args
    }

    /// The job name of the instance with `key`.
    pub fn job_name(&self, key: &cache::CacheKey) -> String {
        job_name(&self.cache, key)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Cancels every job this coordinator submitted (Ctrl-C); returns their ids.
    pub fn cancel_submitted(&self) -> Vec<String> {
        let ids: Vec<String> =
            self.submitted.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        if !ids.is_empty() {
            let _ = Command::new("scancel").args(&ids).status();
        }
        ids
    }

    fn submit(&self, args: &[String], resources: &Resources) -> Result<String, String> {
        let id = sbatch(args).map_err(|refusal| match refusal {
            Submission::Refused(said) => format!("sbatch refused the job ({}): {said}", describe(resources)),
            Submission::Broken(why) => why,
        })?;
        self.submitted.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
        Ok(id)
    }

    /// The job's row from a poll made after `since`, once its state differs from `last`
    /// (`None`: it has left the queue). Polls when the last answer is older than the interval;
    /// only one thread polls at a time, the others wait for its answer.
    fn next_change(&self, id: &str, last: Option<&JobRow>, since: Instant) -> Result<Option<JobRow>, String> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut failures = 0;
        loop {
            if let Some(at) = queue.polled_at.filter(|&at| at > since) {
                let row = queue.rows.get(id);
                let same = match (row, last) {
                    (Some(a), Some(b)) => a.state == b.state && a.node == b.node && a.reason == b.reason,
                    _ => false,
                };
                if !same && queue.error.is_none() {
                    return Ok(row.cloned());
                }
                if let Some(error) = &queue.error {
                    failures += 1;
                    if failures > 30 {
                        return Err(format!("squeue keeps failing: {error}"));
                    }
                }
                let due = at + self.poll;
                let now = Instant::now();
                if now < due || queue.polling {
                    let wait = if queue.polling { self.poll } else { due - now };
                    queue = self.changed.wait_timeout(queue, wait).unwrap_or_else(|e| e.into_inner()).0;
                    continue;
                }
            } else if queue.polling {
                queue = self.changed.wait_timeout(queue, self.poll).unwrap_or_else(|e| e.into_inner()).0;
                continue;
            }
            queue.polling = true;
            drop(queue);
            let started = Instant::now();
            let answer = query_squeue();
            queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.polling = false;
            queue.polled_at = Some(started);
            match answer {
                Ok(rows) => {
                    queue.rows = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
                    queue.error = None;
                }
                Err(e) => queue.error = Some(e),
            }
            self.changed.notify_all();
        }
    }
}

const JOB_PREFIX: &str = "pipeline-";

/// The job name of the instance with `key` computed into the cache at `cache` (an absolute
/// path): the same for every coordinator on this cache, different for another cache.
pub fn job_name(cache: &Path, key: &cache::CacheKey) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(cache.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(key.as_str().as_bytes());
    format!("{JOB_PREFIX}{}", &hasher.finalize().to_hex()[..16])
}

/// The name `run --detach` gives the coordinator of the recipe named `recipe`.
pub fn coordinator_name(recipe: &str) -> String {
    format!("{JOB_PREFIX}coordinator-{recipe}")
}

/// This user's jobs that Slurm still shows, by name (the newest of each name), or `None` where
/// there is no Slurm to ask: for `pipeline status`.
pub fn jobs_by_name() -> Option<BTreeMap<String, JobRow>> {
    if std::env::var_os("SLURM_CONF").is_none() && !Path::new("/etc/slurm/slurm.conf").exists() {
        return None;
    }
    let rows = query_squeue().ok()?;
    let mut named: BTreeMap<String, JobRow> = BTreeMap::new();
    for row in rows {
        let newer = named
            .get(&row.name)
            .is_none_or(|old| old.id.parse::<u64>().unwrap_or(0) < row.id.parse::<u64>().unwrap_or(0));
        if newer {
            named.insert(row.name.clone(), row);
        }
    }
    Some(named)
}

/// A job's row as status shows it: "job 12 running on node7".
pub fn describe_row(row: &JobRow) -> String {
    match row.state.as_str() {
        "RUNNING" => format!("job {} running on {}", row.id, row.node),
        "PENDING" => format!("job {} pending ({})", row.id, row.reason),
        other => format!("job {} {}", row.id, other.to_lowercase()),
    }
}

/// Every job of this user that Slurm still shows, finished ones included.
fn query_squeue() -> Result<Vec<JobRow>, String> {
    let output = Command::new("squeue")
        .args(["--me", "--states=all", "-h", "-o", squeue::FORMAT])
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(squeue::parse(&String::from_utf8_lossy(&output.stdout)))
}

/// Why `sbatch` gave no job id.
pub enum Submission {
    /// It refused the job; what it said, one line per error.
    Refused(String),
    /// It could not be run, or printed no job id.
    Broken(String),
}

/// Runs `sbatch --parsable …`; the job id it printed.
pub fn sbatch(args: &[String]) -> Result<String, Submission> {
    let output = Command::new("sbatch")
        .args(args)
        .output()
        .map_err(|e| Submission::Broken(format!("cannot run sbatch: {e}")))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let said: Vec<&str> = said.lines().map(|l| l.trim_start_matches("sbatch: error: ")).collect();
        return Err(Submission::Refused(said.join("; ")));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let id = text.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Submission::Broken(format!("sbatch printed no job id: {text:?}")));
    }
    Ok(id)
}

/// `--wrap=exec WORD…`, each word quoted for the job's shell.
pub fn wrap(command: &[String]) -> String {
    let quoted: Vec<String> = command.iter().map(|word| quote(word)).collect();
    format!("--wrap=exec {}", quoted.join(" "))
}

/// A word for the job's shell command line.
fn quote(word: &str) -> String {
    shlex::try_quote(word)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", word.replace('\'', "'\\''")))
}

/// The last lines of a job's log, indented, or a note that there is none.
fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            format!(
                "last {} line(s) of {}:\n{}",
                tail.len(),
                path.display(),
                tail.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
            )
        }
        Err(e) => format!("no log at {} ({e})", path.display()),
    }
}

impl Executor for SlurmExecutor {
    fn compute(&self, job: &JobSpec, reporter: &dyn Reporter) -> Result<(), String> {
        let name = self.job_name(job.key);
        let resources = self.resources(job.resources, job.kind, job.role);
        let args = self.sbatch_args(&name, &job.instance.label, &resources, job.forced);
        let log = self.log_path(&name);
        let attached = self.attachable.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
        // Only a poll that starts after the job is known to Slurm (sbatch has returned) may
        // say that it is gone.
        let mut id = match attached {
            Some(id) => {
                reporter.job(job.instance, &id, "re-attached (submitted by an earlier coordinator)");
                id
            }
            None => {
                let id = self.submit(&args, &resources)?;
                reporter.job(job.instance, &id, &format!("submitted ({})", describe(&resources)));
                id
            }
        };
        let mut since = Instant::now();
        let mut last: Option<JobRow> = None;
        let mut out_of_time = 0;
        let mut lost = 0;
        loop {
            let row = self.next_change(&id, last.as_ref(), since)?;
            let Some(row) = row else {
                // Gone from the queue: finished longer ago than Slurm keeps jobs.
                return Ok(());
            };
            let again = match squeue::meaning(&row.state) {
                Meaning::Waiting if row.state == "PENDING" && squeue::never_starts(&row.reason) => {
                    let _ = Command::new("scancel").arg(&id).status();
                    return Err(format!(
                        "Slurm will never start job {id} as asked ({}: {}); cancelled it. Lower the \
                         stage's `resources` or set [executor.slurm] defaults, partition, account or qos",
                        row.reason,
                        describe(&resources)
                    ));
                }
                Meaning::Waiting => {
                    let what = match row.state.as_str() {
                        "RUNNING" => format!("running on {}", row.node),
                        "PENDING" => format!("pending ({})", row.reason),
                        other => other.to_lowercase(),
                    };
                    reporter.job(job.instance, &id, &what);
                    last = Some(row);
                    continue;
                }
                Meaning::Ended => return Ok(()),
                Meaning::Lost | Meaning::OutOfTime if (job.committed)() => return Ok(()),
                Meaning::Lost => {
                    lost += 1;
                    if lost > MAX_LOST {
                        return Err(format!("job {id} was lost {lost} times ({}); giving up", row.state));
                    }
                    format!("{} (not counted as an attempt)", row.state.to_lowercase())
                }
                Meaning::OutOfTime => {
                    out_of_time += 1;
                    let retries = self.settings.retries.unwrap_or(DEFAULT_RETRIES);
                    if out_of_time > retries {
                        return Err(format!(
                            "job {id} hit its time limit ({}) {out_of_time} time(s), more than `retries` = {retries}; {}",
                            resources.time.as_deref().unwrap_or("?"),
                            log_tail(&log)
                        ));
                    }
                    format!("hit its time limit (attempt {out_of_time} of {retries} more)")
                }
                Meaning::Failed(why) => return Err(format!("job {id}: {why}; {}", log_tail(&log))),
            };
            let new_id = self.submit(&args, &resources)?;
            since = Instant::now();
            reporter.job(job.instance, &new_id, &format!("resubmitted: job {id} {again}; it resumes"));
            id = new_id;
            last = None;
        }
    }

    fn log_of(&self, job: &JobSpec) -> Option<String> {
        let name = self.job_name(job.key);
        Some(log_tail(&self.log_path(&name)))
    }
}

fn describe(resources: &Resources) -> String {
    let mut parts = Vec::new();
    if let Some(g) = resources.gpus.filter(|&g| g > 0) {
        parts.push(format!("{g} GPU"));
    }
    if let Some(c) = resources.cpus {
        parts.push(format!("{c} CPU"));
    }
    if let Some(m) = &resources.mem {
        parts.push(m.clone());
    }
    if let Some(t) = &resources.time {
        parts.push(format!("time {t}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_with_shell_characters_are_quoted() {
        assert_eq!(quote("zeta[delta=0.95]@1"), "'zeta[delta=0.95]@1'");
        assert_eq!(quote("/srv/cache"), "/srv/cache");
        assert_eq!(quote("it's"), "\"it's\"");
    }
}
