//! `/v1/batches…`: portfolio moves. A batch creates up to 5,000 migrations in one
//! transaction (JSON or CSV), then shows their progress and a report; see README "Moving a
//! portfolio".

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{
    AppJson, AppQuery, BodyLimit, Caller, Fields, FromQuery, IdPath, JsonBody, QueryParams,
    body_refused, finish_id_page, list_scope, parse_cursor, parse_limit, read_id_paging,
};
use super::migrations::{
    CreateMigration, MigrationPage, NewMigrationRequest, PartnerCaller, idempotency_key,
    validate_callback,
};
use super::problem::{ApiError, FieldError, Problem};
use crate::api::Migration;
use crate::api::batch::{Batch, BatchCreated};
use crate::core::AppState;
use crate::core::batches::{self as commands, MAX_ITEMS, NewBatchInput, NewItem};
use crate::core::client_page;
use crate::core::migrations::{Idempotency, Source};
use crate::db::batches as store;
use crate::domain::MigrationState;
use crate::domain::values::E164;

/// A batch body may be this large (5,000 items): far above the other routes' limit.
pub const BATCH_BODY_LIMIT: usize = 8 * 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_batch, list_batches))
        .routes(routes!(get_batch))
        .routes(routes!(list_batch_migrations))
        .routes(routes!(batch_report))
        .routes(routes!(cancel_batch))
        .routes(routes!(retry_failed))
        .layer(axum::extract::DefaultBodyLimit::max(BATCH_BODY_LIMIT))
        .layer(axum::Extension(BodyLimit(BATCH_BODY_LIMIT)))
}

/// One item of `POST /v1/batches`: a create body with an optional `reference`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateBatchItem {
    #[serde(flatten)]
    pub migration: CreateMigration,
    /// Your own id for this number (up to 200 characters), shown in the answer and the report.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub reference: Option<String>,
}

/// Body of `POST /v1/batches` (as JSON).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// 1 to 200 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        example = "Acme portfolio, December",
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// 1 to 5,000 create bodies, each as `POST /v1/migrations` takes it, plus `reference`.
    #[schema(min_items = 1, max_items = 5000)]
    pub migrations: Vec<CreateBatchItem>,
    /// 1 to 1000 (default 20): how many of its migrations may be past `queued` and before
    /// `awaiting_otp` at once; the others wait, held, for a free slot (see README "Pacing").
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_in_flight: Option<i32>,
    /// Webhook URL for the batch's own events (`batch.progress`, `batch.completed`); the
    /// partner's callback URL otherwise. Each migration keeps its own `callback_url`.
    #[serde(default)]
    #[schema(
        pattern = r"^https://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,4})?(/[!-~]*)?$"
    )]
    pub callback_url: Option<String>,
}

/// The checked values of a batch create, and its fingerprint body.
struct BatchRequest {
    sent: Value,
    input: NewBatchInput,
    /// Whether the body named `max_in_flight` and `callback_url` (else the query may).
    gave_max: bool,
    gave_callback: bool,
}

/// A batch's name: 1 to 200 characters, no control characters.
fn check_name(n: &str) -> Result<String, String> {
    let n = n.trim();
    if !n.is_empty() && n.chars().count() <= 200 && !n.chars().any(char::is_control) {
        Ok(n.to_owned())
    } else {
        Err("1 to 200 characters, not blank, no control characters".into())
    }
}

fn check_max_in_flight(n: i64) -> Result<i32, String> {
    i32::try_from(n)
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| "an integer from 1 to 1000".into())
}

/// An item's `reference`: up to 200 characters, no control characters.
fn check_reference(v: Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(r)
            if !r.trim().is_empty()
                && r.chars().count() <= 200
                && !r.contains(char::is_control) =>
        {
            Ok(Some(r))
        }
        _ => Err("a string of 1 to 200 characters without control characters".into()),
    }
}

/// The items of a batch, each read by the single create's reader. Problems are `(item index,
/// problem at a pointer inside the item)`.
struct Items {
    items: Vec<NewItem>,
    /// Each item as sent (create body and `reference`): the fingerprint.
    sent: Vec<Value>,
    errors: Vec<(usize, FieldError)>,
}

/// An item as the body gave it: its object, or why there is none; and a problem the body's
/// reader already found in the object (a CSV `metadata` cell that is not JSON, left out of it).
type RawItem = (Result<Map<String, Value>, FieldError>, Option<FieldError>);

