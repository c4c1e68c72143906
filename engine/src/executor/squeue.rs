//! Slurm's view of jobs, read from `squeue`'s fixed-format output (its JSON schema changes
//! between versions), and what each job state means for an instance.

/// One line of `squeue -h -o '%i|%j|%T|%r|%N'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub state: String,
    pub reason: String,
    pub node: String,
}

/// The `squeue` format [`parse`] reads.
pub const FORMAT: &str = "%i|%j|%T|%r|%N";

/// Rows of `squeue -h -o FORMAT`; lines that do not have five fields are ignored.
pub fn parse(text: &str) -> Vec<JobRow> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(5, '|');
            let row = JobRow {
                id: fields.next()?.trim().to_string(),
                name: fields.next()?.trim().to_string(),
                state: fields.next()?.trim().to_string(),
                reason: fields.next()?.trim().to_string(),
                node: fields.next()?.trim().to_string(),
            };
            (!row.id.is_empty() && !row.state.is_empty()).then_some(row)
        })
        .collect()
}

/// What a job state means for the instance it computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// Queued, starting, running, requeued by Slurm itself: keep waiting.
    Waiting,
    /// It ran to the end: the cache entry says whether it succeeded.
    Ended,
    /// Killed through no fault of its own (preemption, node failure): submit again, without
    /// counting an attempt; it resumes from its last finished epoch.
    Lost,
    /// It hit its time limit: submit again (it resumes) while attempts remain.
    OutOfTime,
    /// It failed, with the reason to report.
    Failed(String),
}

pub fn meaning(state: &str) -> Meaning {
    match state {
        "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED" | "REQUEUED" | "REQUEUE_FED"
        | "REQUEUE_HOLD" | "RESIZING" | "SIGNALING" | "STAGE_OUT" | "STOPPED" => Meaning::Waiting,
        "COMPLETED" => Meaning::Ended,
        "PREEMPTED" | "NODE_FAIL" | "BOOT_FAIL" => Meaning::Lost,
        "TIMEOUT" | "DEADLINE" => Meaning::OutOfTime,
        "OUT_OF_MEMORY" => {
            Meaning::Failed("out of memory: the job used more than its `mem` (raise resources.mem)".into())
        }
        "CANCELLED" => Meaning::Failed(
            "the job was cancelled (scancel); a rerun resumes from its last finished epoch".into(),
        ),
        other => Meaning::Failed(format!("the job ended {other}")),
    }
}

/// Whether a pending job's reason says it can never start as asked (more than any node has,
/// an unknown account or QOS): waiting would be forever.
pub fn never_starts(reason: &str) -> bool {
    matches!(
        reason,
        "PartitionConfig"
            | "BadConstraints"
            | "PartitionNodeLimit"
            | "PartitionTimeLimit"
            | "InvalidAccount"
            | "InvalidQOS"
            | "DependencyNeverSatisfied"
            | "ReqNodeNotAvail, UnavailableNodes:"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_and_garbage_is_skipped() {
        let rows = parse("12|pipeline-ab12|RUNNING|None|node7\n13|pipeline-cd|PENDING|Resources|\nnoise\n");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            JobRow {
                id: "12".into(),
                name: "pipeline-ab12".into(),
                state: "RUNNING".into(),
                reason: "None".into(),
                node: "node7".into()
            }
        );
        assert_eq!(rows[1].node, "");
        assert_eq!(rows[1].reason, "Resources");
    }

    #[test]
    fn states_are_told_apart() {
        assert_eq!(meaning("PENDING"), Meaning::Waiting);
        assert_eq!(meaning("REQUEUED"), Meaning::Waiting);
        assert_eq!(meaning("COMPLETED"), Meaning::Ended);
        assert_eq!(meaning("PREEMPTED"), Meaning::Lost);
        assert_eq!(meaning("NODE_FAIL"), Meaning::Lost);
        assert_eq!(meaning("TIMEOUT"), Meaning::OutOfTime);
        assert!(matches!(meaning("OUT_OF_MEMORY"), Meaning::Failed(m) if m.contains("out of memory")));
        assert!(matches!(meaning("FAILED"), Meaning::Failed(m) if m.contains("FAILED")));
        assert!(never_starts("PartitionConfig"));
        assert!(!never_starts("Resources") && !never_starts("Priority") && !never_starts("BeginTime"));
    }
}
