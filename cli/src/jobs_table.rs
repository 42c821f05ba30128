//! The jobs table of `studio status` and `studio status --watch`: one set
//! of columns, fitted to the width ([`crate::table::fit`]). Plumbing: it
//! imports no command (both commands import it).

use crate::table::{fit, unique_prefixes, Column, Step};
use studio_core::clock::{format_age, Timestamp};
use studio_core::job::{usd, Job};
use studio_core::progress;

/// What a narrower table gives up, in order; the id, state, cost and
/// progress stay (at 80 columns with generated ids, the script too).
fn steps(id: &'static str) -> [Step; 12] {
    [
        Step::Cut("SCRIPT", 28),
        Step::Drop("AGE"),
        Step::Drop("ATTEMPT"),
        Step::Drop("RUNTIME"),
        Step::Drop("MACHINE"),
        Step::Narrow("PROGRESS"),
        Step::Drop("CLOUD"),
        Step::Cut("SCRIPT", 16),
        Step::Cut("SCRIPT", 12),
        Step::Drop("SCRIPT"),
        Step::Narrow("PROGRESS"),
        // Last: ids (a custom one may be 64 characters) shortened to
        // unique prefixes, which `studio status ID` takes.
        Step::Narrow(id),
    ]
}

/// The jobs table of `status` and `status --watch`, its columns chosen for
/// `width` (`None`: every column, whole, as a pipe gets it).
pub(crate) fn jobs_table(
    jobs: &[Job],
    now: Timestamp,
    id: &'static str,
    width: Option<usize>,
) -> Vec<String> {
    let cells = |f: &dyn Fn(&Job) -> String| jobs.iter().map(f).collect::<Vec<_>>();
    let ids = cells(&|j| j.id.to_string());
    let bar = |width: usize| cells(&|j| j.progress.map_or("-".into(), |p| progress::bar(p, width)));
    let columns = vec![
        Column::new(id, ids.clone()).or(unique_prefixes(&ids, 8)),
        Column::new("SCRIPT", cells(&Job::command_line)),
        Column::new("STATE", cells(&|j| j.state.to_string())),
        Column::new("CLOUD", cells(&|j| j.plan.cloud.to_string())),
        Column::new("MACHINE", cells(&|j| j.plan.machine.clone())),
        Column::new("ATTEMPT", cells(&|j| j.attempt.to_string())),
        Column::new("AGE", cells(&|j| format_age(now.since(j.created_at)))),
        Column::new("RUNTIME", cells(&|j| format_age(j.runtime(now)))),
        Column::new("COST", cells(&|j| usd(j.cost_micro_usd(now)))),
        Column::new("PROGRESS", bar(20)).or(bar(10)).or(cells(&|j| {
            j.progress
                .map_or("-".into(), |p| format!("{:.0}%", p * 100.0))
        })),
    ];
    fit(columns, &steps(id), width)
}