/// `name`: how the body names an item by its index in problems (`item 0`, or the CSV's `row 2`).
fn read_items(objects: Vec<RawItem>, allow_private: bool, name: impl Fn(usize) -> String) -> Items {
    let mut out = Items {
        items: Vec::with_capacity(objects.len()),
        sent: Vec::with_capacity(objects.len()),
        errors: Vec::new(),
    };
    let mut first_of: HashMap<String, usize> = HashMap::new();
    for (index, (object, found)) in objects.into_iter().enumerate() {
        let mut object = match object {
            Ok(o) => o,
            Err(e) => {
                out.errors.push((index, e));
                continue;
            }
        };
        let failed_before = out.errors.len();
        out.errors.extend(found.map(|e| (index, e)));
        // Every problem of the item, the same number given twice included, not the first.
        let number = object
            .get("phone_number")
            .and_then(Value::as_str)
            .and_then(|p| E164::parse(p).ok());
        if let Some(number) = number {
            match first_of.get(number.as_str()) {
                Some(first) => out.errors.push((
                    index,
                    FieldError {
                        pointer: "/phone_number".into(),
                        message: format!(
                            "{} is also {} of this batch: each number once per batch",
                            object["phone_number"].as_str().unwrap_or_default(),
                            name(*first)
                        ),
                        ..Default::default()
                    },
                )),
                None => {
                    first_of.insert(number.as_str().to_owned(), index);
                }
            }
        }
        let reference = match object.remove("reference").map(check_reference) {
            None => Ok(None),
            Some(Ok(r)) => Ok(r),
            Some(Err(message)) => Err(FieldError {
                pointer: "/reference".into(),
                message,
                ..Default::default()
            }),
        };
        let read = NewMigrationRequest::read_object(object, allow_private);
        let (reference, read) = match (reference, read) {
            (Ok(r), Ok(v)) if out.errors.len() == failed_before => (r, v),
            (r, v) => {
                out.errors.extend(r.err().map(|e| (index, e)));
                out.errors
                    .extend(v.err().into_iter().flatten().map(|e| (index, e)));
                continue;
            }
        };
        let checked = read.into_input_parts();
        let mut sent = json!(checked.1);
        if let (Some(r), Value::Object(m)) = (&reference, &mut sent) {
            m.insert("reference".into(), json!(r));
        }
        out.sent.push(sent);
        out.items.push(NewItem {
            reference,
            row: None,
            input: checked.0,
        });
    }
    out
}

impl NewMigrationRequest {
    /// The checked input and the body as sent.
    fn into_input_parts(self) -> (crate::core::migrations::NewMigrationInput, CreateMigration) {
        let body = self.body.clone();
        (self.into_input(), body)
    }
}

/// 1 to 5,000 items.
fn check_count(n: usize) -> Result<(), String> {
    if (1..=MAX_ITEMS).contains(&n) {
        Ok(())
    } else {
        Err(format!("1 to {MAX_ITEMS} migrations (got {n})"))
    }
}

impl JsonBody for BatchRequest {
    fn read(f: &mut Fields) -> Option<Self> {
        let name = f.required::<String>("name");
        let migrations = f.required::<Vec<Value>>("migrations");
        // JSON Schema's `integer` includes numbers written with a zero fraction (`20.0`).
        let max_in_flight = f
            .optional::<serde_json::Number>("max_in_flight")
            .and_then(|n| {
                let whole = n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|x| x.fract() == 0.0 && x.abs() <= 1e15)
                        .map(|x| x as i64)
                });
                f.check(
                    "max_in_flight",
                    whole.ok_or_else(|| "an integer from 1 to 1000".to_owned()),
                )
            });
        let max_in_flight_given = max_in_flight.is_some();
        let callback_url = f.optional::<String>("callback_url");
        let checked_name = name.as_deref().and_then(|n| f.check("name", check_name(n)));
        let checked_max = match max_in_flight {
            Some(n) => f.check("max_in_flight", check_max_in_flight(n)),
            None => Some(commands::DEFAULT_MAX_IN_FLIGHT),
        };
        let allow_private = f.allow_private_callbacks();
        let checked_callback = callback_url
            .as_deref()
            .and_then(|u| f.check("callback_url", validate_callback(u, allow_private)));
        let migrations = migrations?;
        f.check("migrations", check_count(migrations.len()))?;
        let objects = migrations
            .into_iter()
            .map(|v| match v {
                Value::Object(o) => (Ok(o), None),
                _ => (
                    Err(FieldError {
                        pointer: String::new(),
                        message: "each item must be a JSON object (a create body)".into(),
                        ..Default::default()
                    }),
                    None,
                ),
            })
            .collect();
        let items = read_items(objects, allow_private, |i| format!("item {i}"));
        let failed = !items.errors.is_empty();
        f.nested(
            "migrations",
            items
                .errors
                .into_iter()
                .map(|(i, e)| FieldError {
                    pointer: format!("/{i}{}", e.pointer),
                    ..e
                })
                .collect(),
        );
        if failed {
            return None;
        }
        let name = checked_name?;
        let max_in_flight = checked_max?;
        Some(Self {
            gave_max: max_in_flight_given,
            gave_callback: callback_url.is_some(),
            sent: json!({
                "name": name,
                "max_in_flight": max_in_flight,
                "callback_url": callback_url,
                "migrations": items.sent,
            }),
            input: NewBatchInput {
                name,
                max_in_flight,
                callback_url: checked_callback,
                items: items.items,
            },
        })
    }
}

