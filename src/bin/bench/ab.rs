//! `waba-bench ab`: a change's before/after as paired runs of the throughput drive.
//!
//! On a shared machine the absolute CPU per transition drifts by more than most single changes
//! are worth (BENCHMARKS.md, "Issue 18"). So each pair runs the old binary (`--against`) and the
//! new one (`--bin`, else the one next to this executable) back to back, the order alternating
//! from pair to pair, and the figure is the median of the per-pair ratios new ÷ old. The
//! anchor and the pgbench ceiling are skipped: neither depends on the binary.

use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};

use crate::RunArgs;
use crate::stats::Table;

#[derive(Debug, Clone, Args)]
pub struct AbArgs {
    /// The `waba-migrator` binary before the change.
    #[arg(long)]
    against: PathBuf,
    /// Pairs of runs (old then new, new then old, ...).
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    #[command(flatten)]
    run: RunArgs,
}

/// The figures compared, as (label, JSON pointer into a run's document). Lower is better for
/// all of them.
const FIGURES: [(&str, &str); 6] = [
    (
        "service + PostgreSQL CPU ms per transition",
        "/cpu_ms_per_transition/service_plus_postgres",
    ),
    (
        "… net of the driver's reads",
        "/driver_reads/cpu_ms_per_transition_net_of_reads",
    ),
    (
        "service CPU ms per transition",
        "/cpu_ms_per_transition/service",
    ),
    (
        "PostgreSQL CPU ms per transition",
        "/cpu_ms_per_transition/postgres",
    ),
    ("commits per transition", "/postgres_per_transition/commits"),
    (
        "WAL flushes per transition",
        "/postgres_per_transition/wal_syncs",
    ),
];

pub async fn run(args: AbArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.pairs > 0, "--pairs must be at least 1");
    let base_dir = args.run.out.dir();
    // Both binaries run from fresh copies. How a file was written decides how the page cache
    // holds it, and that shows in the CPU of the process running it: the same binary ran with
    // 7 % less service CPU from a `cp` of it than from the file the linker wrote
    // (BENCHMARKS.md, "Seventh session").
    std::fs::create_dir_all(&base_dir)?;
    let old_bin = args.against.clone();
    let new_bin = crate::stack::migrator_bin(args.run.out.bin.as_deref())?;
    let old = fresh_copy(&old_bin, &base_dir.join("waba-migrator-old"))?;
    let new = fresh_copy(&new_bin, &base_dir.join("waba-migrator-new"))?;
    let drives = drive_pairs(&args, &old, &new, &base_dir).await;
    // The copies go whether the drives succeeded or not.
    let _ = std::fs::remove_file(&old);
    let _ = std::fs::remove_file(&new);
    let docs = drives?;
    if !args.run.out.keep {
        // Each run removed its own directory; this one is empty now.
        let _ = std::fs::remove_dir(&base_dir);
    }

    let mut table = Table::default();
    table.section(&format!(
        "ab: {} pairs, new ({}) against old ({}), each run from a fresh copy",
        args.pairs,
        new_bin.display(),
        old_bin.display()
    ));
    let mut summary = Vec::new();
    for (label, pointer) in FIGURES {
        let pairs: Vec<(f64, f64)> = docs
            .iter()
            .filter_map(|(o, n)| {
                Some((o.pointer(pointer)?.as_f64()?, n.pointer(pointer)?.as_f64()?))
            })
            .collect();
        let ratios: Vec<f64> = pairs
            .iter()
            .filter(|(o, _)| *o > 0.0)
            .map(|(o, n)| n / o)
            .collect();
        let Some(median) = median(&ratios) else {
            continue;
        };
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let shown: Vec<String> = pairs
            .iter()
            .map(|(o, n)| format!("{o:.3} → {n:.3}"))
            .collect();
        table.row(
            label,
            format!("× {median:.3} (pairs {lo:.3}–{hi:.3})"),
            shown.join(", "),
        );
        summary.push(json!({
            "figure": label,
            "pointer": pointer,
            "old_new": pairs,
            "ratios": ratios,
            "median_ratio": median,
        }));
    }
    let doc = json!({
        "old": old_bin.display().to_string(),
        "new": new_bin.display().to_string(),
        "pairs": args.pairs,
        "summary": summary,
        "runs": docs.iter().map(|(o, n)| json!({ "old": o, "new": n })).collect::<Vec<_>>(),
    });
    args.run.out.report(&doc, &table)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// The pairs of drives, old and new in alternating order.
async fn drive_pairs(
    args: &AbArgs,
    old: &std::path::Path,
    new: &std::path::Path,
    base_dir: &std::path::Path,
) -> anyhow::Result<Vec<(Value, Value)>> {
    let mut docs: Vec<(Value, Value)> = Vec::with_capacity(args.pairs);
    for pair in 0..args.pairs {
        let order = if pair.is_multiple_of(2) {
            [(old, "old"), (new, "new")]
        } else {
            [(new, "new"), (old, "old")]
        };
        let mut got = (Value::Null, Value::Null);
        for (bin, side) in order {
            eprintln!(
                "bench: ab pair {}/{}: {side} ({})",
                pair + 1,
                args.pairs,
                bin.display()
            );
            let mut one = args.run.clone();
            one.anchor.anchor_jobs = 0;
            one.pgbench_seconds = 0;
            one.out.bin = Some(bin.to_path_buf());
            one.out.json = None;
            one.out.dir = Some(base_dir.join(format!("pair{pair}-{side}")));
            let doc = crate::run_once(one).await?;
            match side {
                "old" => got.0 = doc,
                _ => got.1 = doc,
            }
        }
        docs.push(got);
    }
    Ok(docs)
}

/// Copies `from` to `to` (executable), written in one go like an installed binary.
fn fresh_copy(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(from.is_file(), "{} not found", from.display());
    std::fs::copy(from, to)
        .map_err(|e| anyhow::anyhow!("copying {} to {}: {e}", from.display(), to.display()))?;
    Ok(to.to_owned())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
    }
}
