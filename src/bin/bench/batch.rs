//! `waba-bench batch` (issue 17): a 5,000-row CSV sent to `POST /v1/batches` and timed from
//! the client, end to end (upload, every row checked by the create reader, the batch and its
//! migrations inserted in one transaction, the 201 answer with one item per number).
//!
//! Each repeat sends the same CSV twice, with fresh numbers:
//!
//! 1. with row `--bad-row` (as a spreadsheet numbers it: the header is row 1) holding an invalid
//!    number: it must answer 422 naming that row and column `phone_number`, and create nothing;
//! 2. valid: it must answer 201 with every item `created`.
//!
//! The service runs with its workers, as in production; the batches are created with
//! `max_in_flight=1`, so what the workers start in the background while the next repeat is
//! timed stays small.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use super::seed;
use super::stack::{self, Stack};
use super::stats::{Samples, Table};
use super::{BUSINESS, phone};

/// The goal for a 5,000-row CSV, checked and created.
const TARGET_MS: f64 = 5_000.0;

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Numbers per CSV (the API takes at most 5,000).
    #[arg(long, default_value_t = 5_000)]
    rows: usize,
    /// Times each CSV (refused, then created) is sent, with fresh numbers every time.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The row that holds an invalid number in the refused CSV (header = row 1).
    #[arg(long, default_value_t = 4_321)]
    bad_row: usize,
    #[command(flatten)]
    out: stack::Output,
}

/// `waba-bench batch`.
pub async fn run(args: BatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.repeats <= 17,
        "--repeats: at most 17 (fresh numbers run out)"
    );
    anyhow::ensure!(
        (2..=args.rows + 1).contains(&args.bad_row),
        "--bad-row must name a number row: 2 to --rows + 1"
    );
    let bin = stack::migrator_bin(args.out.bin.as_deref())?;
    let dir = args.out.dir();
    let s = Stack::start(&dir, &bin, stack::default_run_args()?).await?;
    let outcome = measure(&s, &args).await;
    s.stop(outcome.is_ok(), args.out.keep).await;
    let (doc, table) = outcome?;
    args.out.report(&doc, &table)
}

/// The CSV of repeat `rep`: `rows` numbers, the one at spreadsheet row `bad_row` invalid.
fn csv(rep: usize, rows: usize, bad_row: Option<usize>) -> String {
    let mut out = String::with_capacity(rows * 90);
    out.push_str("phone_number,source_waba_id,destination_waba_id,meta_business_id,reference\n");
    // One phase per repeat: numbers no other repeat uses (this stack has its own database).
    let phase = rep;
    for i in 0..rows {
        let number = if bad_row == Some(i + 2) {
            "+1 not a number".to_owned()
        } else {
            phone(phase, i)
        };
        out.push_str(&format!(
            "{number},2{rep}{i:07}1111,3{rep}{i:07}1111,{BUSINESS},row-{}\n",
            i + 2
        ));
    }
    out
}

async fn post(
    s: &Stack,
    base: &str,
    key: &str,
    name: &str,
    body: String,
) -> anyhow::Result<(reqwest::StatusCode, Value, f64)> {
    let started = Instant::now();
    let res = s
        .http
        .post(format!("{base}/v1/batches"))
        .query(&[("name", name), ("max_in_flight", "1")])
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await?;
    Ok((status, body, started.elapsed().as_secs_f64() * 1000.0))
}

async fn count_migrations(s: &Stack) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM migrations")
        .fetch_one(&s.db)
        .await?)
}

async fn measure(s: &Stack, args: &BatchArgs) -> anyhow::Result<(Value, Table)> {
    let (serve, base) = s.start_serve("batch").await?;
    let outcome = async {
        let partner = seed::create_partners(&s.http, &base, super::ADMIN_KEY, 1).await?;
        let key = partner.into_iter().next().context("no partner")?.key;
        let (mut refused, mut created) = (Samples::default(), Samples::default());
        for rep in 0..args.repeats {
            let before = count_migrations(s).await?;
            let (status, body, ms) = post(
                s,
                &base,
                &key,
                &format!("refused {rep}"),
                csv(rep, args.rows, Some(args.bad_row)),
            )
            .await?;
            let first = &body["errors"][0];
            anyhow::ensure!(
                status == reqwest::StatusCode::UNPROCESSABLE_ENTITY
                    && body["errors"].as_array().map(Vec::len) == Some(1)
                    && first["row"] == json!(args.bad_row)
                    && first["column"] == "phone_number",
                "the invalid CSV was not refused at row {} column phone_number: {status} {body}",
                args.bad_row
            );
            anyhow::ensure!(
                count_migrations(s).await? == before,
                "the refused CSV created migrations"
            );
            refused.push(ms);
            eprintln!(
                "bench: repeat {rep}: refused at row {} in {ms:.0} ms",
                args.bad_row
            );

            let (status, body, ms) = post(
                s,
                &base,
                &key,
                &format!("created {rep}"),
                csv(rep, args.rows, None),
            )
            .await?;
            let items = body["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            anyhow::ensure!(
                status == reqwest::StatusCode::CREATED
                    && items.len() == args.rows
                    && items.iter().all(|i| i["status"] == "created"),
                "the valid CSV was not created whole: {status} {}",
                body.get("code").unwrap_or(&Value::Null)
            );
            anyhow::ensure!(
                count_migrations(s).await? == before + args.rows as i64,
                "the created batch does not hold {} migrations",
                args.rows
            );
            created.push(ms);
            eprintln!(
                "bench: repeat {rep}: {} rows created in {ms:.0} ms",
                args.rows
            );
        }
        anyhow::Ok((refused, created))
    }
    .await;
    serve.stop(std::time::Duration::from_secs(10)).await;
    let (refused, created) = outcome?;

    let worst = created.pct(100.0).unwrap_or(f64::INFINITY);
    let mut t = Table::default();
    t.section(&format!(
        "POST /v1/batches, text/csv, {} rows, {} repeats",
        args.rows, args.repeats
    ));
    t.row(
        "checked and created (p50 / max)",
        format!(
            "{:.0} / {worst:.0} ms",
            created.pct(50.0).unwrap_or_default()
        ),
        format!(
            "goal < {TARGET_MS:.0} ms: {}",
            if worst < TARGET_MS { "met" } else { "NOT met" }
        ),
    );
    t.row(
        &format!("refused at row {} (p50 / max)", args.bad_row),
        format!(
            "{:.0} / {:.0} ms",
            refused.pct(50.0).unwrap_or_default(),
            refused.pct(100.0).unwrap_or_default()
        ),
        "422 naming the row and column; nothing created",
    );
    let doc = json!({
        "rows": args.rows,
        "repeats": args.repeats,
        "bad_row": args.bad_row,
        "created": created.json(),
        "refused": refused.json(),
        "target_ms": TARGET_MS,
        "target_met": worst < TARGET_MS,
    });
    Ok((doc, t))
}