/// The query of `POST /v1/batches`: for a CSV upload, what a JSON body says besides its items;
/// for a JSON body, defaults for what the body leaves out.
struct CsvQuery {
    name: String,
    /// `name` as sent: absent, the name is made from the upload's time, which a repeat of the
    /// request (`Idempotency-Key`) must not see as a different body.
    raw_name: Option<String>,
    max_in_flight: Option<i32>,
    callback_url: Option<String>,
    raw_callback_url: Option<String>,
}

/// `now`: when the upload came in (names a batch sent without `name`).
fn read_csv_query(
    q: &mut QueryParams,
    allow_private: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<CsvQuery> {
    let name = q.get("name", check_name);
    let max_in_flight = q.get("max_in_flight", |s| {
        s.parse::<i64>()
            .map_err(|_| "an integer from 1 to 1000".to_owned())
            .and_then(check_max_in_flight)
    });
    let raw_callback_url = q.get("callback_url", |s| Ok::<_, String>(s.to_owned()));
    let callback_url = match &raw_callback_url {
        Some(u) => match validate_callback(u, allow_private) {
            Ok(u) => Some(u),
            Err(m) => {
                q.error("callback_url", m);
                return None;
            }
        },
        None => None,
    };
    // Absent: named after the upload (a query parameter cannot be required for one content
    // type only, so the schema cannot demand it). An invalid one is reported by `get`.
    Some(CsvQuery {
        raw_name: name.clone(),
        name: name.unwrap_or_else(|| format!("CSV upload {}", now.format("%Y-%m-%d %H:%M UTC"))),
        max_in_flight,
        callback_url,
        raw_callback_url,
    })
}

/// The columns a CSV upload may have: the create body's fields and `reference`.
const CSV_COLUMNS: &[&str] = &[
    "phone_number",
    "source_waba_id",
    "destination_waba_id",
    "meta_business_id",
    "otp_method",
    "otp_language",
    "pin",
    "callback_url",
    "metadata",
    "flow",
    "channel_id",
    "client_page",
    "reference",
];

/// A CSV problem at the spreadsheet row `row` (header = 1) and `column`.
fn csv_error(row: usize, column: Option<&str>, message: impl Into<String>) -> FieldError {
    FieldError {
        pointer: match column {
            Some(c) => format!("/rows/{row}/{c}"),
            None => format!("/rows/{row}"),
        },
        message: message.into(),
        row: Some(row as u64),
        column: column.map(str::to_owned),
    }
}

/// Reads a CSV upload: a header row of [`CSV_COLUMNS`] names, then one number per row. An
/// empty cell is an absent field; `metadata` is a JSON object in its cell.
/// The row a spreadsheet shows a CSV record in. The reader skips empty lines, which a
/// spreadsheet shows as empty rows (a quoted cell's line breaks stay inside its row): a
/// record's row is the last one's plus one plus the empty lines before it. Those are the line
/// breaks (`\n`, `\r\n` or a lone `\r`) from where the reader started on the record (its
/// `position`: just past the last record's terminator, or on the `\n` of its `\r\n`) to its
/// first character.
struct SpreadsheetRows<'a> {
    text: &'a [u8],
    /// The last record's row.
    last: usize,
}

impl<'a> SpreadsheetRows<'a> {
    /// `header`: where the header record starts (empty lines before it are rows too).
    fn new(text: &'a str, header: Option<&csv::Position>) -> Self {
        let mut rows = Self {
            text: text.as_bytes(),
            last: 0,
        };
        rows.last = 1 + rows.empty_lines_at(header);
        rows
    }

    /// The row of the next record, which the reader started on at `at` (a record that could
    /// not be read may have no position: then the row after the last).
    fn next(&mut self, at: Option<&csv::Position>) -> usize {
        self.last += 1 + self.empty_lines_at(at);
        self.last
    }

    fn empty_lines_at(&self, at: Option<&csv::Position>) -> usize {
        let Some(at) = at
            .and_then(|p| usize::try_from(p.byte()).ok())
            .filter(|&at| at <= self.text.len())
        else {
            return 0;
        };
        let run = &self.text[at..];
        let run = &run[..run
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(run.len())];
        let breaks = run
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && run.get(i + 1) != Some(&b'\n')))
            .count();
        // The `\n` of the last record's own `\r\n`.
        let ends_last = at > 0 && self.text[at - 1] == b'\r' && run.first() == Some(&b'\n');
        breaks - usize::from(ends_last)
    }
}

/// `text` after a first line `sep=<c>` (a one-byte ASCII separator), and that separator; else
/// `text` as it is.
fn separator_line(text: &str) -> (&str, Option<u8>) {
    let end = text.find(['\r', '\n']).unwrap_or(text.len());
    let named = text[..end]
        .trim()
        .strip_prefix("sep=")
        .filter(|c| c.len() == 1 && c.is_ascii())
        .map(|c| c.as_bytes()[0]);
    match named {
        Some(sep) => {
            let rest = &text[end..];
            let rest = rest
                .strip_prefix("\r\n")
                .or_else(|| rest.strip_prefix('\n'))
                .or_else(|| rest.strip_prefix('\r'))
                .unwrap_or(rest);
            (rest, Some(sep))
        }
        None => (text, None),
    }
}

fn read_csv(text: &str, allow_private: bool) -> Result<Items, ApiError> {
    // Excel's "CSV UTF-8" starts with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // A first line `sep=;` names the separator (Excel honours it and does not show it as a
    // row); else Excel's "CSV" with semicolons, where the decimal separator is a comma (Brazil,
    // most of Europe), is told by a header line with semicolons and no comma.
    let (text, named) = separator_line(text);
    let header_line = text
        .split(['\r', '\n'])
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let delimiter = named.unwrap_or(if header_line.contains(';') && !header_line.contains(',') {
        b';'
    } else {
        b','
    });
    // Untrimmed, so that a record's position is where the reader started on it (see `rows`);
    // each record is trimmed after. Flexible, so that a row of empty cells wider or narrower
    // than the header is skipped like the others; a row of another width with something in it
    // is reported below.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(text.as_bytes());
    let header = reader
        .headers()
        .map_err(|e| ApiError::validation(vec![csv_error(1, None, format!("not CSV: {e}"))]))?;
    let mut rows = SpreadsheetRows::new(text, header.position());
    let headers: Vec<String> = header.iter().map(|h| h.trim().to_owned()).collect();
    let header_row = rows.last;
    let mut problems: Vec<FieldError> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if !CSV_COLUMNS.contains(&h.as_str()) {
            problems.push(csv_error(
                header_row,
                Some(h),
                format!("unknown column; expected one of {}", CSV_COLUMNS.join(", ")),
            ));
        } else if headers[..i].contains(h) {
            problems.push(csv_error(
                header_row,
                Some(h),
                "this column appears more than once",
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }
    let mut objects = Vec::new();
    // The spreadsheet row of each object.
    let mut row_of = Vec::new();
    for record in reader.records() {
        let row = rows.next(match &record {
            Ok(r) => r.position(),
            Err(e) => e.position(),
        });
        // A row of empty cells (`,,,,`, which spreadsheets write after the data) is no
        // number, like an empty line.
        if record
            .as_ref()
            .is_ok_and(|r| r.iter().all(|cell| cell.trim().is_empty()))
        {
            continue;
        }
        if row_of.len() >= MAX_ITEMS {
            return Err(ApiError::validation(vec![csv_error(
                row,
                None,
                format!("at most {MAX_ITEMS} rows of numbers (besides the header)"),
            )]));
        }
        row_of.push(row);
        let record = match record {
            Ok(r) if r.len() != headers.len() => {
                problems.push(csv_error(
                    row,
                    None,
                    format!(
                        "not a CSV row: {} cells, where the header has {}",
                        r.len(),
                        headers.len()
                    ),
                ));
                objects.push((Err(FieldError::default()), None));
                continue;
            }
            Ok(mut r) => {
                r.trim();
                r
            }
            Err(e) => {
                problems.push(csv_error(row, None, format!("not a CSV row: {e}")));
                objects.push((Err(FieldError::default()), None));
                continue;
            }
        };
        let mut object = Map::new();
        let mut bad_cell = None;
        for (column, cell) in headers.iter().zip(record.iter()) {
            if cell.is_empty() {
                continue;
            }
            let value = if column == "metadata" {
                match serde_json::from_str::<Value>(cell) {
                    Ok(v) => v,
                    Err(e) => {
                        bad_cell = Some(FieldError {
                            pointer: "/metadata".into(),
                            message: format!("a JSON object in the cell: {e}"),
                            ..Default::default()
                        });
                        continue;
                    }
                }
            } else {
                Value::String(cell.to_owned())
            };
            object.insert(column.clone(), value);
        }
        objects.push((Ok(object), bad_cell));
    }
    if objects.is_empty() {
        return Err(ApiError::validation(vec![csv_error(
            2,
            None,
            format!("no numbers: 1 to {MAX_ITEMS} rows after the header"),
        )]));
    }
    // A CSV's rows count from 1, the header being row 1.
    let mut items = read_items(objects, allow_private, |i| format!("row {}", row_of[i]));
    // Rows that were not CSV are already reported.
    items
        .errors
        .retain(|(_, e)| !e.pointer.is_empty() || e.row.is_some());
    problems.extend(items.errors.drain(..).map(|(i, e)| {
        let column = e
            .pointer
            .split('/')
            .nth(1)
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        FieldError {
            pointer: format!("/rows/{}{}", row_of[i], e.pointer),
            message: e.message,
            row: Some(row_of[i] as u64),
            column,
        }
    }));
    if !problems.is_empty() {
        problems.sort_by_key(|e| e.row);
        return Err(ApiError::validation(problems));
    }
    // No problem: one item per object, in order.
    for (item, row) in items.items.iter_mut().zip(&row_of) {
        item.row = Some(*row as u64);
    }
    Ok(items)
}

/// A CSV upload as `POST /v1/batches` takes it: `query` (`name`, `max_in_flight`,
/// `callback_url`, checked first) and the `text/csv` body. The dashboard's upload form reads
/// its file with this too ([`crate::core::batches::CsvReader`], wired by `app`).
pub fn read_csv_upload(
    query: &str,
    csv: &str,
    allow_private: bool,
) -> Result<NewBatchInput, ApiError> {
    let mut q = QueryParams::parse(query);
    let parsed = read_csv_query(&mut q, allow_private, chrono::Utc::now());
    let params = q.finish(parsed)?;
    let items = read_csv(csv, allow_private)?;
    Ok(NewBatchInput {
        name: params.name,
        max_in_flight: params
            .max_in_flight
            .unwrap_or(commands::DEFAULT_MAX_IN_FLIGHT),
        callback_url: params.callback_url,
        items: items.items,
    })
}

fn is_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("text/csv"))
}

/// The query parameters of `POST /v1/batches`: a CSV upload's settings; with a JSON body,
/// defaults for the fields the body leaves out (the body's own fields win).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CsvParams {
    /// The batch's name (a JSON body's `name` wins). Default: `CSV upload` and the time of the
    /// upload.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: Option<String>,
    /// 1 to 1000, default 20 (a JSON body's `max_in_flight` wins).
    #[param(minimum = 1, maximum = 1000)]
    pub max_in_flight: Option<i32>,
    /// The batch's webhook URL (a JSON body's `callback_url` wins).
    #[param(
        pattern = r"^https://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,4})?(/[!-~]*)?$"
    )]
    pub callback_url: Option<String>,
}

/// Create a batch: many migrations at once.
///
/// Up to 5,000 numbers, as JSON (`{name, migrations: [create body + reference],
/// max_in_flight, callback_url}`) or as `text/csv` (a header row of the create body's field
/// names and `reference`, one number per row; `name`, `max_in_flight` and `callback_url` as
/// query parameters; an empty cell is an absent field; `metadata` is a JSON object in its
/// cell; Excel's semicolon-separated files and rows of empty cells are read). Every item is checked first, by the rules of `POST /v1/migrations`, and each number
/// may appear once: any problem answers 422 `validation_failed` with one `errors[]` entry per
/// problem (JSON: pointer `/migrations/17/phone_number`; CSV: pointer
/// `/rows/4321/phone_number` with `row` (as a spreadsheet numbers it, the header is row 1) and
/// `column`), and nothing is created. Otherwise the batch and all its migrations are created in
/// one transaction; a number that has an active migration, or a completed one whose API key
/// 360dialog may still accept, is reported in its item (`status` `rejected` with the `error`
/// the single create's 409 would give) and the others are created; when that leaves none,
/// nothing is created: 409 `batch_all_rejected` with those `items`. A CSV upload's items say
/// their spreadsheet `row`. Honours `Idempotency-Key` like `POST /v1/migrations` (the CSV text
/// is part of the fingerprint).
#[utoipa::path(
    post, path = "/v1/batches", tag = "batches",
    request_body(content(
        (CreateBatch = "application/json"),
        (String = "text/csv", example = "phone_number,source_waba_id,destination_waba_id,meta_business_id,reference\n+5511987650001,102290129340398,104996122399160,180505742745347,store-1\n"),
    )),
    params(
        CsvParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe (up to 255 characters): for 24 hours the same key and body answer the first response again. After that the key names a new request.", max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$"),
    ),
    responses(
        (status = 201, description = "Created: the batch and one entry per item, in the order sent. An `Idempotency-Key` replay answers the first response again, with `Idempotent-Replayed: true`.", body = BatchCreated,
            headers(
                ("Location" = String, description = "The batch's URL: `/v1/batches/{id}`."),
                ("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same `Idempotency-Key`."),
            )),
        (status = 403, description = "The admin key: batches belong to a partner (refused before the body is read)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`batch_all_rejected`: every number is busy or already migrated, so nothing was created; `items` lists them as a created batch's answer would, each with its `error`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than 8 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither JSON nor `text/csv`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid items or fields (`validation_failed`, nothing created), or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn create_batch(
    State(state): State<AppState>,
    PartnerCaller(caller): PartnerCaller,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let idem_key = idempotency_key(&headers)?;
    let allow_private = state.webhooks.allow_private;
    let query = req.uri().query().unwrap_or_default().to_owned();
    // Checked for both content types; a JSON body's own fields win over it.
    let mut q = QueryParams::parse(&query);
    let parsed = read_csv_query(&mut q, allow_private, state.clock.now());
    let params = q.finish(parsed)?;
    let (sent, input) = if is_csv(&headers) {
        let bytes = Bytes::from_request(req, &state)
            .await
            .map_err(|e| body_refused(e, BATCH_BODY_LIMIT))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "The CSV body must be UTF-8 text.",
            )
        })?;
        let items = read_csv(text, allow_private)?;
        let max_in_flight = params
            .max_in_flight
            .unwrap_or(commands::DEFAULT_MAX_IN_FLIGHT);
        (
            json!({
                "csv": text,
                "name": params.raw_name,
                "max_in_flight": max_in_flight,
                "callback_url": params.raw_callback_url,
            }),
            NewBatchInput {
                name: params.name,
                max_in_flight,
                callback_url: params.callback_url,
                items: items.items,
            },
        )
    } else {
        let AppJson(body) = AppJson::<BatchRequest>::from_request(req, &state).await?;
        let BatchRequest {
            mut sent,
            mut input,
            gave_max,
            gave_callback,
        } = body;
        if let (false, Some(max)) = (gave_max, params.max_in_flight) {
            input.max_in_flight = max;
            sent["max_in_flight"] = json!(max);
        }
        if let (false, Some(url)) = (gave_callback, params.callback_url) {
            input.callback_url = Some(url);
            sent["callback_url"] = json!(params.raw_callback_url);
        }
        (sent, input)
    };
    let idempotency = idem_key
        .as_deref()
        .map(|key| Idempotency { key, body: &sent });
    match commands::create(&state, caller, idempotency, input).await? {
        commands::Created::New(out) => Ok(created(&json!(out), out.batch.id)),
        commands::Created::Replay { status, body } => {
            let mut res = match serde_json::from_value::<BatchCreated>(body.clone()) {
                Ok(out) if status == 201 => created(&json!(out), out.batch.id),
                _ => (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    axum::Json(body),
                )
                    .into_response(),
            };
            res.headers_mut().insert(
                "idempotent-replayed",
                "true".parse().expect("static header"),
            );
            Ok(res)
        }
    }
}

fn created(body: &Value, id: Uuid) -> Response {
    let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/batches/{id}")).expect("a path of a uuid"),
    );
    res
}

/// Paging of `GET /v1/batches`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchListQuery {
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    pub cursor: Option<Uuid>,
    /// Admin only: one partner's batches.
    pub partner_id: Option<Uuid>,
}

impl FromQuery for BatchListQuery {
    fn read(q: &mut QueryParams) -> Option<Self> {
        let (limit, cursor, partner_id) = read_id_paging(q);
        Some(Self {
            limit,
            cursor,
            partner_id,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPage {
    pub data: Vec<Batch>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List batches, newest first.
#[utoipa::path(
    get, path = "/v1/batches", tag = "batches",
    params(BatchListQuery),
    responses(
        (status = 200, description = "A page of batches", body = BatchPage),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_batches(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<BatchListQuery>,
) -> Result<axum::Json<BatchPage>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    let partner_id = list_scope(caller, q.partner_id)?;
    let mut rows = store::list(&state.pool, partner_id, q.cursor, limit).await?;
    let next_cursor = finish_id_page(&mut rows, limit, |r| r.id);
    let mut data = Vec::with_capacity(rows.len());
    for row in rows {
        data.push(commands::view(&state, row).await?);
    }
    Ok(axum::Json(BatchPage { data, next_cursor }))
}

/// Get a batch with its progress.
///
/// Counts of its migrations by state and by error code, `progress` (finished / total),
/// `started_at`, `finished_at` and `estimated_seconds_left` (from the completion rate so far).
#[utoipa::path(
    get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "The batch", body = Batch),
        (status = 404, description = "No such batch for this key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_batch(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<axum::Json<Batch>, ApiError> {
    Ok(axum::Json(commands::get(&state, caller, id).await?))
}

/// Filters and paging of `GET /v1/batches/{id}/migrations`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchMigrationsQuery {
    /// Only migrations in this state, as `counts_by_state` counts them: `queued` includes
    /// those waiting for a slot, whatever step they resume at.
    pub state: Option<MigrationState>,
    /// Only failed migrations with this `error.code`.
    #[param(example = "otp_invalid", pattern = "^[a-z0-9_]{1,64}$")]
    pub error_code: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    pub cursor: Option<Uuid>,
}

impl FromQuery for BatchMigrationsQuery {
    fn read(q: &mut QueryParams) -> Option<Self> {
        let state = q.get("state", |s| {
            s.parse::<MigrationState>().map_err(|_| {
                let all: Vec<&str> = MigrationState::ALL.iter().map(|s| s.as_str()).collect();
                format!("expected a migration state: one of {}", all.join(", "))
            })
        });
        let error_code = q.get("error_code", |s| {
            if !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            {
                Ok(s.to_owned())
            } else {
                Err("an error code such as otp_invalid".to_owned())
            }
        });
        let limit = q.get("limit", parse_limit);
        let cursor = q.get("cursor", |s| parse_cursor(s, |b| Uuid::from_slice(b).ok()));
        Some(Self {
            state,
            error_code,
            limit,
            cursor,
        })
    }
}

/// A batch's migrations, in the order they were sent.
#[utoipa::path(
    get, path = "/v1/batches/{id}/migrations", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id"), BatchMigrationsQuery),
    responses(
        (status = 200, description = "A page of the batch's migrations", body = MigrationPage),
        (status = 404, description = "No such batch for this key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_batch_migrations(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
    AppQuery(q): AppQuery<BatchMigrationsQuery>,
) -> Result<axum::Json<MigrationPage>, ApiError> {
    let batch = commands::fetch(&state, caller, id).await?;
    let limit = q.limit.unwrap_or(20);
    let mut rows = store::migrations(
        &state.pool,
        batch.id,
        &store::MigrationFilter {
            state: q.state.map(|s| s.as_str().to_owned()),
            error_code: q.error_code,
            after_id: q.cursor,
            limit: Some(limit),
        },
    )
    .await?;
    let next_cursor = finish_id_page(&mut rows, limit, |r| r.id);
    let mut data: Vec<Migration> = rows.iter().map(Migration::from).collect();
    client_page::attach(&state, &rows, &mut data).await?;
    Ok(axum::Json(MigrationPage { data, next_cursor }))
}

/// A batch's report, one row per migration.
///
/// `text/csv` with a header row: `reference`, `phone_number`, `migration_id`, `state`,
/// `error_code` (failed migrations), `actor` and `remediation` (who must act and what to do:
/// a failed migration's error, or what a waiting one waits for), `templates_migrated`,
/// `templates_failed`, `templates_skipped`, and `api_key_ready` (`yes` once the migration is
/// completed with its key). Items rejected at creation have no migration and no row. A
/// `reference` that starts like a spreadsheet formula (`=`, `+`, `-`, `@`, tab, carriage
/// return) is written with a leading `'`.
#[utoipa::path(
    get, path = "/v1/batches/{id}/report.csv", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "The report", body = String, content_type = "text/csv"),
        (status = 404, description = "No such batch for this key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn batch_report(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<Response, ApiError> {
    let (batch, body) = commands::report(&state, caller, id).await?;
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    res.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"batch-{}.csv\"", batch.id))
            .expect("a file name of a uuid"),
    );
    Ok(res)
}

/// Cancel every migration of the batch that has not finished.
///
/// Each through the same command as `POST /v1/migrations/{id}/cancel` (its event and
/// webhook); a migration that finished meanwhile, or is rotating its API key, is left as it
/// is. Upstream changes already made are not undone. The batch is `cancelled` from then on:
/// within seconds the batch ticker also cancels what this request could not (a migration whose
/// worker was registering it or generating its key: once that call is answered; all the rest
/// if the request was cut short), except a migration retried on its own since
/// (`data.source: "batch"`).
#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "The batch after the cancellations", body = Batch),
        (status = 404, description = "No such batch for this key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn cancel_batch(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<axum::Json<Batch>, ApiError> {
    Ok(axum::Json(
        commands::cancel(&state, caller, id, Source::Api).await?,
    ))
}

/// What `retry_failed` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryFailedOut {
    /// Failed migrations resumed (`error.retryable` was true).
    pub retried: usize,
    /// Failed migrations left failed: their error is not retryable, or the retry was refused
    /// (another migration of the number is active).
    pub skipped: usize,
    pub batch: Batch,
}

/// Retry the batch's failed migrations whose error is retryable.
///
/// Each through the same command as `POST /v1/migrations/{id}/retry`.
#[utoipa::path(
    post, path = "/v1/batches/{id}/retry_failed", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch id")),
    responses(
        (status = 200, description = "How many were retried and skipped, and the batch", body = RetryFailedOut),
        (status = 404, description = "No such batch for this key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The batch was cancelled (`invalid_state`): retry its migrations one by one", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn retry_failed(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<axum::Json<RetryFailedOut>, ApiError> {
    let r = commands::retry_failed(&state, caller, id, Source::Api).await?;
    Ok(axum::Json(RetryFailedOut {
        retried: r.retried,
        skipped: r.skipped,
        batch: r.batch,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::testing::{assert_body_matches_schema, assert_query_matches_params};

    #[test]
    fn readers_take_what_the_openapi_document_describes() {
        assert_body_matches_schema::<BatchRequest, CreateBatch>();
        assert_query_matches_params::<BatchListQuery>();
        assert_query_matches_params::<BatchMigrationsQuery>();
    }

    const ROW: &str = "102290129340398,104996122399160,180505742745347";

    /// The 422 a CSV upload that must be refused gets.
    fn refused(text: &str) -> ApiError {
        match read_csv(text, false) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn csv_problems_are_named_by_spreadsheet_row_and_column() {
        let text = format!(
            "phone_number,source_waba_id,destination_waba_id,meta_business_id,otp_method\n\
             +5511987650001,{ROW},sms\n+5511987650002,{ROW},fax\n+5511987650001,{ROW},\n"
        );
        let e = refused(&text);
        let got: Vec<(String, Option<u64>, Option<String>)> = e
            .errors
            .iter()
            .map(|e| (e.pointer.clone(), e.row, e.column.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/rows/3/otp_method".into(),
                    Some(3),
                    Some("otp_method".into())
                ),
                (
                    "/rows/4/phone_number".into(),
                    Some(4),
                    Some("phone_number".into())
                ),
            ]
        );
        let ok = read_csv(
            &format!("phone_number,source_waba_id,destination_waba_id,meta_business_id\n+5511987650001,{ROW}\n"),
            false,
        )
        .unwrap_or_else(|e| panic!("{:?}", e.errors));
        assert_eq!(ok.items.len(), 1);
        assert!(ok.errors.is_empty());
    }

    /// Empty lines are rows in a spreadsheet (the reader skips them); a quoted cell's line
    /// breaks are not. With `\r\n`, `\n` and `\r` line ends, a byte order mark, empty lines
    /// before the header, and a row that is not CSV (one cell too many).
    #[test]
    fn csv_rows_count_empty_lines_but_not_breaks_inside_cells() {
        let header =
            "phone_number,source_waba_id,destination_waba_id,meta_business_id,otp_method,metadata";
        let lines = [
            header.to_owned(),
            String::new(),
            format!("+5511987650001,{ROW},sms,\"{{\n\"\"crm\"\": 1}}\""),
            format!("+5511987650002,{ROW},fax,"),
            String::new(),
            String::new(),
            format!("+5511987650003,{ROW},fax,"),
            String::new(),
            format!("+5511987650004,{ROW},sms,,extra"),
            format!("+5511987650005,{ROW},fax,"),
        ];
        for end in ["\r\n", "\n", "\r"] {
            for (prefix, before) in [("", 0), ("\u{feff}", 0), ("\u{feff}", 2)] {
                let text = format!("{prefix}{}", end.repeat(before)) + &lines.join(end) + end;
                let e = refused(&text);
                let rows: Vec<Option<u64>> = e.errors.iter().map(|e| e.row).collect();
                // Header 1, empty 2, first number 3, fax 4, empty 5 and 6, fax 7, empty 8,
                // a cell too many 9, fax 10; each after the empty lines before the header.
                let want: Vec<Option<u64>> = [4, 7, 9, 10]
                    .iter()
                    .map(|r| Some(r + before as u64))
                    .collect();
                assert_eq!(rows, want, "{end:?} {prefix:?} {before}: {:?}", e.errors);
            }
        }
    }

    /// What Excel writes in a locale whose decimal separator is a comma (Brazil): semicolons,
    /// and rows of empty cells after the data.
    #[test]
    fn csv_with_semicolons_and_rows_of_empty_cells_is_read() {
        let row = ROW.replace(',', ";");
        let text = format!(
            "phone_number;source_waba_id;destination_waba_id;meta_business_id;otp_method\r\n\
             +5511987650001;{row};sms\r\n;;;;\r\n+5511987650002;{row};fax\r\n;;;;\r\n"
        );
        let e = refused(&text);
        let got: Vec<(String, Option<u64>)> = e
            .errors
            .iter()
            .map(|e| (e.pointer.clone(), e.row))
            .collect();
        // The empty row 3 is skipped but counted: the second number is row 4.
        assert_eq!(got, [("/rows/4/otp_method".to_owned(), Some(4))]);
        let ok = read_csv(&text.replace("fax", "voice"), false)
            .unwrap_or_else(|e| panic!("{:?}", e.errors));
        assert_eq!(ok.items.len(), 2);
        assert!(ok.errors.is_empty());

        // A first line naming the separator (not a row), and rows of empty cells wider or
        // narrower than the header.
        let text = format!(
            "sep=;\r\nphone_number;source_waba_id;destination_waba_id;meta_business_id\r\n\
             +5511987650001;{row}\r\n;;;;;;\r\n;;\r\n+5511987650002;{row};extra\r\n"
        );
        let e = refused(&text);
        let got: Vec<(String, Option<u64>)> = e
            .errors
            .iter()
            .map(|e| (e.pointer.clone(), e.row))
            .collect();
        assert_eq!(got, [("/rows/5".to_owned(), Some(5))], "{:?}", e.errors);
        assert!(
            e.errors[0]
                .message
                .contains("5 cells, where the header has 4")
        );
        let ok = read_csv(&text.replace(";extra", ""), false)
            .unwrap_or_else(|e| panic!("{:?}", e.errors));
        assert_eq!(ok.items.len(), 2);
    }
}
